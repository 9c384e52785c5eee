//! Typed access to node attributes, the way tract's `pb_helpers` reads them: the caller names the
//! attribute and the type it expects, and a wrong type is an error rather than a silent default.

use super::pb::attribute_proto::AttributeType;
use super::pb::{AttributeProto, GraphProto, NodeProto, TensorProto};

/// Looks an attribute up by name.
pub fn find<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

/// The attribute's declared type, falling back to which field is set (IR < 3 models omit `type`).
pub fn kind(a: &AttributeProto) -> AttributeType {
    use AttributeType as T;
    if let Some(t) = a.r#type.and_then(|t| AttributeType::try_from(t).ok()) {
        if t != T::Undefined {
            return t;
        }
    }
    if a.f.is_some() {
        T::Float
    } else if a.i.is_some() {
        T::Int
    } else if a.s.is_some() {
        T::String
    } else if a.t.is_some() {
        T::Tensor
    } else if a.g.is_some() {
        T::Graph
    } else if !a.floats.is_empty() {
        T::Floats
    } else if !a.ints.is_empty() {
        T::Ints
    } else if !a.strings.is_empty() {
        T::Strings
    } else if !a.tensors.is_empty() {
        T::Tensors
    } else if !a.graphs.is_empty() {
        T::Graphs
    } else {
        T::Undefined
    }
}

fn expect(node: &NodeProto, a: &AttributeProto, want: AttributeType) -> Result<(), String> {
    let got = kind(a);
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "attribute '{}' of {} should be {} but is {}",
            a.name(),
            super::walk::node_label(node),
            want.as_str_name(),
            got.as_str_name()
        ))
    }
}

/// An `INT` attribute, `None` when absent.
pub fn int(node: &NodeProto, name: &str) -> Result<Option<i64>, String> {
    match find(node, name) {
        None => Ok(None),
        Some(a) => expect(node, a, AttributeType::Int).map(|_| Some(a.i())),
    }
}

/// An `INTS` attribute, `None` when absent.
pub fn ints<'a>(node: &'a NodeProto, name: &str) -> Result<Option<&'a [i64]>, String> {
    match find(node, name) {
        None => Ok(None),
        Some(a) => expect(node, a, AttributeType::Ints).map(|_| Some(a.ints.as_slice())),
    }
}

/// A `FLOAT` attribute, `None` when absent.
pub fn float(node: &NodeProto, name: &str) -> Result<Option<f32>, String> {
    match find(node, name) {
        None => Ok(None),
        Some(a) => expect(node, a, AttributeType::Float).map(|_| Some(a.f())),
    }
}

/// A `STRING` attribute decoded as UTF-8, `None` when absent.
pub fn string(node: &NodeProto, name: &str) -> Result<Option<String>, String> {
    match find(node, name) {
        None => Ok(None),
        Some(a) => expect(node, a, AttributeType::String)
            .map(|_| Some(String::from_utf8_lossy(a.s()).into_owned())),
    }
}

/// A `TENSOR` attribute, `None` when absent.
pub fn tensor<'a>(node: &'a NodeProto, name: &str) -> Result<Option<&'a TensorProto>, String> {
    match find(node, name) {
        None => Ok(None),
        Some(a) => expect(node, a, AttributeType::Tensor).map(|_| a.t.as_ref()),
    }
}

/// Every subgraph a node holds (If branches, Loop and Scan bodies), with the attribute name.
pub fn subgraphs(node: &NodeProto) -> impl Iterator<Item = (&str, &GraphProto)> {
    node.attribute.iter().flat_map(|a| {
        a.g.iter()
            .chain(a.graphs.iter())
            .map(move |g| (a.name(), g))
    })
}
