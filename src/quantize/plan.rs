//! The planner: walks the graph in topological order and, from the rule table, decides which
//! nodes are quantized, which tensors get QuantizeLinear/DequantizeLinear and with which
//! parameters, which weights and biases are folded, and why every other node stays float.
//! It only decides; [`super::rewrite`] changes the graph.

mod dynamic;
mod mask;
mod weight_only;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

pub use dynamic::{DynamicMatMul, DynamicUse, WeightFormat};
pub use mask::AdditiveMask;
pub use weight_only::{Hessians, WeightForm, WeightOnlyConfig, WeightOnlyKind, WeightOnlyUse};

use super::params::{ActParams, ActType};
use super::rules::{rule_for, Axis, InputRole, OpRule, OutputRole};
use crate::graph::{GraphIndex, Producer};
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{GraphProto, NodeProto};
use crate::onnx::walk::node_label;
use crate::onnx::{attr, tensor};

/// How activations are quantized: the kind of plan made over the graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Calibrated QuantizeLinear/DequantizeLinear pairs (QDQ) around every quantized op.
    #[default]
    Static,
    /// Weights int8 offline; activations quantized at run time from their actual range
    /// (`DynamicQuantizeLinear`), so no calibration data is needed.
    Dynamic,
    /// MatMul/Gemm weights and embedding tables in 4 or 8 bits, blocked; activations float.
    WeightOnly,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Static => "static",
            Mode::Dynamic => "dynamic",
            Mode::WeightOnly => "weight-only",
        }
    }
}

/// What the planner needs to know beyond the graph.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Static (calibrated QDQ) or dynamic.
    pub mode: Mode,
    /// Dynamic mode: int8 weights in [-63, 63] instead of [-127, 127], so that uint8 × int8
    /// products summed in pairs cannot saturate int16 on x86 CPUs without VNNI.
    pub reduce_range: bool,
    /// Weight-only mode's settings.
    pub weight_only: WeightOnlyConfig,
    /// Integer type of activations.
    pub activations: ActType,
    /// Per-channel weights (needs opset ≥ 13); per-tensor otherwise.
    pub per_channel: bool,
    /// Node names to leave float.
    pub exclude_nodes: BTreeSet<String>,
    /// Op types to leave float.
    pub exclude_op_types: BTreeSet<String>,
    /// What the user pinned per tensor (range, type, symmetry, keep float), by tensor name.
    pub overrides: BTreeMap<String, TensorOverride>,
    /// Nodes returned to float by the accuracy search, by index in the graph being planned,
    /// with the activation tensors they read and write (which stay float with them).
    pub fallback: Fallback,
    /// Static mode: cross-layer equalization of `Conv → (Relu | PRelu) → Conv` chains before
    /// quantizing ([`crate::quantize::prep::equalize_layers`]); `None` equalizes exactly when
    /// the weights are per tensor. Measured (bench/quantize.py and the same data): per tensor it
    /// gave the VAD +8.7 dB and PP-OCR's classifier +3.7 dB; with per-channel weights, whose
    /// scales already follow each channel, it cost them 2.0 and 4.3 dB.
    pub equalize: Option<bool>,
}

impl Default for PlanConfig {
    /// Static mode, uint8 activations, per-channel weights, nothing excluded.
    fn default() -> Self {
        PlanConfig {
            mode: Mode::Static,
            reduce_range: false,
            weight_only: WeightOnlyConfig::default(),
            activations: ActType::U8,
            per_channel: true,
            exclude_nodes: BTreeSet::new(),
            exclude_op_types: BTreeSet::new(),
            overrides: BTreeMap::new(),
            fallback: Fallback::default(),
            equalize: None,
        }
    }
}

/// Nodes and tensors the accuracy search keeps float.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fallback {
    /// Node indices.
    pub nodes: BTreeSet<usize>,
    /// Activation tensors that get no QuantizeLinear/DequantizeLinear.
    pub tensors: BTreeSet<String>,
    /// Nodes self-repair returned to float (the quantized model did not run with them
    /// quantized), by index, with the error.
    pub repaired: BTreeMap<usize, String>,
}

