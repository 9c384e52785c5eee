//! The comparison as one self-contained HTML page: the per-output metrics, a chart of every
//! quantized layer's SQNR in graph order coloured by op type, histograms of the worst layers'
//! float and quantized values, and the worst layers as a table with the `--exclude-nodes`
//! line that would return them to float.
//!
//! Everything is inline (CSS, SVG, no script), and a Content-Security-Policy forbids the page
//! any fetch, so the file can be mailed, archived in CI and opened offline.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{CompareReport, ErrorMetrics, Histogram, LayerError};

/// What the page says about where the comparison came from.
#[derive(Debug, Clone, Default)]
pub struct HtmlContext {
    /// The page's heading.
    pub title: String,
    /// Facts shown under the heading, in order (model paths, mode, data, ...).
    pub facts: Vec<(String, String)>,
}

/// Fill of the chart's plotting area. Tests find the chart in a screenshot by this colour.
pub const CHART_BACKGROUND: &str = "#eef3f8";

/// Bar colours, given to op types in the order they first appear: distinct hues first, then
/// their lighter tints (a transformer has a dozen quantized op types).
const PALETTE: [&str; 20] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f", "#d62728", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#9edae5", "#dbdb8d", "#c7c7c7", "#ff9896",
];

/// Bars of layers whose SQNR is 0 dB or less (or not a number): the quantized tensor carries
/// no more signal than noise.
const BROKEN: &str = "#111111";

/// Layers listed in the table, worst first.
const TABLE_LAYERS: usize = 30;

