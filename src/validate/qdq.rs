//! QuantizeLinear / DequantizeLinear checks: attributes and types allowed at the imported opset,
//! zero point type equal to the quantized type, and scale/zero-point shapes that agree with
//! `axis` and `block_size`.

use super::Severity;
use crate::graph::{Dim, GraphIndex};
use crate::onnx::attr;
use crate::onnx::dtype;
use crate::onnx::pb::tensor_proto::DataType::{self, *};
use crate::onnx::pb::NodeProto;
use std::string::String;

/// What one version of the op accepts, from the ONNX operator specs.
struct Signature {
    since: i64,
    attributes: &'static [&'static str],
    quantized: &'static [DataType],
    scale: &'static [DataType],
}

const Q_ATTRS_21: &[&str] = &["axis", "block_size", "output_dtype", "saturate"];
const Q_ATTRS_23: &[&str] = &[
    "axis",
    "block_size",
    "output_dtype",
    "precision",
    "saturate",
];
const DQ_ATTRS_21: &[&str] = &["axis", "block_size"];
const DQ_ATTRS_23: &[&str] = &["axis", "block_size", "output_dtype"];
const F8: [DataType; 4] = [Float8e4m3fn, Float8e4m3fnuz, Float8e5m2, Float8e5m2fnuz];

const T_10: &[DataType] = &[Int8, Uint8];
const T_19: &[DataType] = &[Int8, Uint8, F8[0], F8[1], F8[2], F8[3]];
const T_21: &[DataType] = &[
    Int8, Uint8, Int16, Uint16, F8[0], F8[1], F8[2], F8[3], Uint4, Int4,
];
const T_23: &[DataType] = &[
    Int8, Uint8, Int16, Uint16, F8[0], F8[1], F8[2], F8[3], Uint4, Int4, Float4e2m1,
];
const T_25: &[DataType] = &[
    Int8, Uint8, Int16, Uint16, F8[0], F8[1], F8[2], F8[3], Uint4, Int4, Float4e2m1, Uint2, Int2,
];
const S_10: &[DataType] = &[Float];
const S_19: &[DataType] = &[Float, Float16, Bfloat16];
const S_24: &[DataType] = &[Float, Float16, Bfloat16, Float8e8m0];

/// Versions, newest first. DequantizeLinear additionally accepts int32 input (bias), handled below.
const QUANTIZE: &[Signature] = &[
    Signature {
        since: 25,
        attributes: Q_ATTRS_23,
        quantized: T_25,
        scale: S_24,
    },
    Signature {
        since: 24,
        attributes: Q_ATTRS_23,
        quantized: T_23,
        scale: S_24,
    },
    Signature {
        since: 23,
        attributes: Q_ATTRS_23,
        quantized: T_23,
        scale: S_19,
    },
    Signature {
        since: 21,
        attributes: Q_ATTRS_21,
        quantized: T_21,
        scale: S_19,
    },
    Signature {
        since: 19,
        attributes: &["axis", "saturate"],
        quantized: T_19,
        scale: S_19,
    },
    Signature {
        since: 13,
        attributes: &["axis"],
        quantized: T_10,
        scale: S_10,
    },
    Signature {
        since: 10,
        attributes: &[],
        quantized: T_10,
        scale: S_10,
    },
];
const DEQUANTIZE: &[Signature] = &[
    Signature {
        since: 25,
        attributes: DQ_ATTRS_23,
        quantized: T_25,
        scale: S_24,
    },
    Signature {
        since: 24,
        attributes: DQ_ATTRS_23,
        quantized: T_23,
        scale: S_24,
    },
    Signature {
        since: 23,
        attributes: DQ_ATTRS_23,
        quantized: T_23,
        scale: S_19,
    },
    Signature {
        since: 21,
        attributes: DQ_ATTRS_21,
        quantized: T_21,
        scale: S_19,
    },
    Signature {
        since: 19,
        attributes: &["axis"],
        quantized: T_19,
        scale: S_19,
    },
    Signature {
        since: 13,
        attributes: &["axis"],
        quantized: T_10,
        scale: S_10,
    },
    Signature {
        since: 10,
        attributes: &[],
        quantized: T_10,
        scale: S_10,
    },
];

