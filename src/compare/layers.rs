//! Which tensor of a quantized model stands for which tensor of its float original.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::onnx::pb::ModelProto;

/// Maps, for every activation the quantized model quantizes, the output of one
/// DequantizeLinear that reads it back (a name in the quantized model) to the tensor's name in
/// the float model. Found from the structure alone, `x -> QuantizeLinear -> DequantizeLinear`,
/// so it holds for any QDQ model: ours, onnxruntime's or a QAT export. When the quantized
/// tensor is a graph output the float producer writes a renamed tensor and the DQ restores the
/// original name; that DQ's output is the float name. Weights and constants (a DQ of an
/// initializer) are not activations and are left out.
pub fn quantized_tensors(model: &ModelProto) -> BTreeMap<String, String> {
    let Some(graph) = model.graph.as_ref() else {
        return BTreeMap::new();
    };
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    // QuantizeLinear output -> its float input.
    let quantized_from: HashMap<&str, &str> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "QuantizeLinear" && matches!(n.domain(), "" | "ai.onnx"))
        .filter_map(|n| Some((n.output.first()?.as_str(), n.input.first()?.as_str())))
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut pairs = BTreeMap::new();
    for node in &graph.node {
        if node.op_type() != "DequantizeLinear" || !matches!(node.domain(), "" | "ai.onnx") {
            continue;
        }
        let (Some(input), Some(output)) = (node.input.first(), node.output.first()) else {
            continue;
        };
        let Some(&float_input) = quantized_from.get(input.as_str()) else {
            continue;
        };
        let float_name = if outputs.contains(output.as_str()) {
            output.clone()
        } else {
            float_input.to_string()
        };
        if seen.insert(float_name.clone()) {
            pairs.insert(output.clone(), float_name);
        }
    }
    pairs
}
