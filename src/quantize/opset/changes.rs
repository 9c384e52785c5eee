//! The table of signature changes between opsets 7 and 21, and the adapters that only move
//! attributes into inputs or adjust attributes. Adapters that insert nodes live in `rewire`, the
//! Upsample/Resize family in `resize`.

use super::attrs::{base, set_attribute, set_input, take_float, take_int, take_ints};
use super::site::{self, Site};
use super::{resize, rewire};
use crate::onnx::attr;
use crate::onnx::pb::{AttributeProto, NodeProto};

/// Upgrades one node across one version step: `Ok(Some(what))` when it changed the node,
/// `Ok(None)` when the node was already compatible, `Err(why)` when it cannot be upgraded.
pub(crate) type Adapt = fn(&mut NodeProto, &mut Site<'_, '_>) -> Result<Option<String>, String>;

/// A default-domain op whose signature or meaning changed at opset `since`.
pub(crate) struct Change {
    /// The op type (before the change; Upsample and Scatter are renamed by theirs).
    pub(crate) op: &'static str,
    /// The first opset with the new signature.
    pub(crate) since: i64,
    /// What to do with a node of `op` crossing into `since`.
    pub(crate) adapt: Adapt,
}

const fn change(op: &'static str, since: i64, adapt: Adapt) -> Change {
    Change { op, since, adapt }
}

/// Every change the pass handles or refuses, sorted by op then version. Ops that are not listed
/// only widened their types or added attributes whose defaults keep the old behaviour.
pub(crate) static CHANGES: &[Change] = &[
    change("Affine", 10, experimental),
    change("BatchNormalization", 9, batch_norm_9),
    change("BatchNormalization", 14, batch_norm_14),
    change("Clip", 11, clip_11),
    change("ConstantFill", 10, experimental),
    change("Crop", 10, experimental),
    change("DFT", 20, dft_20),
    change("Dropout", 10, dropout_10),
    change("Dropout", 12, dropout_12),
    change("DynamicSlice", 10, experimental),
    change("Erf", 13, erf_13),
    change("GRUUnit", 10, experimental),
    change("GivenTensorFill", 10, experimental),
    change("GridSample", 20, grid_sample_20),
    change("GroupNormalization", 21, rewire::group_normalization_21),
    change("Hardmax", 13, rewire::softmax_13),
    change("ImageScaler", 10, rewire::image_scaler_10),
    change("LogSoftmax", 13, rewire::softmax_13),
    change("Pad", 11, pad_11),
    change("ParametricSoftplus", 10, experimental),
    change("ReduceL1", 18, axes_to_input),
    change("ReduceL2", 18, axes_to_input),
    change("ReduceLogSum", 18, axes_to_input),
    change("ReduceLogSumExp", 18, axes_to_input),
    change("ReduceMax", 18, axes_to_input),
    change("ReduceMean", 18, axes_to_input),
    change("ReduceMin", 18, axes_to_input),
    change("ReduceProd", 18, axes_to_input),
    change("ReduceSum", 13, axes_to_input),
    change("ReduceSumSquare", 18, axes_to_input),
    change("Resize", 11, resize::resize_11),
    change("RoiAlign", 16, roi_align_16),
    change("Scale", 10, experimental),
    change("ScaledTanh", 10, experimental),
    change("Scan", 9, rewire::scan_9),
    change("Scatter", 11, scatter_11),
    change("Slice", 10, slice_10),
    change("Softmax", 13, rewire::softmax_13),
    change("Split", 13, split_13),
    change("Split", 18, split_18),
    change("Squeeze", 13, axes_to_input),
    change("TopK", 10, topk_10),
    change("Unsqueeze", 13, axes_to_input),
    change("Upsample", 9, resize::upsample_9),
    change("Upsample", 10, resize::upsample_10),
];

/// Ops deprecated at an opset (their schema there only says so): a node of such an op in a newer
/// model is upgraded as if the model were one opset older than the deprecation.
const DEPRECATED: &[(&str, i64)] = &[("Scatter", 11), ("Upsample", 10)];

/// The opset a node of `op` in a model at `from` is upgraded from.
pub(crate) fn effective_from(op: &str, from: i64) -> i64 {
    DEPRECATED
        .iter()
        .find(|(o, _)| *o == op)
        .map_or(from, |&(_, since)| from.min(since - 1))
}

/// The changes of `op` that take effect at opset `version`.
pub(crate) fn at(op: &str, version: i64) -> impl Iterator<Item = &'static Change> + '_ {
    CHANGES
        .iter()
        .filter(move |c| c.op == op && c.since == version)
}

/// Attributes that no opset >= 7 defines but old exporters still write; they are dropped.
pub(crate) fn drop_legacy_attributes(node: &mut NodeProto) -> Option<String> {
    let legacy = |a: &AttributeProto| {
        a.name() == "consumed_inputs"
            || (a.name() == "is_test" && matches!(node.op_type(), "BatchNormalization" | "Dropout"))
    };
    let dropped: Vec<String> = node
        .attribute
        .iter()
        .filter(|a| legacy(a))
        .map(|a| a.name().to_string())
        .collect();
    if dropped.is_empty() {
        return None;
    }
    node.attribute
        .retain(|a| !dropped.iter().any(|d| d == a.name()));
    Some(format!(
        "legacy attribute(s) {} dropped",
        dropped.join(", ")
    ))
}

