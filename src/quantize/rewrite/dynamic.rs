//! Dynamic mode's part of the rewrite: each planned MatMul/Gemm becomes
//! `MatMulInteger(DynamicQuantizeLinear(A), B_int8) → Cast → Mul(A_scale · B_scale)`, the layout
//! ONNX Runtime's optimizer fuses into `MatMulIntegerToFloat` (bias Add included) or, when the
//! activation has no other quantized consumer, `DynamicQuantizeMatMul`; one
//! `DynamicQuantizeLinear` per activation serves all its consumers. Embedding tables are stored
//! 8-bit and only the gathered rows are dequantized. LSTMs become
//! `com.microsoft.DynamicQuantizeLSTM`.

use std::collections::{BTreeMap, HashMap};

use super::{attr_int, integer_tensor, QUANTIZED, SCALE, ZERO_POINT};
use crate::error::{Error, Result};
use crate::graph::{GraphIndex, Names, Producer};
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{NodeProto, TensorProto};
use crate::onnx::tensor;
use crate::quantize::params::{quantize_weight_to, weight_sqnr_db, ActParams};
use crate::quantize::plan::{DynamicMatMul, DynamicUse, Plan, WeightFormat};

/// ONNX Runtime's contrib-op domain.
pub const MS_DOMAIN: &str = "com.microsoft";

/// One weight as written, with its error against the float values.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WeightError {
    /// The float weight.
    pub tensor: String,
    /// How it is stored, e.g. "int8 per-channel [-127, 127]".
    pub format: String,
    /// SQNR of the dequantized weight against the float one, in dB.
    pub sqnr_db: f64,
}

/// The kernel ONNX Runtime is expected to run for one dynamic MatMul/Gemm.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DynamicKernel {
    /// The MatMul or Gemm node.
    pub node: String,
    /// `DynamicQuantizeMatMul` when the activation feeds only this op, else
    /// `MatMulIntegerToFloat`.
    pub kernel: &'static str,
    /// Whether the bias Add is absorbed into the fused kernel (else it runs after it).
    pub bias_fused: bool,
}

/// What dynamic mode adds to the graph, for [`super::rewrite`] to place.
#[derive(Default)]
pub(super) struct DynamicRewrite {
    /// The nodes that take the place of node `n`.
    pub replaced: HashMap<usize, Vec<NodeProto>>,
    /// `DynamicQuantizeLinear` nodes, after their activation's producer (`None`: graph inputs).
    pub after: Vec<(Option<usize>, NodeProto)>,
    /// Add nodes whose bias moves from slot 0 to slot 1.
    pub swap_add_inputs: Vec<usize>,
    /// New initializers.
    pub initializers: Vec<TensorProto>,
    /// Whether a `com.microsoft` op was written.
    pub uses_ms_domain: bool,
    /// Every weight and table written, with its error.
    pub weights: Vec<WeightError>,
    /// Every dynamic MatMul/Gemm with the kernel expected for it.
    pub kernels: Vec<DynamicKernel>,
}

fn node(op: &str, name: String, inputs: Vec<String>, outputs: Vec<String>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input: inputs,
        output: outputs,
        ..Default::default()
    }
}

fn format_name(f: WeightFormat) -> String {
    format!(
        "int8 {} [-{q}, {q}]",
        if f.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        q = f.qmax
    )
}

/// A float constant's values and dims.
fn constant(index: &GraphIndex, name: &str) -> Result<(Vec<f32>, Vec<i64>)> {
    let t = index
        .constant(name)
        .ok_or_else(|| Error::Model(format!("weight '{name}' is not a constant")))?;
    let values = tensor::to_f32(&t).map_err(|e| Error::Model(format!("weight '{name}': {e}")))?;
    Ok((values, t.dims.clone()))
}

