//! Quantization: graph preparation passes, the per-op rule table, the planner and the QDQ
//! rewriter, and [`quantize`], the whole job behind `onnx-ptq quantize`.

pub mod opset;
pub mod params;
pub mod plan;
pub mod prep;
pub mod rewrite;
pub mod rules;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

pub use params::ActType;
pub use plan::{FloatReason, Plan, PlanConfig};
pub use rewrite::RewriteStats;

use crate::calibrate::{CalibrationConfig, Calibrator, DataSource, Ranges};
use crate::compare::{ErrorAccumulator, ErrorMetrics};
use crate::engine::Runner;
use crate::error::{Error, Result};
use crate::onnx::pb::ModelProto;
use crate::onnx::walk::node_label;
use crate::validate;
use prost::Message;

/// Everything `quantize` needs besides the model and the data.
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    /// What to quantize and how.
    pub plan: PlanConfig,
    /// How to calibrate (ignored when ranges are given).
    pub calibration: CalibrationConfig,
    /// How many calibration samples the fp32-vs-int8 comparison of the summary runs.
    pub compare_samples: usize,
}

/// A node left float, with why.
#[derive(Debug, Clone, Serialize)]
pub struct FloatNode {
    /// Node label.
    pub node: String,
    /// Op type.
    pub op_type: String,
    /// Why it was not quantized, without tensor names (for grouping).
    pub kind: String,
    /// Why it was not quantized, naming the tensor concerned.
    pub reason: String,
}

/// What `quantize` did: the summary printed by the CLI and written by `--report`.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    /// Graph preparation.
    pub prep: prep::PrepReport,
    /// Default-domain opset before and after.
    pub opset_before: i64,
    /// Default-domain opset of the written model.
    pub opset_after: i64,
    /// Nodes the opset upgrade rewrote.
    pub opset_rewritten: Vec<String>,
    /// Whether weights are per channel.
    pub per_channel: bool,
    /// Why per-channel weights were not possible, when they were asked for.
    pub per_tensor_reason: Option<String>,
    /// Calibration: method, samples and seconds (0 when ranges were read from a file).
    pub calibration_method: String,
    /// Number of calibration samples.
    pub calibration_samples: usize,
    /// Calibration wall time in seconds.
    pub calibration_seconds: f64,
    /// Quantized activation tensors.
    pub quantized_tensors: usize,
    /// Quantized nodes, by op type.
    pub quantized_ops: BTreeMap<String, usize>,
    /// Nodes left float.
    pub float_nodes: Vec<FloatNode>,
    /// The rewrite's counts.
    pub rewrite: RewriteStats,
    /// Encoded size of the float model.
    pub bytes_before: u64,
    /// Encoded size of the quantized model.
    pub bytes_after: u64,
    /// fp32 vs int8 on the calibration samples, per model output (computed in tract).
    pub outputs: BTreeMap<String, ErrorMetrics>,
    /// Samples used for `outputs`.
    pub compared_samples: usize,
}

