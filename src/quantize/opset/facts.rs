//! What the upgrade adapters may need to know about a value: its element type (Clip and Pad
//! values become tensors of the input's type), its declared shape (Softmax's rank, Scan-8's batch
//! size), a small constant's value (Resize-10's scales) and whether anything reads it.
//!
//! Element types come from declarations and constants, then are carried through the nodes whose
//! output type follows from their inputs or attributes. Shapes are only what the file declares;
//! ranks are also carried forward and backward through ops that keep them (old exporters seldom
//! write `value_info`).

use std::collections::{HashMap, HashSet};

use super::ranks::{keeps_rank, output_rank};
use crate::graph::{self, Dim};
use crate::onnx::attr;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{GraphProto, NodeProto, TensorProto};

/// Constants with at most this many elements are kept for adapters to read.
const SMALL_CONSTANT: u64 = 64;

/// Facts about the values of one graph, with the enclosing graphs' facts behind it.
#[derive(Default)]
pub(crate) struct Facts<'p> {
    outer: Option<&'p Facts<'p>>,
    elem_types: HashMap<String, DataType>,
    shapes: HashMap<String, Vec<Dim>>,
    ranks: HashMap<String, usize>,
    constants: HashMap<String, TensorProto>,
    used: HashSet<String>,
}

impl<'p> Facts<'p> {
    /// Facts of `g` as it is now (before any of its nodes is rewritten).
    pub(crate) fn of_graph(g: &GraphProto, outer: Option<&'p Facts<'p>>) -> Self {
        let mut facts = Facts {
            outer,
            ..Facts::default()
        };
        for v in g.value_info.iter().chain(&g.output).chain(&g.input) {
            if let Some(t) = v.r#type.as_ref().and_then(graph::tensor_type) {
                facts.elem_types.insert(v.name().to_string(), t.elem_type);
                if let Some(shape) = t.shape {
                    facts.shapes.insert(v.name().to_string(), shape);
                }
            }
        }
        let inputs: HashSet<&str> = g.input.iter().map(|v| v.name()).collect();
        for t in &g.initializer {
            // An initializer that is also a graph input is only a default: not a constant.
            facts.add_tensor(t.name(), t, !inputs.contains(t.name()));
        }
        for node in &g.node {
            if let Some(value) = graph::constant_node_value(node) {
                if let Some(out) = node.output.first() {
                    facts.add_tensor(out, &value, true);
                }
            }
            let types = output_types(node, &|name| facts.elem_type(name));
            for (out, t) in node.output.iter().zip(types) {
                if let (false, Some(t)) = (out.is_empty(), t) {
                    facts.elem_types.entry(out.clone()).or_insert(t);
                }
            }
            facts.used.extend(graph::node_uses(node));
        }
        facts
            .used
            .extend(g.output.iter().map(|v| v.name().to_string()));
        facts.ranks = facts
            .shapes
            .iter()
            .map(|(name, s)| (name.clone(), s.len()))
            .collect();
        facts.carry_ranks(g);
        facts
    }

    /// Carries ranks forward through the nodes, back through the rank-keeping ones, and forward
    /// again.
    fn carry_ranks(&mut self, g: &GraphProto) {
        for pass in 0..3 {
            if pass == 1 {
                for node in g.node.iter().rev() {
                    let (Some(x), Some(y)) = (node.input.first(), node.output.first()) else {
                        continue;
                    };
                    if keeps_rank(node) && self.rank(x).is_none() {
                        if let Some(r) = self.rank(y) {
                            self.ranks.insert(x.clone(), r);
                        }
                    }
                }
                continue;
            }
            for node in &g.node {
                let Some(r) = output_rank(node, self) else {
                    continue;
                };
                for out in node.output.iter().filter(|o| !o.is_empty()) {
                    self.ranks.entry(out.clone()).or_insert(r);
                }
            }
        }
    }

    fn add_tensor(&mut self, name: &str, t: &TensorProto, constant: bool) {
        let Ok(dt) = DataType::try_from(t.data_type.unwrap_or(0)) else {
            return;
        };
        self.elem_types.entry(name.to_string()).or_insert(dt);
        self.shapes
            .entry(name.to_string())
            .or_insert_with(|| t.dims.iter().map(|&d| Dim::Value(d)).collect());
        let small = crate::onnx::tensor::element_count(&t.dims).is_ok_and(|n| n <= SMALL_CONSTANT);
        if constant && small {
            self.constants.insert(name.to_string(), t.clone());
        }
    }

    /// The element type of `name`, if known here or in an enclosing graph.
    pub(crate) fn elem_type(&self, name: &str) -> Option<DataType> {
        self.elem_types
            .get(name)
            .copied()
            .or_else(|| self.outer.and_then(|o| o.elem_type(name)))
    }

    /// The declared shape of `name`.
    pub(crate) fn shape(&self, name: &str) -> Option<&[Dim]> {
        match self.shapes.get(name) {
            Some(s) => Some(s),
            None => self.outer.and_then(|o| o.shape(name)),
        }
    }

    /// The rank of `name`, declared or carried through the graph.
    pub(crate) fn rank(&self, name: &str) -> Option<usize> {
        self.ranks
            .get(name)
            .copied()
            .or_else(|| self.outer.and_then(|o| o.rank(name)))
    }

    /// The value of `name` when it is a small constant.
    pub(crate) fn constant(&self, name: &str) -> Option<&TensorProto> {
        match self.constants.get(name) {
            Some(t) => Some(t),
            None => self.outer.and_then(|o| o.constant(name)),
        }
    }

    /// Whether a node of this graph reads `name` or the graph returns it.
    pub(crate) fn is_used(&self, name: &str) -> bool {
        self.used.contains(name)
    }
}

