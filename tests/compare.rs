//! `onnx-ptq compare`: its metrics against numpy on onnxruntime's outputs, the per-layer
//! ranking, and the exit codes a CI job gates on; and `quantize`'s accuracy-aware mode on a
//! model with one sensitive layer.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use onnx_ptq::compare::ErrorAccumulator;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn onnx_ptq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `onnx-ptq quantize MODEL --calib DATA -o OUT EXTRA...`.
fn quantize(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["quantize", s(model), "--calib", s(data), "-o", s(out)];
    args.extend_from_slice(extra);
    onnx_ptq(&args)
}

/// The cnn fixture quantized from its bundled samples, in `dir`.
fn quantized_cnn(dir: &Path) -> PathBuf {
    let q = dir.join("cnn.int8.onnx");
    ok(quantize(
        &fixture("cnn.onnx"),
        &fixture("cnn_calib"),
        &q,
        &["-q"],
    ));
    q
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-30)
}

#[test]
fn metrics_match_numpy_on_saved_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantized_cnn(dir.path());
    let data = fixture("cnn_calib");
    let saved = dir.path().join("saved");
    let oracle: serde_json::Value = serde_json::from_str(
        common::run_python(
            "metrics_oracle.py",
            &[s(&fixture("cnn.onnx")), s(&q), s(&data), s(&saved)],
            "",
        )
        .trim(),
    )
    .unwrap();
    let expected = &oracle["probs"];
    assert!(expected.is_object(), "{oracle}");

    // 1. The accumulator on onnxruntime's own outputs equals numpy.
    let mut acc = ErrorAccumulator::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 8);
    for f in &files {
        let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(f).unwrap()).unwrap();
        let r: ndarray::ArrayD<f32> = npz.by_name("ref__probs").unwrap();
        let t: ndarray::ArrayD<f32> = npz.by_name("test__probs").unwrap();
        assert_eq!(r.ndim(), 2);
        let classes = r.shape()[1];
        acc.add(r.as_slice().unwrap(), t.as_slice().unwrap(), Some(classes));
    }
    let m = acc.metrics();
    let want = |k: &str| expected[k].as_f64().unwrap();
    assert_eq!(m.values, expected["values"].as_u64().unwrap());
    for (name, ours, rel) in [
        ("max_abs", m.max_abs, 1e-7),
        ("mean_abs", m.mean_abs, 1e-7),
        ("mse", m.mse, 1e-7),
        ("relative", m.relative, 1e-7),
        ("sqnr_db", m.sqnr_db, 1e-7),
        ("cosine", m.cosine, 1e-9),
        ("mean_cosine", m.mean_cosine, 1e-9),
        ("min_cosine", m.min_cosine, 1e-9),
        ("top1_agreement", m.top1_agreement.unwrap(), 1e-12),
        ("top5_overlap", m.top5_overlap.unwrap(), 1e-12),
    ] {
        assert!(
            close(ours, want(name), rel),
            "{name}: onnx-ptq {ours}, numpy {}",
            want(name)
        );
    }

    // 2. `compare` itself runs both models in tract: its figures agree with onnxruntime's.
    let json = dir.path().join("cmp.json");
    ok(onnx_ptq(&[
        "compare",
        s(&fixture("cnn.onnx")),
        s(&q),
        "--data",
        s(&data),
        "--json",
        s(&json),
    ]));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ours = &v["report"]["outputs"]["probs"];
    let d = |k: &str| (ours[k].as_f64().unwrap() - want(k)).abs();
    assert!(d("sqnr_db") < 0.5, "tract {ours} vs onnxruntime {expected}");
    assert!(
        d("cosine") < 1e-3 && d("mean_cosine") < 1e-3,
        "{ours} vs {expected}"
    );
    assert!(d("top1_agreement") <= 0.125, "{ours} vs {expected}");
    assert_eq!(v["report"]["samples"], 8);
    // Per layer, a tensor whose Relu was absorbed into its range is compared with the Relu's
    // output (comparing it with the Relu's input once read as 2.5 dB on stem.bn_out).
    let json2 = dir.path().join("layers.json");
    ok(onnx_ptq(&[
        "compare",
        s(&fixture("cnn.onnx")),
        s(&q),
        "--data",
        s(&data),
        "--per-layer",
        "--json",
        s(&json2),
    ]));
    let l: serde_json::Value = serde_json::from_slice(&std::fs::read(&json2).unwrap()).unwrap();
    let layers = l["report"]["layers"].as_array().unwrap();
    assert!(layers.len() >= 8, "{l}");
    for layer in layers {
        assert!(
            layer["metrics"]["sqnr_db"].as_f64().unwrap() > 25.0,
            "{layer}"
        );
    }
    assert!(layers.iter().any(|x| x["tensor"] == "stem.relu_out"), "{l}");
    assert!(v["report"]["reference_bytes"].as_u64().unwrap() > 0);
    assert!(v["report"]["test_ms"].as_f64().unwrap() > 0.0);
}

