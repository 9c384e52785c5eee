//! The QDQ rewriter: applies a [`Plan`] to a graph. One QuantizeLinear per quantized tensor,
//! right after its producer; one DequantizeLinear per consumer, right before it; weights
//! folded to int8 initializers and biases to int32, each behind a DequantizeLinear.

mod dynamic;
mod weight_only;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use dynamic::{DynamicKernel, WeightError, MS_DOMAIN};

use super::params::{
    channels, quantize_bias, quantize_weight, requantize, ActParams, ActType, QuantizedWeight,
};
use super::plan::Plan;
use crate::error::{Error, Result};
use crate::graph::{GraphIndex, Names};
use crate::onnx::pb::attribute_proto::AttributeType;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::onnx::tensor;

// Suffixes of the names the rewrite adds to a tensor's name. Short, because a small CNN holds
// hundreds of them and they would otherwise weigh a visible share of the file.
/// The quantized tensor (integer initializer or QuantizeLinear output).
const QUANTIZED: &str = "_q";
/// A scale initializer.
const SCALE: &str = "_s";
/// A zero-point initializer.
const ZERO_POINT: &str = "_zp";
/// A DequantizeLinear output.
const DEQUANTIZED: &str = "_dq";
/// A QuantizeLinear node.
const Q_NODE: &str = "_Q";
/// A DequantizeLinear node.
const DQ_NODE: &str = "_DQ";
/// A quantized graph output's float value, before its QuantizeLinear.
const FLOAT: &str = "_float";

/// Names of a folded weight's or bias's quantized tensor, scale and zero point, and its DQ
/// axis. They are symmetric, so the zero point is left out where nothing needs it:
/// DequantizeLinear's default of 0 applies, and a per-channel zero-point tensor per weight and
/// bias cost about 2 % of a small CNN's file. ONNX Runtime's QGemm fusion does need B's.
type Folded = (String, String, Option<String>, Option<usize>);
/// A weight's distinct quantization: tensor, axis, the bits of its scales, and whether its
/// zero point is written.
type WeightKey = (String, Option<usize>, Vec<u32>, bool);

/// What the rewrite did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RewriteStats {
    /// QuantizeLinear nodes added for activations.
    pub quantize_nodes: usize,
    /// DequantizeLinear nodes added (activations, weights and biases).
    pub dequantize_nodes: usize,
    /// Distinct int8 weight tensors written.
    pub weights: usize,
    /// Distinct int32 bias tensors written.
    pub biases: usize,
    /// Relu/Clip nodes removed because the quantized range already clamps.
    pub absorbed: usize,
    /// Bias channels whose weight scale was raised so the bias fits in int32.
    pub bias_overflow_fixes: usize,
    /// Constant tensors used as activations, stored quantized.
    pub constants_folded: usize,
    /// Dynamic mode: `DynamicQuantizeLinear` nodes added (one per quantized activation).
    #[serde(skip_serializing_if = "is_zero")]
    pub dynamic_quantize_nodes: usize,
    /// Dynamic mode: every MatMul/Gemm with the fused kernel ONNX Runtime is expected to run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dynamic_kernels: Vec<DynamicKernel>,
    /// Dynamic mode: every weight and table written, with its SQNR against the float values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weight_errors: Vec<WeightError>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn qdq_node(
    op: &str,
    name: String,
    inputs: &[String],
    output: String,
    axis: Option<usize>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input: inputs.to_vec(),
        output: vec![output],
        attribute: axis
            .map(|a| attr_int("axis", a as i64))
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// A tensor of `ty` holding `values` (already in the type's range), little-endian.
fn integer_tensor(
    name: &str,
    ty: ActType,
    dims: &[i64],
    values: impl Iterator<Item = i64>,
) -> TensorProto {
    let (dt, raw): (DataType, Vec<u8>) = match ty {
        ActType::U8 => (DataType::Uint8, values.map(|v| v as u8).collect()),
        ActType::S8 => (DataType::Int8, values.map(|v| v as i8 as u8).collect()),
        ActType::U16 => (
            DataType::Uint16,
            values.flat_map(|v| (v as u16).to_le_bytes()).collect(),
        ),
        ActType::S16 => (
            DataType::Int16,
            values.flat_map(|v| (v as i16).to_le_bytes()).collect(),
        ),
    };
    tensor::from_raw(name, dt, dims, raw)
}