/// A user's setting for one tensor, from an overrides file.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorOverride {
    /// Quantize with this range instead of the calibrated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(f32, f32)>,
    /// Integer type of this tensor.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<ActType>,
    /// Symmetric range (zero maps to the middle of the integer range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    /// Never quantize this tensor: the nodes that read or write it stay float.
    #[serde(default)]
    pub keep_float: bool,
}

/// A weight input to fold to int8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightUse {
    /// Index of the consuming node.
    pub node: usize,
    /// Input slot.
    pub input: usize,
    /// The float constant.
    pub tensor: String,
    /// Channel axis; `None` for per-tensor.
    pub axis: Option<usize>,
}

/// A bias input to fold to int32.
#[derive(Debug, Clone, PartialEq)]
pub struct BiasUse {
    /// Index of the consuming node.
    pub node: usize,
    /// Input slot.
    pub input: usize,
    /// The float constant.
    pub tensor: String,
    /// The activation input whose scale the bias scale multiplies.
    pub activation: String,
    /// Index into [`Plan::weights`] of the weight whose scales the bias scale multiplies.
    pub weight: usize,
    /// Gemm's `alpha` (1 elsewhere).
    pub alpha: f32,
}

/// Why a node was left float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloatReason {
    /// Not in the rule table.
    NoRule,
    /// Outside the default domain: never touched.
    OtherDomain(String),
    /// Named in --exclude-nodes or --exclude-op-types.
    Excluded,
    /// Returned to float by the accuracy search.
    AccuracyFallback,
    /// Returned to float by self-repair: the quantized model did not run with it quantized.
    Repaired(String),
    /// Reads or writes a tensor kept float (by the accuracy search or an override).
    KeepsTensorFloat(String),
    /// The input model already has QuantizeLinear/DequantizeLinear here.
    AlreadyQuantized,
    /// An input or output is not a float tensor (shapes, indices, masks).
    NotFloat(String),
    /// A float input or output has no calibrated range (it was never computed from the data,
    /// such as a grid built from constants and shapes only).
    NoRange(String),
    /// A weight input is not a float constant.
    WeightNotConstant(String),
    /// The output shares the parameters of an input that is not quantized.
    InputNotQuantized(usize),
    /// An op without an int8 kernel whose inputs come from float ops: quantizing it would only
    /// add a Q/DQ pair.
    InputFromFloatOp(String),
    /// The mode cannot quantize this op (or this use of it), with why.
    Unsupported(&'static str),
    /// Reads or writes an additive attention mask or the masked scores (see [`AdditiveMask`]).
    AdditiveMask(String),
}

impl FloatReason {
    /// The reason without tensor names, for grouping nodes in a summary.
    pub fn kind(&self) -> &'static str {
        match self {
            FloatReason::NoRule => "no quantization rule for this op",
            FloatReason::OtherDomain(_) => "outside the default domain, never touched",
            FloatReason::Excluded => "excluded by the user",
            FloatReason::AccuracyFallback => "returned to float to meet the accuracy bound",
            FloatReason::Repaired(_) => {
                "returned to float: the quantized model did not run with it quantized"
            }
            FloatReason::KeepsTensorFloat(_) => "reads or writes a tensor kept float",
            FloatReason::AlreadyQuantized => "already quantized in the input model",
            FloatReason::NotFloat(_) => "works on non-float tensors (shapes, indices, masks)",
            FloatReason::NoRange(_) => {
                "no calibrated range (computed from constants or shapes only)"
            }
            FloatReason::WeightNotConstant(_) => "weight is not a float constant",
            FloatReason::InputNotQuantized(_) => "shares the parameters of an input left float",
            FloatReason::InputFromFloatOp(_) => {
                "no int8 kernel, and its input comes from a float op"
            }
            FloatReason::Unsupported(why) => why,
            FloatReason::AdditiveMask(_) => {
                "carries an additive attention mask (kept exact, Softmax input left float)"
            }
        }
    }
}

