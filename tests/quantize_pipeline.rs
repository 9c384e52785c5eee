//! The quantization pipeline on the fixtures: the output passes the ONNX checker, runs in
//! onnxruntime, keeps its outputs close to fp32, and its weights are int8.

mod common;

use std::path::Path;

use onnx_ptq::calibrate::{CalibrationConfig, DataSource, InputSpec, QuantTarget, RangeMethod};
use onnx_ptq::onnx::{Model, SaveOptions};
use onnx_ptq::quantize::{quantize, ActType, PlanConfig, QuantizeConfig};

#[test]
fn fixtures_quantize_to_valid_int8_models_close_to_fp32() {
    // SQNR bounds: 8-bit activations and per-channel weights give ~25-40 dB per layer on random
    // inputs; a few layers deep, 15 dB still means outputs within ~18% relative error.
    for (fixture, min_sqnr) in [
        ("cnn.onnx", 15.0),
        ("mlp.onnx", 15.0),
        ("transformer_block.onnx", 15.0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(fixture);
        common::run_python(
            "calib_oracle.py",
            &[
                path.to_str().unwrap(),
                dir.path().to_str().unwrap(),
                "--kind",
                "random",
                "--samples",
                "8",
                "--no-oracle",
            ],
            "",
        );
        let model = Model::load(&path).unwrap();
        let inputs = InputSpec::of_model(&model.proto).unwrap();
        let source = DataSource::open(&dir.path().join("data"), None, &inputs, None, None).unwrap();
        let config = QuantizeConfig {
            plan: PlanConfig {
                activations: ActType::U8,
                per_channel: true,
                ..Default::default()
            },
            calibration: CalibrationConfig {
                method: RangeMethod::MinMax,
                target: QuantTarget::U8,
                bins: 2048,
                threads: 2,
                progress: false,
                outlier_guard: true,
            },
            compare_samples: 8,
            accuracy: None,
        };
        let (quantized, report) = quantize(&model.proto, fixture, Some(&source), None, &config)
            .unwrap_or_else(|e| panic!("{fixture}: {e}"));
        assert!(report.rewrite.weights > 0, "{fixture}: no weight quantized");
        let out = dir.path().join("q.onnx");
        let q = Model {
            proto: quantized,
            ..model.clone()
        };
        q.save(&out, &SaveOptions::default()).unwrap();
        let answer = common::run_python(
            "ort_check.py",
            &[
                path.to_str().unwrap(),
                out.to_str().unwrap(),
                dir.path().join("data").to_str().unwrap(),
            ],
            "",
        );
        let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
        assert_eq!(v["checker"], "ok", "{fixture}: {v}");
        for (name, m) in v["outputs"].as_object().unwrap() {
            let sqnr = m["sqnr_db"].as_f64().unwrap();
            assert!(
                sqnr >= min_sqnr,
                "{fixture}: output {name} SQNR {sqnr} dB (onnxruntime): {v}"
            );
            // The report's own figures (computed in tract) must agree with onnxruntime's.
            let ours = report.outputs[name].sqnr_db;
            assert!(
                (ours - sqnr).abs() < 0.5,
                "{fixture}: report says {ours} dB, onnxruntime {sqnr} dB"
            );
        }
        eprintln!(
            "{fixture}: {} -> {} bytes, ORT {v}, tract {:?}",
            report.bytes_before, report.bytes_after, report.outputs
        );
    }
}

#[test]
fn quantize_cli_writes_a_deterministic_model_and_never_overwrites_its_input() {
    let exe = env!("CARGO_BIN_EXE_onnx-ptq");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let dir = tempfile::tempdir().unwrap();
    let run_on = |model: &Path, out: &Path| {
        std::process::Command::new(exe)
            .args(["quantize", model.to_str().unwrap(), "--calib"])
            .arg(root.join("cnn_calib"))
            .arg("-o")
            .arg(out)
            .args(["-q"])
            .output()
            .unwrap()
    };
    let run = |out: &Path| run_on(&root.join("cnn.onnx"), out);
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    for out in [&a, &b] {
        let r = run(out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(String::from_utf8_lossy(&r.stdout).contains("SQNR"));
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "reruns differ"
    );
    // A QDQ model in (ours here, as a QAT export would be): its Q/DQ are kept, none is added.
    let again = dir.path().join("again.onnx");
    let r = run_on(&a, &again);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let ops = |p: &Path| -> Vec<String> {
        let m = onnx_ptq::onnx::Model::load(p).unwrap();
        let mut v: Vec<String> = m
            .proto
            .graph
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ops(&a), ops(&again));
    assert!(String::from_utf8_lossy(&r.stdout).contains("already quantized in the input model"));
    // The input model as output: refused, untouched.
    let copy = dir.path().join("cnn.onnx");
    std::fs::copy(root.join("cnn.onnx"), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let r = std::process::Command::new(exe)
        .args(["quantize", copy.to_str().unwrap(), "--calib"])
        .arg(root.join("cnn_calib"))
        .arg("-o")
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}