/// Problems with a Q or DQ node at default-domain opset `opset`; empty for other ops.
pub(super) fn check(node: &NodeProto, opset: i64, index: &GraphIndex) -> Vec<(Severity, String)> {
    let (table, is_dq) = match node.op_type() {
        "QuantizeLinear" => (QUANTIZE, false),
        "DequantizeLinear" => (DEQUANTIZE, true),
        _ => return Vec::new(),
    };
    let mut problems = Vec::new();
    let Some(sig) = table.iter().find(|s| s.since <= opset) else {
        return vec![(
            Severity::Error,
            format!(
                "{} needs opset >= 10, the model imports {opset}",
                node.op_type()
            ),
        )];
    };
    for a in &node.attribute {
        if !sig.attributes.contains(&a.name()) {
            let needs = table
                .iter()
                .rev()
                .find(|s| s.attributes.contains(&a.name()))
                .map(|s| format!(" (it needs opset >= {})", s.since))
                .unwrap_or_default();
            problems.push(format!(
                "attribute '{}' is not allowed at opset {opset}{needs}",
                a.name()
            ));
        }
    }
    let elem = |i: usize| -> Option<DataType> {
        let name = node.input.get(i).filter(|n| !n.is_empty())?;
        index.tensor_type(name).map(|t| t.elem_type)
    };
    let shape = |i: usize| -> Option<Vec<Dim>> {
        let name = node.input.get(i).filter(|n| !n.is_empty())?;
        index.tensor_type(name)?.shape
    };
    let has_zero_point = node.input.get(2).is_some_and(|n| !n.is_empty());

    // The quantized type: DQ's input, or Q's zero point / output_dtype (uint8 when neither).
    let quantized = if is_dq {
        elem(0)
    } else {
        let from_attr = attr::int(node, "output_dtype")
            .ok()
            .flatten()
            .filter(|&v| v != 0)
            .and_then(|v| DataType::try_from(v as i32).ok());
        elem(2).or(from_attr).or(Some(Uint8))
    };
    if let Some(q) = quantized {
        let allowed = sig.quantized.contains(&q) || (is_dq && q == Int32);
        if !allowed {
            let needs = table
                .iter()
                .rev()
                .find(|s| s.quantized.contains(&q))
                .map(|s| format!(" (it needs opset >= {})", s.since))
                .unwrap_or_default();
            problems.push(format!(
                "quantized type {} is not allowed at opset {opset}{needs}",
                dtype::name(q)
            ));
        }
    }
    if is_dq && has_zero_point {
        if let (Some(x), Some(zp)) = (elem(0), elem(2)) {
            if x != zp {
                problems.push(format!(
                    "zero point type {} does not match the quantized input type {}",
                    dtype::name(zp),
                    dtype::name(x)
                ));
            }
        }
    }
    if !is_dq {
        let from_attr = attr::int(node, "output_dtype")
            .ok()
            .flatten()
            .filter(|&v| v != 0);
        if let (Some(out), Some(zp)) = (from_attr, elem(2)) {
            if out != zp as i64 {
                problems.push(format!(
                    "zero point type {} does not match output_dtype {}",
                    dtype::name(zp),
                    dtype::name_of_code(out as i32)
                ));
            }
        }
    }
    if let Some(s) = elem(1) {
        if !sig.scale.contains(&s) {
            problems.push(format!(
                "scale type {} is not allowed at opset {opset}",
                dtype::name(s)
            ));
        }
    }
    let mut problems: Vec<(Severity, String)> =
        problems.into_iter().map(|p| (Severity::Error, p)).collect();
    problems.extend(check_shapes(
        node,
        opset,
        shape(0),
        shape(1),
        has_zero_point.then(|| shape(2)).flatten(),
    ));
    problems
}

