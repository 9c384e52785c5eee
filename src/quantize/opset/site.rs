//! Where one node is being upgraded: what the adapters may look up, and where the tensors and
//! nodes they create go. Tensors become initializers of the node's graph, or `Constant` nodes
//! inside functions (which have no initializers). Nodes an adapter creates are written in the
//! target opset's form, since no later step revisits them.

use super::facts::Facts;
use crate::graph::Names;
use crate::onnx::pb::attribute_proto::AttributeType;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{AttributeProto, NodeProto, TensorProto};

/// One node's upgrade context; it lives across all the version steps of that node.
pub(crate) struct Site<'a, 'f> {
    names: &'a mut Names,
    facts: &'a Facts<'f>,
    /// The opset the model is raised to.
    pub(crate) target: i64,
    in_function: bool,
    /// Nodes to insert before the upgraded node.
    pub(crate) before: Vec<NodeProto>,
    /// Nodes to insert after the upgraded node.
    pub(crate) after: Vec<NodeProto>,
    /// New initializers of the node's graph.
    pub(crate) initializers: Vec<TensorProto>,
    /// Values the node no longer produces (their `value_info` goes too).
    pub(crate) removed_values: Vec<String>,
    /// The node was an Upsample, whose scales are at least 1 by definition.
    pub(crate) from_upsample: bool,
}

impl<'a, 'f> Site<'a, 'f> {
    pub(crate) fn new(
        names: &'a mut Names,
        facts: &'a Facts<'f>,
        target: i64,
        in_function: bool,
    ) -> Self {
        Site {
            names,
            facts,
            target,
            in_function,
            before: Vec::new(),
            after: Vec::new(),
            initializers: Vec::new(),
            removed_values: Vec::new(),
            from_upsample: false,
        }
    }

    /// What is known about the values of the node's graph.
    pub(crate) fn facts(&self) -> &Facts<'f> {
        self.facts
    }

    /// A new, unused tensor or node name.
    pub(crate) fn fresh(&mut self, base: &str) -> String {
        self.names.fresh(base)
    }

    /// Adds `t` as a new constant named after `base`; returns its name.
    pub(crate) fn add_constant(&mut self, base: &str, mut t: TensorProto) -> String {
        let name = self.names.fresh(base);
        if self.in_function {
            t.name = None;
            let node_name = self.names.fresh(&format!("{name}_constant"));
            self.before.push(NodeProto {
                name: Some(node_name),
                op_type: Some("Constant".into()),
                output: vec![name.clone()],
                attribute: vec![AttributeProto {
                    name: Some("value".into()),
                    r#type: Some(AttributeType::Tensor as i32),
                    t: Some(t),
                    ..Default::default()
                }],
                ..Default::default()
            });
        } else {
            t.name = Some(name.clone());
            self.initializers.push(t);
        }
        name
    }

    /// A new 1-D int64 constant.
    pub(crate) fn int64s(&mut self, base: &str, values: &[i64]) -> String {
        self.add_constant(base, int64_tensor(&[values.len() as i64], values))
    }

    /// A node of the default domain, named after `base`.
    pub(crate) fn node(
        &mut self,
        op: &str,
        base: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
    ) -> NodeProto {
        NodeProto {
            name: Some(self.names.fresh(base)),
            op_type: Some(op.into()),
            input: inputs,
            output: outputs,
            ..Default::default()
        }
    }

    /// An Unsqueeze (or Squeeze) of `input` along `axes`, in the target opset's form.
    pub(crate) fn squeeze_node(
        &mut self,
        op: &str,
        base: &str,
        input: String,
        axes: &[i64],
        output: String,
    ) -> NodeProto {
        if self.target >= 13 {
            let axes = self.int64s(&format!("{base}_axes"), axes);
            self.node(op, base, vec![input, axes], vec![output])
        } else {
            let mut node = self.node(op, base, vec![input], vec![output]);
            node.attribute.push(ints_attribute("axes", axes));
            node
        }
    }
}

/// An int64 tensor with `dims`.
pub(crate) fn int64_tensor(dims: &[i64], values: &[i64]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    crate::onnx::tensor::from_raw("", DataType::Int64, dims, raw)
}

/// A scalar of float type `dt` holding `value`; other types are refused.
pub(crate) fn float_scalar(dt: DataType, value: f32) -> Result<TensorProto, String> {
    let raw: Vec<u8> = match dt {
        DataType::Float => value.to_le_bytes().to_vec(),
        DataType::Double => f64::from(value).to_le_bytes().to_vec(),
        DataType::Float16 => half::f16::from_f32(value).to_le_bytes().to_vec(),
        DataType::Bfloat16 => half::bf16::from_f32(value).to_le_bytes().to_vec(),
        _ => {
            return Err(format!(
                "a {} value cannot hold the float {value}",
                crate::onnx::dtype::name(dt)
            ))
        }
    };
    Ok(crate::onnx::tensor::from_raw("", dt, &[], raw))
}

/// An `INTS` attribute.
pub(crate) fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// An `INT` attribute.
pub(crate) fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

/// A `STRING` attribute.
pub(crate) fn string_attribute(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(value.as_bytes().to_vec()),
        ..Default::default()
    }
}
