//! Self-repair: when the quantized model does not run in tract, the nodes responsible return
//! to float and a model that runs is written, listing them; nothing is refused for it.
//!
//! No model available here fails that way with the pinned tract, so the runs below use the
//! `ONNX_PTQ_FAILPOINT_UNRUNNABLE_OP` failpoint: tract's execution check fails wherever a
//! node of the given op type reads a DequantizeLinear output. The written model is then
//! judged by the reference tools (onnx.checker full check, onnxruntime on the samples).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_onnx-ptq");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Quantizes the cnn fixture with the failpoint on `op`: (exit code, stderr, report, model).
fn quantize_failing_on(op: &str, dir: &Path) -> (Option<i32>, String, serde_json::Value, PathBuf) {
    let out = dir.join(format!("cnn.{op}.onnx"));
    let report = dir.join(format!("cnn.{op}.json"));
    let r = Command::new(BIN)
        .env("ONNX_PTQ_FAILPOINT_UNRUNNABLE_OP", op)
        .arg("quantize")
        .arg(fixture("cnn.onnx"))
        .arg("--calib")
        .arg(fixture("cnn_calib"))
        .arg("-o")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .arg("-q")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    let report = std::fs::read(&report)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (r.status.code(), stderr, report, out)
}

/// Nodes of type `op` that read a DequantizeLinear output in the model at `path`.
fn reading_dequantized(path: &Path, op: &str) -> Vec<String> {
    let model = onnx_ptq::onnx::Model::load(path).unwrap();
    let graph = model.proto.graph.as_ref().unwrap();
    let dq: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "DequantizeLinear")
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    graph
        .node
        .iter()
        .filter(|n| n.op_type() == op && n.input.iter().any(|i| dq.contains(i.as_str())))
        .map(|n| n.name().to_string())
        .collect()
}

#[test]
fn an_unrunnable_node_returns_to_float_and_the_rest_stays_int8() {
    let dir = tempfile::tempdir().unwrap();
    // Without the failpoint, Concat reads quantized tensors: the failpoint has work to do.
    let (code, stderr, clean, plain) = quantize_failing_on("NoSuchOp", dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(reading_dequantized(&plain, "Concat"), vec!["concat"]);
    assert!(clean.get("repaired").is_none(), "{clean}");

    for op in ["Concat", "Gemm", "Conv"] {
        let (code, stderr, report, out) = quantize_failing_on(op, dir.path());
        assert_eq!(
            code,
            Some(0),
            "{op}: refused instead of repaired:\n{stderr}"
        );
        let repaired = report["repaired"]
            .as_array()
            .expect("the report lists the repair");
        assert!(!repaired.is_empty(), "{op}");
        for r in repaired {
            assert_eq!(
                r["op_type"], op,
                "{op}: only the failing op type returns: {r}"
            );
            assert!(
                r["error"].as_str().unwrap().contains("failpoint"),
                "{op}: the error that sent it there is kept: {r}"
            );
            let node = r["node"].as_str().unwrap();
            assert!(
                stderr.contains(node) && stderr.contains("warning: self-repair"),
                "{stderr}"
            );
        }
        let float_kinds: Vec<&str> = report["float_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"].as_str().unwrap().contains("did not run"))
            .map(|f| f["op_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            float_kinds.len(),
            repaired.len(),
            "{op}: float_nodes says why"
        );
        assert!(
            reading_dequantized(&out, op).is_empty(),
            "{op}: the written model still has the failing pattern"
        );
        // The rest stays quantized: more int8 nodes than the ones returned.
        let quantized: u64 = report["quantized_ops"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert!(quantized >= 4, "{op}: {quantized} nodes still quantized");
        // The reference tools accept and run what was written.
        let verdict = common::check(&fixture("cnn.onnx"), &out, &fixture("cnn_calib"), None);
        assert_eq!(verdict["checker"], "ok", "{op}: {verdict}");
        let sqnr = verdict["outputs"]["probs"]["sqnr_db"].as_f64().unwrap();
        assert!(sqnr > 25.0, "{op}: onnxruntime SQNR {sqnr} dB");
    }
}
