//! Attribute helpers for the adapters: attributes are taken off the node as they become inputs,
//! with their type checked the way `crate::onnx::attr` reads them.

use crate::onnx::attr;
use crate::onnx::pb::attribute_proto::AttributeType;
use crate::onnx::pb::{AttributeProto, NodeProto};

/// The name new tensors of this node are named after.
pub(crate) fn base(node: &NodeProto) -> String {
    match (node.name(), node.output.first()) {
        ("", Some(out)) if !out.is_empty() => out.clone(),
        ("", _) => node.op_type().to_string(),
        (name, _) => name.to_string(),
    }
}

/// Removes attribute `name` and returns it; an attribute that refers to the enclosing
/// function's attribute cannot become a tensor and is refused.
pub(crate) fn take(node: &mut NodeProto, name: &str) -> Result<Option<AttributeProto>, String> {
    let Some(i) = node.attribute.iter().position(|a| a.name() == name) else {
        return Ok(None);
    };
    let a = node.attribute.remove(i);
    if !a.ref_attr_name().is_empty() {
        return Err(format!(
            "attribute '{name}' refers to the function attribute '{}', which cannot become an input",
            a.ref_attr_name()
        ));
    }
    Ok(Some(a))
}

fn expect_kind(a: &AttributeProto, want: AttributeType) -> Result<(), String> {
    let got = attr::kind(a);
    // An empty list written without a type reads as UNDEFINED.
    let empty_list = got == AttributeType::Undefined
        && matches!(want, AttributeType::Ints | AttributeType::Floats);
    if got == want || empty_list {
        Ok(())
    } else {
        Err(format!(
            "attribute '{}' should be {} but is {}",
            a.name(),
            want.as_str_name(),
            got.as_str_name()
        ))
    }
}

/// Removes an `INTS` attribute and returns its values.
pub(crate) fn take_ints(node: &mut NodeProto, name: &str) -> Result<Option<Vec<i64>>, String> {
    match take(node, name)? {
        None => Ok(None),
        Some(a) => expect_kind(&a, AttributeType::Ints).map(|_| Some(a.ints)),
    }
}

/// Removes a `FLOATS` attribute and returns its values.
pub(crate) fn take_floats(node: &mut NodeProto, name: &str) -> Result<Option<Vec<f32>>, String> {
    match take(node, name)? {
        None => Ok(None),
        Some(a) => expect_kind(&a, AttributeType::Floats).map(|_| Some(a.floats)),
    }
}

/// Removes an `INT` attribute and returns its value.
pub(crate) fn take_int(node: &mut NodeProto, name: &str) -> Result<Option<i64>, String> {
    match take(node, name)? {
        None => Ok(None),
        Some(a) => expect_kind(&a, AttributeType::Int).map(|_| Some(a.i())),
    }
}

/// Removes a `FLOAT` attribute and returns its value.
pub(crate) fn take_float(node: &mut NodeProto, name: &str) -> Result<Option<f32>, String> {
    match take(node, name)? {
        None => Ok(None),
        Some(a) => expect_kind(&a, AttributeType::Float).map(|_| Some(a.f())),
    }
}

/// Sets input `i`, padding skipped optional inputs with "".
pub(crate) fn set_input(node: &mut NodeProto, i: usize, name: String) {
    if node.input.len() <= i {
        node.input.resize(i + 1, String::new());
    }
    node.input[i] = name;
}

/// Replaces (or adds) an attribute.
pub(crate) fn set_attribute(node: &mut NodeProto, a: AttributeProto) {
    node.attribute.retain(|old| old.name() != a.name());
    node.attribute.push(a);
}
