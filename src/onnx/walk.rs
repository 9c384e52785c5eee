//! Visits every `TensorProto` stored in a model: initializers, sparse initializers, tensors held in
//! node attributes (which is where `Constant` nodes keep weights), in subgraphs and in functions.

use super::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto,
};

/// Where a tensor sits, for error messages and for deciding what counts as a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorSite {
    /// A graph initializer (of the main graph or a subgraph).
    Initializer,
    /// The values or indices of a sparse initializer.
    SparseInitializer,
    /// A tensor-valued attribute of a node; `Constant` nodes keep their value here.
    Attribute,
}

/// Calls `f` on every tensor of the model with a readable name and its site; stops at the first error.
pub fn for_each_tensor_mut<E>(
    model: &mut ModelProto,
    f: &mut dyn FnMut(&mut TensorProto, &str, TensorSite) -> Result<(), E>,
) -> Result<(), E> {
    if let Some(g) = model.graph.as_mut() {
        graph_tensors_mut(g, f)?;
    }
    for func in &mut model.functions {
        nodes_tensors_mut(&mut func.node, f)?;
    }
    Ok(())
}

/// Calls `f` on every tensor of one graph (and its subgraphs).
pub fn graph_tensors_mut<E>(
    g: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto, &str, TensorSite) -> Result<(), E>,
) -> Result<(), E> {
    for t in &mut g.initializer {
        let name = t.name().to_string();
        f(t, &name, TensorSite::Initializer)?;
    }
    for s in &mut g.sparse_initializer {
        sparse_mut(s, f, TensorSite::SparseInitializer)?;
    }
    nodes_tensors_mut(&mut g.node, f)
}

fn sparse_mut<E>(
    s: &mut SparseTensorProto,
    f: &mut dyn FnMut(&mut TensorProto, &str, TensorSite) -> Result<(), E>,
    site: TensorSite,
) -> Result<(), E> {
    let base = s
        .values
        .as_ref()
        .map(|v| v.name().to_string())
        .unwrap_or_default();
    if let Some(v) = s.values.as_mut() {
        f(v, &base, site)?;
    }
    if let Some(i) = s.indices.as_mut() {
        f(i, &format!("{base} (indices)"), site)?;
    }
    Ok(())
}

fn nodes_tensors_mut<E>(
    nodes: &mut [NodeProto],
    f: &mut dyn FnMut(&mut TensorProto, &str, TensorSite) -> Result<(), E>,
) -> Result<(), E> {
    for node in nodes {
        let owner = node_label(node);
        for attr in &mut node.attribute {
            attribute_tensors_mut(attr, &owner, f)?;
        }
    }
    Ok(())
}

fn attribute_tensors_mut<E>(
    attr: &mut AttributeProto,
    owner: &str,
    f: &mut dyn FnMut(&mut TensorProto, &str, TensorSite) -> Result<(), E>,
) -> Result<(), E> {
    let attr_name = attr.name().to_string();
    let label = |t: &TensorProto| {
        if t.name().is_empty() {
            format!("{owner} attribute '{attr_name}'")
        } else {
            t.name().to_string()
        }
    };
    if let Some(t) = attr.t.as_mut() {
        let name = label(t);
        f(t, &name, TensorSite::Attribute)?;
    }
    for t in &mut attr.tensors {
        let name = label(t);
        f(t, &name, TensorSite::Attribute)?;
    }
    if let Some(s) = attr.sparse_tensor.as_mut() {
        sparse_mut(s, f, TensorSite::Attribute)?;
    }
    for s in &mut attr.sparse_tensors {
        sparse_mut(s, f, TensorSite::Attribute)?;
    }
    if let Some(g) = attr.g.as_mut() {
        graph_tensors_mut(g, f)?;
    }
    for g in &mut attr.graphs {
        graph_tensors_mut(g, f)?;
    }
    Ok(())
}

/// A short human label for a node: its name, or its op type and first output when unnamed.
pub fn node_label(node: &NodeProto) -> String {
    if !node.name().is_empty() {
        format!("node '{}' ({})", node.name(), node.op_type())
    } else {
        let out = node.output.first().map(String::as_str).unwrap_or("");
        format!("{} node producing '{out}'", node.op_type())
    }
}

/// Whether `pred` holds for any tensor of the model (initializers, sparse initializers, node
/// attributes, subgraphs and functions, like [`for_each_tensor_mut`]), without needing the model
/// mutably or a copy of it.
pub fn any_tensor(model: &ModelProto, pred: &mut dyn FnMut(&TensorProto) -> bool) -> bool {
    model.graph.as_ref().is_some_and(|g| graph_any(g, pred))
        || model.functions.iter().any(|f| nodes_any(&f.node, pred))
}

fn graph_any(g: &GraphProto, pred: &mut dyn FnMut(&TensorProto) -> bool) -> bool {
    g.initializer.iter().any(&mut *pred)
        || g.sparse_initializer.iter().any(|s| sparse_any(s, pred))
        || nodes_any(&g.node, pred)
}

fn sparse_any(s: &SparseTensorProto, pred: &mut dyn FnMut(&TensorProto) -> bool) -> bool {
    s.values.iter().chain(s.indices.iter()).any(&mut *pred)
}

fn nodes_any(nodes: &[NodeProto], pred: &mut dyn FnMut(&TensorProto) -> bool) -> bool {
    nodes.iter().flat_map(|n| &n.attribute).any(|a| {
        a.t.iter().chain(&a.tensors).any(&mut *pred)
            || a.sparse_tensor
                .iter()
                .chain(&a.sparse_tensors)
                .any(|s| sparse_any(s, pred))
            || a.g.iter().chain(&a.graphs).any(|g| graph_any(g, pred))
    })
}
