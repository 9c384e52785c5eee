//! NumPy files, without tract: `.npy` arrays and `.npz` archives of them (stored, as `np.savez`
//! writes them, or deflated, as `np.savez_compressed` does).
//!
//! The array header is parsed by `ndarray_npy` after its length is checked (at most
//! [`MAX_HEADER_LEN`] bytes, and no more than the file holds); the data is decoded here so that
//! every element type a model input can have (float16 included) is read the same way. Sizes are
//! checked against the file and the header before anything is allocated: a bad file is an error,
//! never a panic or a huge allocation.
//!
//! `ndarray_npy::NpzReader` is not used because it reads only the element types it knows (no
//! float16), reports a wrong dtype only as "incorrect descriptor", and allocates what the array
//! header claims before reading.

mod npz;
#[cfg(test)]
pub(crate) use npz::one_member_archive;

use std::io::{self, Read};

use half::f16;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::npy::header::Header;

pub use npz::Npz;

use crate::onnx::dtype;
use crate::onnx::pb::tensor_proto::DataType;

/// The longest array header read. NumPy itself refuses headers over 10000 bytes unless told
/// otherwise; a header of a valid array of any practical rank is a few hundred bytes.
pub const MAX_HEADER_LEN: u64 = 65536;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// What an `.npy` header says about the data that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The element type.
    pub dtype: DataType,
    /// Whether the elements are stored big-endian.
    pub big_endian: bool,
    /// Whether the data is in Fortran (column-major) order (only set for rank 2 and more).
    pub fortran: bool,
    /// The array's shape.
    pub shape: Vec<usize>,
}

impl NpyHeader {
    /// Reads the header from a stream holding `available` bytes, leaving `reader` at the first
    /// data byte; returns the header and its length in bytes (the data offset).
    pub fn read(reader: &mut impl Read, available: u64) -> Result<(NpyHeader, u64), String> {
        let invalid = |m: &str| format!("not a valid .npy array: {m}");
        let mut prefix = vec![0u8; 8];
        read_header_bytes(reader, &mut prefix)?;
        if !prefix.starts_with(MAGIC) {
            return Err(invalid("it does not start with \\x93NUMPY"));
        }
        let len_bytes = match prefix[6] {
            1 => 2,
            2 | 3 => 4,
            v => {
                return Err(invalid(&format!(
                    "unknown format version {v}.{}",
                    prefix[7]
                )))
            }
        };
        prefix.resize(8 + len_bytes, 0);
        read_header_bytes(reader, &mut prefix[8..])?;
        let header_len = prefix[8..]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let total = prefix.len() as u64 + header_len;
        if header_len > MAX_HEADER_LEN {
            return Err(invalid(&format!(
                "the header claims {header_len} bytes (at most {MAX_HEADER_LEN} are read)"
            )));
        }
        if total > available {
            return Err(invalid(&format!(
                "the header claims {header_len} bytes but only {} follow",
                available.saturating_sub(prefix.len() as u64)
            )));
        }
        let mut bytes = prefix;
        let start = bytes.len();
        bytes.resize(start + header_len as usize, 0);
        read_header_bytes(reader, &mut bytes[start..])?;
        let header =
            Header::from_reader(&mut bytes.as_slice()).map_err(|e| invalid(&e.to_string()))?;
        let descr = header.type_descriptor.as_string().ok_or_else(|| {
            format!(
                "structured dtype {} cannot feed a model input",
                header.type_descriptor
            )
        })?;
        let (dtype, big_endian) = parse_descr(descr)?;
        let header = NpyHeader {
            dtype,
            big_endian,
            fortran: header.layout.is_fortran() && header.shape.len() > 1,
            shape: header.shape,
        };
        Ok((header, total))
    }

    /// Bytes of data the header announces.
    pub fn data_len(&self) -> Result<u64, String> {
        element_count(&self.shape)
            .and_then(|n| dtype::raw_len(self.dtype, n))
            .ok_or_else(|| format!("shape {} overflows", shape_string(&self.shape)))
    }

    /// `float32 [2,3]`.
    pub fn describe(&self) -> String {
        format!("{} {}", dtype_name(self.dtype), shape_string(&self.shape))
    }
}

/// `read_exact`, with the messages of a header that is cut short or cannot be read.
fn read_header_bytes(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), String> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => "not a valid .npy array: the header is cut short".into(),
        _ => format!("cannot read the array header: {}", read_error(&e)),
    })
}