/// `[rows, cols]` row-major values transposed to `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Builds everything dynamic mode writes for `plan`.
pub(super) fn rewrite(
    index: &GraphIndex,
    plan: &Plan,
    names: &mut Names,
) -> Result<DynamicRewrite> {
    let graph = index.graph();
    let mut out = DynamicRewrite::default();
    // One DynamicQuantizeLinear per activation, shared by every quantized consumer.
    let mut consumers: BTreeMap<&str, usize> = BTreeMap::new();
    for u in &plan.dynamic {
        if let DynamicUse::MatMul(m) = u {
            *consumers.entry(m.activation.as_str()).or_default() += 1;
        }
    }
    let mut quantized_acts: HashMap<String, [String; 3]> = HashMap::new();
    for &act in consumers.keys() {
        let q = [
            names.fresh(&format!("{act}{QUANTIZED}")),
            names.fresh(&format!("{act}{SCALE}")),
            names.fresh(&format!("{act}{ZERO_POINT}")),
        ];
        let producer = match index.producer(act) {
            Some(Producer::Node { node, .. }) => Some(node),
            _ => None,
        };
        let name = names.fresh(&format!("{act}_DynamicQuantize"));
        out.after.push((
            producer,
            node(
                "DynamicQuantizeLinear",
                name,
                vec![act.to_string()],
                q.to_vec(),
            ),
        ));
        quantized_acts.insert(act.to_string(), q);
    }
    let mut weight_cache: HashMap<(String, bool, WeightFormat, u32), (String, String)> =
        HashMap::new();
    let mut table_cache: HashMap<String, (String, String, String)> = HashMap::new();
    for u in &plan.dynamic {
        let n = u.node();
        let original = &graph.node[n];
        let base = if original.name().is_empty() {
            original.output.first().cloned().unwrap_or_default()
        } else {
            original.name().to_string()
        };
        match u {
            DynamicUse::MatMul(m) => {
                let (w_q, w_s) = match weight_cache.get(&(
                    m.weight.clone(),
                    m.transposed,
                    m.format,
                    m.alpha.to_bits(),
                )) {
                    Some(w) => w.clone(),
                    None => {
                        let w = matmul_weight(index, m, names, &mut out)?;
                        weight_cache.insert(
                            (m.weight.clone(), m.transposed, m.format, m.alpha.to_bits()),
                            w.clone(),
                        );
                        w
                    }
                };
                let [a_q, a_s, a_zp] = quantized_acts[&m.activation].clone();
                let y = original.output[0].clone();
                let int_out = names.fresh(&format!("{y}_int32"));
                let float_out = names.fresh(&format!("{y}_float"));
                let scale_out = names.fresh(&format!("{y}_scale"));
                let mut nodes = vec![
                    node(
                        "MatMulInteger",
                        names.fresh(&format!("{base}_MatMulInteger")),
                        vec![a_q, w_q, a_zp],
                        vec![int_out.clone()],
                    ),
                    NodeProto {
                        attribute: vec![attr_int("to", DataType::Float as i64)],
                        ..node(
                            "Cast",
                            names.fresh(&format!("{base}_Cast")),
                            vec![int_out],
                            vec![float_out.clone()],
                        )
                    },
                    // a_scale first, b_scale second: MatMulIntegerToFloat takes them in
                    // that order from this Mul.
                    node(
                        "Mul",
                        names.fresh(&format!("{base}_ScaleProduct")),
                        vec![a_s, w_s],
                        vec![scale_out.clone()],
                    ),
                ];
                let mut bias_fused = m.bias_add.is_some();
                match &m.bias {
                    None => nodes.push(node(
                        "Mul",
                        names.fresh(&format!("{base}_Rescale")),
                        vec![float_out, scale_out],
                        vec![y],
                    )),
                    Some((c, beta)) => {
                        let unbiased = names.fresh(&format!("{y}_unbiased"));
                        nodes.push(node(
                            "Mul",
                            names.fresh(&format!("{base}_Rescale")),
                            vec![float_out, scale_out],
                            vec![unbiased.clone()],
                        ));
                        let (values, dims) = constant(index, c)?;
                        let bias = if *beta == 1.0 {
                            c.clone()
                        } else {
                            let scaled: Vec<f32> = values.iter().map(|v| v * beta).collect();
                            let name = names.fresh(&format!("{c}_beta"));
                            out.initializers
                                .push(tensor::from_f32(&name, &dims, &scaled));
                            name
                        };
                        bias_fused = dims.len() == 1 && dims[0] > 1;
                        nodes.push(node(
                            "Add",
                            names.fresh(&format!("{base}_Bias")),
                            vec![unbiased, bias],
                            vec![y],
                        ));
                    }
                }
                if let Some((add, slot)) = m.bias_add {
                    if slot == 0 {
                        out.swap_add_inputs.push(add);
                    }
                }
                out.kernels.push(DynamicKernel {
                    node: crate::onnx::walk::node_label(original),
                    kernel: if consumers[m.activation.as_str()] == 1 {
                        "DynamicQuantizeMatMul"
                    } else {
                        "MatMulIntegerToFloat"
                    },
                    bias_fused,
                });
                out.replaced.insert(n, nodes);
            }
            DynamicUse::Table {
                table,
                params,
                node: _,
            } => {
                let (q, s, zp) = match table_cache.get(table) {
                    Some(t) => t.clone(),
                    None => {
                        let t = quantized_table(index, table, params, names, &mut out)?;
                        table_cache.insert(table.clone(), t.clone());
                        t
                    }
                };
                let y = original.output[0].clone();
                let gathered = names.fresh(&format!("{y}{QUANTIZED}"));
                let mut inputs = original.input.clone();
                inputs[0] = q;
                let gather = NodeProto {
                    name: Some(names.fresh(&format!("{base}_GatherQuantized"))),
                    input: inputs,
                    output: vec![gathered.clone()],
                    ..original.clone()
                };
                let dq = node(
                    "DequantizeLinear",
                    names.fresh(&format!("{base}_DequantizeRows")),
                    vec![gathered, s, zp],
                    vec![y],
                );
                out.replaced.insert(n, vec![gather, dq]);
            }
            DynamicUse::Lstm { format, .. } => {
                let lstm = quantized_lstm(index, original, *format, names, &mut out)?;
                out.uses_ms_domain = true;
                out.replaced.insert(n, vec![lstm]);
            }
        }
    }
    Ok(out)
}

