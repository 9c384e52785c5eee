//! A copy of a QDQ model for measuring it in tract: every DequantizeLinear of a constant
//! (weights, biases, constants read as activations) is replaced by the float tensor it
//! computes. The values are the same, `(q - zero_point) * scale` in f32, but tract's plain plan
//! no longer dequantizes every weight on every run (MiniLM's 11.7 M-entry embedding table made
//! a run 10x slower than the float model). Activation QuantizeLinear/DequantizeLinear pairs,
//! where the quantization error comes from, stay, except 16-bit ones: tract 0.23 cannot run
//! int16/uint16 QuantizeLinear, so those become the float arithmetic QuantizeLinear-21 and
//! DequantizeLinear-21 define (`clip(round(x / s) + z)`, then `(q - z) * s`).

use std::collections::HashMap;

use crate::onnx::attr;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{ModelProto, TensorProto};
use crate::onnx::tensor;

/// Integer values of a raw int8/uint8/int32 tensor, as f32.
fn integers(t: &TensorProto) -> Option<Vec<f32>> {
    let raw = t.raw_data.as_deref()?;
    let dt = DataType::try_from(t.data_type()).ok()?;
    let n = tensor::element_count(&t.dims).ok()? as usize;
    let v: Vec<f32> = match dt {
        DataType::Int8 => raw.iter().map(|&b| b as i8 as f32).collect(),
        DataType::Uint8 => raw.iter().map(|&b| b as f32).collect(),
        DataType::Int16 => raw
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        DataType::Uint16 => raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        DataType::Int32 => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        DataType::Uint4 | DataType::Int4 => raw
            .iter()
            .flat_map(|&b| [b & 0x0F, b >> 4])
            .take(n)
            .map(|v| {
                if dt == DataType::Int4 && v >= 8 {
                    f32::from(v) - 16.0
                } else {
                    f32::from(v)
                }
            })
            .collect(),
        _ => return None,
    };
    (v.len() == n).then_some(v)
}

/// The model with constant DequantizeLinear nodes folded to float initializers.
pub fn fold_constant_dequantize(model: &ModelProto) -> ModelProto {
    let names = crate::graph::Names::of_model(model);
    let mut out = model.clone();
    let Some(graph) = out.graph.as_mut() else {
        return out;
    };
    let inputs: std::collections::HashSet<String> =
        graph.input.iter().map(|i| i.name().to_string()).collect();
    let inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name().to_string(), i))
        .collect();
    let constant = |name: &str| {
        inits
            .get(name)
            .filter(|_| !inputs.contains(name))
            .map(|&i| &graph.initializer[i])
    };
    let mut folded = Vec::new();
    let mut keep = Vec::with_capacity(graph.node.len());
    for node in &graph.node {
        let fold = (node.op_type() == "DequantizeLinear"
            && matches!(node.domain(), "" | "ai.onnx"))
        .then(|| dequantize(node, &constant))
        .flatten();
        match fold {
            Some(t) => folded.push(t),
            None => keep.push(node.clone()),
        }
    }
    graph.node = keep;
    graph.initializer.extend(folded);
    emulate_16_bit(graph, names);
    emulate_dynamic_lstm(graph);
    fold_weight_only(graph);
    // What was folded is read by nothing now, and tract refuses to even load 4-bit tensors.
    let used: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(crate::graph::node_uses)
        .chain(graph.output.iter().map(|o| o.name().to_string()))
        .chain(inputs.iter().cloned())
        .collect();
    graph.initializer.retain(|t| used.contains(t.name()));
    out
}