fn check_shapes(
    node: &NodeProto,
    opset: i64,
    x: Option<Vec<Dim>>,
    scale: Option<Vec<Dim>>,
    zero_point: Option<Vec<Dim>>,
) -> Vec<(Severity, String)> {
    let mut problems = Vec::new();
    let Some(scale) = scale else { return problems };
    if let Some(zp) = &zero_point {
        // A scalar and a one-element 1-D tensor both mean per-tensor: the spec allows either.
        let single = |d: &[Dim]| d.len() <= 1 && d.iter().all(|x| *x == Dim::Value(1));
        if *zp != scale && !(single(zp) && single(&scale)) {
            problems.push((
                Severity::Error,
                format!(
                    "zero point shape {} differs from scale shape {}",
                    dims(zp),
                    dims(&scale)
                ),
            ));
        }
    }
    let block_size = attr::int(node, "block_size").ok().flatten().unwrap_or(0);
    let axis = attr::int(node, "axis").ok().flatten().unwrap_or(1);
    let n_scale: Option<i64> = scale.iter().try_fold(1i64, |acc, d| match d {
        Dim::Value(v) => acc.checked_mul(*v),
        _ => None,
    });
    let per_tensor =
        scale.is_empty() || (scale.len() == 1 && n_scale == Some(1) && block_size == 0);
    if per_tensor {
        return problems;
    }
    if block_size < 0 {
        problems.push((
            Severity::Error,
            format!("block_size {block_size} is negative"),
        ));
        return problems;
    }
    let rank = x.as_ref().map(Vec::len);
    let norm_axis = rank.and_then(|r| {
        let a = if axis < 0 { axis + r as i64 } else { axis };
        (0..r as i64).contains(&a).then_some(a as usize)
    });
    if let (Some(r), None) = (rank, norm_axis) {
        problems.push((
            Severity::Error,
            format!("axis {axis} is out of range for an input of rank {r}"),
        ));
        return problems;
    }
    if block_size == 0 {
        if scale.len() != 1 {
            problems.push((
                Severity::Error,
                format!("per-axis scale must be 1-D, got shape {}", dims(&scale)),
            ));
            return problems;
        }
        if opset < 13 {
            // With an `axis` attribute the checker refuses the node; without one, onnxruntime and
            // the checker accept a 1-D scale although DequantizeLinear-10 specifies a scalar.
            let severity = if attr::find(node, "axis").is_some() {
                Severity::Error
            } else {
                Severity::Warning
            };
            problems.push((severity, format!(
                "per-channel quantization (a 1-D scale of {} values) needs opset >= 13, the model imports {opset}",
                dims(&scale)
            )));
        }
        if let (Some(x), Some(a)) = (&x, norm_axis) {
            if let (Dim::Value(len), Dim::Value(n)) = (&x[a], &scale[0]) {
                if len != n {
                    problems.push((
                        Severity::Error,
                        format!("scale has {n} values but input axis {axis} has size {len}"),
                    ));
                }
            }
        }
    } else {
        if opset < 21 {
            problems.push((
                Severity::Error,
                format!("block_size needs opset >= 21, the model imports {opset}"),
            ));
        }
        if let (Some(x), Some(a)) = (&x, norm_axis) {
            if scale.len() != x.len() {
                problems.push((
                    Severity::Error,
                    format!(
                        "blocked scale must have the input's rank {}, got shape {}",
                        x.len(),
                        dims(&scale)
                    ),
                ));
            } else {
                for (i, (xd, sd)) in x.iter().zip(&scale).enumerate() {
                    if let (Dim::Value(xd), Dim::Value(sd)) = (xd, sd) {
                        let want = if i == a {
                            xd / block_size + i64::from(xd % block_size != 0)
                        } else {
                            *xd
                        };
                        if *sd != want {
                            problems.push((Severity::Error, format!(
                                "blocked scale dim {i} is {sd}, expected {want} for input shape {} and block_size {block_size}",
                                self::dims(x)
                            )));
                            break;
                        }
                    }
                }
            }
        }
    }
    problems
}

fn dims(d: &[Dim]) -> String {
    format!(
        "[{}]",
        d.iter().map(Dim::to_string).collect::<Vec<_>>().join(",")
    )
}
