//! Quantization: graph preparation passes, the per-op rule table, the planner and the QDQ
//! rewriter, and [`quantize`], the whole job behind `onnx-ptq quantize`.

pub mod accuracy;
pub mod blockwise;
pub mod opset;
pub mod params;
pub mod plan;
pub mod prep;
mod repair;
pub mod rewrite;
pub mod rules;
pub mod simulate;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

pub use accuracy::{AccuracyConfig, AccuracyReport};
pub use params::ActType;
pub use plan::{Fallback, FloatReason, Mode, Plan, PlanConfig, TensorOverride};
pub use repair::RepairedNode;
pub use rewrite::RewriteStats;

use crate::calibrate::{CalibrationConfig, Calibrator, DataSource, Ranges};
use crate::compare::ErrorMetrics;
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
    /// Accuracy-aware mode: nodes return to float until these bounds are met.
    pub accuracy: Option<AccuracyConfig>,
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
    /// Static or dynamic.
    pub mode: Mode,
    /// Graph preparation.
    pub prep: prep::PrepReport,
    /// Default-domain opset before and after.
    pub opset_before: i64,
    /// Default-domain opset of the written model.
    pub opset_after: i64,
    /// Nodes the opset upgrade rewrote.
    pub opset_rewritten: Vec<String>,
    /// Initializers of an IR 3 model no longer listed as graph inputs (they are weights).
    pub weights_unlisted_from_inputs: usize,
    /// Whether weights are per channel.
    pub per_channel: bool,
    /// Why per-channel weights were not possible, when they were asked for.
    pub per_tensor_reason: Option<String>,
    /// Calibration: method, samples and seconds (0 when ranges were read from a file).
    pub calibration_method: String,
    /// Ranges the outlier guard clipped (quantized tensors only), by tensor name.
    pub clipped_ranges: BTreeMap<String, ClippedRange>,
    /// Number of calibration samples.
    pub calibration_samples: usize,
    /// Calibration wall time in seconds.
    pub calibration_seconds: f64,
    /// Quantized activation tensors.
    pub quantized_tensors: usize,
    /// Quantized nodes, by op type.
    pub quantized_ops: BTreeMap<String, usize>,
    /// Quantized nodes (by op type) that ONNX Runtime's CPU provider has no int8 kernel for:
    /// they run as DequantizeLinear, the float op, QuantizeLinear (data movement not counted).
    pub without_int8_kernel: BTreeMap<String, usize>,
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
    /// How the written model was run in tract before writing.
    pub execution_check: String,
    /// Nodes self-repair returned to float because the quantized model did not run with them
    /// quantized (also listed in `float_nodes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<repair::RepairedNode>,
    /// Wall time of each stage, in seconds.
    pub seconds: BTreeMap<String, f64>,
    /// The accuracy search, when bounds were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<AccuracyReport>,
    /// Problems the user must see: an output whose figures in [`QuantizeReport::outputs`]
    /// show a collapse (see [`collapse_warnings`]), a model tract cannot run written in
    /// dynamic mode instead.
    pub warnings: Vec<String>,
}

/// A range the outlier guard clipped ([`crate::calibrate::range::outlier_guard`]).
#[derive(Debug, Clone, Serialize)]
pub struct ClippedRange {
    /// The range the method gave.
    pub calibrated: (f32, f32),
    /// The range quantized with.
    pub used: (f32, f32),
}

/// Below this cosine to fp32 an output has lost its meaning, not just precision.
pub const COLLAPSE_COSINE: f64 = 0.9;

/// Below this SQNR (dB) the quantization noise is about a third of the signal's power.
pub const COLLAPSE_SQNR_DB: f64 = 5.0;

/// One warning per output whose cosine is below [`COLLAPSE_COSINE`] or whose SQNR is below
/// [`COLLAPSE_SQNR_DB`] (a NaN figure counts as a collapse).
pub fn collapse_warnings(outputs: &BTreeMap<String, ErrorMetrics>) -> Vec<String> {
    outputs
        .iter()
        .filter(|(_, m)| {
            m.cosine.is_nan()
                || m.sqnr_db.is_nan()
                || m.cosine < COLLAPSE_COSINE
                || m.sqnr_db < COLLAPSE_SQNR_DB
        })
        .map(|(name, m)| {
            format!(
                "output {name} collapsed: SQNR {:.2} dB, cosine {:.5} against fp32 (bounds \
                 {COLLAPSE_SQNR_DB} dB, {COLLAPSE_COSINE}); the int8 model is not a faithful \
                 copy: try --method entropy, --min-cosine, or keep the worst tensors float",
                m.sqnr_db, m.cosine
            )
        })
        .collect()
}

/// A failpoint for the self-repair tests: with `ONNX_PTQ_FAILPOINT_UNRUNNABLE_OP=Op`, the
/// execution check fails wherever a node of type `Op` reads a DequantizeLinear output, as
/// tract does on the (rare, version-dependent) quantized patterns it cannot type. No model
/// available to the tests fails this way with the tract version pinned today, and the repair
/// path must not go untested until one does.
fn failpoint_unrunnable_op(quantized: &ModelProto) -> Result<()> {
    let Some(op) = std::env::var_os("ONNX_PTQ_FAILPOINT_UNRUNNABLE_OP") else {
        return Ok(());
    };
    let Some(graph) = quantized.graph.as_ref() else {
        return Ok(());
    };
    let dequantized: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "DequantizeLinear")
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    match graph.node.iter().find(|n| {
        op.to_str() == Some(n.op_type()) && n.input.iter().any(|i| dequantized.contains(i.as_str()))
    }) {
        Some(n) => Err(Error::Tract(format!(
            "tract could not type the model: {}: failpoint ONNX_PTQ_FAILPOINT_UNRUNNABLE_OP",
            node_label(n)
        ))),
        None => Ok(()),
    }
}