/// How an I/O error reading a (possibly compressed) member is reported.
pub(crate) fn read_error(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("checksum") {
        "it fails its CRC check (corrupt file)".into()
    } else {
        text
    }
}

fn element_count(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Element type and byte order of a NumPy type descriptor such as `<f4` or `|u1`.
pub fn parse_descr(descr: &str) -> Result<(DataType, bool), String> {
    let (big_endian, code) = match descr.as_bytes().first() {
        Some(b'<' | b'|') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        Some(b'=') => (cfg!(target_endian = "big"), &descr[1..]),
        _ => (cfg!(target_endian = "big"), descr),
    };
    use DataType::*;
    let dtype = match code {
        "f2" | "e" => Float16,
        "f4" | "f" => Float,
        "f8" | "d" => Double,
        "i1" | "b" => Int8,
        "u1" | "B" => Uint8,
        "i2" | "h" => Int16,
        "u2" | "H" => Uint16,
        "i4" | "i" => Int32,
        "u4" | "I" => Uint32,
        "i8" | "q" => Int64,
        "u8" | "Q" => Uint64,
        "b1" | "?" => Bool,
        _ => return Err(format!("unsupported dtype '{descr}'")),
    };
    Ok((dtype, big_endian))
}

/// A shape written like `[2,3]`.
pub fn shape_string(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(","))
}

/// The NumPy spelling of an element type (`float32` rather than ONNX's `float`), which is what
/// people who write calibration data know.
pub fn dtype_name(dt: DataType) -> &'static str {
    match dt {
        DataType::Float => "float32",
        DataType::Double => "float64",
        DataType::Float16 => "float16",
        other => dtype::name(other),
    }
}

/// An array as read from a file: its header and exactly the data bytes the header announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyArray {
    /// The parsed header.
    pub header: NpyHeader,
    /// The raw data, in the header's byte order and layout.
    pub data: Vec<u8>,
}

impl NpyArray {
    /// Parses a whole `.npy` file held in memory, refusing truncated data and trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
        let mut reader = bytes;
        let (header, offset) = NpyHeader::read(&mut reader, bytes.len() as u64)?;
        let data = &bytes[offset as usize..];
        let need = header.data_len()?;
        if data.len() as u64 != need {
            return Err(format!(
                "the header announces {} ({need} bytes) but the file holds {} data bytes",
                header.describe(),
                data.len()
            ));
        }
        Ok(NpyArray {
            header,
            data: data.to_vec(),
        })
    }

    /// The values, decoded.
    pub fn values(&self) -> Result<Values, String> {
        let h = &self.header;
        decode(h.dtype, h.big_endian, &h.shape, h.fortran, &self.data)
    }
}

/// Decoded values of one of the element types calibration data can have.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Values {
    Float(ArrayD<f32>),
    Double(ArrayD<f64>),
    Float16(ArrayD<f16>),
    Int8(ArrayD<i8>),
    Int16(ArrayD<i16>),
    Int32(ArrayD<i32>),
    Int64(ArrayD<i64>),
    Uint8(ArrayD<u8>),
    Uint16(ArrayD<u16>),
    Uint32(ArrayD<u32>),
    Uint64(ArrayD<u64>),
    Bool(ArrayD<bool>),
}

/// Decodes `bytes` (exactly the data of `shape`) into values of element type `dt`.
pub fn decode(
    dt: DataType,
    big_endian: bool,
    shape: &[usize],
    fortran: bool,
    bytes: &[u8],
) -> Result<Values, String> {
    macro_rules! numbers {
        ($variant:ident, $t:ty) => {{
            const N: usize = std::mem::size_of::<$t>();
            let values: Vec<$t> = bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    if big_endian {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }
                })
                .collect();
            array(shape, fortran, values).map(Values::$variant)
        }};
    }
    use DataType::*;
    match dt {
        Float => numbers!(Float, f32),
        Double => numbers!(Double, f64),
        Float16 => numbers!(Float16, f16),
        Int8 => numbers!(Int8, i8),
        Int16 => numbers!(Int16, i16),
        Int32 => numbers!(Int32, i32),
        Int64 => numbers!(Int64, i64),
        Uint8 => numbers!(Uint8, u8),
        Uint16 => numbers!(Uint16, u16),
        Uint32 => numbers!(Uint32, u32),
        Uint64 => numbers!(Uint64, u64),
        Bool => array(shape, fortran, bytes.iter().map(|&b| b != 0).collect()).map(Values::Bool),
        other => Err(format!(
            "element type {} cannot be read as calibration data",
            dtype_name(other)
        )),
    }
}

