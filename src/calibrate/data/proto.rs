//! ONNX test data: `test_data_set_N/input_M.pb`, each file one serialized `TensorProto`.

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::prelude::{f16, Datum, Tensor};

use super::{check, data_error, npy, InputSpec, Loaded};
use crate::error::{Error, Result};
use crate::onnx::dtype;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::TensorProto;
use crate::onnx::tensor;

const SET_PREFIX: &str = "test_data_set_";

/// The number in `{prefix}N{suffix}`, for numeric sorting.
fn number(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Entries of `dir` whose name passes `keep`, sorted by the number after `prefix` (names
/// without one last, by name).
fn numbered(
    dir: &Path,
    prefix: &str,
    suffix: &str,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(suffix) && keep(&entry.path()) {
            found.push((number(&name, prefix, suffix).unwrap_or(u64::MAX), name));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, name)| dir.join(name)).collect())
}

fn sets(dir: &Path) -> Result<Vec<PathBuf>> {
    numbered(dir, SET_PREFIX, "", Path::is_dir)
}

fn input_files(dir: &Path) -> Result<Vec<PathBuf>> {
    numbered(dir, "input_", ".pb", Path::is_file)
}

/// Whether `dir` holds `test_data_set_*` folders or is one (holds `input_*.pb` files).
pub(super) fn is_test_data(dir: &Path) -> Result<bool> {
    Ok(!sets(dir)?.is_empty() || !input_files(dir)?.is_empty())
}

/// The sample folders: the `test_data_set_*` subfolders in numeric order, or `dir` itself
/// when it holds `input_*.pb` files.
pub(super) fn list_sets(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(data_error(dir, None, "ONNX test data is a folder"));
    }
    let found = sets(dir)?;
    if !found.is_empty() {
        return Ok(found);
    }
    if !input_files(dir)?.is_empty() {
        return Ok(vec![dir.to_path_buf()]);
    }
    Err(data_error(
        dir,
        None,
        "no test_data_set_* folders or input_*.pb files in the folder",
    ))
}

/// One sample from a test-data folder. Tensors are matched to inputs by name when every file
/// names a distinct model input, else by order (`input_0.pb` feeds the first input).
pub(super) fn load_set(dir: &Path, inputs: &[InputSpec]) -> Result<Vec<Loaded>> {
    let files = input_files(dir)?;
    if files.is_empty() {
        return Err(data_error(dir, None, "no input_*.pb files in the folder"));
    }
    let mut protos = Vec::with_capacity(files.len());
    for file in &files {
        let bytes = fs::read(file).map_err(|e| Error::io(file, e))?;
        let proto = TensorProto::decode(bytes.as_slice())
            .map_err(|e| data_error(file, None, format!("not a valid TensorProto: {e}")))?;
        protos.push(proto);
    }
    let names: Vec<&str> = protos.iter().map(|t| t.name()).collect();
    let by_name = names
        .iter()
        .enumerate()
        .all(|(i, n)| inputs.iter().any(|s| s.name == *n) && !names[..i].contains(n));
    let mut loaded = Vec::with_capacity(inputs.len());
    for (k, spec) in inputs.iter().enumerate() {
        let index = if by_name {
            names.iter().position(|n| *n == spec.name)
        } else {
            Some(k).filter(|&k| k < protos.len())
        };
        let Some(index) = index else {
            let held: Vec<String> = files
                .iter()
                .zip(&names)
                .map(|(f, n)| describe(f, n))
                .collect();
            return Err(data_error(
                dir,
                Some(&spec.name),
                format!(
                    "no input_*.pb file for this input (the folder holds {})",
                    held.join(", ")
                ),
            ));
        };
        let file = &files[index];
        let value =
            tensor_from_proto(&protos[index]).map_err(|m| data_error(file, Some(&spec.name), m))?;
        loaded.push(Loaded {
            source: file.clone(),
            value,
        });
    }
    if !by_name && protos.len() > inputs.len() {
        return Err(data_error(
            dir,
            None,
            format!(
                "{} input_*.pb files for {} model inputs; the extra ones start at {}",
                protos.len(),
                inputs.len(),
                files[inputs.len()].display()
            ),
        ));
    }
    Ok(loaded)
}

fn describe(file: &Path, name: &str) -> String {
    let file = file.file_name().unwrap_or_default().to_string_lossy();
    if name.is_empty() {
        file.into_owned()
    } else {
        format!("{file} ('{name}')")
    }
}