impl fmt::Display for FloatReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FloatReason::OtherDomain(d) => write!(f, "domain '{d}' is never touched"),
            FloatReason::NotFloat(t) => write!(f, "'{t}' is not a float tensor"),
            FloatReason::NoRange(t) => write!(f, "no calibrated range for '{t}'"),
            FloatReason::Repaired(e) => write!(
                f,
                "returned to float: the quantized model did not run with it quantized ({e})"
            ),
            FloatReason::KeepsTensorFloat(t) => write!(f, "reads or writes '{t}', kept float"),
            FloatReason::WeightNotConstant(t) => write!(f, "weight '{t}' is not a float constant"),
            FloatReason::InputNotQuantized(i) => write!(f, "input {i} is not quantized"),
            FloatReason::InputFromFloatOp(t) => write!(f, "'{t}' comes from a float op"),
            FloatReason::AdditiveMask(t) => {
                write!(f, "'{t}' carries an additive attention mask, kept float")
            }
            other => f.write_str(other.kind()),
        }
    }
}

/// The planner's decisions, consumed by the rewriter.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Quantized activation tensors and their parameters.
    pub activations: BTreeMap<String, ActParams>,
    /// Weight inputs to fold.
    pub weights: Vec<WeightUse>,
    /// Bias inputs to fold.
    pub biases: Vec<BiasUse>,
    /// Relu/Clip nodes made redundant by their producer's range, with the tensor that replaces
    /// their output.
    pub absorbed: BTreeMap<usize, String>,
    /// Nodes quantized.
    pub quantized: BTreeSet<usize>,
    /// Nodes left float, with the reason.
    pub float: BTreeMap<usize, FloatReason>,
    /// Dynamic mode: the ops rewritten for run-time activation quantization.
    pub dynamic: Vec<DynamicUse>,
    /// Weight-only mode: the weights stored block-quantized.
    pub weight_only: Vec<WeightOnlyUse>,
    /// Weight-only mode: GPTQ's input statistics.
    pub weight_only_hessians: Hessians,
    /// Static mode: the additive attention masks found, whose tensors stay float.
    pub masks: Vec<AdditiveMask>,
}

impl Plan {
    /// Whether `tensor` is a mask or masked scores of [`Plan::masks`].
    fn carries_mask(&self, tensor: &str) -> bool {
        self.masks
            .iter()
            .any(|m| m.mask == tensor || m.scores == tensor)
    }
}

/// Decides what to quantize in `graph` (the main graph; subgraphs stay float), in the
/// configured mode.
/// `range` gives the calibrated range of a tensor by name.
pub fn plan(
    graph: &GraphProto,
    config: &PlanConfig,
    range: &dyn Fn(&str) -> Option<(f32, f32)>,
) -> Plan {
    let index = GraphIndex::new(graph);
    let order = index
        .topological_order()
        .unwrap_or_else(|_| (0..graph.node.len()).collect());
    match config.mode {
        Mode::Dynamic => return dynamic::plan(&index, &order, config),
        Mode::WeightOnly => return weight_only::plan(&index, &order, config),
        Mode::Static => {}
    }
    let mut p = Plan {
        // A user's range or type for the scores or the mask is a decision already made.
        masks: mask::additive_masks(&index, range)
            .into_iter()
            .filter(|m| {
                !config.overrides.contains_key(&m.mask) && !config.overrides.contains_key(&m.scores)
            })
            .collect(),
        ..Plan::default()
    };
    for &n in &order {
        let node = &graph.node[n];
        match decide(&index, node, n, config, range, &p) {
            Ok(d) => {
                for (tensor, params) in d.params {
                    p.activations.insert(tensor, params);
                }
                for w in d.weights {
                    p.weights.push(w);
                }
                for (mut b, weight_pos) in d.biases {
                    b.weight = p.weights.len() - d.n_weights + weight_pos;
                    p.biases.push(b);
                }
                p.quantized.insert(n);
            }
            Err(reason) => {
                p.float.insert(n, reason);
            }
        }
    }
    absorb_activations(&index, config, range, &mut p);
    p
}