fn array<T>(shape: &[usize], fortran: bool, values: Vec<T>) -> Result<ArrayD<T>, String> {
    ArrayD::from_shape_vec(IxDyn(shape).set_f(fortran), values)
        .map_err(|e| format!("data does not fit shape {}: {e}", shape_string(shape)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `.npy` file with the header dict `dict` (padded, newline added) and `data`.
    pub(crate) fn npy_with_header(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((dict.len() as u16 + 1).to_le_bytes());
        out.extend(dict.as_bytes());
        out.push(b'\n');
        out.extend(data);
        out
    }

    #[test]
    fn descriptors() {
        let cases = [
            ("<f4", DataType::Float, false),
            (">f8", DataType::Double, true),
            ("<f2", DataType::Float16, false),
            ("|u1", DataType::Uint8, false),
            ("|i1", DataType::Int8, false),
            ("|b1", DataType::Bool, false),
            ("<i8", DataType::Int64, false),
            (">i2", DataType::Int16, true),
        ];
        for (descr, dt, big) in cases {
            assert_eq!(parse_descr(descr), Ok((dt, big)), "{descr}");
        }
        assert!(parse_descr("<c8").unwrap_err().contains("'<c8'"));
        assert!(parse_descr("<U5").is_err());
    }

    #[test]
    fn decoding_honours_byte_order_and_fortran_layout() {
        let be = decode(
            DataType::Int16,
            true,
            &[2],
            false,
            &[0x01, 0x02, 0xff, 0xfe],
        )
        .unwrap();
        assert_eq!(
            be,
            Values::Int16(ndarray::arr1(&[0x0102i16, -2]).into_dyn())
        );
        let bytes: Vec<u8> = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        // Fortran order stores columns first: [[1,3,5],[2,4,6]].
        let f = decode(DataType::Float, false, &[2, 3], true, &bytes).unwrap();
        let expected = ndarray::arr2(&[[1f32, 3.0, 5.0], [2.0, 4.0, 6.0]]).into_dyn();
        assert_eq!(f, Values::Float(expected));
        let h = decode(
            DataType::Float16,
            false,
            &[1],
            false,
            &f16::from_f32(1.5).to_le_bytes(),
        );
        assert_eq!(
            h.unwrap(),
            Values::Float16(ndarray::arr1(&[f16::from_f32(1.5)]).into_dyn())
        );
    }

    #[test]
    fn truncated_and_oversized_npy_are_errors() {
        let mut file = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&ndarray::arr1(&[1f32, 2.0, 3.0]), &mut file).unwrap();
        assert_eq!(
            NpyArray::parse(&file).unwrap().values().unwrap(),
            Values::Float(ndarray::arr1(&[1f32, 2.0, 3.0]).into_dyn())
        );
        let err = NpyArray::parse(&file[..file.len() - 1]).unwrap_err();
        assert!(err.contains("(12 bytes) but the file holds 11"), "{err}");
        file.push(0);
        assert!(NpyArray::parse(&file).is_err());
        assert!(NpyArray::parse(b"\x93NUMPY").is_err());
        // A header claiming terabytes is refused before anything is allocated.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000), }";
        let err = NpyArray::parse(&npy_with_header(dict, &[0; 16])).unwrap_err();
        assert!(err.contains("[1000000000000,1000]"), "{err}");
        assert!(NpyArray::parse(b"").is_err());
        // Shapes whose element count overflows, with and without a zero dim.
        for shape in ["(4294967296, 4294967296, 2)", "(0, 9223372036854775807, 4)"] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let r = NpyArray::parse(&npy_with_header(&dict, &[])).and_then(|a| a.values());
            assert!(r.is_err(), "{shape}: {r:?}");
        }
    }

    #[test]
    fn header_lengths_are_checked_before_reading() {
        // Version 2 has a 4-byte header length: 4 GB claimed by a 12-byte file.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend(u32::MAX.to_le_bytes());
        let err = NpyArray::parse(&v2).unwrap_err();
        assert!(err.contains("4294967295 bytes"), "{err}");
        // Within the limit but past the end of the file.
        let mut short = b"\x93NUMPY\x01\x00".to_vec();
        short.extend(1000u16.to_le_bytes());
        short.extend([b' '; 10]);
        let err = NpyArray::parse(&short).unwrap_err();
        assert!(err.contains("only 10 follow"), "{err}");
        let err = NpyArray::parse(b"\x93NUMPY\x04\x00\x10\x00").unwrap_err();
        assert!(err.contains("version 4.0"), "{err}");
    }
}
