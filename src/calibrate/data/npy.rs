//! NumPy files: `.npy` arrays (one per sample, or stacked along the first axis) and `.npz`
//! archives keyed by input name. The header is parsed by `ndarray_npy`; the data is decoded here
//! so that every element type a model input can have (float16 included) is read the same way,
//! and its length is checked against the file before anything is allocated.

use std::fs::{self, File};
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::npy::header::Header;
use tract_onnx::prelude::{f16, Datum, Tensor};

use super::check::{self, shape_string};
use super::{data_error, zip, InputSpec, Loaded};
use crate::engine;
use crate::error::{Error, Result};
use crate::onnx::dtype;
use crate::onnx::pb::tensor_proto::DataType;

/// What an `.npy` header says about the data that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NpyHeader {
    pub dtype: DataType,
    pub big_endian: bool,
    pub fortran: bool,
    pub shape: Vec<usize>,
}

impl NpyHeader {
    /// Reads the header, leaving `reader` at the first data byte.
    fn read(reader: &mut impl Read) -> Result<NpyHeader, String> {
        let header =
            Header::from_reader(reader).map_err(|e| format!("not a valid .npy array: {e}"))?;
        let descr = header.type_descriptor.as_string().ok_or_else(|| {
            format!(
                "structured dtype {} cannot feed a model input",
                header.type_descriptor
            )
        })?;
        let (dtype, big_endian) = parse_descr(descr)?;
        Ok(NpyHeader {
            dtype,
            big_endian,
            fortran: header.layout.is_fortran() && header.shape.len() > 1,
            shape: header.shape,
        })
    }

    /// Bytes of data the header announces.
    fn data_len(&self) -> Result<u64, String> {
        element_count(&self.shape)
            .and_then(|n| dtype::raw_len(self.dtype, n))
            .ok_or_else(|| format!("shape {} overflows", shape_string(&self.shape)))
    }
}

