use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::load::Model;
use super::pb::tensor_proto::DataLocation;
use super::pb::{ModelProto, StringStringEntryProto, TensorProto};
use super::walk::{for_each_tensor_mut, TensorSite};
use super::{dtype, tensor};
use crate::error::{Error, Result};

/// Protobuf refuses messages of 2 GiB and more; stay clear of the limit.
pub const PROTOBUF_LIMIT: u64 = (2 << 30) - (64 << 20);
/// Tensor size from which weights go to the side file when external data is switched on
/// automatically because the model is too large for one protobuf.
const AUTO_EXTERNAL_THRESHOLD: u64 = 1024;
/// Offsets in the side file are aligned so that the data can be memory-mapped and read in place.
const EXTERNAL_ALIGN: u64 = 64;

/// How to write a model.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Move tensors of at least this many bytes into one side file next to the model. `None`
    /// keeps everything inline unless the model would exceed `size_limit`.
    pub external_threshold: Option<u64>,
    /// Encoded size from which external data is switched on automatically; defaults to
    /// [`PROTOBUF_LIMIT`], just under what protobuf readers accept.
    pub size_limit: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            external_threshold: None,
            size_limit: PROTOBUF_LIMIT,
        }
    }
}

/// What `Model::save` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    /// The model file.
    pub path: PathBuf,
    /// The external-data side file, when one was written.
    pub external_file: Option<PathBuf>,
    /// Number of tensors moved to the side file.
    pub n_external_tensors: usize,
    /// Size of the model file in bytes.
    pub model_bytes: u64,
}

/// Encodes a message to bytes.
pub fn encode_model(proto: &ModelProto) -> Vec<u8> {
    proto.encode_to_vec()
}

impl Model {
    /// Writes the model atomically to `path` (temporary file in the same folder, flushed, then
    /// renamed), refusing to replace the file it was loaded from or any of its data files.
    pub fn save(&self, path: impl AsRef<Path>, options: &SaveOptions) -> Result<SaveReport> {
        let path = path.as_ref();
        refuse_sources(path, &self.source_files)?;
        let threshold = options.external_threshold.or_else(|| {
            (self.proto.encoded_len() as u64 >= options.size_limit)
                .then_some(AUTO_EXTERNAL_THRESHOLD)
        });
        let Some(threshold) = threshold else {
            let bytes = encode_model(&self.proto);
            write_atomic(path, &bytes)?;
            return Ok(SaveReport {
                path: path.to_path_buf(),
                external_file: None,
                n_external_tensors: 0,
                model_bytes: bytes.len() as u64,
            });
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Model(format!("{}: not a file path", path.display())))?;
        let data_name = format!("{}.data", file_name.to_string_lossy());
        let data_path = path.with_file_name(&data_name);
        refuse_sources(&data_path, &self.source_files)?;
        let mut proto = self.proto.clone();
        let mut side = Vec::new();
        let mut n_external_tensors = 0;
        for_each_tensor_mut(&mut proto, &mut |t, _name, site| -> Result<()> {
            if site == TensorSite::SparseInitializer {
                return Ok(());
            }
            let Some(raw) = to_raw(t) else { return Ok(()) };
            if (raw.len() as u64) < threshold {
                return Ok(());
            }
            while !(side.len() as u64).is_multiple_of(EXTERNAL_ALIGN) {
                side.push(0);
            }
            let offset = side.len();
            side.extend_from_slice(&raw);
            clear_data(t);
            t.data_location = Some(DataLocation::External as i32);
            t.external_data = [
                ("location", data_name.clone()),
                ("offset", offset.to_string()),
                ("length", raw.len().to_string()),
            ]
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            })
            .collect();
            n_external_tensors += 1;
            Ok(())
        })?;
        let bytes = encode_model(&proto);
        if n_external_tensors > 0 {
            write_atomic(&data_path, &side)?;
        }
        write_atomic(path, &bytes)?;
        Ok(SaveReport {
            path: path.to_path_buf(),
            external_file: (n_external_tensors > 0).then_some(data_path),
            n_external_tensors,
            model_bytes: bytes.len() as u64,
        })
    }
}

/// The tensor's data as little-endian raw bytes, `None` for strings and unknown types.
fn to_raw(t: &TensorProto) -> Option<Vec<u8>> {
    if let Some(raw) = &t.raw_data {
        return Some(raw.clone());
    }
    let dt = tensor::data_type(t).ok()?;
    use super::pb::tensor_proto::DataType::*;
    let n = tensor::element_count(&t.dims).ok()? as usize;
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
        // 2-bit types have no agreed typed-field packing to convert from: leave them inline.
        Uint2 | Int2 | String | Undefined => return None,
    };
    let need = dtype::raw_len(dt, n as u64)? as usize;
    (bytes.len() >= need).then(|| bytes[..need].to_vec())
}

fn clear_data(t: &mut TensorProto) {
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
}

/// Refuses `dest` when it is (or links to) one of the files the model was read from.
fn refuse_sources(dest: &Path, sources: &[PathBuf]) -> Result<()> {
    let canonical = match dest.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            // Not there yet: compare through the canonical folder.
            let parent = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match (parent.canonicalize(), dest.file_name()) {
                (Ok(dir), Some(name)) => dir.join(name),
                _ => return Ok(()), // the write itself will report the missing folder
            }
        }
    };
    if sources
        .iter()
        .any(|s| *s == canonical || same_file(s, &canonical))
    {
        return Err(Error::WouldOverwriteInput(dest.to_path_buf()));
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`, so a
/// reader never sees a half-written file and a failure leaves any previous file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".onnx-ptq-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
