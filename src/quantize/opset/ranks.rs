//! Ranks carried through the graph where the file declares none: old exporters seldom write
//! `value_info`, and Softmax-13 needs to know whether its axis is the last one.

use super::facts::Facts;
use crate::onnx::attr;
use crate::onnx::pb::NodeProto;

/// Ops whose every output has the rank of their first input (default domain).
#[rustfmt::skip]
const RANK_OF_FIRST_INPUT: &[&str] = &[
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization",
    "Cast", "Ceil", "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum",
    "DepthToSpace", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "GroupNormalization", "HardSigmoid", "HardSwish", "Hardmax",
    "Identity", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LRN",
    "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "LpPool", "MaxPool",
    "MeanVarianceNormalization", "Mish", "Neg", "Not", "PRelu", "Pad", "Reciprocal", "Relu",
    "Resize", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Slice", "Softmax",
    "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
    "Tile", "Transpose", "Upsample",
];

/// Ops whose output rank is the largest of their inputs' (multidirectional broadcasting).
#[rustfmt::skip]
const BROADCAST: &[&str] = &[
    "Add", "And", "BitShift", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
    "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "Sub", "Sum", "Where", "Xor",
];

pub(crate) fn keeps_rank(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx") && RANK_OF_FIRST_INPUT.contains(&node.op_type())
}

/// The rank of a node's outputs, when it follows from its inputs' ranks.
pub(crate) fn output_rank(node: &NodeProto, facts: &Facts) -> Option<usize> {
    if !matches!(node.domain(), "" | "ai.onnx") {
        return None;
    }
    let input_rank = |i: usize| node.input.get(i).and_then(|name| facts.rank(name));
    let op = node.op_type();
    if op == "Transpose" {
        if let Some(perm) = attr::ints(node, "perm").ok().flatten() {
            return Some(perm.len());
        }
    }
    if keeps_rank(node) {
        return input_rank(0);
    }
    if BROADCAST.contains(&op) {
        let ranks: Option<Vec<usize>> = node
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .map(|i| facts.rank(i))
            .collect();
        return ranks?.into_iter().max();
    }
    match op {
        "Flatten" | "Gemm" => Some(2),
        "Shape" | "NonZero" => Some(if op == "Shape" { 1 } else { 2 }),
        "MatMul" => match (input_rank(0)?, input_rank(1)?) {
            (a, b) if a >= 2 && b >= 2 => Some(a.max(b)),
            _ => None,
        },
        "Reshape" => constant_len(node.input.get(1)?, facts),
        "Concat" => node.input.iter().find_map(|i| facts.rank(i)),
        "Gather" => Some((input_rank(0)? + input_rank(1)?).checked_sub(1)?),
        "Squeeze" | "Unsqueeze" => {
            let n_axes = match attr::ints(node, "axes").ok().flatten() {
                Some(axes) => axes.len(),
                None => constant_len(node.input.get(1)?, facts)?,
            };
            match op {
                "Squeeze" => input_rank(0)?.checked_sub(n_axes),
                _ => Some(input_rank(0)? + n_axes),
            }
        }
        _ if op.starts_with("Reduce") => {
            let keepdims = attr::int(node, "keepdims").ok().flatten().unwrap_or(1);
            if keepdims != 0 {
                return input_rank(0);
            }
            let axes = attr::ints(node, "axes").ok().flatten()?;
            input_rank(0)?.checked_sub(axes.len())
        }
        _ => None,
    }
}

/// The length of a 1-D constant (a shape or an axes list).
fn constant_len(name: &str, facts: &Facts) -> Option<usize> {
    match facts.constant(name)?.dims.as_slice() {
        [n] => usize::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::pb::tensor_proto::DataType;
    use crate::onnx::pb::{type_proto, GraphProto, TensorShapeProto, TypeProto, ValueInfoProto};

    fn value(name: &str, rank: Option<usize>) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(DataType::Float as i32),
                    shape: rank.map(|r| TensorShapeProto {
                        dim: vec![Default::default(); r],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ranks_are_carried_forward_and_back() {
        let mut transpose = node("Transpose", &["x"], &["t"]);
        transpose
            .attribute
            .push(super::super::site::ints_attribute("perm", &[2, 0, 1]));
        let mut squeeze = node("Squeeze", &["t"], &["q"]);
        squeeze
            .attribute
            .push(super::super::site::ints_attribute("axes", &[0]));
        let g = GraphProto {
            input: vec![value("x", None)],
            output: vec![value("y", Some(2))],
            node: vec![
                node("Custom", &["x"], &["c"]),
                node("Softmax", &["c"], &["s"]),
                node("Identity", &["s"], &["y"]),
                node("Flatten", &["x"], &["f"]),
                node("Add", &["f", "s"], &["a"]),
                transpose,
                squeeze,
            ],
            ..Default::default()
        };
        let facts = Facts::of_graph(&g, None);
        // Back from Transpose's perm.
        assert_eq!(facts.rank("x"), Some(3));
        // Back from the declared output through Identity and Softmax.
        assert_eq!(facts.rank("c"), Some(2));
        assert_eq!(facts.rank("a"), Some(2));
        assert_eq!(facts.rank("t"), Some(3));
        assert_eq!(facts.rank("q"), Some(2));
    }
}