fn element_count(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Element type and byte order of a NumPy type descriptor such as `<f4` or `|u1`.
pub(super) fn parse_descr(descr: &str) -> Result<(DataType, bool), String> {
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

/// Decodes `bytes` (exactly the data of `shape`) into a tensor.
pub(super) fn decode(
    dt: DataType,
    big_endian: bool,
    shape: &[usize],
    fortran: bool,
    bytes: &[u8],
) -> Result<Tensor, String> {
    macro_rules! numbers {
        ($t:ty) => {{
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
            tensor(shape, fortran, values)
        }};
    }
    use DataType::*;
    match dt {
        Float => numbers!(f32),
        Double => numbers!(f64),
        Float16 => numbers!(f16),
        Int8 => numbers!(i8),
        Int16 => numbers!(i16),
        Int32 => numbers!(i32),
        Int64 => numbers!(i64),
        Uint8 => numbers!(u8),
        Uint16 => numbers!(u16),
        Uint32 => numbers!(u32),
        Uint64 => numbers!(u64),
        Bool => tensor(shape, fortran, bytes.iter().map(|&b| b != 0).collect()),
        other => Err(format!(
            "element type {} cannot be read as calibration data",
            check::dtype_name(other)
        )),
    }
}

fn tensor<T: Datum>(shape: &[usize], fortran: bool, values: Vec<T>) -> Result<Tensor, String> {
    ArrayD::from_shape_vec(IxDyn(shape).set_f(fortran), values)
        .map(Tensor::from)
        .map_err(|e| format!("data does not fit shape {}: {e}", shape_string(shape)))
}

/// Decodes a whole `.npy` held in memory, refusing truncated data and trailing bytes.
fn decode_npy(bytes: &[u8]) -> Result<Tensor, String> {
    let mut cursor = Cursor::new(bytes);
    let header = NpyHeader::read(&mut cursor)?;
    let data = bytes.get(cursor.position() as usize..).unwrap_or_default();
    let need = header.data_len()?;
    if data.len() as u64 != need {
        return Err(format!(
            "the header announces {} of shape {} ({need} bytes) but the file holds {} data bytes",
            check::dtype_name(header.dtype),
            shape_string(&header.shape),
            data.len()
        ));
    }
    decode(
        header.dtype,
        header.big_endian,
        &header.shape,
        header.fortran,
        data,
    )
}

/// One sample from a `.npy` file, for the single input `spec`.
pub(super) fn load_npy(path: &Path, spec: &InputSpec) -> Result<Vec<Loaded>> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let value = decode_npy(&bytes).map_err(|m| data_error(path, Some(&spec.name), m))?;
    Ok(vec![Loaded {
        source: path.to_path_buf(),
        value,
    }])
}

/// One sample from an `.npz` file: an array per input, keyed by the input's name (or
/// `name.npy`), and no other arrays.
pub(super) fn load_npz(path: &Path, inputs: &[InputSpec]) -> Result<Vec<Loaded>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let entries = zip::entries(&mut file, len).map_err(|m| data_error(path, None, m))?;
    let key = |e: &zip::Entry| e.name.strip_suffix(".npy").unwrap_or(&e.name).to_string();
    let keys: Vec<String> = entries.iter().map(key).collect();
    let mut found = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let Some(i) = keys.iter().position(|k| *k == spec.name) else {
            return Err(data_error(
                path,
                Some(&spec.name),
                format!(
                    "no array named '{}' (the file holds: {})",
                    spec.name,
                    list(&keys)
                ),
            ));
        };
        found.push(i);
    }
    let extra: Vec<String> = keys
        .iter()
        .filter(|k| !inputs.iter().any(|s| s.name == **k))
        .cloned()
        .collect();
    if !extra.is_empty() {
        let names: Vec<String> = inputs.iter().map(|s| s.name.clone()).collect();
        return Err(data_error(
            path,
            None,
            format!(
                "the file holds arrays the model has no input for: {} (inputs: {}); is it the \
                 right file?",
                list(&extra),
                list(&names)
            ),
        ));
    }
    inputs
        .iter()
        .zip(found)
        .map(|(spec, i)| {
            let bytes = zip::read(&mut file, len, &entries[i])
                .map_err(|m| data_error(path, Some(&spec.name), m))?;
            let value = decode_npy(&bytes).map_err(|m| {
                data_error(path, Some(&spec.name), format!("array '{}': {m}", keys[i]))
            })?;
            Ok(Loaded {
                source: path.to_path_buf(),
                value,
            })
        })
        .collect()
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "nothing".into();
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    quoted.join(", ")
}

/// One `.npy` file whose first axis is the sample axis, read one row at a time.
#[derive(Debug, Clone)]
pub(super) struct Stack {
    path: PathBuf,
    header: NpyHeader,
    data_offset: u64,
    row_shape: Vec<usize>,
    row_bytes: u64,
    rows: usize,
}