/// The value of an inline `TensorProto` of a numeric or bool type.
pub(super) fn tensor_from_proto(t: &TensorProto) -> Result<Tensor, String> {
    if tensor::is_external(t) {
        return Err("the tensor's data is in an external file; test data must be inline".into());
    }
    let dt = tensor::data_type(t)?;
    tensor::check_inline_data(t)?;
    let n = usize::try_from(tensor::element_count(&t.dims)?).map_err(|e| e.to_string())?;
    // element_count refused negative dims.
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if let Some(raw) = &t.raw_data {
        let need = dtype::raw_len(dt, n as u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| unsupported(dt))?;
        let bytes = raw.get(..need).ok_or("raw_data is too short")?;
        return npy::decode(dt, false, &shape, false, bytes);
    }
    use DataType::*;
    match dt {
        Float => from_values(&shape, take(&t.float_data, n)?),
        Double => from_values(&shape, take(&t.double_data, n)?),
        Int64 => from_values(&shape, take(&t.int64_data, n)?),
        Int32 => from_values(&shape, take(&t.int32_data, n)?),
        Uint64 => from_values(&shape, take(&t.uint64_data, n)?),
        Int8 => narrow::<i32, i8>(&shape, &t.int32_data, n),
        Int16 => narrow::<i32, i16>(&shape, &t.int32_data, n),
        Uint8 => narrow::<i32, u8>(&shape, &t.int32_data, n),
        Uint16 => narrow::<i32, u16>(&shape, &t.int32_data, n),
        Uint32 => narrow::<u64, u32>(&shape, &t.uint64_data, n),
        Bool => {
            let values: Vec<bool> = take(&t.int32_data, n)?.iter().map(|&x| x != 0).collect();
            from_values(&shape, &values)
        }
        Float16 => {
            // float16 values sit in int32_data as their bit patterns.
            let bits = narrow::<i32, u16>(&shape, &t.int32_data, n)?;
            let view = bits
                .to_plain_array_view::<u16>()
                .map_err(|e| e.to_string())?;
            let values: Vec<f16> = view.iter().map(|&b| f16::from_bits(b)).collect();
            from_values(&shape, &values)
        }
        other => Err(unsupported(other)),
    }
}

fn take<T: Copy>(v: &[T], n: usize) -> Result<&[T], String> {
    v.get(..n)
        .ok_or_else(|| "the typed data is too short".to_string())
}
fn narrow<S: Copy + std::fmt::Display, T: Datum + Copy + TryFrom<S>>(
    shape: &[usize],
    v: &[S],
    n: usize,
) -> Result<Tensor, String> {
    let values = take(v, n)?
        .iter()
        .map(|&x| {
            T::try_from(x)
                .map_err(|_| format!("value {x} is out of range for {:?}", T::datum_type()))
        })
        .collect::<Result<Vec<T>, String>>()?;
    from_values(shape, &values)
}

fn from_values<T: Datum + Copy>(shape: &[usize], values: &[T]) -> Result<Tensor, String> {
    Tensor::from_shape(shape, values).map_err(|e| e.to_string())
}

fn unsupported(dt: DataType) -> String {
    format!(
        "element type {} cannot be read as calibration data",
        check::dtype_name(dt)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(dt: DataType, dims: &[i64]) -> TensorProto {
        TensorProto {
            data_type: Some(dt as i32),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn typed_fields_and_raw_data_decode_alike() {
        let typed = TensorProto {
            int32_data: vec![1, -2, 3, 4],
            ..proto(DataType::Int8, &[2, 2])
        };
        let raw = TensorProto {
            raw_data: Some(vec![1, 0xfe, 3, 4]),
            ..proto(DataType::Int8, &[2, 2])
        };
        let expected = Tensor::from_shape(&[2, 2], &[1i8, -2, 3, 4]).unwrap();
        assert_eq!(tensor_from_proto(&typed).unwrap(), expected);
        assert_eq!(tensor_from_proto(&raw).unwrap(), expected);

        let half = TensorProto {
            int32_data: vec![i32::from(f16::from_f32(-0.5).to_bits())],
            ..proto(DataType::Float16, &[1])
        };
        let expected = Tensor::from_shape(&[1], &[f16::from_f32(-0.5)]).unwrap();
        assert_eq!(tensor_from_proto(&half).unwrap(), expected);
    }

    #[test]
    fn bad_tensors_are_errors() {
        let cases = [
            (
                TensorProto {
                    int32_data: vec![300],
                    ..proto(DataType::Int8, &[1])
                },
                "out of range",
            ),
            (
                TensorProto {
                    float_data: vec![1.0],
                    ..proto(DataType::Float, &[2])
                },
                "claim 2 elements",
            ),
            (
                TensorProto {
                    raw_data: Some(vec![0; 3]),
                    ..proto(DataType::Float, &[1])
                },
                "claim 4 bytes",
            ),
            (
                TensorProto {
                    string_data: vec![b"a".to_vec()],
                    ..proto(DataType::String, &[1])
                },
                "cannot be read",
            ),
            (proto(DataType::Float, &[-1]), "negative"),
        ];
        for (t, expected) in cases {
            let err = tensor_from_proto(&t).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn inputs_sort_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["input_10.pb", "input_9.pb", "input_0.pb", "output_0.pb"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = input_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["input_0.pb", "input_9.pb", "input_10.pb"]);
    }
}
