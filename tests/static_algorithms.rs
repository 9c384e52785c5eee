//! Static mode's accuracy algorithms, each on a model built to need it, against ONNX Runtime
//! (the quantized model's outputs on held-out data, compared with the float model's): each
//! test fails when its algorithm is switched off.

mod common;

use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sqnr(verdict: &serde_json::Value) -> f64 {
    verdict["outputs"]["y"]["sqnr_db"].as_f64().unwrap()
}

/// Cross-layer equalization: a depthwise → Relu → pointwise pair with channel ranges from
/// 0.01 to 100 (tests/py/cle_model.py) loses most of its signal quantized as it is, and keeps
/// it equalized; the equalized model computes the float function (so it stays close to it).
/// Per-channel weights leave it off unless asked; per-tensor weights turn it on.
#[test]
fn equalization_rescues_a_pair_with_mismatched_channel_ranges() {
    let dir = tempfile::tempdir().unwrap();
    common::python_ok("cle_model.py", &[s(dir.path())]);
    let (float, calib, held) = (
        dir.path().join("model.onnx"),
        dir.path().join("calib"),
        dir.path().join("held"),
    );
    // Quantizes with `args`, checks how many pairs were equalized, and compares with ORT.
    let run = |name: &str, args: &[&str], pairs: u64| {
        let out = dir.path().join(format!("{name}.onnx"));
        let report = common::quantize_with(&float, &calib, &out, args);
        assert_eq!(
            report["prep"]["layers_equalized"], pairs,
            "{name}: {report}"
        );
        common::check(&float, &out, &held, None)
    };
    for (weights, on, off) in [
        ("per-channel", &["--equalize"][..], &[][..]),
        (
            "per-tensor",
            &["--per-tensor"][..],
            &["--per-tensor", "--no-equalize"][..],
        ),
    ] {
        let (with, without) = (
            run(&format!("{weights}_equalized"), on, 1),
            run(&format!("{weights}_plain"), off, 0),
        );
        eprintln!(
            "cle pair, {weights} weights: SQNR {:.2} dB equalized, {:.2} dB without",
            sqnr(&with),
            sqnr(&without)
        );
        if weights == "per-channel" {
            assert_eq!(with["checker"], "ok", "{with}");
            assert!(with["unfused"].as_array().unwrap().is_empty(), "{with}");
            assert!(sqnr(&with) >= 30.0, "{with}");
        }
        assert!(sqnr(&with) >= sqnr(&without) + 10.0, "{with}\n{without}");
    }
}