/// Quantizes `model` with calibration data `source` (or the given `ranges`), returning the
/// quantized model (validated: structure, then one run in tract) and the report.
pub fn quantize(
    model: &ModelProto,
    model_name: &str,
    source: &DataSource,
    ranges: Option<Ranges>,
    config: &QuantizeConfig,
) -> Result<(ModelProto, QuantizeReport)> {
    let bytes_before = model.encoded_len() as u64;
    let mut prepared = model.clone();
    let prep_report = prep::prepare(&mut prepared)?;
    let opset_before = crate::graph::Opsets::new(&prepared.opset_import)
        .default_domain()
        .unwrap_or(0);
    let mut plan_config = config.plan.clone();
    let mut per_tensor_reason = None;
    let mut opset_rewritten = Vec::new();
    if plan_config.per_channel && opset_before < 13 {
        match opset::upgrade_default_opset(&mut prepared, 13) {
            Ok(up) => opset_rewritten = up.rewritten,
            Err(e) => {
                plan_config.per_channel = false;
                per_tensor_reason = Some(format!(
                    "per-channel weights need opset 13 and the model could not be upgraded: {e}"
                ));
            }
        }
    }
    if opset_before < 10 {
        opset::upgrade_default_opset(&mut prepared, 10).map_err(|e| {
            Error::Model(format!(
                "QuantizeLinear needs opset 10 and the model could not be upgraded: {e}"
            ))
        })?;
    }
    let opset_after = crate::graph::Opsets::new(&prepared.opset_import)
        .default_domain()
        .unwrap_or(0);

    let (ranges, calibration_seconds) = match ranges {
        Some(r) => (r, 0.0),
        None => {
            let calibrator = Calibrator::new(&prepared, model_name)?;
            let start = Instant::now();
            let r = calibrator.calibrate(source, &config.calibration)?;
            (r, start.elapsed().as_secs_f64())
        }
    };
    let graph = prepared
        .graph
        .as_ref()
        .ok_or_else(|| Error::Model("the model has no graph".into()))?;
    let lookup = |name: &str| ranges.tensors.get(name).map(|r| (r.min, r.max));
    let plan = plan::plan(graph, &plan_config, &lookup);
    let mut quantized_ops: BTreeMap<String, usize> = BTreeMap::new();
    for &n in &plan.quantized {
        *quantized_ops
            .entry(graph.node[n].op_type().to_string())
            .or_default() += 1;
    }
    let float_nodes: Vec<FloatNode> = plan
        .float
        .iter()
        .map(|(&n, reason)| FloatNode {
            node: node_label(&graph.node[n]),
            op_type: graph.node[n].op_type().to_string(),
            kind: reason.kind().to_string(),
            reason: reason.to_string(),
        })
        .collect();
    let mut quantized = prepared.clone();
    let stats = rewrite::rewrite(&mut quantized, &plan)?;

    // Validate before anything is written: structure, then a run in tract on a real sample.
    let findings = validate::check_structure(&quantized);
    if validate::has_errors(&findings) {
        let text: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
        return Err(Error::Model(format!(
            "internal error: the quantized model is invalid:\n  {}",
            text.join("\n  ")
        )));
    }
    let (outputs, compared_samples) =
        compare_outputs(model, &quantized, source, config.compare_samples)?;
    let report = QuantizeReport {
        prep: prep_report,
        opset_before,
        opset_after,
        opset_rewritten,
        per_channel: plan_config.per_channel,
        per_tensor_reason,
        calibration_method: ranges.method.name().to_string(),
        calibration_samples: ranges.samples,
        calibration_seconds,
        quantized_tensors: plan.activations.len(),
        quantized_ops,
        float_nodes,
        rewrite: stats,
        bytes_before,
        bytes_after: quantized.encoded_len() as u64,
        outputs,
        compared_samples,
    };
    Ok((quantized, report))
}

/// Runs both models in tract on the first `limit` samples and compares every output.
pub fn compare_outputs(
    reference: &ModelProto,
    test: &ModelProto,
    source: &DataSource,
    limit: usize,
) -> Result<(BTreeMap<String, ErrorMetrics>, usize)> {
    let names: Vec<String> = crate::calibrate::InputSpec::of_model(reference)?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let a = Runner::new(reference, &names, true).map_err(Error::Tract)?;
    // tract's optimizer rewrites QDQ graphs into something that computes different values
    // (measured: -14 dB where onnxruntime and tract's unoptimized plan agree on 32 dB), so the
    // quantized model runs unoptimized.
    let b = Runner::new(test, &names, false).map_err(Error::Tract)?;
    let mut acc: Vec<ErrorAccumulator> = vec![ErrorAccumulator::default(); a.output_names().len()];
    let n = source.len().min(limit.max(1));
    for i in 0..n {
        let sample = source.load(i)?;
        let ra = a.run(sample.inputs.clone()).map_err(Error::Tract)?;
        let rb = b.run(sample.inputs).map_err(|e| {
            Error::Tract(format!(
                "the quantized model failed on {}: {e}",
                sample_label(source, i)
            ))
        })?;
        for ((acc, x), y) in acc.iter_mut().zip(&ra).zip(&rb) {
            let (Ok(x), Ok(y)) = (x.cast_to::<f32>(), y.cast_to::<f32>()) else {
                continue;
            };
            let (Ok(xv), Ok(yv)) = (x.try_as_plain_ram(), y.try_as_plain_ram()) else {
                continue;
            };
            let (Ok(xs), Ok(ys)) = (xv.as_slice::<f32>(), yv.as_slice::<f32>()) else {
                continue;
            };
            let classes = (x.rank() == 2).then(|| x.shape()[1]);
            acc.add(xs, ys, classes);
        }
    }
    Ok((
        a.output_names()
            .iter()
            .cloned()
            .zip(acc.iter().map(ErrorAccumulator::metrics))
            .collect(),
        n,
    ))
}

fn sample_label(source: &DataSource, i: usize) -> String {
    source
        .load(i)
        .map(|s| s.label)
        .unwrap_or_else(|_| format!("sample {i}"))
}