/// B of a dynamic MatMul as int8 `[K, N]` with its scales (times Gemm's alpha).
fn matmul_weight(
    index: &GraphIndex,
    m: &DynamicMatMul,
    names: &mut Names,
    out: &mut DynamicRewrite,
) -> Result<(String, String)> {
    let (values, dims) = constant(index, &m.weight)?;
    let (rows, cols) = (dims[0].max(0) as usize, dims[1].max(0) as usize);
    let (values, kn) = if m.transposed {
        (transpose(&values, rows, cols), vec![dims[1], dims[0]])
    } else {
        (values, dims)
    };
    let axis = m.format.per_channel.then_some(1);
    let q = quantize_weight_to(&values, &kn, axis, m.format.qmax);
    out.weights.push(WeightError {
        tensor: m.weight.clone(),
        format: format_name(m.format),
        sqnr_db: weight_sqnr_db(&values, &q, &kn),
    });
    let q_name = names.fresh(&format!("{}{QUANTIZED}", m.weight));
    let s_name = names.fresh(&format!("{}{SCALE}", m.weight));
    out.initializers.push(tensor::from_raw(
        &q_name,
        DataType::Int8,
        &kn,
        q.values.iter().map(|&v| v as u8).collect(),
    ));
    let scales: Vec<f32> = q.scales.iter().map(|s| s * m.alpha).collect();
    let sdims: Vec<i64> = if axis.is_some() {
        vec![scales.len() as i64]
    } else {
        vec![]
    };
    out.initializers
        .push(tensor::from_f32(&s_name, &sdims, &scales));
    Ok((q_name, s_name))
}

/// An embedding table stored uint8 per tensor: its quantized name, scale and zero point.
fn quantized_table(
    index: &GraphIndex,
    table: &str,
    p: &ActParams,
    names: &mut Names,
    out: &mut DynamicRewrite,
) -> Result<(String, String, String)> {
    let (values, dims) = constant(index, table)?;
    let (lo, hi) = p.qrange();
    let q: Vec<i64> = values
        .iter()
        .map(|&v| {
            ((v / p.scale).round_ties_even() as i64 + i64::from(p.zero_point))
                .clamp(i64::from(lo), i64::from(hi))
        })
        .collect();
    let (mut signal, mut noise) = (0f64, 0f64);
    for (&v, &k) in values.iter().zip(&q) {
        let d = f64::from(v) - (k - i64::from(p.zero_point)) as f64 * f64::from(p.scale);
        signal += f64::from(v) * f64::from(v);
        noise += d * d;
    }
    out.weights.push(WeightError {
        tensor: table.to_string(),
        format: "uint8 per-tensor table".into(),
        sqnr_db: crate::quantize::params::sqnr_from_powers(signal, noise),
    });
    let q_name = names.fresh(&format!("{table}{QUANTIZED}"));
    let s_name = names.fresh(&format!("{table}{SCALE}"));
    let zp_name = names.fresh(&format!("{table}{ZERO_POINT}"));
    out.initializers
        .push(integer_tensor(&q_name, p.ty, &dims, q.into_iter()));
    out.initializers
        .push(tensor::from_f32(&s_name, &[], &[p.scale]));
    out.initializers.push(integer_tensor(
        &zp_name,
        p.ty,
        &[],
        std::iter::once(i64::from(p.zero_point)),
    ));
    Ok((q_name, s_name, zp_name))
}

