use std::fmt;

use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::tensor_shape_proto::dimension;
use crate::onnx::pb::type_proto;
use crate::onnx::pb::TypeProto;

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A known size.
    Value(i64),
    /// A symbolic size (`dim_param`).
    Param(String),
    /// Neither is given.
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Value(v) => write!(f, "{v}"),
            Dim::Param(p) => f.write_str(p),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Element type and (possibly unknown) shape of a tensor value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorType {
    /// Element type.
    pub elem_type: DataType,
    /// Dimensions, `None` when the rank itself is unknown.
    pub shape: Option<Vec<Dim>>,
}

impl TensorType {
    /// The shape written like `[1,3,N,224]`, or `?` when the rank is unknown.
    pub fn shape_string(&self) -> String {
        match &self.shape {
            None => "?".into(),
            Some(dims) => format!(
                "[{}]",
                dims.iter()
                    .map(Dim::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// The tensor type inside a `TypeProto`, `None` for sequences, maps and the like.
pub fn tensor_type(t: &TypeProto) -> Option<TensorType> {
    let type_proto::Value::TensorType(tt) = t.value.as_ref()? else {
        return None;
    };
    let elem_type = DataType::try_from(tt.elem_type()).ok()?;
    let shape = tt.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(v)) => Dim::Value(*v),
                Some(dimension::Value::DimParam(p)) => Dim::Param(p.clone()),
                None => Dim::Unknown,
            })
            .collect()
    });
    Some(TensorType { elem_type, shape })
}
