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

/// Where the quantizer absorbed a Relu (or Clip) into the range of the tensor before it, the
/// quantized tensor holds the activation's output, not its input: `x -> Relu -> y` in the float
/// model became `x -> Q -> DQ` with `y` gone. Such pairs are compared with `y`, or the
/// clamped-away negatives would count as error.
// Needs no tract, but only the tract comparison calls it.
#[cfg_attr(not(feature = "tract"), allow(dead_code))]
pub fn follow_absorbed_activations(
    pairs: BTreeMap<String, String>,
    float: &ModelProto,
    quantized: &ModelProto,
) -> BTreeMap<String, String> {
    let (Some(fg), Some(qg)) = (float.graph.as_ref(), quantized.graph.as_ref()) else {
        return pairs;
    };
    let in_quantized: HashSet<&str> = qg
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(qg.input.iter().map(|i| i.name()))
        .collect();
    let mut consumers: HashMap<&str, Vec<&crate::onnx::pb::NodeProto>> = HashMap::new();
    for n in &fg.node {
        for i in &n.input {
            consumers.entry(i.as_str()).or_default().push(n);
        }
    }
    pairs
        .into_iter()
        .map(|(dq, x)| {
            let absorbed = match consumers.get(x.as_str()).map(Vec::as_slice) {
                Some([only]) if matches!(only.op_type(), "Relu" | "Clip") => only
                    .output
                    .first()
                    .filter(|y| !in_quantized.contains(y.as_str()))
                    .cloned(),
                _ => None,
            };
            (dq, absorbed.unwrap_or(x))
        })
        .collect()
}