/// The ops of `model` tract cannot run that [`fold_constant_dequantize`] and
/// [`emulate_contrib_ops`] replace by float equivalents, by name (empty when none).
pub fn emulated_ops(model: &ModelProto) -> Vec<String> {
    let mut ops: Vec<String> = model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .filter_map(|n| match n.op_type() {
            op @ ("DynamicQuantizeLSTM" | "MatMulNBits" | "GatherBlockQuantized") => {
                Some(op.to_string())
            }
            "DequantizeLinear" if attr::int(n, "block_size").ok().flatten().unwrap_or(0) != 0 => {
                Some("blocked DequantizeLinear".to_string())
            }
            _ => None,
        })
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

/// A copy of `model` in which every op tract cannot run is replaced by the float op it
/// approximates on the dequantized weights: `DynamicQuantizeLSTM` by an LSTM (the weight
/// error is kept, the run-time quantization of its inputs is not), MatMulNBits,
/// GatherBlockQuantized and blocked DequantizeLinear exactly. Constant DequantizeLinear
/// nodes are folded too.
pub fn emulate_contrib_ops(model: &ModelProto) -> ModelProto {
    fold_constant_dequantize(model)
}

/// Replaces `com.microsoft.DynamicQuantizeLSTM` by LSTM with W and R dequantized and
/// transposed back to `[D, 4H, I]` / `[D, 4H, H]`.
fn emulate_dynamic_lstm(graph: &mut crate::onnx::pb::GraphProto) {
    if !graph
        .node
        .iter()
        .any(|n| n.op_type() == "DynamicQuantizeLSTM")
    {
        return;
    }
    let inits: HashMap<String, TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name().to_string(), t.clone()))
        .collect();
    let mut added = Vec::new();
    for node in graph.node.iter_mut() {
        if node.op_type() != "DynamicQuantizeLSTM" || node.input.len() < 12 {
            continue;
        }
        let mut weights = Vec::new();
        for (q, s, z) in [(1, 8, 9), (2, 10, 11)] {
            let dequantized = (|| {
                let t = inits.get(&node.input[q])?;
                let values = integers(t)?;
                let scales = tensor::to_f32(inits.get(&node.input[s])?).ok()?;
                let zeros = integers(inits.get(&node.input[z])?)?;
                let [d, cols, rows] = <[i64; 3]>::try_from(t.dims.clone()).ok()?;
                let [d, cols, rows] = [d, cols, rows].map(|v| v.max(0) as usize);
                let per_row = scales.len() == d * rows;
                let mut w = vec![0f32; values.len()];
                for k in 0..d {
                    for c in 0..cols {
                        for r in 0..rows {
                            let sc = if per_row { k * rows + r } else { k };
                            let v = values[(k * cols + c) * rows + r];
                            w[(k * rows + r) * cols + c] =
                                (v - zeros.get(sc).copied().unwrap_or(0.0)) * scales[sc];
                        }
                    }
                }
                let name = format!("{}_emulated", node.input[q]);
                Some(tensor::from_f32(
                    &name,
                    &[d as i64, rows as i64, cols as i64],
                    &w,
                ))
            })();
            match dequantized {
                Some(t) => weights.push(t),
                None => break,
            }
        }
        let [w, r] = match <[TensorProto; 2]>::try_from(weights) {
            Ok(pair) => pair,
            Err(_) => continue,
        };
        node.input[1] = w.name().to_string();
        node.input[2] = r.name().to_string();
        node.input.truncate(8);
        while node.input.last().is_some_and(|i| i.is_empty()) {
            node.input.pop();
        }
        node.op_type = Some("LSTM".into());
        node.domain = None;
        added.push(w);
        added.push(r);
    }
    graph.initializer.extend(added);
}

/// The 16-bit integer type of a zero-point initializer, with its range.
fn sixteen_bit_range(t: &TensorProto) -> Option<(f32, f32)> {
    match DataType::try_from(t.data_type()).ok()? {
        DataType::Uint16 => Some((0.0, 65535.0)),
        DataType::Int16 => Some((-32768.0, 32767.0)),
        _ => None,
    }
}

fn float_node(op: &str, inputs: &[&str], output: &str) -> crate::onnx::pb::NodeProto {
    crate::onnx::pb::NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    }
}

