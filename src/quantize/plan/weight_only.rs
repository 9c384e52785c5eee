//! Weight-only mode's planner: MatMul/Gemm weights and embedding tables are stored in 4 or 8
//! bits in blocks along the reduction axis; activations stay float. Nothing here reads data
//! beyond the weights' shapes.

use super::{is_constant, FloatReason, Plan, PlanConfig};
use crate::graph::GraphIndex;
use crate::onnx::attr;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::NodeProto;
use crate::quantize::blockwise::{Algorithm, BlockSpec, Hessian};

/// Which output form weight-only mode writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightForm {
    /// ONNX Runtime's `com.microsoft.MatMulNBits` and `GatherBlockQuantized`.
    #[default]
    OnnxRuntime,
    /// Standard ONNX: INT4/UINT4 or INT8/UINT8 initializers behind a blocked
    /// `DequantizeLinear` (opset 21), portable to any runtime.
    Standard,
}

/// Weight-only mode's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightOnlyConfig {
    /// Bits of MatMul/Gemm weights: 4 or 8.
    pub bits: u8,
    /// Bits of embedding tables: 4 or 8.
    pub table_bits: u8,
    /// Values per block along the reduction axis; `None`: one block per output channel.
    pub block: Option<usize>,
    /// Symmetric (no zero points) or asymmetric.
    pub symmetric: bool,
    /// Rounding algorithm.
    pub algorithm: Algorithm,
    /// Output form.
    pub form: WeightForm,
    /// Nodes the accuracy search raised to 8 bits.
    pub eight_bit_nodes: std::collections::BTreeSet<usize>,
    /// GPTQ's input statistics, by the name of the MatMul input they were gathered on.
    pub hessians: Hessians,
    /// MatMulNBits' `accuracy_level` (ONNX Runtime: 0 float compute, 4 int8 compute of the
    /// activations by block); `None`: 4 for 4-bit weights (what ONNX Runtime picks when it
    /// fuses the standard form, about 1.5x faster), 0 for 8-bit ones (chosen for accuracy).
    pub accuracy_level: Option<u8>,
}

/// The Hessians GPTQ reads, shared between the plans of an accuracy search.
#[derive(Clone, Default)]
pub struct Hessians(pub std::sync::Arc<std::collections::BTreeMap<String, Hessian>>);

impl std::fmt::Debug for Hessians {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hessians({} inputs)", self.0.len())
    }
}

impl PartialEq for Hessians {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for WeightOnlyConfig {
    /// 4-bit weights and 8-bit tables, block 32, symmetric, clipping search, MatMulNBits.
    fn default() -> Self {
        WeightOnlyConfig {
            bits: 4,
            table_bits: 8,
            block: Some(32),
            symmetric: true,
            algorithm: Algorithm::Clip,
            form: WeightForm::OnnxRuntime,
            eight_bit_nodes: Default::default(),
            hessians: Hessians::default(),
            accuracy_level: None,
        }
    }
}

/// An op whose weight is stored block-quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightOnlyUse {
    /// The MatMul, Gemm or Gather node.
    pub node: usize,
    /// The float weight or table.
    pub weight: String,
    /// The float input the weight multiplies (GPTQ's statistics are gathered on it); the
    /// indices for a table.
    pub activation: String,
    /// What the node is.
    pub kind: WeightOnlyKind,
    /// K (the reduction axis, a table's row length) and N (outputs, a table's rows).
    pub k: usize,
    /// See `k`.
    pub n: usize,
    /// How it is quantized.
    pub spec: BlockSpec,
    /// Output form.
    pub form: WeightForm,
    /// MatMulNBits' `accuracy_level`.
    pub accuracy_level: u8,
}

/// The kind of op a weight-only use rewrites.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightOnlyKind {
    /// MatMul (or Gemm) with a constant B; `transposed` when B is stored `[N, K]`.
    MatMul {
        /// B stored `[N, K]` (Gemm's transB).
        transposed: bool,
        /// Gemm's alpha (folded into the scales).
        alpha: f32,
        /// Gemm's constant C and beta, added after.
        bias: Option<(String, f32)>,
    },
    /// Gather on axis 0 of a constant `[rows, dim]` table, blocks along `dim`.
    Table,
}

/// The block for a table row of `dim` values: the largest power of two up to 256 that
/// divides it (fewer scales, and ONNX Runtime's GatherBlockQuantized wants powers of two),
/// else 32.
fn table_block(dim: usize, asked: Option<usize>) -> usize {
    if let Some(b) = asked.filter(|&b| b < 64) {
        return b;
    }
    (4..=8)
        .rev()
        .map(|p| 1usize << p)
        .find(|b| dim.is_multiple_of(*b))
        .unwrap_or(32)
}

pub(super) fn plan(index: &GraphIndex, order: &[usize], config: &PlanConfig) -> Plan {
    let graph = index.graph();
    let mut p = Plan {
        weight_only_hessians: config.weight_only.hessians.clone(),
        ..Plan::default()
    };
    for &n in order {
        match decide(index, &graph.node[n], n, config) {
            Ok(u) => {
                p.quantized.insert(n);
                p.weight_only.push(u);
            }
            Err(reason) => {
                p.float.insert(n, reason);
            }
        }
    }
    p
}

