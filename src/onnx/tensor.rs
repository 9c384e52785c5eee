//! Consistency checks on `TensorProto` data, done before anything trusts a tensor's shape.

use std::borrow::Cow;

use super::dtype::{self, Storage};
use super::pb::tensor_proto::{DataLocation, DataType};
use super::pb::TensorProto;

/// Number of elements the dims claim, refusing negative dims and overflow.
pub fn element_count(dims: &[i64]) -> Result<u64, String> {
    dims.iter().try_fold(1u64, |acc, &d| {
        let d = u64::try_from(d).map_err(|_| format!("negative dimension {d} in {dims:?}"))?;
        acc.checked_mul(d)
            .ok_or_else(|| format!("dims {dims:?} overflow the element count"))
    })
}

/// The tensor's element type, refusing codes this schema does not know.
pub fn data_type(t: &TensorProto) -> Result<DataType, String> {
    let code = t.data_type.unwrap_or(0);
    DataType::try_from(code).map_err(|_| format!("unknown data_type {code}"))
}

/// Whether the tensor's bytes live in an external file.
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

/// Bytes of `raw_data` a tensor of this type and these dims must have, `None` for strings.
pub fn expected_raw_len(t: &TensorProto) -> Result<Option<u64>, String> {
    let dt = data_type(t)?;
    let n = element_count(&t.dims)?;
    match dtype::storage(dt) {
        Some(Storage::Bits(_)) => dtype::raw_len(dt, n)
            .map(Some)
            .ok_or_else(|| format!("dims {:?} overflow the byte size", t.dims)),
        Some(Storage::Variable) => Ok(None),
        None => Ok(None),
    }
}

/// Checks that an inline tensor's data holds at least as many elements as its dims claim.
///
/// A tensor with no data at all is accepted when it claims no elements; `UNDEFINED` tensors
/// (which some exporters emit for optional attributes) are accepted when empty.
pub fn check_inline_data(t: &TensorProto) -> Result<(), String> {
    if is_external(t) {
        return Ok(());
    }
    let code = t.data_type.unwrap_or(0);
    let n = element_count(&t.dims)?;
    if code == DataType::Undefined as i32 {
        return if n == 0 || (t.raw_data.is_none() && has_no_typed_data(t)) {
            Ok(())
        } else {
            Err("data_type is UNDEFINED but the tensor holds data".into())
        };
    }
    let dt = data_type(t)?;
    if let Some(raw) = &t.raw_data {
        let need = expected_raw_len(t)?;
        return match need {
            Some(need) if (raw.len() as u64) < need => Err(format!(
                "dims {:?} of {} claim {need} bytes but raw_data holds {}",
                t.dims,
                dtype::name(dt),
                raw.len()
            )),
            _ => Ok(()),
        };
    }
    let (held, per_element) = typed_field_len(t, dt);
    let need = match dtype::storage(dt) {
        Some(Storage::Bits(bits)) if bits < 8 => n.div_ceil(u64::from(8 / bits)),
        _ => n
            .checked_mul(per_element)
            .ok_or("element count overflows")?,
    };
    if held < need {
        return Err(format!(
            "dims {:?} of {} claim {n} elements but the tensor holds data for {}",
            t.dims,
            dtype::name(dt),
            held / per_element.max(1)
        ));
    }
    Ok(())
}

fn has_no_typed_data(t: &TensorProto) -> bool {
    t.float_data.is_empty()
        && t.int32_data.is_empty()
        && t.string_data.is_empty()
        && t.int64_data.is_empty()
        && t.double_data.is_empty()
        && t.uint64_data.is_empty()
}

/// Length of the typed field that holds this type, and how many entries one element takes.
fn typed_field_len(t: &TensorProto, dt: DataType) -> (u64, u64) {
    use DataType::*;
    let len = |v: usize| v as u64;
    match dt {
        Float => (len(t.float_data.len()), 1),
        Complex64 => (len(t.float_data.len()), 2),
        Double => (len(t.double_data.len()), 1),
        Complex128 => (len(t.double_data.len()), 2),
        Int64 => (len(t.int64_data.len()), 1),
        Uint32 | Uint64 => (len(t.uint64_data.len()), 1),
        String => (len(t.string_data.len()), 1),
        _ => (len(t.int32_data.len()), 1),
    }
}

