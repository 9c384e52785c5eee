//! Dynamic mode's planner: the same walk over the graph index as the static planner, but
//! the decisions come from [`DYNAMIC_RULES`]: weights of MatMul, Gemm and LSTM become int8,
//! embedding tables 8-bit, and activations get no calibrated parameters at all (the runtime
//! quantizes them from their actual range). Nothing here reads data.

use super::{is_constant, FloatReason, Plan, PlanConfig};
use crate::graph::GraphIndex;
use crate::onnx::attr;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::NodeProto;
use crate::quantize::params::{ActParams, ActType};
use crate::quantize::rules::{dynamic_rule_for, DynamicRole};

/// An op dynamic mode quantizes.
#[derive(Debug, Clone, PartialEq)]
pub enum DynamicUse {
    /// MatMul or Gemm: `MatMulInteger` on the activation quantized at run time.
    MatMul(DynamicMatMul),
    /// Gather on a constant table: the table stored 8-bit, the gathered rows dequantized.
    Table {
        /// The Gather node.
        node: usize,
        /// The float table.
        table: String,
        /// Its 8-bit parameters (from the table's own range).
        params: ActParams,
    },
    /// LSTM with constant W and R: `com.microsoft.DynamicQuantizeLSTM`.
    Lstm {
        /// The LSTM node.
        node: usize,
        /// How W and R are stored.
        format: WeightFormat,
    },
}

/// How a dynamic op's weights are stored: symmetric int8 in `[-qmax, qmax]`, per output
/// channel or per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightFormat {
    /// One scale per output channel.
    pub per_channel: bool,
    /// 127, or 63 for the reduced range.
    pub qmax: i8,
}

impl DynamicUse {
    /// The node this use rewrites.
    pub fn node(&self) -> usize {
        match self {
            DynamicUse::MatMul(m) => m.node,
            DynamicUse::Table { node, .. } | DynamicUse::Lstm { node, .. } => *node,
        }
    }
}

/// A MatMul or Gemm turned into `DynamicQuantizeLinear → MatMulInteger → Cast → Mul`.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicMatMul {
    /// The MatMul or Gemm node.
    pub node: usize,
    /// Its float input A, quantized at run time.
    pub activation: String,
    /// Its constant B.
    pub weight: String,
    /// How B is stored.
    pub format: WeightFormat,
    /// B is stored `[N, K]` (Gemm with transB) and is transposed to `[K, N]` when quantized.
    pub transposed: bool,
    /// Gemm's `alpha`, folded into the weight scales (1 for MatMul).
    pub alpha: f32,
    /// Gemm's constant C and `beta`, added after the scale multiply.
    pub bias: Option<(String, f32)>,
    /// The Add right after a MatMul that adds a constant bias along N, and the slot of that
    /// bias: the rewrite makes it the Add's second input, the layout ONNX Runtime's
    /// MatMulIntegerToFloat fusion absorbs.
    pub bias_add: Option<(usize, usize)>,
}

/// Plans dynamic quantization of `index`'s graph in topological order.
pub(super) fn plan(index: &GraphIndex, order: &[usize], config: &PlanConfig) -> Plan {
    let graph = index.graph();
    let mut p = Plan::default();
    for &n in order {
        match decide(index, &graph.node[n], n, config) {
            Ok(d) => {
                p.quantized.insert(n);
                p.dynamic.push(d);
            }
            Err(reason) => {
                p.float.insert(n, reason);
            }
        }
    }
    p
}

fn is_float(index: &GraphIndex, name: &str) -> bool {
    index
        .tensor_type(name)
        .is_some_and(|t| t.elem_type == DataType::Float)
}

/// The dims of a float constant.
fn constant_dims(index: &GraphIndex, name: &str) -> Option<Vec<i64>> {
    (is_constant(index, name) && is_float(index, name))
        .then(|| index.constant(name).map(|t| t.dims.clone()))
        .flatten()
}

