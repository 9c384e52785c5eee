//! Adapters that insert nodes around the upgraded one: Softmax-13's new axis semantics,
//! GroupNormalization-21's per-channel scale, Scan-9's missing batch axis and the experimental
//! ImageScaler.

use super::attrs::{base, set_attribute, take, take_float, take_floats, take_int};
use super::site::{self, Site};
use crate::graph::Dim;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::NodeProto;

/// Softmax, LogSoftmax and Hardmax before 13 flatten the input to 2-D at `axis` (default 1) and
/// normalise each row; from 13 they normalise along `axis` alone (default -1). The two agree when
/// `axis` is the last axis; otherwise the node is wrapped in Flatten and Reshape, which is
/// exactly the old definition.
pub(crate) fn softmax_13(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let given = take_int(node, "axis")?;
    let axis = given.unwrap_or(1);
    let (Some(x), Some(y)) = (node.input.first().cloned(), node.output.first().cloned()) else {
        return Err(format!("{} needs an input and an output", node.op_type()));
    };
    let rank = site.facts().rank(&x).or_else(|| site.facts().rank(&y));
    let is_last = axis == -1 || rank.is_some_and(|r| r as i64 == axis + 1);
    set_attribute(node, site::int_attribute("axis", axis));
    if is_last {
        return Ok(given
            .is_none()
            .then(|| "default axis 1 made explicit".to_string()));
    }
    let b = base(node);
    let shape = site.fresh(&format!("{b}_input_shape"));
    let flat = site.fresh(&format!("{b}_input_2d"));
    let flat_out = site.fresh(&format!("{y}_2d"));
    let shape_node = site.node(
        "Shape",
        &format!("{b}_shape"),
        vec![x.clone()],
        vec![shape.clone()],
    );
    let mut flatten = site.node(
        "Flatten",
        &format!("{b}_flatten"),
        vec![x],
        vec![flat.clone()],
    );
    flatten.attribute.push(site::int_attribute("axis", axis));
    let reshape = site.node(
        "Reshape",
        &format!("{b}_reshape"),
        vec![flat_out.clone(), shape],
        vec![y],
    );
    site.before.extend([shape_node, flatten]);
    site.after.push(reshape);
    node.input[0] = flat;
    node.output[0] = flat_out;
    set_attribute(node, site::int_attribute("axis", 1));
    Ok(Some(format!(
        "axis {axis} is not the last, so wrapped in Flatten/Reshape to keep the 2-D semantics"
    )))
}

/// GroupNormalization-18 took one scale and bias per group, -21 takes one per channel: each
/// value is repeated C / num_groups times (the ONNX version converter's rewrite).
pub(crate) fn group_normalization_21(
    node: &mut NodeProto,
    site: &mut Site,
) -> Result<Option<String>, String> {
    let groups = crate::onnx::attr::int(node, "num_groups")?
        .ok_or("GroupNormalization has no 'num_groups'")?;
    if node.input.len() < 3 {
        return Err("GroupNormalization needs inputs X, scale and bias".into());
    }
    let b = base(node);
    let channels = site.fresh(&format!("{b}_channels"));
    let mut shape = site.node(
        "Shape",
        &format!("{b}_channels"),
        vec![node.input[0].clone()],
        vec![channels.clone()],
    );
    shape.attribute.push(site::int_attribute("start", 1));
    shape.attribute.push(site::int_attribute("end", 2));
    let groups = site.int64s(&format!("{b}_num_groups"), &[groups]);
    let per_group = site.fresh(&format!("{b}_channels_per_group"));
    let div = site.node(
        "Div",
        &format!("{b}_channels_per_group"),
        vec![channels, groups],
        vec![per_group.clone()],
    );
    let one = site.int64s(&format!("{b}_one"), &[1]);
    let expand_shape = site.fresh(&format!("{b}_expand_shape"));
    let mut concat = site.node(
        "Concat",
        &format!("{b}_expand_shape"),
        vec![one, per_group],
        vec![expand_shape.clone()],
    );
    concat.attribute.push(site::int_attribute("axis", 0));
    let column = site.int64s(&format!("{b}_column_shape"), &[-1, 1]);
    let flat = site.int64s(&format!("{b}_flat_shape"), &[-1]);
    site.before.extend([shape, div, concat]);
    for i in [1, 2] {
        let input = node.input[i].clone();
        let col = site.fresh(&format!("{input}_column"));
        let wide = site.fresh(&format!("{input}_per_channel_2d"));
        let out = site.fresh(&format!("{input}_per_channel"));
        let r0 = site.node(
            "Reshape",
            &col,
            vec![input, column.clone()],
            vec![col.clone()],
        );
        let ex = site.node(
            "Expand",
            &wide,
            vec![col, expand_shape.clone()],
            vec![wide.clone()],
        );
        let r1 = site.node("Reshape", &out, vec![wide, flat.clone()], vec![out.clone()]);
        site.before.extend([r0, ex, r1]);
        node.input[i] = out;
    }
    Ok(Some("per-group scale and bias repeated per channel".into()))
}

