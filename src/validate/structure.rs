use std::collections::{HashMap, HashSet};

use super::{qdq, Finding, Severity, MAX_IR_VERSION};
use crate::graph::{Dim, GraphIndex, Opsets};
use crate::onnx::pb::tensor_proto::{DataLocation, DataType};
use crate::onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::walk::node_label;
use crate::onnx::{attr, tensor};

/// Ops the ONNX checker lists as experimental: they have no schema but are not an error.
const EXPERIMENTAL_OPS: &[&str] = &[
    "ATen",
    "Affine",
    "ConstantFill",
    "Crop",
    "DynamicSlice",
    "GRUUnit",
    "GivenTensorFill",
    "ImageScaler",
    "ParametricSoftplus",
    "Scale",
    "ScaledTanh",
];

/// The newest default-domain opset (ONNX 1.23).
pub const MAX_OPSET: i64 = 28;

/// The oldest default-domain opset ONNX Runtime supports ("only guarantees support for models
/// stamped with opset version 7 or above"; older kernels are missing, such as Relu-1).
pub const MIN_RUNTIME_OPSET: i64 = 7;

/// What a model valid by the ONNX checker still needs for ONNX Runtime to load it. Kept apart
/// from [`check_structure`] because `quantize` upgrades such models instead of refusing them.
pub fn check_runtime_support(model: &ModelProto) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(v) = Opsets::new(&model.opset_import).default_domain() {
        if (1..MIN_RUNTIME_OPSET).contains(&v) {
            findings.push(Finding {
                severity: Severity::Error,
                location: "model".into(),
                message: format!(
                    "default-domain opset {v} is older than {MIN_RUNTIME_OPSET}, the oldest ONNX \
                     Runtime supports (`onnx-ptq quantize` upgrades it)"
                ),
            });
        }
    }
    findings
}

/// Structural checks of a whole model; the model is well formed when no finding is an error.
///
/// What is checked mirrors the ONNX checker's structural rules (single assignment, topological
/// order with outer-scope lookup, imported domains, tensor data fields) plus the quantization
/// rules onnx-ptq relies on for QuantizeLinear/DequantizeLinear.
pub fn check_structure(model: &ModelProto) -> Vec<Finding> {
    let mut ctx = Ctx {
        findings: Vec::new(),
        opsets: Opsets::new(&model.opset_import),
        ir_version: model.ir_version(),
        local_functions: model
            .functions
            .iter()
            .map(|f| (f.domain().to_string(), f.name().to_string()))
            .collect(),
    };
    let ir = model.ir_version();
    if ir <= 0 {
        ctx.push("model", "the model does not have an ir_version");
    } else if ir > MAX_IR_VERSION {
        ctx.push(
            "model",
            format!("ir_version {ir} is newer than the newest this tool knows ({MAX_IR_VERSION})"),
        );
    }
    if ir >= 3 && model.opset_import.is_empty() {
        ctx.push("model", "a model with IR version >= 3 must import an opset");
    }
    if let Some(v) = ctx.opsets.default_domain() {
        if v > MAX_OPSET {
            ctx.push(
                "model",
                format!(
                    "default-domain opset {v} is newer than the newest ONNX defines ({MAX_OPSET})"
                ),
            );
        } else if v < 1 {
            ctx.push("model", format!("default-domain opset {v} does not exist"));
        }
    }
    let mut keys = HashSet::new();
    for kv in &model.metadata_props {
        if !keys.insert(kv.key()) {
            ctx.push(
                "model",
                format!("duplicate metadata_props key '{}'", kv.key()),
            );
        }
    }
    match &model.graph {
        Some(g) => ctx.check_graph(g, "graph", &Scope::default(), true),
        None => ctx.push("model", "the model has no graph"),
    }
    for f in &model.functions {
        let where_ = format!("function '{}'", f.name());
        if f.name().is_empty() {
            ctx.push(&where_, "a function must have a name");
        }
        let fopsets = Opsets::new(&f.opset_import);
        let mut defined: HashSet<&str> = f.input.iter().map(String::as_str).collect();
        for node in &f.node {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                if !defined.contains(input.as_str()) {
                    ctx.push(
                        &format!("{where_} {}", node_label(node)),
                        format!("input '{input}' is not defined before this node"),
                    );
                }
            }
            if fopsets.version(node.domain()).is_none() {
                ctx.push(
                    &format!("{where_} {}", node_label(node)),
                    format!("domain '{}' is not imported by the function", node.domain()),
                );
            }
            defined.extend(
                node.output
                    .iter()
                    .filter(|o| !o.is_empty())
                    .map(String::as_str),
            );
        }
    }
    ctx.findings
}