/// `DynamicQuantizeLSTM` in place of `lstm`: W `[D, 4H, I]` and R `[D, 4H, H]` quantized per
/// direction (and per gate row when per channel), stored transposed as `[D, I, 4H]` and
/// `[D, H, 4H]` as the contrib op wants them.
fn quantized_lstm(
    index: &GraphIndex,
    lstm: &NodeProto,
    format: WeightFormat,
    names: &mut Names,
    out: &mut DynamicRewrite,
) -> Result<NodeProto> {
    let mut quantized = Vec::new();
    for w in &lstm.input[1..3] {
        let (values, dims) = constant(index, w)?;
        let [d, rows, cols] = [dims[0], dims[1], dims[2]].map(|v| v.max(0) as usize);
        // Per channel: one scale per (direction, gate row); per tensor: one per direction.
        let (flat, scale_dims) = if format.per_channel {
            (
                vec![(d * rows) as i64, cols as i64],
                vec![d as i64, rows as i64],
            )
        } else {
            (vec![d as i64, (rows * cols) as i64], vec![d as i64])
        };
        let q = quantize_weight_to(&values, &flat, Some(0), format.qmax);
        out.weights.push(WeightError {
            tensor: w.clone(),
            format: format_name(format),
            sqnr_db: weight_sqnr_db(&values, &q, &flat),
        });
        let mut transposed = Vec::with_capacity(q.values.len());
        for k in 0..d {
            let block = &q.values[k * rows * cols..(k + 1) * rows * cols];
            for c in 0..cols {
                transposed.extend((0..rows).map(|r| block[r * cols + c] as u8));
            }
        }
        let q_name = names.fresh(&format!("{w}{QUANTIZED}"));
        let s_name = names.fresh(&format!("{w}{SCALE}"));
        let zp_name = names.fresh(&format!("{w}{ZERO_POINT}"));
        let n_scales = q.scales.len();
        out.initializers.push(tensor::from_raw(
            &q_name,
            DataType::Int8,
            &[d as i64, cols as i64, rows as i64],
            transposed,
        ));
        out.initializers
            .push(tensor::from_f32(&s_name, &scale_dims, &q.scales));
        out.initializers.push(tensor::from_raw(
            &zp_name,
            DataType::Int8,
            &scale_dims,
            vec![0; n_scales],
        ));
        quantized.push([q_name, s_name, zp_name]);
    }
    let [w_q, w_s, w_zp] = quantized[0].clone();
    let [r_q, r_s, r_zp] = quantized[1].clone();
    let optional = |i: usize| lstm.input.get(i).cloned().unwrap_or_default();
    let inputs = vec![
        lstm.input[0].clone(),
        w_q,
        r_q,
        optional(3),
        optional(4),
        optional(5),
        optional(6),
        optional(7),
        w_s,
        w_zp,
        r_s,
        r_zp,
    ];
    Ok(NodeProto {
        op_type: Some("DynamicQuantizeLSTM".into()),
        domain: Some(MS_DOMAIN.into()),
        name: Some(names.fresh(&format!(
            "{}_DynamicQuantizeLSTM",
            if lstm.name().is_empty() {
                lstm.output.first().map(String::as_str).unwrap_or("LSTM")
            } else {
                lstm.name()
            }
        ))),
        input: inputs,
        output: lstm.output.clone(),
        attribute: lstm
            .attribute
            .iter()
            .filter(|a| a.name() != "layout")
            .cloned()
            .collect(),
        ..Default::default()
    })
}