/// Squeeze/Unsqueeze/ReduceSum at 13, the other reductions at 18: `axes` becomes input 1.
/// Without the attribute the input stays absent, which keeps "all axes" (Unsqueeze needs it).
fn axes_to_input(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let axes = take_ints(node, "axes")?;
    let axes = match axes {
        Some(axes) if !axes.is_empty() => axes,
        _ if node.op_type() == "Unsqueeze" => return Err("Unsqueeze has no 'axes'".into()),
        // An explicit empty list meant "all axes", as an absent input still does.
        Some(_) => return Ok(Some("empty axes attribute dropped".into())),
        None => return Ok(None),
    };
    let name = site.int64s(&format!("{}_axes", base(node)), &axes);
    set_input(node, 1, name);
    Ok(Some("axes attribute -> input".into()))
}

/// Slice-10: `starts`, `ends` and `axes` become inputs 1-3.
fn slice_10(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let starts = take_ints(node, "starts")?.ok_or("Slice-1 has no 'starts'")?;
    let ends = take_ints(node, "ends")?.ok_or("Slice-1 has no 'ends'")?;
    let axes = take_ints(node, "axes")?;
    let b = base(node);
    node.input.truncate(1);
    let starts = site.int64s(&format!("{b}_starts"), &starts);
    let ends = site.int64s(&format!("{b}_ends"), &ends);
    set_input(node, 1, starts);
    set_input(node, 2, ends);
    if let Some(axes) = axes {
        let axes = site.int64s(&format!("{b}_axes"), &axes);
        set_input(node, 3, axes);
    }
    Ok(Some("starts/ends/axes attributes -> inputs".into()))
}

/// TopK-10: `k` becomes the 1-element input K.
fn topk_10(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let k = take_int(node, "k")?.ok_or("TopK-1 has no 'k'")?;
    let k = site.int64s(&format!("{}_k", base(node)), &[k]);
    set_input(node, 1, k);
    Ok(Some("k attribute -> input".into()))
}

/// Split-13: `split` becomes input 1.
fn split_13(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let Some(split) = take_ints(node, "split")? else {
        return Ok(None);
    };
    if split.is_empty() {
        return Ok(Some("empty split attribute dropped".into()));
    }
    let split = site.int64s(&format!("{}_split", base(node)), &split);
    set_input(node, 1, split);
    Ok(Some("split attribute -> input".into()))
}

/// Split-18 needs either the `split` input or `num_outputs` (Split-13 split evenly by the
/// number of outputs).
fn split_18(node: &mut NodeProto, _site: &mut Site) -> Result<Option<String>, String> {
    let has_split = node.input.get(1).is_some_and(|s| !s.is_empty());
    if has_split || attr::find(node, "num_outputs").is_some() {
        return Ok(None);
    }
    let n = node.output.len() as i64;
    set_attribute(node, site::int_attribute("num_outputs", n));
    Ok(Some(format!("num_outputs = {n} added")))
}

/// The element type a Clip or Pad value must have: the data input's.
fn data_type(
    node: &NodeProto,
    site: &Site,
) -> Result<crate::onnx::pb::tensor_proto::DataType, String> {
    let x = node.input.first().map(String::as_str).unwrap_or("");
    site.facts()
        .elem_type(x)
        .ok_or_else(|| format!("the element type of input '{x}' is unknown"))
}

/// Clip-11: `min` and `max` become scalar inputs of the data's type.
fn clip_11(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let min = take_float(node, "min")?;
    let max = take_float(node, "max")?;
    if min.is_none() && max.is_none() {
        return Ok(None);
    }
    let dt = data_type(node, site)?;
    let b = base(node);
    node.input.truncate(1);
    for (i, bound, suffix) in [(1, min, "min"), (2, max, "max")] {
        if let Some(v) = bound {
            let name = site.add_constant(&format!("{b}_{suffix}"), site::float_scalar(dt, v)?);
            set_input(node, i, name);
        }
    }
    Ok(Some("min/max attributes -> inputs".into()))
}

/// Pad-11: `pads` becomes input 1 and a non-zero constant `value` input 2.
fn pad_11(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let pads = take_ints(node, "pads")?.ok_or("Pad-2 has no 'pads'")?;
    let value = take_float(node, "value")?;
    let mode = attr::string(node, "mode")?.unwrap_or_else(|| "constant".into());
    let b = base(node);
    node.input.truncate(1);
    let pads = site.int64s(&format!("{b}_pads"), &pads);
    set_input(node, 1, pads);
    match value {
        // Bit-compare so that -0.0 padding stays -0.0.
        Some(v) if mode == "constant" && v.to_bits() != 0 => {
            let dt = data_type(node, site)?;
            let value = site.add_constant(&format!("{b}_value"), site::float_scalar(dt, v)?);
            set_input(node, 2, value);
            Ok(Some("pads/value attributes -> inputs".into()))
        }
        _ => Ok(Some("pads attribute -> input".into())),
    }
}

