//! An indexed view over a `GraphProto`: who produces each tensor name, who consumes it, which
//! names are constants, what type and shape is known for each, and a topological order.
//! Subgraphs (If/Loop/Scan bodies) are walked: names they take from the enclosing graph count as
//! inputs of the node that owns them.

mod names;
mod opsets;
mod shape;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};

pub use names::Names;
pub use opsets::Opsets;
pub use shape::{tensor_type, Dim, TensorType};

use crate::onnx::attr;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{GraphProto, NodeProto, TensorProto, TypeProto};

/// What defines a tensor name inside one graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producer {
    /// The `i`-th graph input.
    GraphInput(usize),
    /// The `i`-th initializer.
    Initializer(usize),
    /// The `i`-th sparse initializer.
    SparseInitializer(usize),
    /// Output `output` of node `node` (indices into `graph.node`).
    Node {
        /// Index of the node in `graph.node`.
        node: usize,
        /// Index of the output slot.
        output: usize,
    },
}

/// An indexed, read-only view of one graph.
pub struct GraphIndex<'g> {
    graph: &'g GraphProto,
    producers: HashMap<&'g str, Producer>,
    consumers: HashMap<String, Vec<usize>>,
    value_types: HashMap<&'g str, &'g TypeProto>,
    node_inputs: Vec<Vec<String>>,
}

impl<'g> GraphIndex<'g> {
    /// Indexes `graph`. When a name is defined twice the first definition wins here; the
    /// validator reports the duplicate.
    pub fn new(graph: &'g GraphProto) -> Self {
        let mut producers = HashMap::new();
        for (i, t) in graph.initializer.iter().enumerate() {
            producers
                .entry(t.name())
                .or_insert(Producer::Initializer(i));
        }
        for (i, s) in graph.sparse_initializer.iter().enumerate() {
            if let Some(v) = &s.values {
                producers
                    .entry(v.name())
                    .or_insert(Producer::SparseInitializer(i));
            }
        }
        // A graph input that is also an initializer is an overridable default (IR < 4 style):
        // the input is the definition the graph's callers see.
        for (i, v) in graph.input.iter().enumerate() {
            producers.insert(v.name(), Producer::GraphInput(i));
        }
        for (n, node) in graph.node.iter().enumerate() {
            for (o, out) in node.output.iter().enumerate() {
                if !out.is_empty() {
                    producers
                        .entry(out.as_str())
                        .or_insert(Producer::Node { node: n, output: o });
                }
            }
        }
        let mut value_types = HashMap::new();
        for v in graph
            .value_info
            .iter()
            .chain(graph.output.iter())
            .chain(graph.input.iter())
        {
            if let Some(t) = &v.r#type {
                value_types.insert(v.name(), t);
            }
        }
        let node_inputs: Vec<Vec<String>> = graph.node.iter().map(node_uses).collect();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (n, uses) in node_inputs.iter().enumerate() {
            for name in uses {
                let list = consumers.entry(name.clone()).or_default();
                if list.last() != Some(&n) {
                    list.push(n);
                }
            }
        }
        GraphIndex {
            graph,
            producers,
            consumers,
            value_types,
            node_inputs,
        }
    }

    /// The indexed graph.
    pub fn graph(&self) -> &'g GraphProto {
        self.graph
    }

    /// What defines `name` in this graph, `None` for names from an outer scope or undefined ones.
    pub fn producer(&self, name: &str) -> Option<Producer> {
        self.producers.get(name).copied()
    }

    /// The node producing `name`, if a node does.
    pub fn producer_node(&self, name: &str) -> Option<&'g NodeProto> {
        match self.producer(name)? {
            Producer::Node { node, .. } => Some(&self.graph.node[node]),
            _ => None,
        }
    }

    /// Indices of the nodes that use `name`, directly or inside one of their subgraphs, in order.
    pub fn consumers(&self, name: &str) -> &[usize] {
        self.consumers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every name node `n` reads: its non-empty inputs, then what its subgraphs take from outside.
    pub fn node_uses(&self, n: usize) -> &[String] {
        &self.node_inputs[n]
    }

    /// The constant value of `name`: an initializer that is not also a graph input, or the
    /// output of a `Constant` node. Weights of PaddlePaddle exports live in the latter.
    pub fn constant(&self, name: &str) -> Option<Cow<'g, TensorProto>> {
        match self.producer(name)? {
            Producer::Initializer(i) => Some(Cow::Borrowed(&self.graph.initializer[i])),
            Producer::Node { node, .. } => constant_node_value(&self.graph.node[node]),
            Producer::GraphInput(_) | Producer::SparseInitializer(_) => None,
        }
    }

    /// The declared type of `name` (graph input/output or value_info), if any.
    pub fn declared_type(&self, name: &str) -> Option<&'g TypeProto> {
        self.value_types.get(name).copied()
    }

    /// Element type and shape of `name` as far as the file tells: from its declaration or, for
    /// constants, from the tensor itself.
    pub fn tensor_type(&self, name: &str) -> Option<TensorType> {
        if let Some(t) = self.declared_type(name).and_then(tensor_type) {
            return Some(t);
        }
        let c = self.constant(name)?;
        Some(TensorType {
            elem_type: DataType::try_from(c.data_type.unwrap_or(0)).ok()?,
            shape: Some(c.dims.iter().map(|&d| Dim::Value(d)).collect()),
        })
    }

    /// Nodes in an order where every producer comes before its consumers (stable: file order
    /// wherever the file is already sorted). `Err` holds the nodes that sit on a cycle.
    pub fn topological_order(&self) -> Result<Vec<usize>, Vec<usize>> {
        let n = self.graph.node.len();
        let mut indegree = vec![0usize; n];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (consumer, uses) in self.node_inputs.iter().enumerate() {
            let mut seen = HashSet::new();
            for name in uses {
                if let Some(Producer::Node { node, .. }) = self.producer(name) {
                    if seen.insert(node) {
                        indegree[consumer] += 1;
                        users[node].push(consumer);
                    }
                }
            }
        }
        // A min-heap on the index keeps the order stable and deterministic.
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    ready.push(std::cmp::Reverse(u));
                }
            }
        }
        if order.len() == n {
            Ok(order)
        } else {
            Err((0..n).filter(|&i| indegree[i] > 0).collect())
        }
    }
}

