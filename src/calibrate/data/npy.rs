//! NumPy calibration data: `.npy` arrays (one per sample, or stacked along the first axis) and
//! `.npz` archives keyed by input name. Files are parsed by [`crate::numpy`] (which checks sizes
//! against the file before allocating); the values become tract tensors here.

use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tract_onnx::prelude::Tensor;

use super::check::{self, shape_string};
use super::{data_error, InputSpec, Loaded};
use crate::engine;
use crate::error::{Error, Result};
use crate::numpy::{self, NpyArray, NpyHeader, Npz, Values};
use crate::onnx::pb::tensor_proto::DataType;

/// Decodes `bytes` (exactly the data of `shape`) into a tensor.
pub(super) fn decode(
    dt: DataType,
    big_endian: bool,
    shape: &[usize],
    fortran: bool,
    bytes: &[u8],
) -> Result<Tensor, String> {
    numpy::decode(dt, big_endian, shape, fortran, bytes).map(tensor)
}

fn tensor(values: Values) -> Tensor {
    match values {
        Values::Float(a) => a.into(),
        Values::Double(a) => a.into(),
        Values::Float16(a) => a.into(),
        Values::Int8(a) => a.into(),
        Values::Int16(a) => a.into(),
        Values::Int32(a) => a.into(),
        Values::Int64(a) => a.into(),
        Values::Uint8(a) => a.into(),
        Values::Uint16(a) => a.into(),
        Values::Uint32(a) => a.into(),
        Values::Uint64(a) => a.into(),
        Values::Bool(a) => a.into(),
    }
}

/// Decodes a whole `.npy` held in memory, refusing truncated data and trailing bytes.
fn decode_npy(bytes: &[u8]) -> Result<Tensor, String> {
    NpyArray::parse(bytes)?.values().map(tensor)
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
    let mut npz = Npz::open(path)?;
    let keys: Vec<String> = npz
        .names()
        .iter()
        .map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string())
        .collect();
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
            let array = npz
                .read(i)
                .map_err(|m| data_error(path, Some(&spec.name), m))?;
            let value = array.values().map(tensor).map_err(|m| {
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
        let (header, data_offset) = NpyHeader::read(&mut reader, len).map_err(fail)?;
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
    use tract_onnx::prelude::f16;

    #[test]
    fn values_become_tensors_of_the_same_type_shape_and_layout() {
        let bytes: Vec<u8> = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        // Fortran order stores columns first: [[1,3,5],[2,4,6]].
        let f = decode(DataType::Float, false, &[2, 3], true, &bytes).unwrap();
        let expected = Tensor::from_shape(&[2, 3], &[1f32, 3.0, 5.0, 2.0, 4.0, 6.0]).unwrap();
        assert_eq!(f, expected);
        let h = decode(DataType::Float16, true, &[1], false, &[0x3e, 0x00]);
        assert_eq!(
            h.unwrap(),
            Tensor::from_shape(&[1], &[f16::from_f32(1.5)]).unwrap()
        );
        let b = decode(DataType::Bool, false, &[2], false, &[0, 7]).unwrap();
        assert_eq!(b, Tensor::from_shape(&[2], &[false, true]).unwrap());
        let mut npy = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&ndarray::arr1(&[1u16, 2]), &mut npy).unwrap();
        assert_eq!(
            decode_npy(&npy).unwrap(),
            Tensor::from_shape(&[2], &[1u16, 2]).unwrap()
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
            fs::write(&path, numpy::one_member_archive(member, &npy, false)).unwrap();
            let loaded = load_npz(&path, std::slice::from_ref(&spec)).unwrap();
            assert_eq!(loaded[0].value, Tensor::from_shape(&[1], &[7i64]).unwrap());
        }
    }
}