struct Decision {
    params: Vec<(String, ActParams)>,
    weights: Vec<WeightUse>,
    n_weights: usize,
    biases: Vec<(BiasUse, usize)>,
}

/// Whether `name` holds float values: declared so, or observed as float during calibration
/// (only float tensors are observed, and calibration types the model with concrete shapes,
/// which succeeds where symbolic type inference gives up).
fn is_float(index: &GraphIndex, range: &dyn Fn(&str) -> Option<(f32, f32)>, name: &str) -> bool {
    range(name).is_some()
        || index
            .tensor_type(name)
            .is_some_and(|t| t.elem_type == DataType::Float)
}

fn is_constant(index: &GraphIndex, name: &str) -> bool {
    matches!(index.producer(name), Some(Producer::Initializer(_)))
        || index
            .producer_node(name)
            .is_some_and(|n| n.op_type() == "Constant")
}

/// The range of a constant tensor's values.
fn constant_range(index: &GraphIndex, name: &str) -> Option<(f32, f32)> {
    let t = index.constant(name)?;
    let values = tensor::to_f32(&t).ok()?;
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    (lo <= hi).then_some((lo, hi))
}

/// What every mode leaves float before looking at the op: other domains, what the user
/// excluded, and what self-repair and the accuracy search returned to float.
fn user_choices(node: &NodeProto, n: usize, config: &PlanConfig) -> Result<(), FloatReason> {
    if !matches!(node.domain(), "" | "ai.onnx") {
        return Err(FloatReason::OtherDomain(node.domain().to_string()));
    }
    if config.exclude_nodes.contains(node.name())
        || config.exclude_op_types.contains(node.op_type())
    {
        return Err(FloatReason::Excluded);
    }
    if let Some(e) = config.fallback.repaired.get(&n) {
        return Err(FloatReason::Repaired(e.clone()));
    }
    if config.fallback.nodes.contains(&n) {
        return Err(FloatReason::AccuracyFallback);
    }
    Ok(())
}