/// The HTML page for `report`.
pub fn render(report: &CompareReport, context: &HtmlContext) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let title = esc(&context.title);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; img-src data:\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    facts(&mut page, report, context);
    page.push_str("<h2>Per-layer SQNR, in graph order</h2>\n");
    if report.layers.is_empty() {
        page.push_str(
            "<p class=\"note\">No quantized activation to compare layer by layer (a dynamic or \
             weight-only model quantizes weights only, or the comparison ran without \
             per-layer capture).</p>\n",
        );
    } else {
        sqnr_chart(&mut page, &report.layers);
    }
    page.push_str("<h2>Outputs</h2>\n");
    outputs_table(&mut page, &report.outputs);
    if !report.histograms.is_empty() {
        page.push_str(
            "<h2>Values of the worst layers</h2>\n<p class=\"note\">Float values \
             (<span class=\"sw\" style=\"background:#4c78a8\"></span>) and quantized values \
             (<span class=\"sw\" style=\"background:#f58518\"></span>) of the same tensor on \
             the first samples, counts on a square-root scale. Float mass outside the \
             quantized values is clipped by the range; spikes that do not line up are \
             rounding.</p>\n<div class=\"hists\">\n",
        );
        let by_name: BTreeMap<&str, &LayerError> = report
            .layers
            .iter()
            .map(|l| (l.tensor.as_str(), l))
            .collect();
        for h in &report.histograms {
            histogram(&mut page, h, by_name.get(h.tensor.as_str()).copied());
        }
        page.push_str("</div>\n");
    }
    if !report.layers.is_empty() {
        worst_table(&mut page, &report.layers);
    }
    page.push_str("</body>\n</html>\n");
    page
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
margin:24px auto;max-width:1180px;color:#1b1f24;padding:0 16px}\
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px}\
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #dde3ea;\
text-align:right}th{background:#f3f5f8}td.l,th.l{text-align:left}\
.facts td{border:0;padding:1px 12px 1px 0;text-align:left}.facts td:first-child{color:#57606a}\
.note{color:#57606a;font-size:13px;max-width:900px}.bad{color:#b42318;font-weight:600}\
.legend{font-size:12px;margin:4px 0 0}.legend span{margin-right:14px;white-space:nowrap}\
.sw{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}\
.hists{display:flex;flex-wrap:wrap;gap:12px}.hist{border:1px solid #dde3ea;padding:6px}\
.hist div{font-size:12px;max-width:360px;overflow-wrap:anywhere}code{font-size:12px}\
svg text{font-family:inherit}";

fn facts(page: &mut String, report: &CompareReport, context: &HtmlContext) {
    page.push_str("<table class=\"facts\">\n");
    let mut row = |k: &str, v: &str| {
        let _ = writeln!(page, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    };
    for (k, v) in &context.facts {
        row(k, v);
    }
    row("samples compared", &report.samples.to_string());
    row(
        "size",
        &format!(
            "{} → {} ({:.3}×)",
            bytes(report.reference_bytes),
            bytes(report.test_bytes),
            report.test_bytes as f64 / report.reference_bytes.max(1) as f64
        ),
    );
    if let (Some(a), Some(b)) = (report.reference_ms, report.test_ms) {
        row(
            "tract latency",
            &format!("{a:.2} ms → {b:.2} ms ({:.2}×)", b / a.max(1e-9)),
        );
    }
    if let Some(e) = &report.emulation {
        row("emulation", e);
    }
    page.push_str("</table>\n");
}

fn outputs_table(page: &mut String, outputs: &BTreeMap<String, ErrorMetrics>) {
    page.push_str(
        "<table>\n<tr><th class=\"l\">output</th><th>SQNR dB</th><th>cosine</th>\
         <th>mean cosine</th><th>min cosine</th><th>max |err|</th><th>relative</th>\
         <th>top-1 agreement</th></tr>\n",
    );
    for (name, m) in outputs {
        let bad = m.sqnr_db < 5.0 || m.mean_cosine < 0.9;
        let _ = writeln!(
            page,
            "<tr><td class=\"l\">{}</td><td{}>{}</td><td>{:.5}</td><td>{:.5}</td><td>{:.5}</td>\
             <td>{:.4e}</td><td>{:.4}</td><td>{}</td></tr>",
            esc(name),
            if bad { " class=\"bad\"" } else { "" },
            db(m.sqnr_db),
            m.cosine,
            m.mean_cosine,
            m.min_cosine,
            m.max_abs,
            m.relative,
            m.top1_agreement
                .map_or("—".to_string(), |t| format!("{:.2} %", t * 100.0)),
        );
    }
    page.push_str("</table>\n");
}

/// Bars of SQNR per layer, from input to output, one colour per op type. A lossless layer
/// (infinite SQNR) reaches the top; one at 0 dB or below is a short black bar.
fn sqnr_chart(page: &mut String, layers: &[LayerError]) {
    let mut ordered: Vec<&LayerError> = layers.iter().collect();
    ordered.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.tensor.cmp(&b.tensor)));
    let mut colours: Vec<(&str, &str)> = Vec::new();
    for l in &ordered {
        if !colours.iter().any(|(op, _)| *op == l.op_type) {
            let c = PALETTE[colours.len() % PALETTE.len()];
            colours.push((l.op_type.as_str(), c));
        }
    }
    let colour = |op: &str| {
        colours
            .iter()
            .find(|(o, _)| *o == op)
            .map_or(PALETTE[0], |(_, c)| c)
    };
    let finite_max = ordered
        .iter()
        .map(|l| l.metrics.sqnr_db)
        .filter(|v| v.is_finite())
        .fold(10.0f64, f64::max);
    let top = (finite_max / 10.0).ceil() * 10.0;
    let labels = ordered.len() <= 80;
    let (width, left, right, top_margin) = (1120.0, 48.0, 12.0, 12.0);
    let plot_h = 300.0;
    let bottom = if labels { 130.0 } else { 28.0 };
    let height = top_margin + plot_h + bottom;
    let plot_w = width - left - right;
    let step = plot_w / ordered.len() as f64;
    let bar_w = if step > 4.0 { step * 0.8 } else { step };
    let y = |db: f64| top_margin + plot_h * (1.0 - (db.clamp(0.0, top) / top));
    let _ = writeln!(
        page,
        "<svg id=\"sqnr-chart\" viewBox=\"0 0 {width} {height}\" width=\"100%\" \
         role=\"img\" aria-label=\"SQNR per quantized layer\">\n\
         <rect x=\"{left}\" y=\"{top_margin}\" width=\"{plot_w}\" height=\"{plot_h}\" \
         fill=\"{CHART_BACKGROUND}\"/>"
    );
    let mut tick = 0.0;
    while tick <= top {
        let ty = y(tick);
        let _ = writeln!(
            page,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"#c9d3de\" \
             stroke-width=\"0.6\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" \
             text-anchor=\"end\" fill=\"#57606a\">{tick}</text>",
            left + plot_w,
            left - 6.0,
            ty + 4.0
        );
        tick += 10.0;
    }
    let _ = writeln!(
        page,
        "<text x=\"12\" y=\"{:.1}\" font-size=\"11\" fill=\"#57606a\" \
         transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">SQNR dB</text>",
        top_margin + plot_h / 2.0,
        top_margin + plot_h / 2.0
    );
    for (i, l) in ordered.iter().enumerate() {
        let x = left + i as f64 * step + (step - bar_w) / 2.0;
        let v = l.metrics.sqnr_db;
        let by = y(if v.is_nan() { 0.0 } else { v });
        // A broken layer still shows: a bar of a few pixels in black.
        let h = (top_margin + plot_h - by).max(if v > 0.0 { 1.0 } else { 4.0 });
        let fill = if v <= 0.0 || v.is_nan() {
            BROKEN
        } else {
            colour(&l.op_type)
        };
        let _ = writeln!(
            page,
            "<rect x=\"{x:.2}\" y=\"{:.2}\" width=\"{bar_w:.2}\" height=\"{h:.2}\" \
             fill=\"{fill}\"><title>{} ({}{}): SQNR {} dB, cosine {:.5}</title></rect>",
            top_margin + plot_h - h,
            esc(&l.tensor),
            esc(&l.op_type),
            if l.node.is_empty() {
                String::new()
            } else {
                format!(" {}", esc(&l.node))
            },
            db(v),
            l.metrics.cosine
        );
        if labels {
            let lx = x + bar_w / 2.0;
            let ly = top_margin + plot_h + 8.0;
            let _ = writeln!(
                page,
                "<text x=\"{lx:.1}\" y=\"{ly:.1}\" font-size=\"10\" fill=\"#3d444d\" \
                 text-anchor=\"end\" transform=\"rotate(-60 {lx:.1} {ly:.1})\">{}</text>",
                esc(&shorten(&l.tensor, 22))
            );
        }
    }
    if !labels {
        let _ = writeln!(
            page,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#57606a\" \
             text-anchor=\"middle\">{} layers, input → output (hover a bar for its name)</text>",
            left + plot_w / 2.0,
            top_margin + plot_h + 18.0,
            ordered.len()
        );
    }
    page.push_str("</svg>\n<p class=\"legend\">");
    for (op, c) in &colours {
        let count = ordered.iter().filter(|l| l.op_type == *op).count();
        let _ = write!(
            page,
            "<span><span class=\"sw\" style=\"background:{c}\"></span>{} ({count})</span>",
            esc(op)
        );
    }
    page.push_str(
        "<span><span class=\"sw\" style=\"background:#111111\"></span>SQNR ≤ 0 dB</span>\
         </p>\n<p class=\"note\">Each bar is one quantized tensor, coloured by the op that \
         writes it in the float model; hover for its name. A low bar is where the int8 model \
         departs from the float one: the layers after it inherit its error.</p>\n",
    );
}

fn histogram(page: &mut String, h: &Histogram, layer: Option<&LayerError>) {
    let (w, hgt, pad) = (360.0, 170.0, 20.0);
    let plot_w = w - 2.0 * pad;
    let plot_h = hgt - 2.0 * pad;
    let peak = h
        .float_counts
        .iter()
        .chain(&h.quantized_counts)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let bin_w = plot_w / h.float_counts.len().max(1) as f64;
    let _ = write!(
        page,
        "<div class=\"hist\"><div><code>{}</code>",
        esc(&h.tensor)
    );
    if let Some(l) = layer {
        let _ = write!(
            page,
            " — {} · SQNR {} dB",
            esc(&l.op_type),
            db(l.metrics.sqnr_db)
        );
    }
    let _ = writeln!(
        page,
        "</div><svg class=\"histogram\" viewBox=\"0 0 {w} {hgt}\" width=\"{w}\" \
         height=\"{hgt}\"><rect x=\"{pad}\" y=\"{pad}\" width=\"{plot_w}\" \
         height=\"{plot_h}\" fill=\"#fbfcfd\" stroke=\"#dde3ea\"/>"
    );
    for (counts, fill) in [
        (&h.float_counts, "#4c78a8"),
        (&h.quantized_counts, "#f58518"),
    ] {
        for (i, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let bh = plot_h * (c as f64 / peak).sqrt();
            let _ = write!(
                page,
                "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" \
                 fill=\"{fill}\" fill-opacity=\"0.55\"/>",
                pad + i as f64 * bin_w,
                pad + plot_h - bh,
                bin_w
            );
        }
    }
    let _ = writeln!(
        page,
        "<text x=\"{pad}\" y=\"{:.1}\" font-size=\"10\" fill=\"#57606a\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#57606a\" \
         text-anchor=\"end\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" \
         fill=\"#57606a\" text-anchor=\"middle\">{} values</text></svg></div>",
        hgt - 6.0,
        num(h.lo),
        w - pad,
        hgt - 6.0,
        num(h.hi),
        w / 2.0,
        hgt - 6.0,
        h.values
    );
}

fn worst_table(page: &mut String, layers: &[LayerError]) {
    let shown = &layers[..layers.len().min(TABLE_LAYERS)];
    let _ = writeln!(
        page,
        "<h2>Worst layers</h2>\n<table>\n<tr><th class=\"l\">tensor</th><th class=\"l\">op</th>\
         <th class=\"l\">node</th><th>SQNR dB</th><th>cosine</th><th>max |err|</th></tr>"
    );
    for l in shown {
        let _ = writeln!(
            page,
            "<tr><td class=\"l\"><code>{}</code></td><td class=\"l\">{}</td>\
             <td class=\"l\"><code>{}</code></td><td>{}</td><td>{:.5}</td><td>{:.4e}</td></tr>",
            esc(&l.tensor),
            esc(&l.op_type),
            esc(&l.node),
            db(l.metrics.sqnr_db),
            l.metrics.cosine,
            l.metrics.max_abs
        );
    }
    page.push_str("</table>\n");
    let mut nodes: Vec<&str> = Vec::new();
    for l in layers.iter().filter(|l| !l.node.is_empty()).take(5) {
        if !nodes.contains(&l.node.as_str()) {
            nodes.push(&l.node);
        }
    }
    if !nodes.is_empty() {
        let _ = writeln!(
            page,
            "<p class=\"note\">To keep the {} worst layers' ops float: \
             <code>--exclude-nodes {}</code></p>",
            nodes.len(),
            esc(&nodes.join(","))
        );
    }
}

fn db(v: f64) -> String {
    if v.is_infinite() && v > 0.0 {
        "∞".into()
    } else {
        format!("{v:.2}")
    }
}

fn num(v: f32) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MB", n as f64 / 1e6)
    } else {
        format!("{:.1} kB", n as f64 / 1e3)
    }
}

fn shorten(s: &str, max: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= max {
        s.to_string()
    } else {
        let keep = max - 1;
        let tail: String = chars[chars.len() - keep..].iter().collect();
        format!("…{tail}")
    }
}

/// `s` as HTML text or attribute content.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::ErrorAccumulator;

    fn layer(tensor: &str, op: &str, order: usize, err: f32) -> LayerError {
        let mut acc = ErrorAccumulator::default();
        acc.add(&[1.0, 2.0], &[1.0 + err, 2.0], None);
        LayerError {
            tensor: tensor.into(),
            node: format!("n_{tensor}"),
            op_type: op.into(),
            order,
            metrics: acc.metrics(),
        }
    }

    fn report(layers: Vec<LayerError>) -> CompareReport {
        let mut acc = ErrorAccumulator::default();
        acc.add(&[1.0, 2.0], &[1.1, 2.0], Some(2));
        CompareReport {
            samples: 1,
            outputs: [("out<1>".to_string(), acc.metrics())].into(),
            layers,
            reference_bytes: 4000,
            test_bytes: 1000,
            reference_ms: None,
            test_ms: None,
            histograms: Vec::new(),
            emulation: None,
        }
    }

    #[test]
    fn bars_follow_graph_order_with_one_colour_per_op_type() {
        let layers = vec![
            layer("late", "MatMul", 9, 0.5),
            layer("early", "Conv", 2, 0.01),
            layer("middle", "Conv", 5, 0.0),
        ];
        let page = render(&report(layers), &HtmlContext::default());
        let chart = &page[page.find("<svg id=\"sqnr-chart\"").unwrap()..];
        let chart = &chart[..chart.find("</svg>").unwrap()];
        let (e, m, l) = (
            chart.find("<title>early").unwrap(),
            chart.find("<title>middle").unwrap(),
            chart.find("<title>late").unwrap(),
        );
        assert!(e < m && m < l, "bars in graph order");
        assert_eq!(
            chart.matches(&format!("fill=\"{}\"", PALETTE[0])).count(),
            2
        );
        assert_eq!(
            chart.matches(&format!("fill=\"{}\"", PALETTE[1])).count(),
            1
        );
        assert!(chart.contains("middle (Conv n_middle): SQNR ∞ dB"));
    }

    #[test]
    fn names_are_escaped_and_nothing_is_fetched() {
        let page = render(
            &report(vec![layer("a<script>", "Conv", 1, 0.1)]),
            &HtmlContext {
                title: "t & \"q\"".into(),
                facts: vec![],
            },
        );
        assert!(!page.contains("<script>"));
        assert!(page.contains("a&lt;script&gt;"));
        assert!(page.contains("out&lt;1&gt;"));
        assert!(page.contains("t &amp; &quot;q&quot;"));
        assert!(page.contains("default-src 'none'"));
        for banned in ["http:", "https:", "src=", "href=", "url(", "@import"] {
            assert!(!page.contains(banned), "{banned}");
        }
    }
}