/// Rewrites per-tensor 16-bit QuantizeLinear/DequantizeLinear into float ops that compute the
/// same values (the quantized tensor holds its integers as floats).
fn emulate_16_bit(graph: &mut crate::onnx::pb::GraphProto, mut names: crate::graph::Names) {
    let zero_points: HashMap<String, (f32, (f32, f32))> = graph
        .initializer
        .iter()
        .filter_map(|t| {
            let range = sixteen_bit_range(t)?;
            let z = *integers(t)?.first()?;
            (tensor::element_count(&t.dims).ok()? == 1).then(|| (t.name().to_string(), (z, range)))
        })
        .collect();
    if zero_points.is_empty() {
        return;
    }
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut consts: Vec<TensorProto> = Vec::new();
    let mut constant = |names: &mut crate::graph::Names, v: f32| {
        let n = names.fresh("emulated_16bit_constant");
        consts.push(tensor::from_f32(&n, &[], &[v]));
        n
    };
    for node in std::mem::take(&mut graph.node) {
        let zp = node.input.get(2).and_then(|z| zero_points.get(z));
        let op = node.op_type();
        match (op, zp) {
            ("QuantizeLinear", Some(&(z, (lo, hi)))) => {
                let (x, s, y) = (&node.input[0], &node.input[1], &node.output[0]);
                let div = names.fresh(&format!("{y}_div"));
                let round = names.fresh(&format!("{y}_round"));
                let shifted = names.fresh(&format!("{y}_shifted"));
                let (zc, loc, hic) = (
                    constant(&mut names, z),
                    constant(&mut names, lo),
                    constant(&mut names, hi),
                );
                nodes.push(float_node("Div", &[x, s], &div));
                nodes.push(float_node("Round", &[&div], &round));
                nodes.push(float_node("Add", &[&round, &zc], &shifted));
                nodes.push(float_node("Clip", &[&shifted, &loc, &hic], y));
            }
            ("DequantizeLinear", Some(&(z, _))) => {
                let (q, s, y) = (&node.input[0], &node.input[1], &node.output[0]);
                let centered = names.fresh(&format!("{y}_centered"));
                let zc = constant(&mut names, z);
                nodes.push(float_node("Sub", &[q, &zc], &centered));
                nodes.push(float_node("Mul", &[&centered, s], y));
            }
            _ => nodes.push(node),
        }
    }
    graph.node = nodes;
    graph.initializer.extend(consts);
}

/// The float tensor a DequantizeLinear of constants computes, or `None` when it is not one
/// this knows how to fold (then the node stays).
fn dequantize<'a>(
    node: &crate::onnx::pb::NodeProto,
    constant: &impl Fn(&str) -> Option<&'a TensorProto>,
) -> Option<TensorProto> {
    let x = constant(node.input.first()?)?;
    let scale = tensor::to_f32(constant(node.input.get(1)?)?).ok()?;
    let zero: Option<Vec<f32>> = match node.input.get(2).filter(|z| !z.is_empty()) {
        Some(z) => Some(integers(constant(z)?)?),
        None => None,
    };
    let values = integers(x)?;
    let dims = &x.dims;
    let block = attr::int(node, "block_size").ok().flatten().unwrap_or(0);
    if block != 0 {
        let a = attr::int(node, "axis").ok().flatten().unwrap_or(1);
        let a = if a < 0 { a + dims.len() as i64 } else { a };
        let axis = usize::try_from(a).ok().filter(|&a| a < dims.len())?;
        let out = dequantize_blocked(
            &values,
            dims,
            axis,
            block.max(1) as usize,
            &scale,
            zero.as_deref(),
        )?;
        return Some(tensor::from_f32(node.output.first()?, dims, &out));
    }
    let per_channel = scale.len() > 1;
    let axis = if per_channel {
        let a = attr::int(node, "axis").ok().flatten().unwrap_or(1);
        let a = if a < 0 { a + dims.len() as i64 } else { a };
        usize::try_from(a).ok().filter(|&a| a < dims.len())?
    } else {
        0
    };
    let inner: usize = dims
        .iter()
        .skip(axis + 1)
        .map(|&d| d.max(0) as usize)
        .product();
    let channels = if per_channel {
        dims[axis].max(0) as usize
    } else {
        1
    };
    if per_channel && scale.len() != channels {
        return None;
    }
    let out: Vec<f32> = values
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let c = if per_channel {
                (i / inner.max(1)) % channels
            } else {
                0
            };
            let z = zero.as_ref().map_or(0.0, |z| z[c.min(z.len() - 1)]);
            (q - z) * scale[c]
        })
        .collect();
    Some(tensor::from_f32(node.output.first()?, dims, &out))
}

/// `(q - z) * s` for a DequantizeLinear with `block_size`: scales and zero points have the
/// data's shape with `axis` divided (rounded up) by `block`.
fn dequantize_blocked(
    values: &[f32],
    dims: &[i64],
    axis: usize,
    block: usize,
    scale: &[f32],
    zero: Option<&[f32]>,
) -> Option<Vec<f32>> {
    let d: Vec<usize> = dims.iter().map(|&v| v.max(0) as usize).collect();
    let outer: usize = d[..axis].iter().product();
    let inner: usize = d[axis + 1..].iter().product();
    let len = d[axis];
    let blocks = len.div_ceil(block);
    if scale.len() != outer * blocks * inner || zero.is_some_and(|z| z.len() != scale.len()) {
        return None;
    }
    let mut out = vec![0f32; values.len()];
    for o in 0..outer {
        for k in 0..len {
            for i in 0..inner {
                let idx = (o * len + k) * inner + i;
                let sidx = (o * blocks + k / block) * inner + i;
                let z = zero.map_or(0.0, |z| z[sidx]);
                out[idx] = (values[idx] - z) * scale[sidx];
            }
        }
    }
    Some(out)
}