/// Ops whose every output has the element type of their first input.
#[rustfmt::skip]
const SAME_AS_FIRST_INPUT: &[&str] = &[
    "Abs", "Acos", "Acosh", "Add", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Ceil", "Celu", "Clip", "Compress", "Concat", "Conv", "ConvTranspose",
    "Cos", "Cosh", "CumSum", "DepthToSpace", "Div", "Elu", "Erf", "Exp", "Expand", "Flatten",
    "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "GroupNormalization", "HardSigmoid", "HardSwish", "Hardmax",
    "Identity", "ImageScaler", "InstanceNormalization", "LRN", "LeakyRelu", "Log", "LogSoftmax",
    "LpNormalization", "LpPool", "MatMul", "Max", "Mean", "MeanVarianceNormalization", "Min",
    "Mish", "Mod", "Mul", "Neg", "PRelu", "Pad", "Pow", "Reciprocal", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "Round",
    "Scatter", "ScatterElements", "ScatterND", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
    "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "Transpose", "Trilu", "Unsqueeze", "Upsample",
];

/// Ops whose every output is a boolean.
#[rustfmt::skip]
const BOOLEAN: &[&str] = &[
    "And", "Equal", "Greater", "GreaterOrEqual", "IsInf", "IsNaN", "Less", "LessOrEqual", "Not",
    "Or", "Xor",
];

/// Ops whose every output is int64.
#[rustfmt::skip]
const INT64: &[&str] = &["ArgMax", "ArgMin", "NonMaxSuppression", "NonZero", "Shape", "Size"];

/// Element types of a node's outputs, `None` where they do not follow from what is known.
fn output_types(
    node: &NodeProto,
    input_type: &dyn Fn(&str) -> Option<DataType>,
) -> Vec<Option<DataType>> {
    let n = node.output.len();
    if !matches!(node.domain(), "" | "ai.onnx") {
        return vec![None; n];
    }
    let input = |i: usize| node.input.get(i).and_then(|name| input_type(name));
    let all = |t: Option<DataType>| vec![t; n];
    let op = node.op_type();
    if SAME_AS_FIRST_INPUT.contains(&op) {
        return all(input(0));
    }
    if BOOLEAN.contains(&op) {
        return all(Some(DataType::Bool));
    }
    if INT64.contains(&op) {
        return all(Some(DataType::Int64));
    }
    let code = |c: i64| {
        i32::try_from(c)
            .ok()
            .and_then(|c| DataType::try_from(c).ok())
    };
    let mut types = match op {
        "Cast" => all(attr::int(node, "to").ok().flatten().and_then(code)),
        "CastLike" => all(input(1)),
        "Where" => all(input(1)),
        // The mask is bool from Dropout-10 on, the data type before.
        "Dropout" => vec![input(0), None],
        "MaxPool" | "TopK" => vec![input(0), Some(DataType::Int64)],
        "DequantizeLinear" => all(input(1)),
        "QuantizeLinear" => all(input(2).or(Some(DataType::Uint8))),
        "DynamicQuantizeLinear" => vec![
            Some(DataType::Uint8),
            Some(DataType::Float),
            Some(DataType::Uint8),
        ],
        "ConvInteger" | "MatMulInteger" => all(Some(DataType::Int32)),
        "QLinearConv" => all(input(7)),
        "QLinearMatMul" => all(input(7)),
        "ConstantOfShape" => all(attr::tensor(node, "value")
            .ok()
            .flatten()
            .map(|t| code(i64::from(t.data_type.unwrap_or(1))))
            .unwrap_or(Some(DataType::Float))),
        _ => all(None),
    };
    types.resize(n, None);
    types
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::pb::{type_proto, TypeProto, ValueInfoProto};

    fn float_input(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(DataType::Float as i32),
                    shape: None,
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
    fn element_types_follow_the_nodes() {
        let g = GraphProto {
            input: vec![float_input("x")],
            node: vec![
                node("Relu", &["x"], &["r"]),
                node("Shape", &["r"], &["s"]),
                node("Dropout", &["r"], &["d", "mask"]),
                node("Custom", &["r"], &["c"]),
            ],
            ..Default::default()
        };
        let facts = Facts::of_graph(&g, None);
        assert_eq!(facts.elem_type("r"), Some(DataType::Float));
        assert_eq!(facts.elem_type("s"), Some(DataType::Int64));
        assert_eq!(facts.elem_type("mask"), None);
        assert_eq!(facts.elem_type("c"), None);
        assert!(facts.is_used("r"));
        assert!(!facts.is_used("mask"));
        let inner = Facts::of_graph(&GraphProto::default(), Some(&facts));
        assert_eq!(inner.elem_type("d"), Some(DataType::Float));
    }
}
