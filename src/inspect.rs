//! A summary of what a model holds: metadata, interface, ops, and where its weights live.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::graph::{tensor_type, Opsets};
use crate::onnx::pb::{GraphProto, TensorProto, ValueInfoProto};
use crate::onnx::{attr, dtype, tensor, Model};

/// Everything `onnx-ptq inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The model file.
    pub path: String,
    /// `ir_version`.
    pub ir_version: i64,
    /// `producer_name` and `producer_version`, joined.
    pub producer: String,
    /// Imported opsets, domain → version (`""` is the default domain).
    pub opsets: BTreeMap<String, i64>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<ValueSummary>,
    /// Graph outputs.
    pub outputs: Vec<ValueSummary>,
    /// Number of nodes, subgraphs included.
    pub n_nodes: usize,
    /// Node count per op type (`domain:Op` outside the default domain), subgraphs included.
    pub op_histogram: BTreeMap<String, usize>,
    /// Parameters (initializers and tensors held in `Constant` nodes) by element type.
    pub parameters: BTreeMap<String, ParamStats>,
    /// Totals over `parameters`.
    pub parameter_total: ParamStats,
    /// Tensors held in `Constant` nodes rather than initializers.
    pub constant_node_weights: ParamStats,
    /// External-data files the model read, relative to its folder.
    pub external_data_files: Vec<String>,
    /// Number of tensors whose data was external.
    pub external_tensors: usize,
}

/// Name, element type and shape of a graph input or output.
#[derive(Debug, Clone, Serialize)]
pub struct ValueSummary {
    /// Tensor name.
    pub name: String,
    /// Element type (`float`, `int64`…), or the kind of a non-tensor value.
    pub dtype: String,
    /// Shape like `[N,3,224,224]`.
    pub shape: String,
}

/// Counts of tensors, elements and bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ParamStats {
    /// Number of tensors.
    pub tensors: u64,
    /// Number of elements.
    pub elements: u64,
    /// Bytes the elements take (packed types rounded up per tensor; strings by content).
    pub bytes: u64,
}

impl ParamStats {
    fn add(&mut self, t: &TensorProto) {
        let n = tensor::element_count(&t.dims).unwrap_or(0);
        // Saturating: a malformed tensor may claim absurd dims without holding data.
        self.tensors += 1;
        self.elements = self.elements.saturating_add(n);
        let bytes = tensor::expected_raw_len(t)
            .ok()
            .flatten()
            .unwrap_or_else(|| t.string_data.iter().map(|s| s.len() as u64).sum());
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// Summarises a loaded model.
pub fn inspect(model: &Model) -> Inspection {
    let p = &model.proto;
    let graph = p.graph.as_ref();
    let opsets = Opsets::new(&p.opset_import)
        .iter()
        .map(|(d, v)| (d.to_string(), v))
        .collect();
    let mut ins = Inspection {
        path: model.display_path(),
        ir_version: p.ir_version(),
        producer: format!("{} {}", p.producer_name(), p.producer_version())
            .trim()
            .to_string(),
        opsets,
        inputs: Vec::new(),
        outputs: Vec::new(),
        n_nodes: 0,
        op_histogram: BTreeMap::new(),
        parameters: BTreeMap::new(),
        parameter_total: ParamStats::default(),
        constant_node_weights: ParamStats::default(),
        external_data_files: Vec::new(),
        external_tensors: model.n_external_tensors,
    };
    if let Some(g) = graph {
        let inits: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name()).collect();
        ins.inputs = g
            .input
            .iter()
            .filter(|v| !inits.contains(v.name()))
            .map(summarize)
            .collect();
        ins.outputs = g.output.iter().map(summarize).collect();
        walk(g, &mut ins);
    }
    let dir = model
        .path
        .as_deref()
        .and_then(|p| p.parent())
        .and_then(|d| d.canonicalize().ok());
    ins.external_data_files = model
        .external_files
        .iter()
        .map(|f| match &dir {
            Some(d) => f.strip_prefix(d).unwrap_or(f).display().to_string(),
            None => f.display().to_string(),
        })
        .collect();
    ins
}

fn summarize(v: &ValueInfoProto) -> ValueSummary {
    let (dtype, shape) = match v.r#type.as_ref().and_then(tensor_type) {
        Some(t) => (dtype::name(t.elem_type).to_string(), t.shape_string()),
        None => ("non-tensor".to_string(), "?".to_string()),
    };
    ValueSummary {
        name: v.name().to_string(),
        dtype,
        shape,
    }
}

fn walk(g: &GraphProto, ins: &mut Inspection) {
    let count = |t: &TensorProto, ins: &mut Inspection| {
        let key = dtype::name_of_code(t.data_type.unwrap_or(0));
        ins.parameters.entry(key).or_default().add(t);
        ins.parameter_total.add(t);
    };
    for t in &g.initializer {
        count(t, ins);
    }
    for node in &g.node {
        ins.n_nodes += 1;
        let key = match node.domain() {
            "" | "ai.onnx" => node.op_type().to_string(),
            d => format!("{d}:{}", node.op_type()),
        };
        *ins.op_histogram.entry(key).or_default() += 1;
        if let Some(value) = crate::graph::constant_node_value(node) {
            count(&value, ins);
            ins.constant_node_weights.add(&value);
        }
        for (_, sub) in attr::subgraphs(node) {
            walk(sub, ins);
        }
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model:       {}", self.path)?;
        writeln!(f, "ir_version:  {}", self.ir_version)?;
        writeln!(
            f,
            "producer:    {}",
            if self.producer.is_empty() {
                "-"
            } else {
                &self.producer
            }
        )?;
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{}={v}", if d.is_empty() { "ai.onnx" } else { d }))
            .collect();
        writeln!(f, "opsets:      {}", opsets.join(", "))?;
        for (title, values) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            writeln!(f, "{title}:")?;
            for v in values {
                writeln!(f, "  {:<24} {:<8} {}", v.name, v.dtype, v.shape)?;
            }
        }
        writeln!(f, "nodes:       {}", self.n_nodes)?;
        let mut ops: Vec<(&String, &usize)> = self.op_histogram.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, n) in ops {
            writeln!(f, "  {op:<28} {n:>6}")?;
        }
        writeln!(
            f,
            "parameters:  {} elements in {} tensors, {}",
            self.parameter_total.elements,
            self.parameter_total.tensors,
            human_bytes(self.parameter_total.bytes)
        )?;
        for (dt, s) in &self.parameters {
            writeln!(
                f,
                "  {dt:<10} {:>12} elements {:>6} tensors {:>12}",
                s.elements,
                s.tensors,
                human_bytes(s.bytes)
            )?;
        }
        let c = &self.constant_node_weights;
        let share = if self.parameter_total.elements > 0 {
            100.0 * c.elements as f64 / self.parameter_total.elements as f64
        } else {
            0.0
        };
        writeln!(
            f,
            "weights in Constant nodes: {} tensors, {} elements ({share:.1}% of parameters)",
            c.tensors, c.elements
        )?;
        if self.external_data_files.is_empty() {
            writeln!(f, "external data: none")?;
        } else {
            writeln!(
                f,
                "external data: {} tensors in {}",
                self.external_tensors,
                self.external_data_files.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Bytes in the largest unit that keeps the number at least 1.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