/// Names a node reads: its non-empty inputs, then the names its subgraphs take from the
/// enclosing scope (which the node therefore depends on too).
pub fn node_uses(node: &NodeProto) -> Vec<String> {
    let mut uses: Vec<String> = node
        .input
        .iter()
        .filter(|i| !i.is_empty())
        .cloned()
        .collect();
    for (_, g) in attr::subgraphs(node) {
        for name in outer_references(g) {
            if !uses.contains(&name) {
                uses.push(name);
            }
        }
    }
    uses
}

/// Names a graph (with its nested subgraphs) uses but does not define itself: these must come from
/// an enclosing scope.
pub fn outer_references(g: &GraphProto) -> BTreeSet<String> {
    let mut defined: HashSet<&str> = HashSet::new();
    defined.extend(g.input.iter().map(|v| v.name()));
    defined.extend(g.initializer.iter().map(|t| t.name()));
    defined.extend(
        g.sparse_initializer
            .iter()
            .filter_map(|s| s.values.as_ref().map(|v| v.name())),
    );
    for node in &g.node {
        defined.extend(node.output.iter().map(String::as_str));
    }
    let mut refs = BTreeSet::new();
    for node in &g.node {
        for name in node_uses(node) {
            if !defined.contains(name.as_str()) {
                refs.insert(name);
            }
        }
    }
    for out in &g.output {
        if !defined.contains(out.name()) && !out.name().is_empty() {
            refs.insert(out.name().to_string());
        }
    }
    refs
}

/// The value a `Constant` node produces, `None` for other nodes and for sparse values.
pub fn constant_node_value(node: &NodeProto) -> Option<Cow<'_, TensorProto>> {
    if node.op_type() != "Constant" || !matches!(node.domain(), "" | "ai.onnx") {
        return None;
    }
    let a = node.attribute.first()?;
    let scalar = |dt: DataType, dims: Vec<i64>| TensorProto {
        data_type: Some(dt as i32),
        dims,
        name: node.output.first().cloned(),
        ..Default::default()
    };
    Some(match a.name() {
        "value" => Cow::Borrowed(a.t.as_ref()?),
        "value_float" => Cow::Owned(TensorProto {
            float_data: vec![a.f()],
            ..scalar(DataType::Float, vec![])
        }),
        "value_floats" => Cow::Owned(TensorProto {
            float_data: a.floats.clone(),
            ..scalar(DataType::Float, vec![a.floats.len() as i64])
        }),
        "value_int" => Cow::Owned(TensorProto {
            int64_data: vec![a.i()],
            ..scalar(DataType::Int64, vec![])
        }),
        "value_ints" => Cow::Owned(TensorProto {
            int64_data: a.ints.clone(),
            ..scalar(DataType::Int64, vec![a.ints.len() as i64])
        }),
        "value_string" => Cow::Owned(TensorProto {
            string_data: vec![a.s().to_vec()],
            ..scalar(DataType::String, vec![])
        }),
        "value_strings" => Cow::Owned(TensorProto {
            string_data: a.strings.clone(),
            ..scalar(DataType::String, vec![a.strings.len() as i64])
        }),
        _ => return None,
    })
}