/// Runs the quantized model as it will be written (no folding) once in tract, on `sample`:
/// the execution half of the validation. tract 0.23 cannot run 16-bit QuantizeLinear nor
/// ONNX Runtime's DynamicQuantizeLSTM: a model with some runs with those emulated in float,
/// and the returned note says so.
fn validate_in_tract(quantized: &ModelProto, sample: crate::calibrate::Sample) -> Result<String> {
    let has_16_bit = quantized.graph.iter().any(|g| {
        let wide: std::collections::HashSet<&str> = g
            .initializer
            .iter()
            .filter(|t| {
                matches!(
                    crate::onnx::pb::tensor_proto::DataType::try_from(t.data_type()),
                    Ok(crate::onnx::pb::tensor_proto::DataType::Uint16
                        | crate::onnx::pb::tensor_proto::DataType::Int16)
                )
            })
            .map(|t| t.name())
            .collect();
        g.node.iter().any(|n| {
            n.op_type() == "QuantizeLinear"
                && n.input.get(2).is_some_and(|z| wide.contains(z.as_str()))
        })
    });
    let (model, note) = if has_16_bit {
        (
            std::borrow::Cow::Owned(simulate::fold_constant_dequantize(quantized)),
            "ran in tract with 16-bit QuantizeLinear/DequantizeLinear emulated in float \
             (tract 0.23 cannot run them)",
        )
    } else if !simulate::emulated_ops(quantized).is_empty() {
        (
            std::borrow::Cow::Owned(simulate::emulate_contrib_ops(quantized)),
            "ran in tract with its weights dequantized to float where tract 0.23 cannot run \
             the op (DynamicQuantizeLSTM as an LSTM, MatMulNBits as MatMul, \
             GatherBlockQuantized and blocked DequantizeLinear as Gather and constants)",
        )
    } else {
        (
            std::borrow::Cow::Borrowed(quantized),
            "ran in tract as written",
        )
    };
    let quantized = model.as_ref();
    failpoint_unrunnable_op(quantized)?;
    let inputs: Vec<String> = crate::calibrate::InputSpec::of_model(quantized)?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let runner = crate::engine::Runner::new(quantized, &inputs, false).map_err(Error::Tract)?;
    let label = sample.label.clone();
    runner.run(sample.inputs).map_err(|e| {
        Error::Tract(format!(
            "internal error: the quantized model does not run on {label}: {e}"
        ))
    })?;
    Ok(format!("{note} on {label}"))
}