fn decide(
    index: &GraphIndex,
    node: &NodeProto,
    n: usize,
    config: &PlanConfig,
    range: &dyn Fn(&str) -> Option<(f32, f32)>,
    so_far: &Plan,
) -> Result<Decision, FloatReason> {
    user_choices(node, n, config)?;
    let kept_float = |t: &str| {
        config.fallback.tensors.contains(t) || config.overrides.get(t).is_some_and(|o| o.keep_float)
    };
    // The activations the node would quantize: its activation inputs and its outputs.
    let activations = || {
        node.input
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                rule_for(node.op_type()).is_some_and(|r| r.input(*i) == InputRole::Act)
            })
            .map(|(_, t)| t)
            .chain(node.output.iter())
            .filter(|t| !t.is_empty())
    };
    if let Some(t) = activations().find(|t| kept_float(t)) {
        return Err(FloatReason::KeepsTensorFloat(t.clone()));
    }
    if let Some(t) = activations().find(|t| so_far.carries_mask(t)) {
        return Err(FloatReason::AdditiveMask(t.clone()));
    }
    if matches!(node.op_type(), "QuantizeLinear" | "DequantizeLinear")
        || node.input.iter().any(|i| {
            index
                .producer_node(i)
                .is_some_and(|p| p.op_type() == "DequantizeLinear")
        })
        || node.output.iter().any(|o| {
            index
                .consumers(o)
                .iter()
                .any(|&c| index.graph().node[c].op_type() == "QuantizeLinear")
        })
    {
        return Err(FloatReason::AlreadyQuantized);
    }
    let rule: &OpRule = rule_for(node.op_type()).ok_or(FloatReason::NoRule)?;
    // An op ONNX Runtime has no int8 kernel for (data movement, Relu, HardSwish...) is only
    // quantized to carry an existing quantization through, as its quantizer does: right after
    // float ops it would only add a Q/DQ pair to run the same float op. Constants qualify, so
    // that a Gather of an embedding table stores the table in 8 bits; ops with weights always
    // qualify, for the size.
    let has_weights = rule
        .inputs
        .iter()
        .any(|r| matches!(r, InputRole::Weight(_)));
    if !rule.int8_kernel && !has_weights {
        let acts: Vec<&String> = node
            .input
            .iter()
            .enumerate()
            .filter(|(i, x)| !x.is_empty() && rule.input(*i) == InputRole::Act)
            .map(|(_, x)| x)
            .collect();
        if let Some(x) = acts.iter().find(|x| !is_float(index, range, x)) {
            return Err(FloatReason::NotFloat((*x).clone()));
        }
        let carried = |x: &str| so_far.activations.contains_key(x) || is_constant(index, x);
        if let Some(x) = acts.first().filter(|_| !acts.iter().any(|x| carried(x))) {
            return Err(FloatReason::InputFromFloatOp((*x).clone()));
        }
    }
    let act_params = |t: &str| -> Option<ActParams> {
        so_far.activations.get(t).copied().or_else(|| {
            let o = config.overrides.get(t);
            o.and_then(|o| o.range)
                .or_else(|| range(t))
                .or_else(|| constant_range(index, t))
                .map(|(lo, hi)| params_for(lo, hi, config, o))
        })
    };
    let mut d = Decision {
        params: Vec::new(),
        weights: Vec::new(),
        n_weights: 0,
        biases: Vec::new(),
    };
    let mut input_params: Vec<Option<ActParams>> = vec![None; node.input.len()];
    let mut weight_of_node: Option<usize> = None;
    for (i, name) in node.input.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        let mut role = rule.input(i);
        if let InputRole::Weight(Axis::Last) = role {
            // MatMul's B is a weight only when it is a constant; otherwise an activation.
            if !is_constant(index, name) {
                role = InputRole::Act;
            }
        }
        match role {
            InputRole::Skip => {}
            InputRole::Act => {
                if !is_float(index, range, name) {
                    return Err(FloatReason::NotFloat(name.clone()));
                }
                let params = act_params(name).ok_or_else(|| FloatReason::NoRange(name.clone()))?;
                input_params[i] = Some(params);
                d.params.push((name.clone(), params));
            }
            InputRole::Weight(axis) => {
                if !is_constant(index, name) || !is_float(index, range, name) {
                    return Err(FloatReason::WeightNotConstant(name.clone()));
                }
                let rank = index
                    .tensor_type(name)
                    .and_then(|t| t.shape.map(|s| s.len()))
                    .unwrap_or(0);
                let axis = match axis {
                    Axis::Fixed(a) => Some(a),
                    Axis::GemmB => {
                        let trans_b = attr::int(node, "transB").ok().flatten().unwrap_or(0);
                        Some(if trans_b != 0 { 0 } else { 1 })
                    }
                    Axis::Last => rank.checked_sub(1),
                }
                .filter(|&a| config.per_channel && a < rank);
                weight_of_node = Some(d.weights.len());
                d.weights.push(WeightUse {
                    node: n,
                    input: i,
                    tensor: name.clone(),
                    axis,
                });
            }
            InputRole::Bias => {
                let (Some(w), Some(Some(_))) = (weight_of_node, input_params.first()) else {
                    continue; // no weight or no quantized input: the bias stays float
                };
                if !is_constant(index, name) || !is_float(index, range, name) {
                    continue;
                }
                let alpha = attr::float(node, "alpha").ok().flatten().unwrap_or(1.0);
                d.biases.push((
                    BiasUse {
                        node: n,
                        input: i,
                        tensor: name.clone(),
                        activation: node.input[0].clone(),
                        weight: 0,
                        alpha,
                    },
                    w,
                ));
            }
        }
    }
    d.n_weights = d.weights.len();
    for out in node.output.iter().filter(|o| !o.is_empty()) {
        if !is_float(index, range, out) {
            return Err(FloatReason::NotFloat(out.clone()));
        }
        let params = match rule.output {
            OutputRole::Own => act_params(out).ok_or_else(|| FloatReason::NoRange(out.clone()))?,
            OutputRole::SameAsInput(i) => input_params
                .get(i)
                .copied()
                .flatten()
                .ok_or(FloatReason::InputNotQuantized(i))?,
            OutputRole::FixedRange(lo, hi) => {
                let o = config.overrides.get(out.as_str());
                let (lo, hi) = o.and_then(|o| o.range).unwrap_or((lo, hi));
                params_for(lo, hi, config, o).with_integer_reciprocal()
            }
        };
        d.params.push((out.clone(), params));
    }
    Ok(d)
}

