//! Upsample → Resize, and Resize-10 → Resize-11.
//!
//! Upsample-9 and Resize-10 compute an output pixel's source coordinate as `x_out / scale`
//! ("asymmetric"). For nearest they truncate it when the axis grows and round it up when the axis
//! shrinks (onnxruntime's legacy rule, which the node's outputs were validated against). Resize-11
//! says all this explicitly, with one rounding for every axis: "floor" when no axis shrinks, "ceil"
//! when no axis grows; scales that do both, or that are only known at run time for a Resize-10,
//! cannot be expressed and are refused. Upsample requires scales >= 1, so it rounds down.

use super::attrs::{base, set_attribute, take_floats};
use super::site::{self, Site};
use crate::onnx::attr;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::NodeProto;

/// Upsample-9: the `scales` attribute becomes input 1.
pub(crate) fn upsample_9(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let scales = take_floats(node, "scales")?.ok_or("Upsample-7 has no 'scales'")?;
    let raw = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = crate::onnx::tensor::from_raw("", DataType::Float, &[scales.len() as i64], raw);
    let name = site.add_constant(&format!("{}_scales", base(node)), t);
    node.input.truncate(1);
    node.input.push(name);
    Ok(Some("scales attribute -> input".into()))
}

/// Upsample is deprecated at 10; Resize-10 has the same inputs and modes.
pub(crate) fn upsample_10(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    node.op_type = Some("Resize".into());
    site.from_upsample = true;
    Ok(Some("Upsample -> Resize".into()))
}

/// Resize-11: adds the `roi` input and states the coordinate mapping and rounding of Resize-10.
pub(crate) fn resize_11(node: &mut NodeProto, site: &mut Site) -> Result<Option<String>, String> {
    let mode = attr::string(node, "mode")?.unwrap_or_else(|| "nearest".into());
    if !matches!(mode.as_str(), "nearest" | "linear") {
        return Err(format!(
            "mode '{mode}': only nearest and linear existed before opset 11"
        ));
    }
    let [x, scales] = node.input.as_slice() else {
        return Err(format!(
            "Resize-10 takes 2 inputs (X, scales), this node has {}",
            node.input.len()
        ));
    };
    let (x, scales) = (x.clone(), scales.clone());
    let mut what = "roi input added, coordinate_transformation_mode 'asymmetric'".to_string();
    if mode == "nearest" {
        let rounding = nearest_rounding(&scales, site)?;
        set_attribute(node, site::string_attribute("nearest_mode", rounding));
        what += &format!(", nearest_mode '{rounding}'");
    }
    set_attribute(
        node,
        site::string_attribute("coordinate_transformation_mode", "asymmetric"),
    );
    // The roi input is optional from opset 13; before, an empty tensor stands for "none".
    let roi = if site.target >= 13 {
        String::new()
    } else {
        let t = crate::onnx::tensor::from_raw("", DataType::Float, &[0], Vec::new());
        site.add_constant(&format!("{}_roi", base(node)), t)
    };
    node.input = vec![x, roi, scales];
    Ok(Some(what))
}

/// The Resize-11 `nearest_mode` that reproduces Resize-10's rounding for these scales.
fn nearest_rounding(scales: &str, site: &Site) -> Result<&'static str, String> {
    let values = site
        .facts()
        .constant(scales)
        .map(crate::onnx::tensor::to_f32)
        .transpose()
        .map_err(|e| format!("scales '{scales}': {e}"))?;
    let Some(values) = values else {
        return if site.from_upsample {
            Ok("floor")
        } else {
            Err(format!(
                "nearest Resize-10 with computed scales '{scales}': its rounding depends on \
                 whether each axis grows or shrinks"
            ))
        };
    };
    let grows = values.iter().any(|&s| s > 1.0);
    let shrinks = values.iter().any(|&s| s < 1.0);
    match (grows, shrinks) {
        (_, false) => Ok("floor"),
        (false, true) => Ok("ceil"),
        (true, true) => Err(format!(
            "nearest Resize-10 with scales {values:?}: rounding down on growing axes and up on \
             shrinking ones has no single nearest_mode"
        )),
    }
}
