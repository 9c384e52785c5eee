//! Graph preparation passes run before quantization planning.
//!
//! Each pass is a free function over a `ModelProto` that returns how much it changed, and each
//! keeps the model valid (structurally, and with unchanged outputs):
//!
//! - [`fold_constants`] turns `Constant` nodes into initializers and evaluates (in tract) nodes
//!   whose inputs are all constant, so that weights reach the quantizer as initializers;
//! - [`fold_batchnorm`] folds inference-mode `BatchNormalization` into the `Conv`,
//!   `ConvTranspose` or `Gemm` before it;
//! - [`infer_types`] records tract's element type and shape of every intermediate tensor in
//!   `graph.value_info`.
//!
//! [`prepare`] runs all three. Only the main graph is rewritten; subgraphs are left alone.

mod batchnorm;
mod constants;
mod equalize;
mod output_size;
mod tract_tensor;
mod types;
pub(crate) mod values;

use std::collections::{BTreeSet, HashSet};

pub use batchnorm::fold_batchnorm;
pub use constants::{fold_constants, MAX_FOLDED_BYTES};
pub use equalize::equalize_layers;
pub use types::infer_types;

use crate::error::{Error, Result};
use crate::graph::node_uses;
use crate::onnx::pb::{GraphProto, ModelProto};

/// What [`prepare`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrepReport {
    /// `BatchNormalization` nodes folded into the node before them.
    pub batchnorm_folded: usize,
    /// Nodes replaced by initializers (`Constant` nodes and evaluated constant subgraphs).
    pub constants_folded: usize,
    /// `value_info` entries added.
    pub types_inferred: usize,
    /// Shapes declared on the outputs of If/Loop/Scan bodies, dropped (types kept).
    pub subgraph_output_shapes_dropped: usize,
    /// Conv pairs rescaled by cross-layer equalization ([`equalize_layers`], static mode).
    pub layers_equalized: usize,
}

impl PrepReport {
    /// Whether the passes changed nothing.
    pub fn is_unchanged(&self) -> bool {
        *self == PrepReport::default()
    }
}

/// Runs the preparation passes in order: constants first (so that weights held in `Constant`
/// nodes or computed from constants are initializers), then BatchNormalization folding, then
/// type inference on the final graph (symbolic input dims stay symbolic). Running it again on
/// its own output changes nothing.
pub fn prepare(model: &mut ModelProto) -> Result<PrepReport> {
    let constants_folded = fold_constants(model)?;
    let batchnorm_folded = fold_batchnorm(model)?;
    let types_inferred = infer_types(model, &Default::default())?;
    let subgraph_output_shapes_dropped = model.graph.as_mut().map_or(0, |g| {
        g.node
            .iter_mut()
            .flat_map(|n| n.attribute.iter_mut())
            .map(drop_body_output_shapes)
            .sum()
    });
    Ok(PrepReport {
        batchnorm_folded,
        constants_folded,
        types_inferred,
        subgraph_output_shapes_dropped,
        layers_equalized: 0,
    })
}

/// Drops the shapes declared on the outputs of the bodies in `attribute` (and of the bodies
/// nested in them), keeping their element types. Exporters write shapes there that ONNX's own
/// shape inference contradicts (a PaddleOCR table model declares a scalar where its If branch
/// yields a vector), and `onnx.checker`'s full check then refuses the model although every
/// runtime ignores those declarations. The main graph's outputs keep theirs.
fn drop_body_output_shapes(attribute: &mut crate::onnx::pb::AttributeProto) -> usize {
    let mut dropped = 0;
    for body in attribute.g.iter_mut().chain(attribute.graphs.iter_mut()) {
        for output in &mut body.output {
            if let Some(crate::onnx::pb::type_proto::Value::TensorType(t)) =
                output.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                if t.shape.take().is_some() {
                    dropped += 1;
                }
            }
        }
        for node in &mut body.node {
            for a in &mut node.attribute {
                dropped += drop_body_output_shapes(a);
            }
        }
    }
    dropped
}

/// The model's main graph, or an error when it has none.
fn main_graph(model: &ModelProto) -> Result<&GraphProto> {
    model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Model("the model has no graph".into()))
}

/// Whether new initializers may be added: IR <= 3 requires every initializer to be a graph
/// input too, which would make it overridable rather than constant.
fn can_add_initializers(model: &ModelProto) -> bool {
    model.ir_version() > 3
}

/// Whether `domain` names the default ONNX domain.
fn is_default_domain(domain: &str) -> bool {
    matches!(domain, "" | "ai.onnx")
}

/// Removes the initializers and `Constant` nodes among `candidates` that no node (nor
/// subgraph) reads and that are not graph outputs, with their `value_info` entries. Initializers
/// that are also graph inputs stay.
fn remove_unused_constants(graph: &mut GraphProto, candidates: &BTreeSet<String>) {
    if candidates.is_empty() {
        return;
    }
    let used: HashSet<String> = graph
        .node
        .iter()
        .flat_map(node_uses)
        .chain(graph.output.iter().map(|v| v.name().to_string()))
        .collect();
    let inputs: HashSet<String> = graph.input.iter().map(|v| v.name().to_string()).collect();
    let dead =
        |name: &str| candidates.contains(name) && !used.contains(name) && !inputs.contains(name);
    let mut removed: HashSet<String> = HashSet::new();
    graph.initializer.retain(|t| {
        let keep = !dead(t.name());
        if !keep {
            removed.insert(t.name().to_string());
        }
        keep
    });
    graph.node.retain(|n| {
        let is_constant = n.op_type() == "Constant" && is_default_domain(n.domain());
        let keep = !(is_constant && n.output.len() == 1 && dead(&n.output[0]));
        if !keep {
            removed.insert(n.output[0].clone());
        }
        keep
    });
    graph.value_info.retain(|v| !removed.contains(v.name()));
}