/// The tensor's values as `f32`, for float tensors (float, double, float16, bfloat16) held inline.
pub fn to_f32(t: &TensorProto) -> Result<Vec<f32>, String> {
    use DataType::*;
    let dt = data_type(t)?;
    let n = element_count(&t.dims)? as usize;
    check_inline_data(t)?;
    let values: Vec<f32> = match (dt, t.raw_data.as_deref()) {
        (_, Some(r)) => {
            let mut values = Vec::with_capacity(n);
            extend_f32(dt, r, &mut values)?;
            values
        }
        (Float, None) => t.float_data.clone(),
        (Double, None) => t.double_data.iter().map(|&v| v as f32).collect(),
        (Float16, None) => t
            .int32_data
            .iter()
            .map(|&v| half::f16::from_bits(v as u16).to_f32())
            .collect(),
        (Bfloat16, None) => t
            .int32_data
            .iter()
            .map(|&v| half::bf16::from_bits(v as u16).to_f32())
            .collect(),
        _ => return Err(format!("{} is not a float type", super::dtype::name(dt))),
    };
    if values.len() < n {
        return Err(format!(
            "holds {} values, dims {:?} need {n}",
            values.len(),
            t.dims
        ));
    }
    // Truncate in place: a copy would double the peak for a large weight.
    let mut values = values;
    values.truncate(n);
    Ok(values)
}

/// Appends the values of little-endian raw bytes of float type `dt` (float, double, float16,
/// bfloat16) to `out` as `f32`; a trailing partial element is ignored. Raw data can be decoded
/// piece by piece this way when the pieces hold whole elements.
pub fn extend_f32(dt: DataType, raw: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
    use DataType::*;
    match dt {
        Float => out.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Double => {
            out.extend(raw.chunks_exact(8).map(|c| {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }))
        }
        Float16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        Bfloat16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        _ => return Err(format!("{} is not a float type", super::dtype::name(dt))),
    }
    Ok(())
}

/// An inline tensor's data as exactly the little-endian raw bytes its type and dims need,
/// borrowed from `raw_data` when it is there; `None` for strings, 2-bit types, and data too
/// short for the dims.
pub fn raw_bytes(t: &TensorProto) -> Option<Cow<'_, [u8]>> {
    let dt = data_type(t).ok()?;
    let n = element_count(&t.dims).ok()?;
    let need = usize::try_from(dtype::raw_len(dt, n)?).ok()?;
    if let Some(raw) = &t.raw_data {
        // Bytes past what the dims need are dropped: a reader checks `length` against the dims.
        return (raw.len() >= need).then(|| Cow::Borrowed(&raw[..need]));
    }
    use DataType::*;
    let bytes: Vec<u8> = match dt {
        Float | Complex64 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Double | Complex128 => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Int64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Uint64 => t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Uint32 => t
            .uint64_data
            .iter()
            .flat_map(|&v| (v as u32).to_le_bytes())
            .collect(),
        Int32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Int16 | Uint16 | Float16 | Bfloat16 => t
            .int32_data
            .iter()
            .flat_map(|&v| (v as u16).to_le_bytes())
            .collect(),
        Int8 | Uint8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 | Int4 | Uint4 | Float4e2m1 => t.int32_data.iter().map(|&v| v as u8).collect(),
        // 2-bit types have no agreed typed-field packing to convert from.
        Uint2 | Int2 | String | Undefined => return None,
    };
    (bytes.len() >= need).then(|| {
        let mut bytes = bytes;
        bytes.truncate(need);
        Cow::Owned(bytes)
    })
}

/// Removes every data field (raw and typed), before the tensor is pointed at external data.
pub fn clear_data(t: &mut TensorProto) {
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
}

/// A tensor of `dt` holding `raw` little-endian bytes.
pub fn from_raw(name: &str, dt: DataType, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        data_type: Some(dt as i32),
        dims: dims.to_vec(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A float tensor.
pub fn from_f32(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    from_raw(
        name,
        DataType::Float,
        dims,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dt: DataType, dims: &[i64]) -> TensorProto {
        TensorProto {
            data_type: Some(dt as i32),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn raw_data_shorter_than_dims_is_refused() {
        let mut t = tensor(DataType::Float, &[2, 3]);
        t.raw_data = Some(vec![0; 20]);
        let err = check_inline_data(&t).unwrap_err();
        assert!(err.contains("claim 24 bytes"), "{err}");
        t.raw_data = Some(vec![0; 24]);
        check_inline_data(&t).unwrap();
    }

    #[test]
    fn typed_data_shorter_than_dims_is_refused() {
        let mut t = tensor(DataType::Int64, &[4]);
        t.int64_data = vec![1, 2, 3];
        assert!(check_inline_data(&t).is_err());
        t.int64_data.push(4);
        check_inline_data(&t).unwrap();
    }

    #[test]
    fn packed_int4_in_int32_data_counts_pairs() {
        let mut t = tensor(DataType::Int4, &[5]);
        t.int32_data = vec![0, 0, 0];
        check_inline_data(&t).unwrap();
        t.int32_data.pop();
        assert!(check_inline_data(&t).is_err());
    }

    #[test]
    fn absurd_dims_do_not_overflow() {
        let t = tensor(DataType::Float, &[i64::MAX, i64::MAX]);
        assert!(check_inline_data(&t).unwrap_err().contains("overflow"));
        let t = tensor(DataType::Float, &[-1]);
        assert!(check_inline_data(&t).unwrap_err().contains("negative"));
    }
}