fn act_zero_point(name: &str, p: &ActParams) -> TensorProto {
    integer_tensor(name, p.ty, &[], std::iter::once(p.zero_point as i64))
}

/// Reads a constant's float values into the buffer (replacing what it held; a buffer handed
/// back is reused, so that reading a model larger than memory does not fault in fresh pages
/// for every weight): from the tensor itself, or, for a model loaded lazily, from its
/// external-data file, one tensor at a time.
pub type WeightReader<'a> = &'a (dyn Fn(&TensorProto, &mut Vec<f32>) -> Result<()> + Sync);

/// Takes each initializer weight-only mode writes as soon as it is made (a streamed save
/// appends it to the output's side file and leaves a reference in its place), so that the
/// quantized weights of a model larger than memory are never all held at once.
pub type WeightStore<'a> = &'a mut (dyn FnMut(&mut TensorProto) -> Result<()> + Send);

/// Values of an in-memory tensor.
pub fn inline_values(t: &TensorProto, values: &mut Vec<f32>) -> Result<()> {
    *values = tensor::to_f32(t).map_err(|e| Error::Model(format!("weight '{}': {e}", t.name())))?;
    Ok(())
}

/// Applies `plan` to the main graph of `model` (whose tensors are all in memory).
pub fn rewrite(model: &mut ModelProto, plan: &Plan) -> Result<RewriteStats> {
    rewrite_reading(model, plan, &inline_values, None)
}