/// Names visible from enclosing graphs.
#[derive(Default, Clone)]
struct Scope<'a> {
    names: HashSet<&'a str>,
}

struct Ctx {
    findings: Vec<Finding>,
    opsets: Opsets,
    ir_version: i64,
    local_functions: HashSet<(String, String)>,
}

impl Ctx {
    fn push(&mut self, location: &str, message: impl Into<String>) {
        self.push_with(Severity::Error, location, message);
    }

    fn push_with(&mut self, severity: Severity, location: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            location: location.to_string(),
            message: message.into(),
        });
    }

    fn check_graph<'a>(&mut self, g: &'a GraphProto, path: &str, outer: &Scope<'a>, main: bool) {
        let path = if g.name().is_empty() {
            self.push(path, "the graph has no name");
            path.to_string()
        } else {
            format!("{path} '{}'", g.name())
        };
        for v in g.input.iter().chain(&g.output) {
            self.check_value_info(v, &path, main);
        }
        let mut scope = outer.clone();
        let mut here: HashSet<&str> = HashSet::new();
        for v in &g.input {
            if !here.insert(v.name()) {
                self.push(
                    &path,
                    format!("'{}' is declared as a graph input twice", v.name()),
                );
            }
            scope.names.insert(v.name());
        }
        let mut init_names = HashSet::new();
        for t in &g.initializer {
            let name = t.name();
            if name.is_empty() {
                self.push(&path, "an initializer has no name");
            } else if !init_names.insert(name) {
                self.push(&path, format!("initializer name '{name}' is not unique"));
            }
            self.check_tensor(t, &format!("{path} initializer '{name}'"));
            if self.ir_version <= 3 && !here.contains(name) {
                self.push(
                    &path,
                    format!("initializer '{name}' is not a graph input (required for IR <= 3)"),
                );
            }
            scope.names.insert(name);
        }
        for s in &g.sparse_initializer {
            let name = s.values.as_ref().map(|v| v.name()).unwrap_or("");
            if name.is_empty() {
                self.push(&path, "a sparse initializer has no name");
            } else if !init_names.insert(name) {
                self.push(
                    &path,
                    format!("sparse initializer name '{name}' is not unique"),
                );
            }
            scope.names.insert(name);
        }
        let index = GraphIndex::new(g);
        let produced_later: HashMap<&str, usize> = g
            .node
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
            .collect();
        let cycle: HashSet<usize> = index
            .topological_order()
            .err()
            .unwrap_or_default()
            .into_iter()
            .collect();
        for (i, node) in g.node.iter().enumerate() {
            let where_ = format!("{path} {}", node_label(node));
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                if scope.names.contains(input.as_str()) {
                    continue;
                }
                let message = match produced_later.get(input.as_str()) {
                    Some(_) if cycle.contains(&i) => {
                        format!("input '{input}' depends on this node's own output: the graph has a cycle")
                    }
                    Some(_) => format!(
                        "input '{input}' is produced by a later node: nodes are not in topological order"
                    ),
                    None => format!("input '{input}' is not defined (no graph input, initializer or node output has this name)"),
                };
                self.push(&where_, message);
            }
            self.check_node(node, &where_, &scope, &index);
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                if scope.names.contains(out.as_str()) {
                    self.push(
                        &where_,
                        format!("output '{out}' is assigned more than once (the graph must be in single static assignment form)"),
                    );
                }
                scope.names.insert(out);
            }
        }
        for out in &g.output {
            if !out.name().is_empty() && !scope.names.contains(out.name()) {
                self.push(
                    &path,
                    format!("graph output '{}' is never produced", out.name()),
                );
            }
        }
    }

    fn check_value_info(&mut self, v: &ValueInfoProto, path: &str, main: bool) {
        if v.name().is_empty() {
            self.push(path, "a graph input or output has no name");
        }
        if main && v.r#type.as_ref().and_then(|t| t.value.as_ref()).is_none() {
            self.push(
                path,
                format!("graph input/output '{}' has no type", v.name()),
            );
        }
        let dims = v
            .r#type
            .as_ref()
            .and_then(crate::graph::tensor_type)
            .and_then(|t| t.shape)
            .unwrap_or_default();
        for (axis, dim) in dims.iter().enumerate() {
            match dim {
                // Some exporters write -1 for "any size"; the reference tools read it so.
                Dim::Value(-1) => self.push_with(
                    Severity::Warning,
                    path,
                    format!(
                        "'{}' has dimension -1 at axis {axis}: a size is never negative (use a \
                         dim_param for an unknown size)",
                        v.name()
                    ),
                ),
                Dim::Value(d) if *d < 0 => self.push(
                    path,
                    format!(
                        "'{}' has dimension {d} at axis {axis}: a size is never negative",
                        v.name()
                    ),
                ),
                _ => {}
            }
        }
    }

    fn check_node<'a>(
        &mut self,
        node: &'a NodeProto,
        where_: &str,
        scope: &Scope<'a>,
        index: &GraphIndex<'a>,
    ) {
        let domain = node.domain();
        let is_default = matches!(domain, "" | "ai.onnx");
        let experimental = is_default && EXPERIMENTAL_OPS.contains(&node.op_type());
        if self.opsets.version(domain).is_none()
            && !self
                .local_functions
                .contains(&(domain.to_string(), node.op_type().to_string()))
        {
            self.push(
                where_,
                format!("domain '{domain}' is used but not imported (no opset_import entry)"),
            );
        }
        if node.op_type().is_empty() {
            self.push(where_, "the node has no op_type");
        }
        for a in &node.attribute {
            if a.name().is_empty() {
                self.push(where_, "an attribute has no name");
            }
            if let Some(t) = &a.t {
                self.check_tensor(t, &format!("{where_} attribute '{}'", a.name()));
            }
            for t in &a.tensors {
                self.check_tensor(t, &format!("{where_} attribute '{}'", a.name()));
            }
        }
        if is_default && !experimental {
            if let Some(version) = self.opsets.default_domain() {
                for (severity, message) in qdq::check(node, version, index) {
                    self.push_with(severity, where_, message);
                }
            }
        }
        if is_default && !experimental {
            for message in attribute_ranges(node, index) {
                self.push(where_, message);
            }
        }
        if is_default && node.op_type() == "If" {
            self.check_if_branches(node, where_);
        }
        for (name, sub) in attr::subgraphs(node) {
            self.check_graph(
                sub,
                &format!("{where_} attribute '{name}' subgraph"),
                scope,
                false,
            );
        }
    }

    /// Both branches of an If must produce one value per output of the node.
    fn check_if_branches(&mut self, node: &NodeProto, where_: &str) {
        for branch in ["then_branch", "else_branch"] {
            match attr::find(node, branch).and_then(|a| a.g.as_ref()) {
                None => self.push(where_, format!("If has no '{branch}' graph")),
                Some(g) if g.output.len() != node.output.len() => self.push(
                    where_,
                    format!(
                        "'{branch}' produces {} outputs but the node has {}",
                        g.output.len(),
                        node.output.len()
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    fn check_tensor(&mut self, t: &TensorProto, where_: &str) {
        let code = t.data_type.unwrap_or(0);
        if code == DataType::Undefined as i32 {
            self.push(where_, "the tensor's data_type is UNDEFINED");
            return;
        }
        if DataType::try_from(code).is_err() {
            self.push(where_, format!("unknown data_type {code}"));
            return;
        }
        let fields = [
            !t.float_data.is_empty(),
            !t.int32_data.is_empty(),
            !t.string_data.is_empty(),
            !t.int64_data.is_empty(),
            t.raw_data.as_ref().is_some_and(|r| !r.is_empty()),
            !t.double_data.is_empty(),
            !t.uint64_data.is_empty(),
        ];
        let n_fields = fields.iter().filter(|&&b| b).count();
        if t.data_location == Some(DataLocation::External as i32) {
            if n_fields != 0 {
                self.push(
                    where_,
                    "the tensor is stored externally but also holds data",
                );
            }
            return;
        }
        let n = match tensor::element_count(&t.dims) {
            Ok(n) => n,
            Err(e) => return self.push(where_, e),
        };
        if n == 0 && n_fields != 0 {
            self.push(where_, "a 0-element tensor holds data");
        } else if n != 0 && n_fields != 1 {
            self.push(where_, "the tensor must hold its data in exactly one field");
        } else if let Err(e) = tensor::check_inline_data(t) {
            self.push(where_, e);
        } else if let (Some(raw), Ok(Some(need))) = (&t.raw_data, tensor::expected_raw_len(t)) {
            // Shorter data is refused when loading; longer data loads but ONNX Runtime
            // refuses it, and the extra bytes would mean the dims are wrong.
            if raw.len() as u64 != need {
                self.push(
                    where_,
                    format!(
                        "dims {:?} need {need} bytes of raw_data but it holds {}",
                        t.dims,
                        raw.len()
                    ),
                );
            }
        }
    }
}

/// Ops whose `axis` attribute indexes their first input, and whether the axis may also equal
/// the rank (Flatten splits before it).
const AXIS_OPS: &[(&str, bool)] = &[
    ("ArgMax", false),
    ("ArgMin", false),
    ("Concat", false),
    ("Flatten", true),
    ("Gather", false),
    ("GatherElements", false),
    ("Hardmax", false),
    ("LayerNormalization", false),
    ("LogSoftmax", false),
    ("Softmax", false),
    ("Split", false),
];

/// Ops with spatial `strides`, `dilations` and `kernel_shape` attributes.
const WINDOW_OPS: &[&str] = &[
    "AveragePool",
    "Conv",
    "ConvInteger",
    "ConvTranspose",
    "LpPool",
    "MaxPool",
    "QLinearConv",
];

/// Attribute values out of their range: an axis outside the input's rank (when the rank is
/// declared), and zero or negative strides, dilations, kernel sizes or groups, which make shape
/// computations divide by zero.
fn attribute_ranges(node: &NodeProto, index: &GraphIndex) -> Vec<String> {
    let mut problems = Vec::new();
    let op = node.op_type();
    if let Some(&(_, inclusive)) = AXIS_OPS.iter().find(|(name, _)| *name == op) {
        let rank = node
            .input
            .first()
            .and_then(|i| index.tensor_type(i))
            .and_then(|t| t.shape)
            .map(|s| s.len() as i64);
        if let (Ok(Some(axis)), Some(rank)) = (attr::int(node, "axis"), rank) {
            let high = if inclusive { rank } else { rank - 1 };
            if axis < -rank || axis > high {
                problems.push(format!(
                    "attribute 'axis' is {axis} but must be in [{}, {high}] for an input of rank {rank}",
                    -rank
                ));
            }
        }
    }
    if WINDOW_OPS.contains(&op) {
        for name in ["strides", "dilations", "kernel_shape"] {
            if let Ok(Some(values)) = attr::ints(node, name) {
                if let Some(bad) = values.iter().find(|&&v| v < 1) {
                    problems.push(format!(
                        "attribute '{name}' holds {bad}: every value must be at least 1"
                    ));
                }
            }
        }
        if let Ok(Some(group)) = attr::int(node, "group") {
            if group < 1 {
                problems.push(format!(
                    "attribute 'group' is {group}: it must be at least 1"
                ));
            }
        }
    }
    problems
}