/// Replaces weight-only mode's forms by float ops on dequantized weights (tract runs neither
/// MatMulNBits with 8 bits, GatherBlockQuantized with 8 bits, nor blocked
/// DequantizeLinear): exact for weight-only models, whose activations are float anyway.
/// - `MatMulNBits` becomes MatMul on the dequantized `[K, N]` weight;
/// - `GatherBlockQuantized` becomes Gather on the dequantized table;
/// - a blocked DequantizeLinear of gathered rows (`Gather` of a constant table, of its scales
///   and zero points by the same indices) becomes a Gather of the dequantized table.
fn fold_weight_only(graph: &mut crate::onnx::pb::GraphProto) {
    let inits: HashMap<String, TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name().to_string(), t.clone()))
        .collect();
    let gathers: HashMap<String, (String, String)> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Gather" && n.input.len() == 2)
        .filter(|n| inits.contains_key(&n.input[0]))
        .map(|n| {
            (
                n.output[0].clone(),
                (n.input[0].clone(), n.input[1].clone()),
            )
        })
        .collect();
    let mut added = Vec::new();
    for node in graph.node.iter_mut() {
        let folded = match node.op_type() {
            "MatMulNBits" => matmul_nbits_weight(node, &inits).map(|w| {
                let name = format!("{}_folded", node.input[1]);
                node.op_type = Some("MatMul".into());
                node.domain = None;
                node.attribute.clear();
                node.input = vec![node.input[0].clone(), name.clone()];
                (name, w)
            }),
            "GatherBlockQuantized" => gather_block_table(node, &inits).map(|w| {
                let name = format!("{}_folded", node.input[0]);
                node.op_type = Some("Gather".into());
                node.domain = None;
                node.attribute.clear();
                node.input = vec![name.clone(), node.input[1].clone()];
                (name, w)
            }),
            "DequantizeLinear" => gathered_rows_table(node, &inits, &gathers).map(|(w, ids)| {
                let name = format!("{}_folded", node.input[0]);
                node.op_type = Some("Gather".into());
                node.attribute.clear();
                node.input = vec![name.clone(), ids];
                (name, w)
            }),
            _ => None,
        };
        if let Some((name, (dims, values))) = folded {
            added.push(tensor::from_f32(&name, &dims, &values));
        }
    }
    graph.initializer.extend(added);
}

type Folded = (Vec<i64>, Vec<f32>);

fn int_attr(node: &crate::onnx::pb::NodeProto, name: &str) -> Option<i64> {
    attr::int(node, name).ok().flatten()
}

/// The `[K, N]` float weight of a MatMulNBits with constant inputs.
fn matmul_nbits_weight(
    node: &crate::onnx::pb::NodeProto,
    inits: &HashMap<String, TensorProto>,
) -> Option<Folded> {
    let (k, n, bits, block) = (
        int_attr(node, "K")? as usize,
        int_attr(node, "N")? as usize,
        int_attr(node, "bits")? as usize,
        int_attr(node, "block_size")? as usize,
    );
    let b = inits.get(node.input.get(1)?)?.raw_data.as_deref()?;
    let scales = tensor::to_f32(inits.get(node.input.get(2)?)?).ok()?;
    let kb = k.div_ceil(block);
    let unpack = |bytes: &[u8], count: usize| -> Vec<u8> {
        if bits == 4 {
            bytes
                .iter()
                .flat_map(|&x| [x & 0x0F, x >> 4])
                .take(count)
                .collect()
        } else {
            bytes.iter().copied().take(count).collect()
        }
    };
    let levels = unpack(b, n * kb * block);
    let zero_points: Vec<u8> = match node.input.get(3).filter(|z| !z.is_empty()) {
        Some(z) => {
            let raw = inits.get(z)?.raw_data.as_deref()?;
            let per_column = (kb * bits).div_ceil(8);
            (0..n)
                .flat_map(|c| unpack(&raw[c * per_column..(c + 1) * per_column], kb))
                .collect()
        }
        None => vec![1u8 << (bits - 1); n * kb],
    };
    if levels.len() != n * kb * block || scales.len() != n * kb || zero_points.len() != n * kb {
        return None;
    }
    let mut w = vec![0f32; k * n];
    for c in 0..n {
        for r in 0..k {
            let bi = c * kb + r / block;
            w[r * n + c] =
                (f32::from(levels[c * kb * block + r]) - f32::from(zero_points[bi])) * scales[bi];
        }
    }
    Some((vec![k as i64, n as i64], w))
}