/// Refuses `--exclude-nodes` names and `--exclude-op-types` that match no node of the model:
/// a typo would otherwise quantize what the user meant to keep float. Called by the command
/// line on what the user typed; [`quantize`] itself accepts any set (the Python API, like ONNX
/// Runtime's, excludes every op type of the rule table to quantize only some).
pub fn check_exclusions(model: &ModelProto, config: &PlanConfig) -> Result<()> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Model("the model has no graph".into()))?;
    let unknown_nodes: Vec<&str> = config
        .exclude_nodes
        .iter()
        .filter(|n| !graph.node.iter().any(|node| node.name() == n.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown_nodes.is_empty() {
        return Err(Error::Usage(format!(
            "--exclude-nodes: the model has no node named {}",
            quoted_list(&unknown_nodes)
        )));
    }
    let unknown_ops: Vec<&str> = config
        .exclude_op_types
        .iter()
        .filter(|t| !graph.node.iter().any(|node| node.op_type() == t.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown_ops.is_empty() {
        return Err(Error::Usage(format!(
            "--exclude-op-types: the model has no node of op type {}",
            quoted_list(&unknown_ops)
        )));
    }
    Ok(())
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks ranges read from a file against the model they are applied to: every range must be
/// finite and ordered (an infinite one would write an infinite scale), and the names must be
/// tensors of the model. A file that names none of them was made for another model; one that
/// names some is kept, with a warning listing the others (preparation folds some tensors away).
fn check_ranges(model: &ModelProto, prepared: &ModelProto, ranges: &Ranges) -> Result<()> {
    for (name, r) in &ranges.tensors {
        if !(r.min.is_finite() && r.max.is_finite() && r.min <= r.max) {
            return Err(Error::Usage(format!(
                "--ranges: tensor '{name}' has range [{}, {}], which is not a finite interval \
                 with min <= max",
                r.min, r.max
            )));
        }
    }
    let known: std::collections::HashSet<&str> = [model, prepared]
        .into_iter()
        .flat_map(|m| m.graph.iter())
        .flat_map(|g| {
            g.node
                .iter()
                .flat_map(|n| n.output.iter().chain(&n.input))
                .map(String::as_str)
                .chain(g.input.iter().map(|i| i.name()))
        })
        .collect();
    let unknown: Vec<&str> = ranges
        .tensors
        .keys()
        .map(String::as_str)
        .filter(|n| !known.contains(n))
        .collect();
    if !ranges.tensors.is_empty() && unknown.len() == ranges.tensors.len() {
        return Err(Error::Usage(format!(
            "--ranges: none of its {} tensors is a tensor of this model (it was computed for \
             '{}')",
            ranges.tensors.len(),
            ranges.model
        )));
    }
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(10).copied().collect();
        eprintln!(
            "warning: --ranges: {} of its tensors are not in the model and are ignored: {}{}",
            unknown.len(),
            quoted_list(&shown),
            if unknown.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Refuses overrides that name no tensor of the model (a typo would otherwise pass silently),
/// and empty or reversed ranges.
fn check_overrides(model: &ModelProto, config: &PlanConfig) -> Result<()> {
    if config.overrides.is_empty() {
        return Ok(());
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Model("the model has no graph".into()))?;
    let known: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().chain(&n.input))
        .map(String::as_str)
        .chain(graph.input.iter().map(|i| i.name()))
        .collect();
    for (name, o) in &config.overrides {
        if !known.contains(name.as_str()) {
            return Err(Error::Model(format!(
                "override for tensor '{name}': the model has no tensor of that name"
            )));
        }
        if let Some((lo, hi)) = o.range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(Error::Model(format!(
                    "override for tensor '{name}': range [{lo}, {hi}] is not a finite, non-empty interval"
                )));
            }
        }
    }
    Ok(())
}

/// IR 3 requires every initializer to be listed as a graph input too, which makes weights look
/// overridable; nobody feeds them. Once the IR version is raised (the opset upgrade does it),
/// they are unlisted so that they are constants that can be quantized. Returns how many.
fn unlist_initializer_inputs(model: &mut ModelProto) -> usize {
    if model.ir_version() < 4 {
        return 0;
    }
    let Some(graph) = model.graph.as_mut() else {
        return 0;
    };
    let initializers: std::collections::HashSet<String> = graph
        .initializer
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    let before = graph.input.len();
    graph.input.retain(|i| !initializers.contains(i.name()));
    before - graph.input.len()
}

/// Drops the float `value_info` entries that preparation inferred for planning: the runtime
/// infers them itself, and on a small CNN they weigh several percent of the file. Entries the
/// input model declared stay, and so do the inferred types of integer tensors: with them
/// ONNX Runtime folds a transformer's shape arithmetic (MiniLM-L3: 293 nodes left without,
/// 185 with, and 10 % faster).
fn keep_declared_value_info(quantized: &mut ModelProto, original: &ModelProto) {
    let declared: std::collections::HashSet<&str> = original
        .graph
        .iter()
        .flat_map(|g| g.value_info.iter().map(|v| v.name()))
        .collect();
    let is_float = |v: &crate::onnx::pb::ValueInfoProto| {
        v.r#type
            .as_ref()
            .and_then(crate::graph::tensor_type)
            .is_some_and(|t| {
                matches!(
                    t.elem_type,
                    crate::onnx::pb::tensor_proto::DataType::Float
                        | crate::onnx::pb::tensor_proto::DataType::Float16
                        | crate::onnx::pb::tensor_proto::DataType::Double
                        | crate::onnx::pb::tensor_proto::DataType::Bfloat16
                )
            })
    };
    if let Some(g) = quantized.graph.as_mut() {
        g.value_info
            .retain(|v| declared.contains(v.name()) || !is_float(v));
    }
}

/// Wall time per stage, for the report.
struct Clock {
    last: Instant,
    laps: BTreeMap<String, f64>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            last: Instant::now(),
            laps: BTreeMap::new(),
        }
    }

    fn lap(&mut self, stage: &str) {
        let now = Instant::now();
        *self.laps.entry(stage.to_string()).or_default() += (now - self.last).as_secs_f64();
        self.last = now;
    }
}

/// The model after the opset upgrades and the preparation passes, and what they did.
struct Prepared {
    model: ModelProto,
    plan_config: PlanConfig,
    opset_before: i64,
    opset_after: i64,
    opset_rewritten: Vec<String>,
    per_tensor_reason: Option<String>,
    weights_unlisted_from_inputs: usize,
    prep: prep::PrepReport,
}

fn default_opset(model: &ModelProto) -> i64 {
    crate::graph::Opsets::new(&model.opset_import)
        .default_domain()
        .unwrap_or(0)
}

/// Raises the opset where the plan needs it (13 for per-channel QDQ weights, 21 for 16-bit
/// activations, 10 for any quantization op), then runs the preparation passes. The opset (and
/// with it the IR version) is raised first, so that preparation may turn Constant nodes and
/// constant subgraphs into initializers, which IR 3 does not allow.
fn upgrade_and_prepare(
    model: &ModelProto,
    config: &QuantizeConfig,
    lazy: bool,
) -> Result<Prepared> {
    let mut prepared = model.clone();
    let opset_before = default_opset(&prepared);
    let mut plan_config = config.plan.clone();
    let mut per_tensor_reason = None;
    let mut opset_rewritten = Vec::new();
    let static_mode = plan_config.mode == Mode::Static;
    if static_mode && plan_config.per_channel && opset_before < 13 {
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
    let wants_16_bit = config.accuracy.as_ref().is_some_and(|a| a.int16)
        || plan_config
            .overrides
            .values()
            .any(|o| o.ty.is_some_and(ActType::is_16_bit));
    if wants_16_bit && default_opset(&prepared) < 21 {
        let up = opset::upgrade_default_opset(&mut prepared, 21).map_err(|e| {
            Error::Model(format!(
                "16-bit activations need opset 21 and the model could not be upgraded: {e}"
            ))
        })?;
        opset_rewritten.extend(up.rewritten);
    }
    let standard_weight_only = plan_config.mode == Mode::WeightOnly
        && plan_config.weight_only.form == plan::WeightForm::Standard;
    if standard_weight_only && default_opset(&prepared) < 21 {
        let up = opset::upgrade_default_opset(&mut prepared, 21).map_err(|e| {
            Error::Model(format!(
                "the standard weight-only form (INT4 and blocked DequantizeLinear) needs \
                 opset 21 and the model could not be upgraded: {e}; --form onnxruntime needs \
                 no upgrade"
            ))
        })?;
        opset_rewritten.extend(up.rewritten);
    }
    if default_opset(&prepared) < 10 {
        let up = opset::upgrade_default_opset(&mut prepared, 10).map_err(|e| {
            Error::Model(format!(
                "QuantizeLinear needs opset 10 and the model could not be upgraded: {e}"
            ))
        })?;
        opset_rewritten.extend(up.rewritten);
    }
    let weights_unlisted_from_inputs = if model.ir_version() < 4 {
        unlist_initializer_inputs(&mut prepared)
    } else {
        0
    };
    // Folding constants and BatchNorm reads every weight: a model left on disk is planned as
    // it is (weight-only mode needs only the weights' shapes and types).
    let mut prep = if lazy {
        prep::PrepReport::default()
    } else {
        prep::prepare(&mut prepared)?
    };
    let equalize = plan_config.equalize.unwrap_or(!plan_config.per_channel);
    if static_mode && equalize && !lazy {
        prep.layers_equalized = prep::equalize_layers(&mut prepared)?;
    }
    Ok(Prepared {
        opset_after: default_opset(&prepared),
        model: prepared,
        plan_config,
        opset_before,
        opset_rewritten,
        per_tensor_reason,
        weights_unlisted_from_inputs,
        prep,
    })
}

/// The data a run uses, split by purpose.
struct Samples {
    /// Calibrated on (static mode).
    calibration: Option<DataSource>,
    /// Set aside for the accuracy search.
    held_out: Option<DataSource>,
    /// The summary's fp32-vs-int8 figures.
    compare: Option<DataSource>,
}

impl Samples {
    fn split(source: Option<&DataSource>, config: &QuantizeConfig) -> Result<Samples> {
        let Some(source) = source else {
            if config.plan.mode == Mode::Static {
                return Err(Error::Usage(
                    "static quantization needs calibration data (--calib); \
                     --mode dynamic and --mode weight-only need none"
                        .into(),
                ));
            }
            if config.accuracy.is_some() {
                return Err(Error::Usage(
                    "an accuracy bound needs data to measure it on (--calib)".into(),
                ));
            }
            return Ok(Samples {
                calibration: None,
                held_out: None,
                compare: None,
            });
        };
        // The accuracy search measures on samples it does not calibrate on.
        let (calibration, held_out) = match &config.accuracy {
            Some(a) if a.held_out == 0 || a.held_out >= source.len() => {
                return Err(Error::Usage(format!(
                    "--held-out {} must be at least 1 and leave samples to calibrate on: the \
                     data holds {} sample(s)",
                    a.held_out,
                    source.len()
                )));
            }
            Some(a) => {
                let (head, tail) = source.split_tail(a.held_out);
                (head, Some(tail))
            }
            None => (source.clone(), None),
        };
        Ok(Samples {
            compare: Some(calibration.head(config.compare_samples.max(1))),
            calibration: Some(calibration),
            held_out,
        })
    }
}

/// Quantizes `model` in the configured mode and returns the quantized model (validated:
/// structure, then one run in tract) with the report. Static mode calibrates on `source` (or
/// uses the given `ranges`); dynamic mode reads no data, and uses `source`, when given, only
/// for the summary's fp32-vs-int8 figures and the accuracy search.
pub fn quantize(
    model: &ModelProto,
    model_name: &str,
    source: Option<&DataSource>,
    ranges: Option<Ranges>,
    config: &QuantizeConfig,
) -> Result<(ModelProto, QuantizeReport)> {
    run(
        model,
        &rewrite::inline_values,
        None,
        false,
        model_name,
        source,
        ranges,
        config,
    )
}

/// [`quantize`] for a loaded [`Model`], which may have been loaded lazily
/// ([`Model::load_lazy`]): weight-only mode then reads each weight from the model's
/// external-data files when it quantizes it and never holds the float model in memory; the
/// quantized model keeps references to the weights it did not change, for the writer to copy
/// ([`Model::save`]). Preparation and the tract run need every weight in memory and are
/// skipped for such a model (the summary says so); the other modes need it loaded eagerly.
pub fn quantize_model(
    model: &crate::onnx::Model,
    source: Option<&DataSource>,
    ranges: Option<Ranges>,
    config: &QuantizeConfig,
) -> Result<(ModelProto, QuantizeReport)> {
    let lazy = model.has_external_refs();
    if lazy && config.plan.mode != Mode::WeightOnly {
        return Err(Error::Usage(format!(
            "{}: the weights were left on disk, which only weight-only mode can work with",
            model.display_path()
        )));
    }
    run(
        &model.proto,
        &|t, values| model.read_f32_into(t, values),
        None,
        lazy,
        &model.display_path(),
        source,
        ranges,
        config,
    )
}

/// [`quantize_model`] for a model loaded lazily, whose quantized weights are appended to
/// `writer` (the output's side file, staged until [`ExternalWriter::finish`]) as each is made,
/// the returned model referring to them: with the float weights read one at a time too, the
/// conversion holds about one weight in memory, whatever the model's size. Pass the returned
/// model and `model` (for the weights it leaves unchanged) to [`ExternalWriter::finish`].
///
/// [`ExternalWriter::finish`]: crate::onnx::ExternalWriter::finish
pub fn quantize_model_to(
    model: &crate::onnx::Model,
    writer: &mut crate::onnx::ExternalWriter,
    source: Option<&DataSource>,
    ranges: Option<Ranges>,
    config: &QuantizeConfig,
) -> Result<(ModelProto, QuantizeReport)> {
    let mut store = |t: &mut crate::onnx::pb::TensorProto| -> Result<()> {
        let bytes = match t.raw_data.take() {
            Some(bytes) => bytes,
            None => crate::onnx::tensor::raw_bytes(t)
                .map(|b| b.into_owned())
                .unwrap_or_default(),
        };
        writer.append(t, &bytes)
    };
    run(
        &model.proto,
        &|t, values| model.read_f32_into(t, values),
        Some(&mut store),
        model.has_external_refs(),
        &model.display_path(),
        source,
        ranges,
        config,
    )
}

/// A quantized model bound for an output file, nothing of it written yet: see
/// [`quantize_for`].
pub struct Converted {
    /// The quantized model (its streamed weights refer to the staged side file).
    pub proto: ModelProto,
    /// The float model it was made from.
    pub float: crate::onnx::Model,
    output: std::path::PathBuf,
    writer: Option<crate::onnx::ExternalWriter>,
}

/// Quantizes `model` for the file `output`, the one entry point the CLI and the Python
/// binding share. A model whose weights were left on disk ([`Model::load_lazy`]) streams its
/// quantized weights to `output`'s side file as they are made (staged: nothing appears at
/// `output` until the files of [`Converted::stage`] are committed), so a model larger than
/// memory converts; any other model is quantized in memory.
///
/// [`Model::load_lazy`]: crate::onnx::Model::load_lazy
pub fn quantize_for(
    model: crate::onnx::Model,
    output: &std::path::Path,
    source: Option<&DataSource>,
    ranges: Option<Ranges>,
    config: &QuantizeConfig,
) -> Result<(Converted, QuantizeReport)> {
    let mut writer = if model.has_external_refs() {
        Some(crate::onnx::ExternalWriter::create(
            output,
            &model.source_files,
        )?)
    } else {
        None
    };
    let (proto, report) = match writer.as_mut() {
        Some(writer) => quantize_model_to(&model, writer, source, ranges, config)?,
        None => quantize_model(&model, source, ranges, config)?,
    };
    let converted = Converted {
        proto,
        float: model,
        output: output.to_path_buf(),
        writer,
    };
    Ok((converted, report))
}

impl Converted {
    /// Stages the quantized model (and its side file) at the output into `pending`, to be
    /// committed with the caller's other outputs, all or none. `options` applies to a model
    /// quantized in memory; a streamed one keeps the side file its weights went to.
    pub fn stage(
        self,
        options: &crate::onnx::SaveOptions,
        pending: &mut crate::onnx::PendingFiles,
    ) -> Result<crate::onnx::SaveReport> {
        match self.writer {
            Some(writer) => {
                let (report, staged) = writer.finish_staged(self.proto, Some(&self.float))?;
                pending.append(staged);
                Ok(report)
            }
            None => crate::onnx::Model {
                proto: self.proto,
                ..self.float
            }
            .save_pending(&self.output, options, pending),
        }
    }
}

/// The encoded size of `model` plus the external data it refers to.
fn stored_bytes(model: &ModelProto) -> u64 {
    let external: u64 = model
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .filter(|t| crate::onnx::tensor::is_external(t))
        .filter_map(|t| {
            crate::onnx::external::parse_ref(t)
                .ok()?
                .length
                .or_else(|| crate::onnx::tensor::expected_raw_len(t).ok().flatten())
        })
        .sum();
    model.encoded_len() as u64 + external
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &ModelProto,
    weights: rewrite::WeightReader,
    store: Option<rewrite::WeightStore>,
    lazy: bool,
    model_name: &str,
    source: Option<&DataSource>,
    ranges: Option<Ranges>,
    config: &QuantizeConfig,
) -> Result<(ModelProto, QuantizeReport)> {
    let mut clock = Clock::start();
    // An invalid model fails in tract with messages about tract's internals (an undefined
    // tensor gave "no entry found for key"): the structural check names the node instead.
    validate::require_valid_structure(model)?;
    let samples = Samples::split(source, config)?;
    if lazy && (config.accuracy.is_some() || samples.calibration.is_some()) {
        return Err(Error::Usage(
            "calibration data and accuracy bounds run the model in tract, which needs its \
             weights in memory: load the model eagerly"
                .into(),
        ));
    }
    let prepared = upgrade_and_prepare(model, config, lazy)?;
    if let Some(r) = &ranges {
        check_ranges(model, &prepared.model, r)?;
    }
    clock.lap("prepare");
    let mut warnings = Vec::new();
    // A model tract cannot run (an If whose branches tract types differently, a Loop it does
    // not implement) cannot be calibrated; rather than refuse a model ONNX Runtime runs, it
    // gets what needs no activation range: dynamic int8, checked structurally, and says so.
    let half = config.plan.mode == Mode::Static
        && config.accuracy.is_none()
        && holds_float16(&prepared.model);
    let (calibration, unrunnable) = if half {
        // QuantizeLinear of a float16 tensor takes float16 scales (opset 19), which the
        // rewriter does not write yet, and tract runs float16 ops as slow scalar code: a
        // float16 model would be calibrated for minutes to quantize nothing valid.
        warnings.push(
            "the model computes in float16, which static int8 does not quantize yet: wrote \
             dynamic int8 of its float32 MatMul/Gemm (if any) instead, checked structurally \
             but not run; convert the model to float32 first for static int8"
                .into(),
        );
        (Calibration::none("none: float16 model"), true)
    } else {
        match calibrate_stage(&prepared.model, model_name, &samples, ranges, config) {
            Err(Error::Tract(e))
                if config.plan.mode == Mode::Static
                    && config.accuracy.is_none()
                    && !e.contains(crate::engine::MEMORY_REFUSAL) =>
            {
                warnings.push(format!(
                    "tract cannot run the float model, so no activation range could be \
                     calibrated ({e}); wrote dynamic int8 instead (MatMul/Gemm weights int8, \
                     activations quantized at run time, Conv float), checked structurally but \
                     not run"
                ));
                (
                    Calibration::none("none: tract cannot run the float model"),
                    true,
                )
            }
            other => (other?, false),
        }
    };
    clock.lap("calibrate");
    if let Some(w) = non_finite_warning(&calibration.ranges) {
        warnings.push(w);
    }
    check_overrides(&prepared.model, &prepared.plan_config)?;
    let graph = prepared
        .model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Model("the model has no graph".into()))?;
    let lookup = |name: &str| calibration.ranges.tensors.get(name).map(|r| (r.min, r.max));
    let build = |cfg: &PlanConfig| -> Result<ModelProto> {
        let plan = plan::plan(graph, cfg, &lookup);
        let mut quantized = prepared.model.clone();
        rewrite::rewrite_reading(&mut quantized, &plan, weights, None)?;
        Ok(quantized)
    };
    let mut plan_config = prepared.plan_config.clone();
    if unrunnable {
        plan_config.mode = Mode::Dynamic;
    }
    if let Some(h) = calibration.hessians {
        plan_config.weight_only.hessians = h;
    }
    let mut accuracy_report = None;
    if let (Some(a), Some(held)) = (&config.accuracy, &samples.held_out) {
        let baseline = plan::plan(graph, &plan_config, &lookup);
        let (cfg, r) = accuracy::search(model, graph, &plan_config, &baseline, held, a, &build)?;
        plan_config = cfg;
        accuracy_report = Some(r);
        clock.lap("accuracy search");
    }
    let mut store = store;
    let mut finish = |cfg: &PlanConfig, clock: &mut Clock| -> Result<Finished> {
        let plan = plan::plan(graph, cfg, &lookup);
        let mut quantized = prepared.model.clone();
        // Taken by the first rewrite: a second one (after a self-repair) keeps its weights
        // in memory rather than store them twice.
        let stats = rewrite::rewrite_reading(&mut quantized, &plan, weights, store.take())?;
        keep_declared_value_info(&mut quantized, model);
        clock.lap("plan and rewrite");
        let (execution_check, outputs) = if lazy || unrunnable {
            structure_only(&quantized, lazy)?
        } else {
            validate_and_compare(
                model,
                &quantized,
                &samples,
                calibration.reference.as_deref(),
                config.calibration.threads,
            )?
        };
        clock.lap("validate and compare");
        Ok((plan, quantized, stats, execution_check, outputs))
    };
    let mut repaired = Vec::new();
    let (plan, quantized, stats, execution_check, outputs) = match finish(&plan_config, &mut clock)
    {
        Err(Error::Tract(error)) if !lazy && !unrunnable => {
            let sample = samples.compare.as_ref().map(|c| c.head(1));
            let (cfg, nodes) = repair_nodes(graph, &plan_config, &lookup, error, &|cfg| {
                let quantized = build(cfg).map_err(|e| e.to_string())?;
                check_structure(&quantized).map_err(|e| e.to_string())?;
                runs_in_tract(&quantized, sample.as_ref()).map_err(|e| e.to_string())
            })?;
            plan_config = cfg;
            repaired = nodes;
            clock.lap("self-repair");
            finish(&plan_config, &mut clock)?
        }
        other => other?,
    };
    let (quantized_ops, without_int8_kernel, float_nodes) = summarize_plan(graph, &plan);
    warnings.extend(collapse_warnings(&outputs));
    let clipped_ranges = calibration
        .ranges
        .tensors
        .iter()
        .filter(|(name, _)| plan.activations.contains_key(name.as_str()))
        .filter_map(|(name, r)| {
            let calibrated = r.unclipped?;
            Some((
                name.clone(),
                ClippedRange {
                    calibrated,
                    used: (r.min, r.max),
                },
            ))
        })
        .collect();
    let report = QuantizeReport {
        mode: plan_config.mode,
        seconds: clock.laps,
        prep: prepared.prep,
        opset_before: prepared.opset_before,
        opset_after: prepared.opset_after,
        opset_rewritten: prepared.opset_rewritten,
        weights_unlisted_from_inputs: prepared.weights_unlisted_from_inputs,
        per_channel: plan_config.per_channel,
        per_tensor_reason: prepared.per_tensor_reason,
        calibration_method: calibration.method,
        clipped_ranges,
        calibration_samples: calibration.ranges.samples,
        calibration_seconds: calibration.seconds,
        quantized_tensors: plan.activations.len(),
        quantized_ops,
        without_int8_kernel,
        float_nodes,
        rewrite: stats,
        bytes_before: stored_bytes(model),
        bytes_after: stored_bytes(&quantized),
        outputs,
        compared_samples: samples.compare.as_ref().map_or(0, DataSource::len),
        execution_check,
        repaired,
        accuracy: accuracy_report,
        warnings,
    };
    Ok((quantized, report))
}

/// Whether the main graph computes in float16: a float16 graph input, initializer or Cast to
/// float16.
fn holds_float16(model: &ModelProto) -> bool {
    use crate::onnx::pb::tensor_proto::DataType;
    let f16 = DataType::Float16 as i32;
    let Some(g) = model.graph.as_ref() else {
        return false;
    };
    g.initializer.iter().any(|t| t.data_type() == f16)
        || g.input.iter().any(|i| {
            matches!(
                i.r#type.as_ref().and_then(|t| t.value.as_ref()),
                Some(crate::onnx::pb::type_proto::Value::TensorType(t)) if t.elem_type() == f16
            )
        })
        || g.node.iter().any(|n| {
            n.op_type() == "Cast"
                && n.attribute
                    .iter()
                    .any(|a| a.name() == "to" && a.i() == i64::from(f16))
        })
}

/// The tensors that held NaN or infinite values on the calibration data: their ranges are of
/// the finite values only, and the quantized model will not reproduce the others.
fn non_finite_warning(ranges: &Ranges) -> Option<String> {
    let bad: Vec<String> = ranges
        .tensors
        .iter()
        .filter(|(_, r)| r.non_finite > 0)
        .map(|(name, r)| format!("'{name}' ({} of {})", r.non_finite, r.non_finite + r.count))
        .collect();
    if bad.is_empty() {
        return None;
    }
    const SHOWN: usize = 5;
    Some(format!(
        "{} tensor(s) held NaN or infinite values on the calibration data; their ranges cover \
         the finite values only: {}{}",
        bad.len(),
        bad[..bad.len().min(SHOWN)].join(", "),
        if bad.len() > SHOWN { ", ..." } else { "" }
    ))
}

/// What the last stages give: the plan, the quantized model, the rewrite's counts, how it
/// ran, and its fp32-vs-int8 figures.
type Finished = (
    Plan,
    ModelProto,
    RewriteStats,
    String,
    BTreeMap<String, ErrorMetrics>,
);

/// Returns the nodes responsible for `error` (the quantized model did not run) to float, found
/// by bisection over the quantized nodes, last first ([`repair::find_culprits`]); `runs` builds and runs
/// the model of a configuration. Fails with the original error when the model does not run
/// even with every node float.
fn repair_nodes(
    graph: &crate::onnx::pb::GraphProto,
    config: &PlanConfig,
    lookup: &dyn Fn(&str) -> Option<(f32, f32)>,
    error: String,
    runs: &dyn Fn(&PlanConfig) -> std::result::Result<(), String>,
) -> Result<(PlanConfig, Vec<repair::RepairedNode>)> {
    let plan = plan::plan(graph, config, lookup);
    // From the outputs back: the node tract fails on is the one reading a quantized tensor,
    // and returning it to float is the smallest change (returning its producer would also
    // remove the quantized tensor, and that producer's own int8 kernel with it).
    let candidates: Vec<usize> = plan.quantized.iter().rev().copied().collect();
    let with_float = |excluded: &std::collections::BTreeSet<usize>, errors: &[(usize, String)]| {
        let mut cfg = config.clone();
        for &n in excluded {
            let why = errors
                .iter()
                .find(|(m, _)| *m == n)
                .map_or_else(String::new, |(_, e)| e.clone());
            cfg.fallback.repaired.insert(n, why);
            cfg.fallback
                .tensors
                .extend(accuracy::activations_of(graph, &plan, n));
        }
        cfg
    };
    // The candidate whose name the error quotes (the longest, as names may nest).
    let named = |message: &str| {
        candidates
            .iter()
            .copied()
            .filter(|&n| {
                let name = graph.node[n].name();
                !name.is_empty()
                    && (message.contains(&format!("'{name}'"))
                        || message.contains(&format!("\"{name}\"")))
            })
            .max_by_key(|&n| graph.node[n].name().len())
    };
    let culprits = repair::find_culprits(&candidates, error.clone(), &named, &mut |excluded| {
        runs(&with_float(excluded, &[]))
    })
    .map_err(|e| {
        Error::Tract(format!(
            "{error}\n(the model does not run even with every quantized node returned to \
             float: {e})"
        ))
    })?;
    let excluded: std::collections::BTreeSet<usize> = culprits.iter().map(|(n, _)| *n).collect();
    let nodes = culprits
        .iter()
        .map(|(n, e)| repair::RepairedNode {
            node: plan::label(graph, *n),
            op_type: graph.node[*n].op_type().to_string(),
            error: e.clone(),
        })
        .collect();
    Ok((with_float(&excluded, &culprits), nodes))
}

/// Runs `quantized` once in tract on the first sample of `sample` (zeros without one).
fn runs_in_tract(quantized: &ModelProto, sample: Option<&DataSource>) -> Result<()> {
    let sample = match sample {
        Some(s) => s.load(0)?,
        None => {
            crate::calibrate::Sample::zeros(&crate::calibrate::InputSpec::of_model(quantized)?)?
        }
    };
    validate_in_tract(quantized, sample).map(drop)
}

impl Calibration {
    /// No calibration, with why.
    fn none(method: &str) -> Calibration {
        Calibration {
            ranges: Ranges::empty(),
            method: method.into(),
            seconds: 0.0,
            reference: None,
            hessians: None,
        }
    }
}

/// Ranges, how they were obtained, and the float outputs computed on the way.
struct Calibration {
    ranges: Ranges,
    method: String,
    seconds: f64,
    /// fp32 outputs of the comparison samples, when calibration computed them.
    reference: Option<Vec<Vec<tract_onnx::prelude::Tensor>>>,
    /// Weight-only GPTQ: the statistics of every quantized MatMul's input.
    hessians: Option<plan::Hessians>,
}

/// Runs the calibration samples through the float model and accumulates, for the input of
/// every MatMul/Gemm weight-only mode quantizes, the Gram matrix `XᵀX` GPTQ needs (`K²`
/// numbers per distinct input, whatever the number of samples).
fn gather_hessians(
    prepared: &ModelProto,
    config: &PlanConfig,
    source: &DataSource,
) -> Result<plan::Hessians> {
    let graph = prepared
        .graph
        .as_ref()
        .ok_or_else(|| Error::Model("the model has no graph".into()))?;
    let planned = plan::plan(graph, config, &|_| None);
    let mut wanted: BTreeMap<String, blockwise::Hessian> = planned
        .weight_only
        .iter()
        .filter(|u| matches!(u.kind, plan::WeightOnlyKind::MatMul { .. }))
        .map(|u| (u.activation.clone(), blockwise::Hessian::new(u.k)))
        .collect();
    let inputs: Vec<String> = crate::calibrate::InputSpec::of_model(prepared)?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let runner = crate::engine::Runner::new(prepared, &inputs, false).map_err(Error::Tract)?;
    for i in 0..source.len() {
        let sample = source.load(i)?;
        let label = sample.label.clone();
        runner
            .run_observing(sample.inputs, &mut |name, value| {
                if let Some(h) = wanted.get_mut(name) {
                    let plain = value
                        .try_as_plain_ram()
                        .map_err(|e| format!("{name}: {e}"))?;
                    let view = plain
                        .as_slice::<f32>()
                        .map_err(|e| format!("{name}: {e}"))?;
                    if view.len() % h.k == 0 {
                        h.add_rows(view);
                    }
                }
                Ok(())
            })
            .map_err(|e| Error::Tract(format!("gathering GPTQ statistics on {label}: {e}")))?;
    }
    Ok(plan::Hessians(std::sync::Arc::new(wanted)))
}

fn calibrate_stage(
    prepared: &ModelProto,
    model_name: &str,
    samples: &Samples,
    ranges: Option<Ranges>,
    config: &QuantizeConfig,
) -> Result<Calibration> {
    if config.plan.mode == Mode::WeightOnly
        && config.plan.weight_only.algorithm == blockwise::Algorithm::Gptq
    {
        let source = samples
            .calibration
            .as_ref()
            .ok_or_else(|| Error::Usage("GPTQ needs calibration data (--calib)".into()))?;
        let start = Instant::now();
        let hessians = gather_hessians(prepared, &config.plan, source)?;
        return Ok(Calibration {
            ranges: Ranges::empty(),
            method: format!(
                "GPTQ statistics (XᵀX of {} MatMul inputs)",
                hessians.0.len()
            ),
            seconds: start.elapsed().as_secs_f64(),
            reference: None,
            hessians: Some(hessians),
        });
    }
    if config.plan.mode != Mode::Static {
        return Ok(Calibration {
            ranges: Ranges::empty(),
            method: match config.plan.mode {
                Mode::Dynamic => "none: activations are quantized at run time",
                _ => "none: activations stay float",
            }
            .into(),
            seconds: 0.0,
            reference: None,
            hessians: None,
        });
    }
    if let Some(r) = ranges {
        return Ok(Calibration {
            method: r.method.name().to_string(),
            ranges: r,
            seconds: 0.0,
            reference: None,
            hessians: None,
        });
    }
    let (Some(source), Some(compare)) = (&samples.calibration, &samples.compare) else {
        return Err(Error::Model(
            "internal error: static mode without data".into(),
        ));
    };
    let calibrator = Calibrator::new(prepared, model_name)?;
    let start = Instant::now();
    // The summary compares against the float outputs calibration computes anyway (of the
    // prepared model, which computes the same function) instead of running it again.
    let (ranges, kept) =
        calibrator.calibrate_keeping_outputs(source, &config.calibration, compare.len())?;
    Ok(Calibration {
        method: ranges.method.name().to_string(),
        ranges,
        seconds: start.elapsed().as_secs_f64(),
        reference: Some(kept),
        hessians: None,
    })
}

/// The structural half of the validation: a quantized model that fails it is our bug.
fn check_structure(quantized: &ModelProto) -> Result<()> {
    let findings = validate::check_structure(quantized);
    if validate::has_errors(&findings) {
        let text: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
        return Err(Error::Model(format!(
            "internal error: the quantized model is invalid:\n  {}",
            text.join("\n  ")
        )));
    }
    Ok(())
}

/// The validation of a model whose weights stay on disk: the structure only, since a tract
/// run would load every weight.
fn structure_only(
    quantized: &ModelProto,
    lazy: bool,
) -> Result<(String, BTreeMap<String, ErrorMetrics>)> {
    check_structure(quantized)?;
    Ok((
        if lazy {
            "structure checked; not run in tract: the weights stay on disk (streamed one at a \
             time), and a run would load them all"
        } else {
            "structure checked; not run: tract cannot run the float model"
        }
        .into(),
        BTreeMap::new(),
    ))
}

/// Validates the quantized model before anything is written (structure, then a run in tract
/// on a real sample, or on zeros without data) and measures it against the float model on
/// the comparison samples.
fn validate_and_compare(
    model: &ModelProto,
    quantized: &ModelProto,
    samples: &Samples,
    reference: Option<&[Vec<tract_onnx::prelude::Tensor>]>,
    threads: usize,
) -> Result<(String, BTreeMap<String, ErrorMetrics>)> {
    check_structure(quantized)?;
    let Some(compare) = &samples.compare else {
        let sample =
            crate::calibrate::Sample::zeros(&crate::calibrate::InputSpec::of_model(quantized)?)?;
        return Ok((validate_in_tract(quantized, sample)?, BTreeMap::new()));
    };
    let computed;
    let (output_names, reference): (Vec<String>, &[Vec<tract_onnx::prelude::Tensor>]) =
        match reference {
            Some(kept) => (
                model
                    .graph
                    .iter()
                    .flat_map(|g| g.output.iter().map(|o| o.name().to_string()))
                    .collect(),
                kept,
            ),
            None => {
                computed = crate::compare::reference_outputs(model, compare)?;
                (computed.0, &computed.1)
            }
        };
    let execution_check = validate_in_tract(quantized, compare.load(0)?)?;
    let outputs = crate::compare::compare_to_reference(
        &simulate::fold_constant_dequantize(quantized),
        compare,
        reference,
        &output_names,
        threads.max(1),
    )?;
    Ok((execution_check, outputs))
}

/// Quantized op counts, those without an int8 kernel, and the float nodes with their reasons.
fn summarize_plan(
    graph: &crate::onnx::pb::GraphProto,
    plan: &Plan,
) -> (
    BTreeMap<String, usize>,
    BTreeMap<String, usize>,
    Vec<FloatNode>,
) {
    let mut quantized_ops: BTreeMap<String, usize> = BTreeMap::new();
    let mut without_int8_kernel: BTreeMap<String, usize> = BTreeMap::new();
    for &n in &plan.quantized {
        let op = graph.node[n].op_type();
        *quantized_ops.entry(op.to_string()).or_default() += 1;
        if plan.dynamic.is_empty()
            && rules::rule_for(op).is_some_and(|r| {
                !r.int8_kernel && !matches!(r.output, rules::OutputRole::SameAsInput(_))
            })
        {
            *without_int8_kernel.entry(op.to_string()).or_default() += 1;
        }
    }
    let float_nodes = plan
        .float
        .iter()
        .map(|(&n, reason)| FloatNode {
            node: node_label(&graph.node[n]),
            op_type: graph.node[n].op_type().to_string(),
            kind: reason.kind().to_string(),
            reason: reason.to_string(),
        })
        .collect();
    (quantized_ops, without_int8_kernel, float_nodes)
}