fn decide(
    index: &GraphIndex,
    node: &NodeProto,
    n: usize,
    config: &PlanConfig,
) -> Result<DynamicUse, FloatReason> {
    super::user_choices(node, n, config)?;
    let input = |i: usize| node.input.get(i).filter(|s| !s.is_empty());
    let format = WeightFormat {
        per_channel: config.per_channel,
        qmax: if config.reduce_range { 63 } else { 127 },
    };
    let role = dynamic_rule_for(node.op_type()).ok_or(FloatReason::NoRule)?;
    if let Some(out) = node.output.first() {
        if !is_float(index, out) && role != DynamicRole::Lstm {
            return Err(FloatReason::NotFloat(out.clone()));
        }
    }
    match role {
        DynamicRole::Float(why) => Err(FloatReason::Unsupported(why)),
        DynamicRole::MatMul | DynamicRole::Gemm => {
            let (Some(a), Some(b)) = (input(0), input(1)) else {
                return Err(FloatReason::Unsupported("an input is missing"));
            };
            if !is_float(index, a) || is_constant(index, a) {
                return Err(FloatReason::NotFloat(a.clone()));
            }
            let dims =
                constant_dims(index, b).ok_or_else(|| FloatReason::WeightNotConstant(b.clone()))?;
            if dims.len() != 2 {
                return Err(FloatReason::Unsupported(
                    "dynamic mode: the weight is not a 2-D matrix",
                ));
            }
            let gemm = role == DynamicRole::Gemm;
            let int = |name: &str| attr::int(node, name).ok().flatten().unwrap_or(0);
            let float = |name: &str| attr::float(node, name).ok().flatten().unwrap_or(1.0);
            if gemm && int("transA") != 0 {
                return Err(FloatReason::Unsupported(
                    "dynamic mode: Gemm with transA is left float",
                ));
            }
            let bias = match input(2).filter(|_| gemm) {
                None => None,
                Some(c) if constant_dims(index, c).is_some() => Some((c.clone(), float("beta"))),
                Some(_) => {
                    return Err(FloatReason::Unsupported(
                        "dynamic mode: Gemm's C is not a constant",
                    ))
                }
            };
            let transposed = gemm && int("transB") != 0;
            let n_out = if transposed { dims[0] } else { dims[1] };
            Ok(DynamicUse::MatMul(DynamicMatMul {
                node: n,
                activation: a.clone(),
                weight: b.clone(),
                format,
                transposed,
                alpha: if gemm { float("alpha") } else { 1.0 },
                bias,
                bias_add: (!gemm).then(|| bias_add(index, node, n_out)).flatten(),
            }))
        }
        DynamicRole::Table => {
            let table = input(0).ok_or(FloatReason::Unsupported("an input is missing"))?;
            let values = index
                .constant(table)
                .filter(|_| is_float(index, table) && is_constant(index, table))
                .ok_or_else(|| FloatReason::WeightNotConstant(table.clone()))?;
            let values = crate::onnx::tensor::to_f32(&values)
                .map_err(|_| FloatReason::WeightNotConstant(table.clone()))?;
            let (lo, hi) = values
                .iter()
                .filter(|v| v.is_finite())
                .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            Ok(DynamicUse::Table {
                node: n,
                table: table.clone(),
                params: ActParams::from_range(lo, hi, ActType::U8),
            })
        }
        DynamicRole::Lstm => {
            let (Some(x), Some(w), Some(r)) = (input(0), input(1), input(2)) else {
                return Err(FloatReason::Unsupported("an input is missing"));
            };
            if !is_float(index, x) {
                return Err(FloatReason::NotFloat(x.clone()));
            }
            for weight in [w, r] {
                let dims = constant_dims(index, weight)
                    .ok_or_else(|| FloatReason::WeightNotConstant(weight.clone()))?;
                if dims.len() != 3 {
                    return Err(FloatReason::Unsupported(
                        "dynamic mode: LSTM weights are not 3-D",
                    ));
                }
            }
            if attr::int(node, "layout").ok().flatten().unwrap_or(0) != 0 {
                return Err(FloatReason::Unsupported(
                    "dynamic mode: DynamicQuantizeLSTM has no batch-first layout",
                ));
            }
            Ok(DynamicUse::Lstm { node: n, format })
        }
    }
}

/// The Add that alone reads the MatMul's output and adds a constant `[N]` (or `[1, …, N]`)
/// bias, with the bias's slot.
fn bias_add(index: &GraphIndex, node: &NodeProto, n_out: i64) -> Option<(usize, usize)> {
    let out = node.output.first()?;
    let graph = index.graph();
    if graph.output.iter().any(|o| o.name() == out.as_str()) {
        return None;
    }
    let [add] = index.consumers(out) else {
        return None;
    };
    let add_node = &graph.node[*add];
    if add_node.op_type() != "Add" || add_node.input.len() != 2 {
        return None;
    }
    let slot = usize::from(add_node.input[0] == *out);
    let bias = &add_node.input[slot];
    if add_node.input[1 - slot] != *out || bias == out {
        return None;
    }
    let dims = constant_dims(index, bias)?;
    let fits =
        dims.last() == Some(&n_out) && n_out > 1 && dims[..dims.len() - 1].iter().all(|&d| d == 1);
    // The Add's output must keep the MatMul output's shape for the fusion to be exact.
    let out_rank = index
        .tensor_type(out)
        .and_then(|t| t.shape)
        .map(|s| s.len());
    let keeps_rank =
        out_rank.is_some_and(|r| r >= dims.len()) || out_rank.is_none() && dims.len() == 1;
    (fits && keeps_rank).then_some((*add, slot))
}