fn float_constant_dims(index: &GraphIndex, name: &str) -> Option<Vec<i64>> {
    let float = index
        .tensor_type(name)
        .is_some_and(|t| t.elem_type == DataType::Float);
    (float && is_constant(index, name))
        .then(|| index.constant(name).map(|t| t.dims.clone()))
        .flatten()
}

fn decide(
    index: &GraphIndex,
    node: &NodeProto,
    n: usize,
    config: &PlanConfig,
) -> Result<WeightOnlyUse, FloatReason> {
    super::user_choices(node, n, config)?;
    let w = &config.weight_only;
    let eight = w.eight_bit_nodes.contains(&n);
    let input = |i: usize| node.input.get(i).filter(|s| !s.is_empty());
    let int = |name: &str| attr::int(node, name).ok().flatten().unwrap_or(0);
    let float = |name: &str| attr::float(node, name).ok().flatten().unwrap_or(1.0);
    match node.op_type() {
        "MatMul" | "Gemm" => {
            let gemm = node.op_type() == "Gemm";
            let b = input(1).ok_or(FloatReason::Unsupported("an input is missing"))?;
            let dims = float_constant_dims(index, b)
                .ok_or_else(|| FloatReason::WeightNotConstant(b.clone()))?;
            if dims.len() != 2 {
                return Err(FloatReason::Unsupported(
                    "weight-only mode: the weight is not a 2-D matrix",
                ));
            }
            if gemm && int("transA") != 0 {
                return Err(FloatReason::Unsupported(
                    "weight-only mode: Gemm with transA is left float",
                ));
            }
            let bias = match input(2).filter(|_| gemm) {
                None => None,
                Some(c) if float_constant_dims(index, c).is_some() => {
                    Some((c.clone(), float("beta")))
                }
                Some(_) => {
                    return Err(FloatReason::Unsupported(
                        "weight-only mode: Gemm's C is not a constant",
                    ))
                }
            };
            let transposed = gemm && int("transB") != 0;
            let (k, nn) = if transposed {
                (dims[1], dims[0])
            } else {
                (dims[0], dims[1])
            };
            let bits = if eight { 8 } else { w.bits };
            let block = match (w.block, w.form) {
                (Some(b), _) => b,
                // Per channel: one block spanning K. MatMulNBits takes powers of two from
                // 16 to 256: K is padded up to one, and a longer K is cut in blocks of 256.
                (None, WeightForm::Standard) => k.max(1) as usize,
                (None, WeightForm::OnnxRuntime) => {
                    (k.max(16) as usize).next_power_of_two().min(256)
                }
            };
            let a = input(0).ok_or(FloatReason::Unsupported("an input is missing"))?;
            // GPTQ needs the input's statistics; without them, the clipping search.
            let algorithm = match w.algorithm {
                Algorithm::Gptq if !w.hessians.0.contains_key(a.as_str()) => Algorithm::Clip,
                other => other,
            };
            Ok(WeightOnlyUse {
                node: n,
                weight: b.clone(),
                activation: a.clone(),
                kind: WeightOnlyKind::MatMul {
                    transposed,
                    alpha: if gemm { float("alpha") } else { 1.0 },
                    bias,
                },
                k: k.max(0) as usize,
                n: nn.max(0) as usize,
                spec: BlockSpec {
                    bits,
                    block,
                    symmetric: w.symmetric,
                    algorithm,
                },
                form: w.form,
                accuracy_level: w.accuracy_level.unwrap_or(if bits == 4 { 4 } else { 0 }),
            })
        }
        "Gather" => {
            let table = input(0).ok_or(FloatReason::Unsupported("an input is missing"))?;
            let dims = float_constant_dims(index, table)
                .ok_or_else(|| FloatReason::WeightNotConstant(table.clone()))?;
            if dims.len() != 2 || int("axis") != 0 {
                return Err(FloatReason::Unsupported(
                    "weight-only mode: only Gather on axis 0 of a 2-D table is quantized",
                ));
            }
            let (rows, dim) = (dims[0].max(0) as usize, dims[1].max(0) as usize);
            if rows * dim < 4096 {
                return Err(FloatReason::Unsupported(
                    "weight-only mode: table too small to be worth quantizing",
                ));
            }
            Ok(WeightOnlyUse {
                node: n,
                weight: table.clone(),
                activation: node.input.get(1).cloned().unwrap_or_default(),
                kind: WeightOnlyKind::Table,
                k: dim,
                n: rows,
                spec: BlockSpec {
                    bits: if eight { 8 } else { w.table_bits },
                    block: table_block(dim, w.block),
                    symmetric: w.symmetric,
                    // A table has no input statistics for GPTQ, and --algorithm rtn exists
                    // to compare the matrices with ONNX Runtime's RTN (which leaves tables
                    // float): tables always get the clipping search.
                    algorithm: Algorithm::Clip,
                },
                form: w.form,
                accuracy_level: 0,
            })
        }
        _ => Err(FloatReason::NoRule),
    }
}
