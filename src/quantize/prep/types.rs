//! Type inference: tract's typed facts written back as `graph.value_info`.

use std::collections::{BTreeMap, HashSet};

use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, GenericFactoid, InferenceModelExt};

use super::main_graph;
use super::tract_tensor::onnx_type;
use crate::engine::guard;
use crate::error::{Error, Result};
use crate::graph::{tensor_type, Dim};
use crate::onnx::pb::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::pb::{type_proto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto};

/// Gives every main-graph node output that has no declaration yet (no `value_info` entry, not a
/// graph output) a `value_info` with its element type and shape as tract types them. Symbolic
/// input dims named in `dims` are set to that value first; the others stay symbolic, and a
/// dimension that depends on them is written as `dim_param` text (such as `N` or `2*N`).
/// Returns the number of entries added.
///
/// When tract cannot type the whole model, the tensors it could type still get their entry.
/// `Err` when tract cannot load the model.
pub fn infer_types(model: &mut ModelProto, dims: &BTreeMap<String, i64>) -> Result<usize> {
    let graph = main_graph(model)?;
    let mut declared: HashSet<&str> = graph
        .input
        .iter()
        .chain(&graph.output)
        .chain(&graph.value_info)
        .map(|v| v.name())
        .collect();
    declared.extend(graph.initializer.iter().map(|t| t.name()));
    let wanted: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .map(String::as_str)
        .filter(|o| !o.is_empty() && !declared.contains(o))
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let facts = facts(model, dims)?;
    let mut entries: Vec<ValueInfoProto> = Vec::new();
    let mut seen = HashSet::new();
    for (name, value) in facts {
        if wanted.contains(name.as_str()) && seen.insert(name.clone()) {
            entries.push(ValueInfoProto {
                name: Some(name),
                r#type: Some(value),
                ..Default::default()
            });
        }
    }
    // Keep the graph's node order, which is deterministic.
    let order: BTreeMap<&str, usize> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .enumerate()
        .map(|(i, o)| (o.as_str(), i))
        .collect();
    entries.sort_by_key(|v| order.get(v.name()).copied().unwrap_or(usize::MAX));
    let n = entries.len();
    if let Some(graph) = model.graph.as_mut() {
        graph.value_info.extend(entries);
    }
    Ok(n)
}

/// The element type and shape of every labelled outlet tract can type, as ONNX `TypeProto`s.
///
/// Facts come from the typed model. When tract cannot type the whole model (an op it does not
/// know, or symbolic dims it cannot unify), they come from its (obstinate) analysis instead,
/// for the outlets whose type and shape it determined. `Err` only when tract cannot load it.
fn facts(model: &ModelProto, dims: &BTreeMap<String, i64>) -> Result<Vec<(String, TypeProto)>> {
    let tract_error = |e: String| Error::Tract(format!("type inference: {e}"));
    let mut inference = guard("type inference", || load(model, dims)).map_err(tract_error)?;
    let typed = guard("type inference", || {
        inference.clone().into_typed().map_err(|e| format!("{e:#}"))
    });
    match typed {
        Ok(typed) => guard("type inference", || Ok(typed_facts(&typed))),
        Err(_) => guard("type inference", || {
            // Errors are expected here; the facts it could establish are kept.
            let _ = inference.analyse(true);
            Ok(inference_facts(&inference))
        }),
    }
    .map_err(tract_error)
}

/// Loads the model in tract with every input fully shaped: dims named in `dims` take their
/// value; unknown dims become fresh symbols (tract cannot type an input with unknown dims).
fn load(model: &ModelProto, dims: &BTreeMap<String, i64>) -> Result<InferenceModel, String> {
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let bytes = model.encode_to_vec();
    let mut inference = crate::engine::load_bytes(&bytes)?;
    let inputs = inference
        .input_outlets()
        .map_err(|e| e.to_string())?
        .to_vec();
    for (slot, outlet) in inputs.into_iter().enumerate() {
        let name = inference.node(outlet.node).name.clone();
        let declared: Vec<Dim> = graph
            .input
            .iter()
            .find(|v| v.name() == name)
            .and_then(|v| v.r#type.as_ref())
            .and_then(tensor_type)
            .and_then(|t| t.shape)
            .unwrap_or_default();
        let mut fact = inference
            .input_fact(slot)
            .map_err(|e| e.to_string())?
            .clone();
        let mut changed = false;
        for (axis, dim) in declared.iter().enumerate() {
            let pinned = match dim {
                Dim::Param(p) => dims.get(p).map(|&v| v.to_dim()),
                _ => None,
            };
            let value = match (pinned, fact.shape.dim(axis)) {
                (Some(v), Some(_)) => v,
                (None, Some(GenericFactoid::Any)) => inference
                    .symbols
                    .new_with_prefix(&format!("unk__{name}_{axis}"))
                    .to_dim(),
                _ => continue,
            };
            changed |= fact.shape.set_dim(axis, value);
        }
        if changed {
            inference
                .set_input_fact(slot, fact)
                .map_err(|e| format!("input '{name}': {e:#}"))?;
        }
    }
    Ok(inference)
}

fn tensor_type_proto(dt: DatumType, shape: &[TDim]) -> Option<TypeProto> {
    let elem_type = onnx_type(dt)?;
    let dim = shape
        .iter()
        .map(|d| Dimension {
            value: Some(match d.to_i64() {
                Ok(v) => dimension::Value::DimValue(v),
                Err(_) => dimension::Value::DimParam(d.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    Some(TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(elem_type as i32),
            shape: Some(TensorShapeProto { dim }),
        })),
        ..Default::default()
    })
}

fn element_type_proto(dt: DatumType) -> Option<TypeProto> {
    Some(TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(onnx_type(dt)? as i32),
            shape: None,
        })),
        ..Default::default()
    })
}

fn typed_facts(typed: &TypedModel) -> Vec<(String, TypeProto)> {
    let mut facts = Vec::new();
    for node in typed.nodes() {
        for (slot, output) in node.outputs.iter().enumerate() {
            let label = typed.outlet_label(OutletId::new(node.id, slot));
            let shape: Vec<TDim> = output.fact.shape.iter().cloned().collect();
            if let (Some(label), Some(t)) =
                (label, tensor_type_proto(output.fact.datum_type, &shape))
            {
                facts.push((label.to_string(), t));
            }
        }
    }
    facts
}

fn inference_facts(inference: &InferenceModel) -> Vec<(String, TypeProto)> {
    let mut facts = Vec::new();
    for node in inference.nodes() {
        for (slot, output) in node.outputs.iter().enumerate() {
            let label = inference.outlet_label(OutletId::new(node.id, slot));
            let dt = output.fact.datum_type.concretize();
            let (Some(label), Some(dt)) = (label, dt) else {
                continue;
            };
            // The element type alone is what planning needs most (float or not), so it is
            // recorded even when the analysis could not settle the shape.
            let t = match output.fact.shape.concretize() {
                Some(shape) => tensor_type_proto(dt, &shape),
                None => element_type_proto(dt),
            };
            if let Some(t) = t {
                facts.push((label.to_string(), t));
            }
        }
    }
    facts
}
