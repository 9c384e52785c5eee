//! What the commands print on stdout. Text is built first and written once, and a closed pipe
//! (`onnx-ptq ... | head`) ends the output quietly instead of panicking.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use onnx_ptq::compare::{CompareReport, ErrorMetrics, Violation};
use onnx_ptq::inspect::human_bytes;
use onnx_ptq::quantize::QuantizeReport;

/// Writes `text` to stdout; a reader that went away is not an error.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

/// `A 3, B 1` from counts by name.
fn counts<K: std::fmt::Display>(items: impl IntoIterator<Item = (K, usize)>) -> String {
    items
        .into_iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ratio(after: u64, before: u64) -> f64 {
    after as f64 / before.max(1) as f64
}

/// Dynamic mode's weight errors and expected kernels: a line each for the worst weights and
/// a count per kernel (the report lists them all).
fn weight_lines(t: &mut String, s: &QuantizeReport) {
    let mut kernels: BTreeMap<String, usize> = BTreeMap::new();
    for k in &s.rewrite.dynamic_kernels {
        let name = format!("{}{}", k.kernel, if k.bias_fused { " + bias" } else { "" });
        *kernels.entry(name).or_default() += 1;
    }
    if !kernels.is_empty() {
        let _ = writeln!(
            t,
            "MatMul/Gemm fused by onnxruntime into: {}",
            counts(kernels)
        );
    }
    let mut weights: Vec<_> = s.rewrite.weight_errors.iter().collect();
    weights.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db));
    if let (Some(worst), Some(best)) = (weights.first(), weights.last()) {
        let _ = writeln!(
            t,
            "weight SQNR: {:.1} to {:.1} dB over {} weights (worst first below; all in --report)",
            worst.sqnr_db,
            best.sqnr_db,
            weights.len()
        );
    }
    for w in weights.iter().take(3) {
        let _ = writeln!(t, "  {}: {:.1} dB, {}", w.tensor, w.sqnr_db, w.format);
    }
}