/// Dropout-10: the mask output turns from the data type to bool. A mask nothing reads is
/// dropped; one that is read is refused.
fn dropout_10(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let Some(mask) = node.output.get(1).filter(|m| !m.is_empty()).cloned() else {
        return Ok(None);
    };
    if site.facts().is_used(&mask) {
        return Err(format!(
            "mask output '{mask}' is read, and its type changes from the data type to bool at opset 10"
        ));
    }
    node.output.truncate(1);
    site.removed_values.push(mask);
    Ok(Some("unused mask output dropped".into()))
}

/// Dropout-12: `ratio` becomes input 1 (omitted when it is the default 0.5).
fn dropout_12(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let Some(ratio) = take_float(node, "ratio")? else {
        return Ok(None);
    };
    if ratio == 0.5 {
        return Ok(Some("default ratio attribute dropped".into()));
    }
    let dt = crate::onnx::pb::tensor_proto::DataType::Float;
    let ratio = site.add_constant(
        &format!("{}_ratio", base(node)),
        site::float_scalar(dt, ratio)?,
    );
    set_input(node, 1, ratio);
    Ok(Some("ratio attribute -> input".into()))
}

/// BatchNormalization-9 removed `spatial`; only the default, per-channel statistics survive.
fn batch_norm_9(node: &mut NodeProto, _site: &mut Site) -> Result<Option<String>, String> {
    match take_int(node, "spatial")? {
        None => Ok(None),
        Some(1) => Ok(Some("spatial attribute dropped".into())),
        Some(s) => Err(format!(
            "spatial = {s} (per-activation statistics) has no equivalent from opset 9"
        )),
    }
}

/// BatchNormalization-14 has at most 3 outputs, and extra ones only in training mode.
fn batch_norm_14(node: &mut NodeProto, _site: &mut Site) -> Result<Option<String>, String> {
    while node.output.len() > 1 && node.output.last().is_some_and(String::is_empty) {
        node.output.pop();
    }
    if node.output.len() > 1 {
        return Err("training outputs (mean, var, saved_mean, saved_var) are not supported".into());
    }
    Ok(None)
}

/// Scatter is deprecated at 11 in favour of ScatterElements, which has the same signature.
fn scatter_11(node: &mut NodeProto, _site: &mut Site) -> Result<Option<String>, String> {
    node.op_type = Some("ScatterElements".into());
    Ok(Some("Scatter -> ScatterElements".into()))
}

/// Erf-13 no longer takes integer tensors.
fn erf_13(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let x = node.input.first().map(String::as_str).unwrap_or("");
    match site.facts().elem_type(x) {
        Some(dt) if !crate::onnx::dtype::is_float(dt) => Err(format!(
            "Erf-13 does not take {} input",
            crate::onnx::dtype::name(dt)
        )),
        _ => Ok(None),
    }
}

/// RoiAlign-16 added `coordinate_transformation_mode` with default "half_pixel"; RoiAlign-10
/// behaves as "output_half_pixel".
fn roi_align_16(node: &mut NodeProto, _site: &mut Site) -> Result<Option<String>, String> {
    if attr::find(node, "coordinate_transformation_mode").is_some() {
        return Ok(None);
    }
    set_attribute(
        node,
        site::string_attribute("coordinate_transformation_mode", "output_half_pixel"),
    );
    Ok(Some(
        "coordinate_transformation_mode 'output_half_pixel' made explicit".into(),
    ))
}

/// GridSample-20 renamed the modes "bilinear" and "bicubic" to "linear" and "cubic".
fn grid_sample_20(node: &mut NodeProto, _site: &mut Site) -> Result<Option<String>, String> {
    let renamed = match attr::string(node, "mode")?.as_deref() {
        Some("bilinear") => "linear",
        Some("bicubic") => "cubic",
        _ => return Ok(None),
    };
    set_attribute(node, site::string_attribute("mode", renamed));
    Ok(Some(format!("mode -> '{renamed}'")))
}

/// DFT-20: `axis` (default 1) becomes input 2, whose own default is -2.
fn dft_20(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let axis = take_int(node, "axis")?.unwrap_or(1);
    let axis = site.add_constant(
        &format!("{}_axis", base(node)),
        site::int64_tensor(&[], &[axis]),
    );
    set_input(node, 2, axis);
    Ok(Some("axis attribute -> input".into()))
}

/// Experimental ops of the first opsets have no schema any more; onnxruntime runs them only up
/// to opset 9.
fn experimental(node: &mut NodeProto, _site: &mut Site) -> Result<Option<String>, String> {
    Err(format!(
        "experimental op {} has no definition from opset 10 on",
        node.op_type()
    ))
}
