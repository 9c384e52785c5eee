//! From tract back to ONNX: element types and tensors.

use tract_onnx::prelude::*;

use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::TensorProto;

/// The ONNX element type of a tract datum type. `TDim` (how tract types shapes and sizes) is
/// `int64`, quantized types are their storage type; `None` for types ONNX has no tensor of.
pub(crate) fn onnx_type(dt: DatumType) -> Option<DataType> {
    use DatumType as D;
    Some(match dt {
        D::Bool => DataType::Bool,
        D::U8 | D::QU8(_) => DataType::Uint8,
        D::U16 => DataType::Uint16,
        D::U32 => DataType::Uint32,
        D::U64 => DataType::Uint64,
        D::I8 | D::QI8(_) => DataType::Int8,
        D::I16 => DataType::Int16,
        D::I32 | D::QI32(_) => DataType::Int32,
        D::I64 | D::TDim => DataType::Int64,
        D::F16 => DataType::Float16,
        D::F32 => DataType::Float,
        D::F64 => DataType::Double,
        D::String => DataType::String,
        _ => return None,
    })
}

fn le_bytes<T: Datum, const N: usize>(
    t: &Tensor,
    bytes: impl Fn(T) -> [u8; N],
) -> TractResult<Vec<u8>> {
    Ok(t.to_plain_array_view::<T>()?
        .iter()
        .flat_map(|v| bytes(v.clone()))
        .collect())
}

/// A tract tensor as an ONNX tensor named `name`, its data in `raw_data` (or `string_data`).
/// Symbolic `TDim` values and types ONNX cannot hold are refused.
pub(crate) fn tensor_proto(name: &str, t: &Tensor) -> Result<TensorProto, String> {
    let fail = |e: TractError| format!("'{name}': {e}");
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    let mut proto = TensorProto {
        name: Some(name.to_string()),
        dims,
        ..Default::default()
    };
    let dt = t.datum_type();
    let raw = match dt {
        DatumType::Bool => le_bytes::<bool, 1>(t, |v| [u8::from(v)]),
        DatumType::U8 => le_bytes::<u8, 1>(t, u8::to_le_bytes),
        DatumType::U16 => le_bytes::<u16, 2>(t, u16::to_le_bytes),
        DatumType::U32 => le_bytes::<u32, 4>(t, u32::to_le_bytes),
        DatumType::U64 => le_bytes::<u64, 8>(t, u64::to_le_bytes),
        DatumType::I8 => le_bytes::<i8, 1>(t, i8::to_le_bytes),
        DatumType::I16 => le_bytes::<i16, 2>(t, i16::to_le_bytes),
        DatumType::I32 => le_bytes::<i32, 4>(t, i32::to_le_bytes),
        DatumType::I64 => le_bytes::<i64, 8>(t, i64::to_le_bytes),
        DatumType::F16 => le_bytes::<f16, 2>(t, |v| v.to_le_bytes()),
        DatumType::F32 => le_bytes::<f32, 4>(t, f32::to_le_bytes),
        DatumType::F64 => le_bytes::<f64, 8>(t, f64::to_le_bytes),
        DatumType::TDim => {
            let ints = t.cast_to::<i64>().map_err(fail)?;
            le_bytes::<i64, 8>(&ints, i64::to_le_bytes)
        }
        DatumType::String => {
            proto.string_data = t
                .to_plain_array_view::<String>()
                .map_err(fail)?
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect();
            proto.data_type = Some(DataType::String as i32);
            return Ok(proto);
        }
        _ => {
            return Err(format!(
                "'{name}': tract type {dt:?} has no ONNX tensor type"
            ))
        }
    }
    .map_err(fail)?;
    let onnx = onnx_type(dt).ok_or_else(|| format!("'{name}': no ONNX type for {dt:?}"))?;
    proto.data_type = Some(onnx as i32);
    proto.raw_data = Some(raw);
    Ok(proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_and_shapes_become_raw_little_endian() {
        let t = tract_ndarray::arr2(&[[1.0f32, 2.0], [3.0, 4.0]]).into_tensor();
        let p = tensor_proto("w", &t).unwrap();
        assert_eq!(p.dims, [2, 2]);
        assert_eq!(p.data_type, Some(DataType::Float as i32));
        assert_eq!(p.raw_data.as_deref().unwrap()[4..8], 2.0f32.to_le_bytes());
        let shape = tensor1(&[TDim::from(3), TDim::from(5)]);
        let p = tensor_proto("s", &shape).unwrap();
        assert_eq!(p.data_type, Some(DataType::Int64 as i32));
        assert_eq!(
            p.raw_data.unwrap(),
            [3i64.to_le_bytes(), 5i64.to_le_bytes()].concat()
        );
    }

    #[test]
    fn symbolic_dims_are_refused() {
        let scope = SymbolScope::default();
        let t = tensor1(&[TDim::from(scope.sym("N"))]);
        assert!(tensor_proto("s", &t).is_err());
    }
}
