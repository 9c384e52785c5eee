use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::load::Model;
use super::pb::ModelProto;
use super::writer::ExternalWriter;
use crate::error::{Error, Result};

/// Protobuf refuses messages of 2 GiB and more; stay clear of the limit.
pub const PROTOBUF_LIMIT: u64 = (2 << 30) - (64 << 20);
/// Tensor size from which weights go to the side file when external data is switched on
/// automatically because the model is too large for one protobuf.
pub(crate) const AUTO_EXTERNAL_THRESHOLD: u64 = 1024;

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
    ///
    /// With external data (asked for, needed for size, or because the model was loaded lazily)
    /// the tensors are streamed to `<path>.data` through an [`ExternalWriter`].
    pub fn save(&self, path: impl AsRef<Path>, options: &SaveOptions) -> Result<SaveReport> {
        let path = path.as_ref();
        refuse_sources(path, &self.source_files)?;
        // A model whose tensors are still in the input's files (a lazy load) always gets a side
        // file of its own: its references cannot be kept, they are relative to the input.
        let threshold = options.external_threshold.or_else(|| {
            (self.has_external_refs() || self.proto.encoded_len() as u64 >= options.size_limit)
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
        // Streams through the writer: tensors still in the input's external files are copied
        // chunk by chunk, in-memory ones are written straight from their buffers.
        ExternalWriter::create(path, &self.source_files)?
            .with_threshold(threshold)
            .finish(self.proto.clone(), Some(self))
    }
}

/// Refuses `dest` when it is (or links to) one of the files the model was read from.
pub(crate) fn refuse_sources(dest: &Path, sources: &[PathBuf]) -> Result<()> {
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