/// The summary of `quantize`.
pub fn quantize_summary(s: &QuantizeReport, written: &Path) {
    // On stderr, even with -q: the written model is not what was asked for.
    for r in &s.repaired {
        eprintln!(
            "warning: self-repair returned {} to float: the quantized model did not run in \
             tract with it quantized: {}",
            r.node, r.error
        );
    }
    let mut t = String::new();
    let _ = writeln!(t, "wrote {}", written.display());
    let _ = writeln!(
        t,
        "size: {} -> {} ({:.2}x)",
        human_bytes(s.bytes_before),
        human_bytes(s.bytes_after),
        ratio(s.bytes_after, s.bytes_before)
    );
    if s.opset_after != s.opset_before {
        let _ = writeln!(t, "opset: {} -> {}", s.opset_before, s.opset_after);
    }
    if let Some(why) = &s.per_tensor_reason {
        let _ = writeln!(t, "per-tensor weights: {why}");
    }
    let mode = s.mode;
    if mode == onnx_ptq::quantize::Mode::WeightOnly {
        let _ = writeln!(t, "mode: weight-only (activations stay float)");
        if s.calibration_seconds > 0.0 {
            let _ = writeln!(
                t,
                "calibration: {} in {:.2} s",
                s.calibration_method, s.calibration_seconds
            );
        }
        let _ = writeln!(
            t,
            "quantized: nodes: {}; {} weights and tables",
            counts(s.quantized_ops.iter().map(|(op, &n)| (op, n))),
            s.rewrite.weights,
        );
        weight_lines(&mut t, s);
    } else if mode == onnx_ptq::quantize::Mode::Dynamic {
        let _ = writeln!(
            t,
            "mode: dynamic (activations quantized at run time; no calibration)"
        );
        let _ = writeln!(
            t,
            "quantized: nodes: {}; {} weights and tables 8-bit; {} DynamicQuantizeLinear",
            counts(s.quantized_ops.iter().map(|(op, &n)| (op, n))),
            s.rewrite.weights,
            s.rewrite.dynamic_quantize_nodes
        );
        weight_lines(&mut t, s);
    } else {
        let _ = writeln!(
            t,
            "calibration: {} on {} samples in {:.2} s",
            s.calibration_method, s.calibration_samples, s.calibration_seconds
        );
        if s.prep.layers_equalized > 0 {
            let _ = writeln!(
                t,
                "equalized: {} Conv pairs (cross-layer equalization; --equalize, --no-equalize)",
                s.prep.layers_equalized
            );
        }
        if !s.clipped_ranges.is_empty() {
            let _ = writeln!(
                t,
                "ranges: {} clipped to the bulk of their values, which a handful of values \
                 stretched over 8x (--no-outlier-guard keeps them; all in --report): {}",
                s.clipped_ranges.len(),
                s.clipped_ranges
                    .iter()
                    .take(3)
                    .map(|(name, c)| format!(
                        "{name} [{:.3}, {:.3}] -> [{:.3}, {:.3}]",
                        c.calibrated.0, c.calibrated.1, c.used.0, c.used.1
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(
            t,
            "quantized: {} tensors; nodes: {}; {} weights int8, {} biases int32",
            s.quantized_tensors,
            counts(s.quantized_ops.iter().map(|(op, &n)| (op, n))),
            s.rewrite.weights,
            s.rewrite.biases
        );
    }
    if !s.without_int8_kernel.is_empty() {
        let _ = writeln!(
            t,
            "no int8 kernel in onnxruntime (DQ -> float op -> Q): {}",
            counts(s.without_int8_kernel.iter().map(|(op, &n)| (op, n)))
        );
    }
    // One line per reason, listing the op types it kept float: a model has hundreds of shape
    // nodes, and the report file has each node by name.
    let mut reasons: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for f in &s.float_nodes {
        *reasons
            .entry(f.kind.as_str())
            .or_default()
            .entry(f.op_type.as_str())
            .or_default() += 1;
    }
    for (reason, ops) in reasons {
        let n: usize = ops.values().sum();
        let _ = writeln!(t, "float: {n} nodes, {reason}: {}", counts(ops));
    }
    if let Some(a) = &s.accuracy {
        let _ = writeln!(
            t,
            "accuracy search on {} held-out samples ({} candidates, {:.1} s): {}",
            a.held_out_samples,
            a.candidates,
            a.seconds,
            if a.met {
                "bounds met"
            } else {
                "BOUNDS NOT MET, best model written"
            }
        );
        let _ = writeln!(t, "  fully quantized: {}", brief(&a.initial.outputs));
        for step in &a.steps {
            let _ = writeln!(
                t,
                "  {} {}, {:+.2} alone: {}",
                step.to,
                step.node,
                step.gain_alone,
                brief(&step.after.outputs)
            );
        }
    }
    let _ = writeln!(t, "validation: {}", s.execution_check);
    for (name, m) in &s.outputs {
        let _ = writeln!(
            t,
            "output {name}: SQNR {:.2} dB, cosine {:.5}, max abs error {:.4} ({} samples, tract)",
            m.sqnr_db, m.cosine, m.max_abs, s.compared_samples
        );
    }
    out(&t);
}

/// The report's warnings, on stderr: they must be seen even when stdout goes to a file.
pub fn warnings(s: &QuantizeReport) {
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
}

/// One line of the watched outputs' figures.
fn brief(outputs: &BTreeMap<String, ErrorMetrics>) -> String {
    outputs
        .iter()
        .map(|(n, m)| {
            let top1 = m
                .top1_agreement
                .map(|a| format!(", top-1 agreement {a:.3}"))
                .unwrap_or_default();
            format!(
                "{n} SQNR {:.2} dB, mean cosine {:.5}{top1}",
                m.sqnr_db, m.mean_cosine
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn metrics_row(t: &mut String, name: &str, m: &ErrorMetrics) {
    let top = match (m.top1_agreement, m.top5_overlap) {
        (Some(a), Some(o)) => format!("{a:>8.4} {o:>8.4}"),
        _ => format!("{:>8} {:>8}", "-", "-"),
    };
    // The name goes last: tensor names run to 80 characters and would break the columns.
    let _ = writeln!(
        t,
        "{:>9.2} {:>9.6} {:>9.6} {:>10.3e} {:>10.3e} {:>10.3e} {:>9.3e} {top}  {name}",
        m.sqnr_db, m.cosine, m.mean_cosine, m.max_abs, m.mean_abs, m.mse, m.relative
    );
}

fn header(t: &mut String, first: &str) {
    let _ = writeln!(
        t,
        "{:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8}  {first}",
        "SQNR dB", "cosine", "mean cos", "max abs", "mean abs", "MSE", "relative", "top-1", "top-5"
    );
}

/// The table of `compare`.
pub fn compare_table(r: &CompareReport, top_k: usize, violations: &[Violation]) {
    let mut t = String::new();
    let _ = writeln!(t, "{} samples", r.samples);
    if let Some(note) = &r.emulation {
        let _ = writeln!(t, "note: {note}");
    }
    header(&mut t, "output");
    for (name, m) in r.outputs.iter().filter(|(_, m)| m.values > 0) {
        metrics_row(&mut t, name, m);
    }
    if !r.layers.is_empty() {
        let _ = writeln!(
            t,
            "\nper layer, worst first ({} of {} quantized tensors):",
            top_k.min(r.layers.len()),
            r.layers.len()
        );
        header(&mut t, "tensor");
        for l in r.layers.iter().take(top_k) {
            metrics_row(&mut t, &l.tensor, &l.metrics);
        }
    }
    let _ = writeln!(
        t,
        "\nsize: {} float, {} quantized ({:.2}x)",
        human_bytes(r.reference_bytes),
        human_bytes(r.test_bytes),
        ratio(r.test_bytes, r.reference_bytes)
    );
    if let (Some(a), Some(b)) = (r.reference_ms, r.test_ms) {
        // tract simulates QDQ in float: this says what the comparison cost, not how fast an
        // int8 runtime will be.
        let _ = writeln!(
            t,
            "tract latency (median, first sample): {a:.2} ms float, {b:.2} ms quantized"
        );
    }
    for v in violations {
        let _ = writeln!(t, "FAILED: {v}");
    }
    if !violations.is_empty() {
        let _ = writeln!(t, "{} bound(s) missed", violations.len());
    }
    out(&t);
}