/// Parameters for `[lo, hi]` with the tensor's override, if any, applied.
fn params_for(lo: f32, hi: f32, config: &PlanConfig, o: Option<&TensorOverride>) -> ActParams {
    let ty = o.and_then(|o| o.ty).unwrap_or(config.activations);
    match o.and_then(|o| o.symmetric) {
        Some(true) => ActParams::symmetric(lo, hi, ty),
        _ => ActParams::from_range(lo, hi, ty),
    }
}

/// A Relu (or Clip with min 0) right after a quantized producer is dropped when the producer's
/// output is quantized with the Relu's range and that range's zero point is the lowest
/// integer: quantization then clamps negatives itself, and ONNX Runtime fuses the producer.
fn absorb_activations(
    index: &GraphIndex,
    config: &PlanConfig,
    range: &dyn Fn(&str) -> Option<(f32, f32)>,
    p: &mut Plan,
) {
    if config.activations != ActType::U8 {
        return;
    }
    let graph = index.graph();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    let quantized: Vec<usize> = p.quantized.iter().copied().collect();
    for n in quantized {
        let node = &graph.node[n];
        let is_relu =
            node.op_type() == "Relu" || (node.op_type() == "Clip" && clip_min_is_zero(index, node));
        if !is_relu {
            continue;
        }
        let (Some(input), Some(output)) = (node.input.first(), node.output.first()) else {
            continue;
        };
        let Some(producer) = index.producer(input) else {
            continue;
        };
        let Producer::Node { node: pn, .. } = producer else {
            continue;
        };
        let producer_rule = rule_for(graph.node[pn].op_type());
        let own_output = producer_rule.is_some_and(|r| r.output == OutputRole::Own);
        if !p.quantized.contains(&pn)
            || !own_output
            || index.consumers(input) != [n]
            || outputs.contains(input.as_str())
            || outputs.contains(output.as_str())
        {
            continue;
        }
        let pinned =
            |t: &str| config.overrides.contains_key(t) || config.fallback.tensors.contains(t);
        if pinned(input) || pinned(output) {
            continue;
        }
        let Some((lo, hi)) = range(output) else {
            continue;
        };
        let params = ActParams::from_range(lo.max(0.0), hi, config.activations);
        if !params.clamps_negatives() {
            continue;
        }
        p.activations.insert(input.clone(), params);
        p.activations.remove(output);
        p.absorbed.insert(n, input.clone());
        p.quantized.remove(&n);
    }
}

fn clip_min_is_zero(index: &GraphIndex, node: &NodeProto) -> bool {
    let from_input = node
        .input
        .get(1)
        .filter(|n| !n.is_empty())
        .and_then(|n| constant_range(index, n))
        .map(|(lo, _)| lo);
    let min = from_input.or_else(|| attr::float(node, "min").ok().flatten());
    min == Some(0.0)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (t, p) in &self.activations {
            writeln!(
                f,
                "act {t}: scale {:e} zp {} {:?}",
                p.scale, p.zero_point, p.ty
            )?;
        }
        for w in &self.weights {
            writeln!(
                f,
                "weight {} of node {} input {} axis {:?}",
                w.tensor, w.node, w.input, w.axis
            )?;
        }
        for b in &self.biases {
            writeln!(
                f,
                "bias {} of node {} (activation {})",
                b.tensor, b.node, b.activation
            )?;
        }
        for (n, t) in &self.absorbed {
            writeln!(f, "node {n} absorbed into {t}")?;
        }
        Ok(())
    }
}

/// A readable label of node `n`, for reports.
pub fn label(graph: &GraphProto, n: usize) -> String {
    node_label(&graph.node[n])
}