impl Stack {
    /// Reads the header and checks that rows fit `spec`: a row keeps a leading batch axis of 1
    /// when the input has the array's rank, and loses the sample axis when it has one less.
    pub fn open(path: &Path, spec: &InputSpec) -> Result<Stack> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let fail = |m: String| data_error(path, Some(&spec.name), m);
        let header = NpyHeader::read(&mut reader).map_err(fail)?;
        let data_offset = reader.stream_position().map_err(|e| Error::io(path, e))?;
        let shape = &header.shape;
        let Some((&rows, row_dims)) = shape.split_first() else {
            return Err(fail(
                "a stacked .npy needs a sample axis first, but this array is a scalar".into(),
            ));
        };
        if header.fortran {
            return Err(fail(
                "a Fortran-ordered array cannot be read row by row; save it with \
                 np.ascontiguousarray"
                    .into(),
            ));
        }
        let data_len = header.data_len().map_err(fail)?;
        if len.checked_sub(data_offset) != Some(data_len) {
            return Err(fail(format!(
                "the header announces {} of shape {} ({data_len} bytes) but the file holds {} \
                 data bytes",
                check::dtype_name(header.dtype),
                shape_string(shape),
                len.saturating_sub(data_offset)
            )));
        }
        let row_shape: Vec<usize> = if spec.shape.len() == shape.len() {
            std::iter::once(1).chain(row_dims.iter().copied()).collect()
        } else if spec.shape.len() + 1 == shape.len() {
            row_dims.to_vec()
        } else {
            return Err(fail(format!(
                "stacked array of shape {} has rows {} (or {} with a batch axis of 1) but the \
                 model input {} has rank {}",
                shape_string(shape),
                shape_string(row_dims),
                shape_string(&[&[1], row_dims].concat()),
                spec.shape_string(),
                spec.shape.len()
            )));
        };
        let row_bytes = data_len.checked_div(rows as u64).unwrap_or(0);
        let dt =
            engine::datum_type(header.dtype).ok_or_else(|| fail("unsupported dtype".into()))?;
        check::type_and_shape(path, spec, dt, &row_shape)?;
        Ok(Stack {
            path: path.to_path_buf(),
            header,
            data_offset,
            row_shape,
            row_bytes,
            rows,
        })
    }

    /// Number of rows (samples).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Keeps the first `limit` rows.
    pub fn truncate(&mut self, limit: usize) {
        self.rows = self.rows.min(limit);
    }

    /// Row `row` with its label `file.npy[row]`.
    pub fn load_row(&self, row: usize) -> Result<(String, Tensor)> {
        let label = format!("{}[{row}]", self.path.display());
        let fail = |m: String| data_error(&label, None, m);
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut bytes = vec![0; usize::try_from(self.row_bytes).map_err(|e| fail(e.to_string()))?];
        file.seek(SeekFrom::Start(
            self.data_offset + row as u64 * self.row_bytes,
        ))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| Error::io(&self.path, e))?;
        let value = decode(
            self.header.dtype,
            self.header.big_endian,
            &self.row_shape,
            false,
            &bytes,
        )
        .map_err(fail)?;
        Ok((label, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(be, Tensor::from_shape(&[2], &[0x0102i16, -2]).unwrap());
        let bytes: Vec<u8> = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        // Fortran order stores columns first: [[1,3,5],[2,4,6]].
        let f = decode(DataType::Float, false, &[2, 3], true, &bytes).unwrap();
        let expected = Tensor::from_shape(&[2, 3], &[1f32, 3.0, 5.0, 2.0, 4.0, 6.0]).unwrap();
        assert_eq!(f, expected);
        let h = decode(
            DataType::Float16,
            false,
            &[1],
            false,
            &f16::from_f32(1.5).to_le_bytes(),
        );
        assert_eq!(
            h.unwrap(),
            Tensor::from_shape(&[1], &[f16::from_f32(1.5)]).unwrap()
        );
    }

    #[test]
    fn npz_members_may_be_named_with_or_without_npy() {
        let mut npy = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&ndarray::arr1(&[7i64]), &mut npy).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = InputSpec {
            name: "x".into(),
            elem_type: DataType::Int64,
            shape: vec![crate::graph::Dim::Value(1)],
        };
        for member in ["x", "x.npy"] {
            let path = dir.path().join("a.npz");
            fs::write(&path, zip::one_member_archive(member, &npy, 0, false)).unwrap();
            let loaded = load_npz(&path, std::slice::from_ref(&spec)).unwrap();
            assert_eq!(loaded[0].value, Tensor::from_shape(&[1], &[7i64]).unwrap());
        }
    }

    #[test]
    fn truncated_and_oversized_npy_are_errors() {
        let mut file = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&ndarray::arr1(&[1f32, 2.0, 3.0]), &mut file).unwrap();
        assert_eq!(
            decode_npy(&file).unwrap(),
            Tensor::from_shape(&[3], &[1f32, 2.0, 3.0]).unwrap()
        );
        let err = decode_npy(&file[..file.len() - 1]).unwrap_err();
        assert!(err.contains("(12 bytes) but the file holds 11"), "{err}");
        file.push(0);
        assert!(decode_npy(&file).is_err());
        assert!(decode_npy(b"\x93NUMPY").is_err());
        // A header claiming terabytes is refused before anything is allocated.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000), }\n";
        let mut huge = b"\x93NUMPY\x01\x00".to_vec();
        huge.extend((dict.len() as u16).to_le_bytes());
        huge.extend(dict.as_bytes());
        huge.extend([0; 16]);
        let err = decode_npy(&huge).unwrap_err();
        assert!(err.contains("[1000000000000,1000]"), "{err}");
        assert!(decode_npy(b"").is_err());
    }
}
