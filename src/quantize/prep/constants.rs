//! Constant folding: `Constant` nodes become initializers, and nodes whose inputs are all
//! constant are evaluated once in tract and replaced by initializers holding their outputs.

use std::collections::{BTreeSet, HashSet};

use prost::Message;
use tract_onnx::prelude::*;

use super::output_size::value_shaped_output;
use super::tract_tensor::tensor_proto;
use super::{can_add_initializers, is_default_domain, main_graph, remove_unused_constants};
use crate::engine::guard;
use crate::error::Result;
use crate::graph::{constant_node_value, GraphIndex};
use crate::onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::{attr, dtype};

/// Largest tensor a folded node may produce: folding must not blow the model up.
pub const MAX_FOLDED_BYTES: usize = 64 << 20;

/// Ops never evaluated at preparation time: random ones, and quantization ops (a
/// `DequantizeLinear` of a constant is how quantized models store weights).
const NOT_FOLDED: &[&str] = &[
    "Bernoulli",
    "DequantizeLinear",
    "Dropout",
    "DynamicQuantizeLinear",
    "Multinomial",
    "QuantizeLinear",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
];

/// Folds the main graph's constants (subgraphs are left alone):
///
/// 1. every `Constant` node (dense value) becomes an initializer of the same name;
/// 2. every deterministic default-domain node without subgraphs whose inputs are all constants
///    is evaluated in tract and replaced by initializers holding its outputs, repeatedly, so that
///    chains like `Constant → Reshape → Transpose` of a weight fold completely.
///
/// A node tract cannot evaluate, one producing a graph output, and one whose output would
/// exceed [`MAX_FOLDED_BYTES`] stay in place. Constants nobody reads any more are removed.
/// Returns the number of nodes folded away. IR ≤ 3 models are left as they are.
pub fn fold_constants(model: &mut ModelProto) -> Result<usize> {
    main_graph(model)?;
    if !can_add_initializers(model) {
        return Ok(0);
    }
    let mut total = constant_nodes_to_initializers(model);
    let mut failed = HashSet::new();
    loop {
        let n = fold_round(model, &mut failed)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

fn graph_outputs(graph: &GraphProto) -> HashSet<String> {
    graph.output.iter().map(|v| v.name().to_string()).collect()
}

fn constant_nodes_to_initializers(model: &mut ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else {
        return 0;
    };
    let outputs = graph_outputs(graph);
    let mut n = 0;
    let mut kept = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        let value = match node.output.as_slice() {
            [out] if !out.is_empty() && !outputs.contains(out) => {
                constant_node_value(&node).map(|v| (out.clone(), v.into_owned()))
            }
            _ => None,
        };
        match value {
            Some((name, mut tensor)) => {
                tensor.name = Some(name);
                graph.initializer.push(tensor);
                n += 1;
            }
            None => kept.push(node),
        }
    }
    graph.node = kept;
    n
}

/// Whether node `node` may be evaluated once and for all.
fn foldable(node: &NodeProto, index: &GraphIndex, outputs: &HashSet<String>) -> bool {
    is_default_domain(node.domain())
        && !NOT_FOLDED.contains(&node.op_type())
        && node.op_type() != "Constant"
        && attr::subgraphs(node).next().is_none()
        && node.input.iter().any(|i| !i.is_empty())
        && node
            .input
            .iter()
            .all(|i| i.is_empty() || index.constant(i).is_some())
        && node.output.iter().any(|o| !o.is_empty())
        && node.output.iter().all(|o| !outputs.contains(o))
}

/// Folds every currently foldable node once; returns how many were folded. Nodes tract fails
/// on are remembered in `failed` (by first output) and not tried again.
fn fold_round(model: &mut ModelProto, failed: &mut HashSet<String>) -> Result<usize> {
    let graph = main_graph(model)?;
    let outputs = graph_outputs(graph);
    let mut folded: Vec<(usize, Vec<TensorProto>)> = Vec::new();
    {
        let index = GraphIndex::new(graph);
        for (i, node) in graph.node.iter().enumerate() {
            let key = node.output.join("\u{0}");
            if failed.contains(&key) || !foldable(node, &index, &outputs) {
                continue;
            }
            let mut inputs: Vec<TensorProto> = Vec::new();
            for name in node.input.iter().filter(|i| !i.is_empty()) {
                if inputs.iter().any(|t| t.name() == name) {
                    continue;
                }
                if let Some(t) = index.constant(name) {
                    let mut t = t.into_owned();
                    t.name = Some(name.clone());
                    inputs.push(t);
                }
            }
            match evaluate(model, node, inputs) {
                Ok(values) => folded.push((i, values)),
                Err(_) => {
                    failed.insert(key);
                }
            }
        }
    }
    let n = folded.len();
    if n == 0 {
        return Ok(0);
    }
    let Some(graph) = model.graph.as_mut() else {
        return Ok(0);
    };
    let mut released = BTreeSet::new();
    let mut removed = HashSet::new();
    for (i, values) in folded {
        released.extend(
            graph.node[i]
                .input
                .iter()
                .filter(|s| !s.is_empty())
                .cloned(),
        );
        graph.initializer.extend(values);
        removed.insert(i);
    }
    let mut k = 0;
    graph.node.retain(|_| {
        k += 1;
        !removed.contains(&(k - 1))
    });
    remove_unused_constants(graph, &released);
    Ok(n)
}

/// Runs `node` alone in tract on its constant `inputs`; its outputs as initializers (those
/// with an empty name are dropped). `Err` when tract cannot, or the result is too large.
fn evaluate(
    model: &ModelProto,
    node: &NodeProto,
    inputs: Vec<TensorProto>,
) -> Result<Vec<TensorProto>, String> {
    // Ops whose output shape is an input's value: check the size before tract allocates it,
    // and that tract produced exactly that many elements.
    let expected = match value_shaped_output(node, &inputs) {
        None => None,
        Some(Err(e)) => return Err(e),
        Some(Ok((n, dt))) => match dtype::raw_len(dt, n) {
            Some(bytes) if bytes <= MAX_FOLDED_BYTES as u64 => Some(n),
            _ => return Err(format!("an output of {n} elements is too large to fold")),
        },
    };
    let names: Vec<String> = node
        .output
        .iter()
        .filter(|o| !o.is_empty())
        .cloned()
        .collect();
    let single = ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        graph: Some(GraphProto {
            name: Some("fold".into()),
            node: vec![node.clone()],
            initializer: inputs,
            output: names
                .iter()
                .map(|n| ValueInfoProto {
                    name: Some(n.clone()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = single.encode_to_vec();
    guard("constant folding", || {
        let typed = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_read(&mut bytes.as_slice())
            .and_then(|m| m.into_typed())
            .map_err(|e| format!("{e:#}"))?;
        for outlet in typed.output_outlets().map_err(|e| format!("{e:#}"))? {
            let fact = typed.outlet_fact(*outlet).map_err(|e| format!("{e:#}"))?;
            let shape = fact.shape.as_concrete().ok_or("symbolic output shape")?;
            let size = shape
                .iter()
                .try_fold(fact.datum_type.size_of(), |acc, &d| acc.checked_mul(d))
                .filter(|&s| s <= MAX_FOLDED_BYTES);
            if size.is_none() {
                return Err(format!("an output of shape {shape:?} is too large to fold"));
            }
        }
        let values = typed
            .into_runnable()
            .and_then(|plan| plan.run(tvec![]))
            .map_err(|e| format!("{e:#}"))?;
        if let Some(n) = expected {
            if values.iter().any(|v| v.len() as u64 != n) {
                return Err(format!(
                    "tract's output does not hold the {n} elements expected"
                ));
            }
        }
        if values.len() != names.len() {
            return Err(format!(
                "tract produced {} outputs for {}",
                values.len(),
                names.len()
            ));
        }
        names
            .iter()
            .zip(values.iter())
            .map(|(name, value)| tensor_proto(name, value))
            .collect()
    })
}