/// The float table of a GatherBlockQuantized (gather axis 0, quantize axis 1) with constant
/// data.
fn gather_block_table(
    node: &crate::onnx::pb::NodeProto,
    inits: &HashMap<String, TensorProto>,
) -> Option<Folded> {
    let data = inits.get(node.input.first()?)?;
    let block = int_attr(node, "block_size").unwrap_or(128) as usize;
    let dt = DataType::try_from(data.data_type()).ok()?;
    let mut values = integers(data)?;
    let zero: Option<Vec<f32>> = match node.input.get(3).filter(|z| !z.is_empty()) {
        Some(z) => Some(integers(inits.get(z)?)?),
        None => None,
    };
    // Unsigned storage without zero points is centred: 8 for uint4, 128 for uint8.
    if zero.is_none() {
        let mid = match dt {
            DataType::Uint4 => 8.0,
            DataType::Uint8 => 128.0,
            _ => 0.0,
        };
        values.iter_mut().for_each(|v| *v -= mid);
    }
    let scales = tensor::to_f32(inits.get(node.input.get(2)?)?).ok()?;
    let out = dequantize_blocked(&values, &data.dims, 1, block, &scales, zero.as_deref())?;
    Some((data.dims.clone(), out))
}

/// For a blocked DequantizeLinear whose inputs are Gathers of constants by the same indices:
/// the dequantized table and the indices.
fn gathered_rows_table(
    node: &crate::onnx::pb::NodeProto,
    inits: &HashMap<String, TensorProto>,
    gathers: &HashMap<String, (String, String)>,
) -> Option<(Folded, String)> {
    let block = int_attr(node, "block_size").filter(|&b| b > 0)? as usize;
    let sources: Vec<&(String, String)> = node
        .input
        .iter()
        .filter(|i| !i.is_empty())
        .map(|i| gathers.get(i))
        .collect::<Option<_>>()?;
    let ids = &sources.first()?.1;
    if sources.iter().any(|(_, i)| i != ids) {
        return None;
    }
    let data = inits.get(&sources[0].0)?;
    let values = integers(data)?;
    let scales = tensor::to_f32(inits.get(&sources.get(1)?.0)?).ok()?;
    let zero = match sources.get(2) {
        Some((z, _)) => Some(integers(inits.get(z)?)?),
        None => None,
    };
    let out = dequantize_blocked(&values, &data.dims, 1, block, &scales, zero.as_deref())?;
    Some(((data.dims.clone(), out), ids.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::pb::{AttributeProto, GraphProto, NodeProto};

    #[test]
    fn per_channel_weights_fold_to_their_float_values_and_activations_stay() {
        let w = tensor::from_raw("w_q", DataType::Int8, &[2, 2], vec![1, 255, 2, 4]);
        let s = tensor::from_f32("w_s", &[2], &[0.5, 2.0]);
        let dq_w = NodeProto {
            op_type: Some("DequantizeLinear".into()),
            input: vec!["w_q".into(), "w_s".into()],
            output: vec!["w".into()],
            attribute: vec![AttributeProto {
                name: Some("axis".into()),
                r#type: Some(crate::onnx::pb::attribute_proto::AttributeType::Int as i32),
                i: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let dq_x = NodeProto {
            op_type: Some("DequantizeLinear".into()),
            input: vec!["x_q".into(), "w_s".into()],
            output: vec!["x".into()],
            ..Default::default()
        };
        let model = ModelProto {
            graph: Some(GraphProto {
                node: vec![dq_w, dq_x],
                initializer: vec![w, s],
                // Folded tensors nothing reads are dropped: read `w` as an output.
                output: vec![crate::onnx::pb::ValueInfoProto {
                    name: Some("w".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let folded = fold_constant_dequantize(&model);
        let g = folded.graph.unwrap();
        assert_eq!(g.node.len(), 1, "the DQ of a non-constant stays");
        let t = g.initializer.iter().find(|t| t.name() == "w").unwrap();
        assert_eq!(tensor::to_f32(t).unwrap(), vec![0.5, -0.5, 4.0, 8.0]);
    }
}
