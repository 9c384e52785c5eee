//! Facts about ONNX tensor element types.

use super::pb::tensor_proto::DataType;

/// How an element type is stored in `TensorProto::raw_data` and which typed field holds it otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Fixed number of bits per element (4- and 2-bit types are packed, rounded up to a byte).
    Bits(u32),
    /// Variable length (strings): only `string_data`.
    Variable,
}

/// Storage of an element type, `None` for `UNDEFINED` or an unknown code.
pub fn storage(dt: DataType) -> Option<Storage> {
    use DataType::*;
    Some(match dt {
        Undefined => return None,
        String => Storage::Variable,
        Bool | Uint8 | Int8 | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => Storage::Bits(8),
        Uint16 | Int16 | Float16 | Bfloat16 => Storage::Bits(16),
        Float | Int32 | Uint32 => Storage::Bits(32),
        Int64 | Uint64 | Double | Complex64 => Storage::Bits(64),
        Complex128 => Storage::Bits(128),
        Uint4 | Int4 | Float4e2m1 => Storage::Bits(4),
        Uint2 | Int2 => Storage::Bits(2),
    })
}

/// Bytes that `n` elements of `dt` occupy in `raw_data`, or `None` on overflow or variable size.
pub fn raw_len(dt: DataType, n: u64) -> Option<u64> {
    match storage(dt)? {
        Storage::Bits(bits) => n.checked_mul(bits as u64).map(|b| b.div_ceil(8)),
        Storage::Variable => None,
    }
}

/// The lower-case ONNX spelling of an element type, as used in the operator specs (`float`, `int8`…).
pub fn name(dt: DataType) -> &'static str {
    use DataType::*;
    match dt {
        Undefined => "undefined",
        Float => "float",
        Uint8 => "uint8",
        Int8 => "int8",
        Uint16 => "uint16",
        Int16 => "int16",
        Int32 => "int32",
        Int64 => "int64",
        String => "string",
        Bool => "bool",
        Float16 => "float16",
        Double => "double",
        Uint32 => "uint32",
        Uint64 => "uint64",
        Complex64 => "complex64",
        Complex128 => "complex128",
        Bfloat16 => "bfloat16",
        Float8e4m3fn => "float8e4m3fn",
        Float8e4m3fnuz => "float8e4m3fnuz",
        Float8e5m2 => "float8e5m2",
        Float8e5m2fnuz => "float8e5m2fnuz",
        Uint4 => "uint4",
        Int4 => "int4",
        Float4e2m1 => "float4e2m1",
        Float8e8m0 => "float8e8m0",
        Uint2 => "uint2",
        Int2 => "int2",
    }
}

/// Name of a raw `data_type` code, tolerating codes this schema does not know.
pub fn name_of_code(code: i32) -> String {
    match DataType::try_from(code) {
        Ok(dt) => name(dt).to_string(),
        Err(_) => format!("unknown({code})"),
    }
}

/// Whether the type is one a QuantizeLinear output / DequantizeLinear input may have.
pub fn is_quantized_integer(dt: DataType) -> bool {
    use DataType::*;
    matches!(
        dt,
        Int8 | Uint8 | Int16 | Uint16 | Int4 | Uint4 | Int2 | Uint2 | Int32
    )
}

/// Whether the type is a floating-point type (any width).
pub fn is_float(dt: DataType) -> bool {
    use DataType::*;
    matches!(dt, Float | Double | Float16 | Bfloat16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_types_round_up_to_whole_bytes() {
        assert_eq!(raw_len(DataType::Int4, 3), Some(2));
        assert_eq!(raw_len(DataType::Uint2, 5), Some(2));
        assert_eq!(raw_len(DataType::Float, 3), Some(12));
        assert_eq!(raw_len(DataType::String, 3), None);
    }

    #[test]
    fn overflow_is_none_not_a_panic() {
        assert_eq!(raw_len(DataType::Double, u64::MAX), None);
    }
}