/// Applies `plan`, reading weight-only mode's weights through `weights` and handing the
/// quantized ones to `store` when one is given.
pub fn rewrite_reading(
    model: &mut ModelProto,
    plan: &Plan,
    weights: WeightReader,
    store: Option<WeightStore>,
) -> Result<RewriteStats> {
    let mut names = Names::of_model(model);
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::Model("the model has no graph".into()))?;
    let mut stats = RewriteStats::default();
    let original = graph.clone();
    let index = GraphIndex::new(&original);
    let inputs: HashSet<&str> = original.input.iter().map(|i| i.name()).collect();
    let outputs: HashSet<String> = original
        .output
        .iter()
        .map(|o| o.name().to_string())
        .collect();

    // Absorbed Relu/Clip: their consumers read the producer's tensor instead.
    let renames: HashMap<String, String> = plan
        .absorbed
        .iter()
        .map(|(&n, t)| (original.node[n].output[0].clone(), t.clone()))
        .collect();
    stats.absorbed = plan.absorbed.len();

    let mut new_inits: Vec<TensorProto> = Vec::new();
    // Activation tensor -> its quantized name, scale and zero point.
    let mut quantized_name: BTreeMap<String, [String; 3]> = BTreeMap::new();
    let mut q_nodes_after: HashMap<Option<usize>, Vec<NodeProto>> = HashMap::new();
    // Graph outputs that are quantized: the producer writes a fresh name, and one DQ restores
    // the output's own name so that the graph's interface does not change.
    let mut producer_renames: HashMap<String, String> = HashMap::new();
    for (t, p) in &plan.activations {
        let scale = names.fresh(&format!("{t}{SCALE}"));
        let zp = names.fresh(&format!("{t}{ZERO_POINT}"));
        new_inits.push(tensor::from_f32(&scale, &[], &[p.scale]));
        new_inits.push(act_zero_point(&zp, p));
        let q_out = names.fresh(&format!("{t}{QUANTIZED}"));
        if let Some(folded) = fold_constant_activation(&index, &inputs, t, &q_out, p)? {
            // A constant read as an activation (an Add's bias, an embedding table): stored
            // quantized instead of quantized at every run, so the file shrinks too.
            new_inits.push(folded);
            quantized_name.insert(t.clone(), [q_out, scale, zp]);
            stats.constants_folded += 1;
            continue;
        }
        let producer = match index.producer(t) {
            Some(crate::graph::Producer::Node { node, .. }) => Some(node),
            _ => None,
        };
        let source = if outputs.contains(t) && producer.is_some() {
            let pre = names.fresh(&format!("{t}{FLOAT}"));
            producer_renames.insert(t.clone(), pre.clone());
            pre
        } else {
            t.clone()
        };
        let q_name = names.fresh(&format!("{t}{Q_NODE}"));
        let mut after = vec![qdq_node(
            "QuantizeLinear",
            q_name,
            &[source.clone(), scale.clone(), zp.clone()],
            q_out.clone(),
            None,
        )];
        if source != *t {
            let dq_name = names.fresh(&format!("{t}{DQ_NODE}"));
            after.push(qdq_node(
                "DequantizeLinear",
                dq_name,
                &[q_out.clone(), scale.clone(), zp.clone()],
                t.clone(),
                None,
            ));
            stats.dequantize_nodes += 1;
        }
        stats.quantize_nodes += 1;
        q_nodes_after.entry(producer).or_default().extend(after);
        quantized_name.insert(t.clone(), [q_out, scale, zp]);
    }

    // Weights, once per distinct (tensor, axis, scales).
    let mut weight_cache: HashMap<WeightKey, (String, String, Option<String>)> = HashMap::new();
    let mut weight_scales: Vec<QuantizedWeight> = Vec::with_capacity(plan.weights.len());
    let mut weight_inputs: HashMap<(usize, usize), Folded> = HashMap::new();
    let constant = |name: &str| -> Result<(Vec<f32>, Vec<i64>)> {
        let t = index
            .constant(name)
            .ok_or_else(|| Error::Model(format!("weight '{name}' is not a constant")))?;
        let values =
            tensor::to_f32(&t).map_err(|e| Error::Model(format!("weight '{name}': {e}")))?;
        Ok((values, t.dims.clone()))
    };
    // Bias overflow may raise weight scales: compute biases' needs first.
    let mut raised: HashMap<usize, Vec<(usize, f32)>> = HashMap::new();
    for b in &plan.biases {
        let w = &plan.weights[b.weight];
        let (wv, wd) = constant(&w.tensor)?;
        let qw = quantize_weight(&wv, &wd, w.axis);
        let (bv, _) = constant(&b.tensor)?;
        let s_in = input_scale(plan, &renames, &b.activation)?;
        if let Err(over) = quantize_bias(&bv, s_in, &qw.scales, b.alpha) {
            raised.entry(b.weight).or_default().extend(over);
        }
    }
    for (wi, w) in plan.weights.iter().enumerate() {
        let (values, dims) = constant(&w.tensor)?;
        let mut qw = quantize_weight(&values, &dims, w.axis);
        if let Some(fixes) = raised.get(&wi) {
            let mut scales = qw.scales.clone();
            for &(c, need) in fixes {
                let c = if scales.len() == 1 { 0 } else { c };
                scales[c] = scales[c].max(need);
                stats.bias_overflow_fixes += 1;
            }
            qw = requantize(&values, &dims, w.axis, scales);
        }
        let with_zero_point = original.node[w.node].op_type() == "Gemm";
        let key = (
            w.tensor.clone(),
            w.axis,
            qw.scales.iter().map(|s| s.to_bits()).collect(),
            with_zero_point,
        );
        let entry = weight_cache.entry(key).or_insert_with(|| {
            let q = names.fresh(&format!("{}{QUANTIZED}", w.tensor));
            let s = names.fresh(&format!("{}{SCALE}", w.tensor));
            let c = channels(&dims, w.axis);
            let sdims: Vec<i64> = if w.axis.is_some() {
                vec![c as i64]
            } else {
                vec![]
            };
            new_inits.push(tensor::from_raw(
                &q,
                DataType::Int8,
                &dims,
                qw.values.iter().map(|&v| v as u8).collect(),
            ));
            new_inits.push(tensor::from_f32(&s, &sdims, &qw.scales));
            let z = with_zero_point.then(|| {
                let z = names.fresh(&format!("{}{ZERO_POINT}", w.tensor));
                new_inits.push(tensor::from_raw(&z, DataType::Int8, &sdims, vec![0; c]));
                z
            });
            stats.weights += 1;
            (q, s, z)
        });
        weight_inputs.insert(
            (w.node, w.input),
            (entry.0.clone(), entry.1.clone(), entry.2.clone(), w.axis),
        );
        weight_scales.push(qw);
    }
    let mut bias_inputs: HashMap<(usize, usize), Folded> = HashMap::new();
    for b in &plan.biases {
        let qw = &weight_scales[b.weight];
        let (bv, bd) = constant(&b.tensor)?;
        let s_in = input_scale(plan, &renames, &b.activation)?;
        let (q, scales) = quantize_bias(&bv, s_in, &qw.scales, b.alpha).map_err(|_| {
            Error::Model(format!(
                "bias '{}' still overflows int32 after raising weight scales",
                b.tensor
            ))
        })?;
        let qn = names.fresh(&format!("{}{QUANTIZED}", b.tensor));
        let sn = names.fresh(&format!("{}{SCALE}", b.tensor));
        let per_channel = qw.axis.is_some();
        let sdims: Vec<i64> = if per_channel {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        let scales = if per_channel {
            scales
        } else {
            vec![scales.first().copied().unwrap_or(1.0)]
        };
        new_inits.push(tensor::from_raw(
            &qn,
            DataType::Int32,
            &bd,
            q.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        new_inits.push(tensor::from_f32(&sn, &sdims, &scales));
        stats.biases += 1;
        bias_inputs.insert((b.node, b.input), (qn, sn, None, per_channel.then_some(0)));
    }

    let mut dynamic = dynamic::rewrite(&index, plan, &mut names)?;
    stats.dynamic_quantize_nodes = dynamic.after.len();
    for (producer, node) in dynamic.after.drain(..) {
        q_nodes_after.entry(producer).or_default().push(node);
    }
    new_inits.append(&mut dynamic.initializers);
    stats.weights += dynamic.weights.len();
    stats.dynamic_kernels = std::mem::take(&mut dynamic.kernels);
    stats.weight_errors = std::mem::take(&mut dynamic.weights);
    let mut weight_only = weight_only::rewrite(&index, plan, &mut names, weights, store)?;
    new_inits.append(&mut weight_only.initializers);
    stats.weights += weight_only.weights.len();
    stats.weight_errors.append(&mut weight_only.weights);
    dynamic.replaced.extend(weight_only.replaced.drain());
    dynamic.uses_ms_domain |= weight_only.uses_ms_domain;

    // Rebuild the node list in order: Q for quantized graph inputs first, then for each node
    // the DQs it reads, the node itself (or what replaces it), and the Qs of its outputs.
    let mut nodes: Vec<NodeProto> = q_nodes_after.remove(&None).unwrap_or_default();
    for (n, original_node) in original.node.iter().enumerate() {
        if plan.absorbed.contains_key(&n) {
            continue;
        }
        if let Some(replacement) = dynamic.replaced.remove(&n) {
            nodes.extend(replacement);
            nodes.extend(q_nodes_after.remove(&Some(n)).unwrap_or_default());
            continue;
        }
        let mut node = original_node.clone();
        if dynamic.swap_add_inputs.contains(&n) {
            node.input.swap(0, 1);
        }
        for (slot, input) in node.input.iter_mut().enumerate() {
            if input.is_empty() {
                continue;
            }
            if let Some(r) = renames.get(input) {
                *input = r.clone();
            }
            let folded = weight_inputs
                .get(&(n, slot))
                .or_else(|| bias_inputs.get(&(n, slot)));
            if let Some((q, s, z, axis)) = folded {
                let out = names.fresh(&format!("{input}{DEQUANTIZED}"));
                let dq = names.fresh(&format!("{input}{DQ_NODE}"));
                nodes.push(qdq_node(
                    "DequantizeLinear",
                    dq,
                    &[q.clone(), s.clone()]
                        .into_iter()
                        .chain(z.clone())
                        .collect::<Vec<_>>(),
                    out.clone(),
                    *axis,
                ));
                stats.dequantize_nodes += 1;
                *input = out;
                continue;
            }
            if outputs.contains(input.as_str()) && producer_renames.contains_key(input.as_str()) {
                continue; // reads the restored graph output, already dequantized
            }
            if let Some(qsz) = quantized_name.get(input.as_str()) {
                let out = names.fresh(&format!("{input}{DEQUANTIZED}"));
                let dq = names.fresh(&format!("{input}{DQ_NODE}"));
                nodes.push(qdq_node(
                    "DequantizeLinear",
                    dq,
                    &qsz[..],
                    out.clone(),
                    None,
                ));
                stats.dequantize_nodes += 1;
                *input = out;
            }
        }
        for out in node.output.iter_mut() {
            if let Some(pre) = producer_renames.get(out.as_str()) {
                *out = pre.clone();
            }
        }
        nodes.push(node);
        if let Some(after) = q_nodes_after.remove(&Some(n)) {
            nodes.extend(after);
        }
    }
    graph.node = nodes;
    graph.initializer.extend(new_inits);
    remove_unused_initializers(graph);
    if dynamic.uses_ms_domain && !model.opset_import.iter().any(|o| o.domain() == MS_DOMAIN) {
        model
            .opset_import
            .push(crate::onnx::pb::OperatorSetIdProto {
                domain: Some(MS_DOMAIN.into()),
                version: Some(1),
            });
    }
    Ok(stats)
}

/// The quantized initializer replacing constant `name` when it is an initializer that cannot
/// be overridden (not a graph input), else `None`.
fn fold_constant_activation(
    index: &GraphIndex,
    graph_inputs: &HashSet<&str>,
    name: &str,
    quantized_name: &str,
    p: &ActParams,
) -> Result<Option<TensorProto>> {
    if graph_inputs.contains(name)
        || !matches!(
            index.producer(name),
            Some(crate::graph::Producer::Initializer(_))
        )
    {
        return Ok(None);
    }
    let Some(t) = index.constant(name) else {
        return Ok(None);
    };
    let values = tensor::to_f32(&t).map_err(|e| Error::Model(format!("tensor '{name}': {e}")))?;
    let (lo, hi) = p.qrange();
    let q = values.iter().map(|&v| {
        // QuantizeLinear's rounding: half to even, then saturate.
        ((v / p.scale).round_ties_even() as i64 + p.zero_point as i64).clamp(lo as i64, hi as i64)
    });
    Ok(Some(integer_tensor(quantized_name, p.ty, &t.dims, q)))
}

/// Scale of a bias's activation input, following the rename of an absorbed Relu.
fn input_scale(plan: &Plan, renames: &HashMap<String, String>, activation: &str) -> Result<f32> {
    let name = renames
        .get(activation)
        .map(String::as_str)
        .unwrap_or(activation);
    plan.activations.get(name).map(|p| p.scale).ok_or_else(|| {
        Error::Model(format!(
            "internal error: activation '{name}' has no parameters"
        ))
    })
}

/// Drops initializers nothing reads any more (the float weights that were folded).
fn remove_unused_initializers(graph: &mut GraphProto) {
    let mut used: HashSet<String> = HashSet::new();
    for node in &graph.node {
        used.extend(crate::graph::node_uses(node));
    }
    used.extend(graph.output.iter().map(|o| o.name().to_string()));
    used.extend(graph.input.iter().map(|i| i.name().to_string()));
    graph.initializer.retain(|t| used.contains(t.name()));
}