/// The model of tests/py/sensitive_model.py, its samples, and its quantized version.
fn sensitive(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    common::run_python("sensitive_model.py", &[s(dir)], "");
    let (model, data, q) = (
        dir.join("model.onnx"),
        dir.join("data"),
        dir.join("model.int8.onnx"),
    );
    ok(quantize(&model, &data, &q, &["-q"]));
    (model, data, q)
}

#[test]
fn per_layer_ranks_the_sensitive_layer_first() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data, q) = sensitive(dir.path());
    let json = dir.path().join("cmp.json");
    let out = ok(onnx_ptq(&[
        "compare",
        s(&model),
        s(&q),
        "--data",
        s(&data),
        "--per-layer",
        "--top-k",
        "2",
        "--json",
        s(&json),
    ]));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let layers = v["report"]["layers"].as_array().unwrap();
    let names: Vec<&str> = layers
        .iter()
        .map(|l| l["tensor"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "x is not quantized alone; {names:?}");
    assert_eq!(names[0], "sensitive", "{names:?}");
    let sqnr = |i: usize| layers[i]["metrics"]["sqnr_db"].as_f64().unwrap();
    assert!(sqnr(0) + 20.0 < sqnr(1), "{layers:?}");
    // The table shows the top 2, worst first.
    let text = String::from_utf8_lossy(&out.stdout);
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("per layer"))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(table.len(), 2, "{text}");
    assert!(table[0].ends_with(" sensitive"), "{text}");
}

