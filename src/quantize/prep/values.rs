//! Reading floating-point `TensorProto` data as `f64` and writing it back, for passes that
//! compute new weights (BatchNormalization folding).

use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::TensorProto;
use crate::onnx::tensor;

/// The tensor's elements as `f64`, for `float`, `double`, `float16` and `bfloat16` tensors
/// held inline (in `raw_data`, little-endian, or in the type's own field).
pub(crate) fn floats(t: &TensorProto) -> Result<Vec<f64>, String> {
    if tensor::is_external(t) {
        return Err("the tensor's data is external and was not loaded".into());
    }
    let dt = tensor::data_type(t)?;
    let n = usize::try_from(tensor::element_count(&t.dims)?)
        .map_err(|_| format!("dims {:?} are too large", t.dims))?;
    let values: Vec<f64> = match (&t.raw_data, dt) {
        (Some(raw), DataType::Float) => raw
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        (Some(raw), DataType::Double) => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect(),
        (Some(raw), DataType::Float16) => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        (Some(raw), DataType::Bfloat16) => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        (None, DataType::Float) => t.float_data.iter().map(|&v| f64::from(v)).collect(),
        (None, DataType::Double) => t.double_data.clone(),
        // 16-bit floats live in int32_data, one element (its bits) per entry.
        (None, DataType::Float16) => t
            .int32_data
            .iter()
            .map(|&v| half::f16::from_bits(v as u16).to_f64())
            .collect(),
        (None, DataType::Bfloat16) => t
            .int32_data
            .iter()
            .map(|&v| half::bf16::from_bits(v as u16).to_f64())
            .collect(),
        _ => {
            return Err(format!(
                "element type {} is not a floating-point type",
                crate::onnx::dtype::name(dt)
            ))
        }
    };
    if values.len() < n {
        return Err(format!(
            "dims {:?} claim {n} elements but the tensor holds {}",
            t.dims,
            values.len()
        ));
    }
    let mut values = values;
    values.truncate(n);
    Ok(values)
}

/// A tensor of element type `dt` (one of those [`floats`] reads) holding `values` in `raw_data`.
pub(crate) fn float_tensor(
    name: String,
    dt: DataType,
    dims: Vec<i64>,
    values: &[f64],
) -> Result<TensorProto, String> {
    let raw: Vec<u8> = match dt {
        DataType::Float => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        DataType::Double => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        DataType::Float16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
            .collect(),
        DataType::Bfloat16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
            .collect(),
        _ => {
            return Err(format!(
                "element type {} is not a floating-point type",
                crate::onnx::dtype::name(dt)
            ))
        }
    };
    Ok(TensorProto {
        name: Some(name),
        data_type: Some(dt as i32),
        dims,
        raw_data: Some(raw),
        ..Default::default()
    })
}

/// The elements of an `int64` or `int32` tensor held inline.
pub(crate) fn ints(t: &TensorProto) -> Result<Vec<i64>, String> {
    if tensor::is_external(t) {
        return Err("the tensor's data is external and was not loaded".into());
    }
    let n = usize::try_from(tensor::element_count(&t.dims)?)
        .map_err(|_| format!("dims {:?} are too large", t.dims))?;
    let values: Vec<i64> = match (&t.raw_data, tensor::data_type(t)?) {
        (Some(raw), DataType::Int64) => raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect(),
        (Some(raw), DataType::Int32) => raw
            .chunks_exact(4)
            .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        (None, DataType::Int64) => t.int64_data.clone(),
        (None, DataType::Int32) => t.int32_data.iter().map(|&v| i64::from(v)).collect(),
        (_, dt) => {
            return Err(format!(
                "element type {} is not int64 or int32",
                crate::onnx::dtype::name(dt)
            ))
        }
    };
    if values.len() < n {
        return Err(format!(
            "dims {:?} claim {n} elements but the tensor holds {}",
            t.dims,
            values.len()
        ));
    }
    let mut values = values;
    values.truncate(n);
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_type_round_trips_through_raw_data() {
        let values = [1.5, -2.0, 0.25];
        for dt in [
            DataType::Float,
            DataType::Double,
            DataType::Float16,
            DataType::Bfloat16,
        ] {
            let t = float_tensor("t".into(), dt, vec![3], &values).unwrap();
            assert_eq!(floats(&t).unwrap(), values, "{dt:?}");
        }
    }

    #[test]
    fn typed_fields_are_read() {
        let t = TensorProto {
            data_type: Some(DataType::Float16 as i32),
            dims: vec![2],
            int32_data: vec![
                i32::from(half::f16::from_f32(0.5).to_bits()),
                i32::from(half::f16::from_f32(-3.0).to_bits()),
            ],
            ..Default::default()
        };
        assert_eq!(floats(&t).unwrap(), [0.5, -3.0]);
        let t = TensorProto {
            data_type: Some(DataType::Float as i32),
            dims: vec![3],
            float_data: vec![1.0, 2.0],
            ..Default::default()
        };
        assert!(floats(&t).unwrap_err().contains("claim 3 elements"));
    }

    #[test]
    fn integer_tensors_are_refused() {
        let t = TensorProto {
            data_type: Some(DataType::Int64 as i32),
            dims: vec![1],
            int64_data: vec![3],
            ..Default::default()
        };
        assert!(floats(&t).is_err());
    }
}