/// Scan-8 had a batch axis in front of every input and output, and an optional sequence_lens
/// input; Scan-9 has neither. A batch of 1 is squeezed away around the node; other batches and
/// sequence lengths are refused.
pub(crate) fn scan_9(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    if node.input.first().is_some_and(|s| !s.is_empty()) {
        return Err("sequence_lens is given, and Scan-9 has no per-batch sequence lengths".into());
    }
    let inputs: Vec<String> = node.input.iter().skip(1).cloned().collect();
    for x in &inputs {
        let Some([Dim::Value(1), ..]) = site.facts().shape(x) else {
            return Err(format!(
                "input '{x}' has no known batch size of 1, and Scan-9 has no batch axis"
            ));
        };
    }
    if let Some(mut directions) = take(node, "directions")? {
        directions.name = Some("scan_input_directions".into());
        node.attribute.push(directions);
    }
    let mut new_inputs = Vec::with_capacity(inputs.len());
    for x in inputs {
        let unbatched = site.fresh(&format!("{x}_unbatched"));
        let squeeze = site.squeeze_node("Squeeze", &unbatched, x, &[0], unbatched.clone());
        site.before.push(squeeze);
        new_inputs.push(unbatched);
    }
    node.input = new_inputs;
    for i in 0..node.output.len() {
        let y = node.output[i].clone();
        if y.is_empty() {
            continue;
        }
        let unbatched = site.fresh(&format!("{y}_unbatched"));
        let unsqueeze = site.squeeze_node(
            "Unsqueeze",
            &format!("{y}_batch"),
            unbatched.clone(),
            &[0],
            y,
        );
        site.after.push(unsqueeze);
        node.output[i] = unbatched;
    }
    Ok(Some("batch axis of 1 squeezed around the node".into()))
}

/// The experimental ImageScaler (`scale * x + bias[c]` on NCHW) has no kernel in onnxruntime
/// from opset 10: it becomes Mul and Add.
pub(crate) fn image_scaler_10(
    node: &mut NodeProto,
    site: &mut Site,
) -> Result<Option<String>, String> {
    let scale = take_float(node, "scale")?.unwrap_or(1.0);
    let bias = take_floats(node, "bias")?;
    if let Some(a) = node.attribute.first() {
        return Err(format!("unexpected attribute '{}'", a.name()));
    }
    let x = node.input.first().cloned().unwrap_or_default();
    let dt = site
        .facts()
        .elem_type(&x)
        .ok_or_else(|| format!("the element type of input '{x}' is unknown"))?;
    let b = base(node);
    let y = node.output.first().cloned().unwrap_or_default();
    let scale_name = site.add_constant(&format!("{b}_scale"), site::float_scalar(dt, scale)?);
    node.op_type = Some("Mul".into());
    node.input = vec![x, scale_name];
    if let Some(bias) = bias {
        let dims = [1, bias.len() as i64, 1, 1];
        let bias_name = site.add_constant(&format!("{b}_bias"), float_tensor(dt, &dims, &bias)?);
        let scaled = site.fresh(&format!("{b}_scaled"));
        node.output = vec![scaled.clone()];
        let add = site.node(
            "Add",
            &format!("{b}_bias"),
            vec![scaled, bias_name],
            vec![y],
        );
        site.after.push(add);
    }
    Ok(Some("ImageScaler -> Mul, Add".into()))
}

/// A float tensor of type `dt` with `dims`.
fn float_tensor(
    dt: DataType,
    dims: &[i64],
    values: &[f32],
) -> Result<crate::onnx::pb::TensorProto, String> {
    let mut raw = Vec::new();
    for &v in values {
        raw.extend(site::float_scalar(dt, v)?.raw_data.unwrap_or_default());
    }
    Ok(crate::onnx::tensor::from_raw("", dt, dims, raw))
}