#[test]
fn bounds_gate_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantized_cnn(dir.path());
    let (f, data) = (fixture("cnn.onnx"), fixture("cnn_calib"));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "compare",
            s(&f),
            s(&q),
            "--data",
            s(&data),
            "--latency-runs",
            "0",
        ];
        args.extend_from_slice(extra);
        onnx_ptq(&args)
    };
    // The fixture reaches about 37 dB and top-1 agreement 1.0 on these samples.
    let met = run(&[
        "--min-sqnr",
        "20",
        "--min-cosine",
        "0.99",
        "--max-top1-drop",
        "0",
    ]);
    assert_eq!(met.status.code(), Some(0), "{met:?}");
    let missed = run(&["--min-sqnr", "80"]);
    assert_eq!(missed.status.code(), Some(1));
    let text = String::from_utf8_lossy(&missed.stdout);
    assert!(
        text.contains("FAILED: output 'probs': sqnr_db") && text.contains("below the minimum 80"),
        "{text}"
    );
    let missed = run(&["--min-cosine", "0.999999"]);
    assert_eq!(missed.status.code(), Some(1));
    // A bound on an output that does not exist is a usage error, named.
    let bad = run(&["--min-sqnr", "10", "--bound-output", "nosuch"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no model output named 'nosuch'"));
    // Out-of-range bounds are refused before anything runs.
    let bad = run(&["--max-top1-drop", "120"]);
    assert_eq!(bad.status.code(), Some(2));
    // The same bounds in quantize's accuracy mode: met at once, the model is written, exit 0.
    let out = dir.path().join("again.onnx");
    let r = quantize(&f, &data, &out, &["-q", "--min-sqnr", "20"]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert!(String::from_utf8_lossy(&r.stdout).contains("bounds met"));
}

#[test]
fn accuracy_mode_falls_back_by_sensitivity_until_the_bound_is_met() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data, _) = sensitive(dir.path());
    let q = dir.path().join("acc.onnx");
    let report = dir.path().join("report.json");
    // Calibrated on 10 samples, the model is measured on the other 6, where values beyond the
    // calibrated ranges clip: about 20 dB fully quantized.
    let r = quantize(
        &model,
        &data,
        &q,
        &[
            "-q",
            "--min-sqnr",
            "30",
            "--held-out",
            "6",
            "--report",
            s(&report),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let a = &v["accuracy"];
    assert_eq!(r.status.code(), Some(0), "{a}");
    assert_eq!(a["held_out_samples"], 6);
    assert_eq!(v["calibration_samples"], 10);
    assert_eq!(a["candidates"], 3, "two Gemm and the Add");
    let sqnr = |m: &serde_json::Value| {
        m["outputs"]["y"]["sqnr_db"]
            .as_f64()
            .unwrap_or(f64::INFINITY)
    };
    let initial = sqnr(&a["initial"]);
    assert!(initial < 30.0, "{a}");
    let steps = a["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    // Steps go by decreasing gain, each improves the model, and the last meets it.
    let gains: Vec<f64> = steps
        .iter()
        .map(|s| s["gain_alone"].as_f64().unwrap())
        .collect();
    assert!(gains.windows(2).all(|w| w[0] >= w[1]), "{gains:?}");
    let mut last = initial;
    for step in steps {
        let now = sqnr(&step["after"]);
        assert!(now > last, "{a}");
        last = now;
    }
    assert!(a["met"].as_bool().unwrap() && last >= 30.0, "{a}");
    // Every returned node is listed float with that reason.
    for step in steps {
        assert!(
            v["float_nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["node"] == step["node"]
                    && n["kind"] == "returned to float to meet the accuracy bound"),
            "{v}"
        );
    }

    // Any bound can be met: the fully float model meets them all. One that needs it gets it,
    // with the model still written as QDQ-free float.
    let q2 = dir.path().join("float.onnx");
    let r = quantize(&model, &data, &q2, &["-q", "--min-cosine", "1.0"]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert!(String::from_utf8_lossy(&r.stdout).contains("quantized: 0 tensors"));
}

#[test]
fn overrides_pin_ranges_and_keep_tensors_float() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data, _) = sensitive(dir.path());
    let overrides = dir.path().join("o.json");
    std::fs::write(
        &overrides,
        r#"{"sensitive": {"keep_float": true}, "clean": {"range": [-500, 500], "type": "s8"}}"#,
    )
    .unwrap();
    let q = dir.path().join("o.onnx");
    let report = dir.path().join("r.json");
    ok(quantize(
        &model,
        &data,
        &q,
        &["-q", "--overrides", s(&overrides), "--report", s(&report)],
    ));
    let m = onnx_ptq::onnx::Model::load(&q).unwrap();
    let g = m.proto.graph.unwrap();
    let inits: std::collections::HashMap<&str, &onnx_ptq::onnx::pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name(), t)).collect();
    // "clean" is quantized int8 symmetric with scale 500/127; "sensitive" has no Q at all.
    let q_of = |t: &str| {
        g.node
            .iter()
            .find(|n| n.op_type() == "QuantizeLinear" && n.input[0] == t)
    };
    assert!(q_of("sensitive").is_none());
    let qc = q_of("clean").expect("clean is quantized");
    let scale = onnx_ptq::onnx::tensor::to_f32(inits[qc.input[1].as_str()]).unwrap()[0];
    assert!((scale - 500.0 / 127.0).abs() < 1e-4, "{scale}");
    assert_eq!(
        inits[qc.input[2].as_str()].data_type(),
        onnx_ptq::onnx::pb::tensor_proto::DataType::Int8 as i32
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(
        v["float_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == "node 'sensitive' (Gemm)"),
        "{v}"
    );
    // An override naming no tensor is refused, named.
    std::fs::write(&overrides, r#"{"nosuch": {"keep_float": true}}"#).unwrap();
    let x = dir.path().join("x.onnx");
    let r = quantize(&model, &data, &x, &["--overrides", s(&overrides)]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("'nosuch'"));
    assert!(!dir.path().join("x.onnx").exists());
}

#[test]
fn allow_int16_raises_sensitive_activations_to_16_bits_at_opset_21() {
    let dir = tempfile::tempdir().unwrap();
    let (f, data) = (fixture("cnn.onnx"), fixture("cnn_calib"));
    let q = dir.path().join("c16.onnx");
    let report = dir.path().join("r.json");
    // Fully quantized, the fixture keeps about 35 dB on the 3 held-out samples; 16-bit
    // activations around the classifier head reach 38.
    let r = quantize(
        &f,
        &data,
        &q,
        &[
            "-q",
            "--min-sqnr",
            "37.5",
            "--allow-int16",
            "--held-out",
            "3",
            "--report",
            s(&report),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r.status.code(), Some(0), "{}", v["accuracy"]);
    assert_eq!(v["opset_after"], 21);
    let steps = v["accuracy"]["steps"].as_array().unwrap();
    assert!(
        !steps.is_empty() && steps.iter().all(|s| s["to"] == "int16"),
        "{v}"
    );
    assert!(v["execution_check"].as_str().unwrap().contains("emulated"));
    // The file has uint16 zero points, and the reference tools accept and run it.
    let m = onnx_ptq::onnx::Model::load(&q).unwrap();
    let g = m.proto.graph.unwrap();
    assert!(g
        .initializer
        .iter()
        .any(|t| t.data_type() == onnx_ptq::onnx::pb::tensor_proto::DataType::Uint16 as i32));
    let verdict = common::check(&f, &q, &data, None);
    assert_eq!(verdict["checker"], "ok", "{verdict}");
    assert!(
        verdict["outputs"]["probs"]["sqnr_db"].as_f64().unwrap() > 35.0,
        "{verdict}"
    );
    // --allow-int16 without a bound is a usage error.
    let r = quantize(&f, &data, &q, &["--allow-int16"]);
    assert_eq!(r.status.code(), Some(2));
    // A 16-bit override alone also upgrades the model to opset 21.
    let o = dir.path().join("o.json");
    std::fs::write(&o, r#"{"probs": {"type": "u16"}}"#).unwrap();
    let q2 = dir.path().join("o16.onnx");
    ok(quantize(&f, &data, &q2, &["-q", "--overrides", s(&o)]));
    let verdict = common::check(&f, &q2, &data, None);
    assert_eq!(verdict["checker"], "ok", "{verdict}");
}

/// Issue 11: a model whose own summary shows a collapse (cosine < 0.9 or SQNR < 5 dB on an
/// output) is written, but with a warning on stderr and in the report, not a quiet line.
#[test]
fn a_collapsed_output_is_a_warning_on_stderr_and_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (fixture("cnn.onnx"), fixture("cnn_calib"));
    let report = dir.path().join("r.json");
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    // The fixture quantizes well: no warning.
    let fine = ok(quantize(
        &model,
        &data,
        &dir.path().join("fine.onnx"),
        &["-q", "--report", s(&report)],
    ));
    assert!(
        !String::from_utf8_lossy(&fine.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
    assert_eq!(read(&report)["warnings"], serde_json::json!([]));
    // The logits pinned to a range 1000x too wide: every one rounds to the same few steps and
    // the class probabilities flatten.
    let overrides = dir.path().join("o.json");
    std::fs::write(&overrides, r#"{"fc_out": {"range": [-10000, 10000]}}"#).unwrap();
    let bad = ok(quantize(
        &model,
        &data,
        &dir.path().join("bad.onnx"),
        &["-q", "--overrides", s(&overrides), "--report", s(&report)],
    ));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("warning: output probs collapsed"),
        "{stderr}"
    );
    let v = read(&report);
    let m = &v["outputs"]["probs"];
    assert!(
        m["cosine"].as_f64().unwrap() < 0.9 || m["sqnr_db"].as_f64().unwrap() < 5.0,
        "{m}"
    );
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{v}");
    assert!(warnings[0].as_str().unwrap().contains("probs"), "{v}");
}
