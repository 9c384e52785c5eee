use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use prost::Message;

use super::external::ExternalFiles;
use super::pb::ModelProto;
use super::tensor;
use super::walk::for_each_tensor_mut;
use crate::error::{Error, Result};

/// A decoded model together with where it came from.
///
/// External data is read into the tensors at load time, so everything downstream sees plain
/// in-memory tensors; the paths it was read from are kept so that saving can refuse to
/// overwrite them.
#[derive(Debug, Clone)]
pub struct Model {
    /// The decoded protobuf message.
    pub proto: ModelProto,
    /// The file the model was loaded from, if any.
    pub path: Option<PathBuf>,
    /// Canonical paths of the model file and every external-data file it read.
    pub source_files: Vec<PathBuf>,
    /// Canonical paths of the external-data files, sorted.
    pub external_files: Vec<PathBuf>,
    /// Number of tensors whose data came from external files.
    pub n_external_tensors: usize,
}

/// Decodes a `ModelProto` from bytes without resolving external data.
///
/// `path` only labels errors. An empty input and a message without a graph are refused:
/// protobuf would happily decode both as an empty model.
pub fn decode_model(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    if bytes.is_empty() {
        return Err(Error::Model(format!(
            "{}: the file is empty, not an ONNX model",
            path.display()
        )));
    }
    let proto = ModelProto::decode(bytes).map_err(|cause| Error::Decode {
        path: path.to_path_buf(),
        cause,
    })?;
    if proto.graph.is_none() {
        return Err(Error::Model(format!(
            "{}: not an ONNX model: it decodes as a protobuf message with no graph",
            path.display()
        )));
    }
    Ok(proto)
}

impl Model {
    /// Loads a model file, reading external data from the model's folder and checking every
    /// tensor's data against its declared dims before anything large is allocated.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::Model(format!(
                "{}: is a directory, not an ONNX model file",
                path.display()
            )));
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let proto = if meta.len() == 0 {
            decode_model(&[], path)?
        } else {
            // SAFETY: read-only map of a file we only decode from; see ExternalFiles::inline.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            decode_model(&map, path)?
        };
        let mut model = Model::from_proto(proto, path)?;
        model.path = Some(path.to_path_buf());
        Ok(model)
    }

    /// Wraps a decoded message as if it had been loaded from `path`: checks tensors and reads
    /// external data relative to `path`'s folder.
    pub fn from_proto(mut proto: ModelProto, path: &Path) -> Result<Model> {
        let mut external = ExternalFiles::new(path);
        let mut n_external_tensors = 0;
        for_each_tensor_mut(&mut proto, &mut |t, name, _site| -> Result<()> {
            if tensor::is_external(t) {
                n_external_tensors += 1;
                external.inline(t, name)
            } else {
                tensor::check_inline_data(t).map_err(|message| Error::Tensor {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    message,
                })
            }
        })?;
        let mut external_files: Vec<PathBuf> = external.files().map(Path::to_path_buf).collect();
        external_files.sort();
        let mut source_files = external_files.clone();
        if let Ok(p) = path.canonicalize() {
            source_files.push(p);
        }
        source_files.sort();
        Ok(Model {
            proto,
            path: None,
            source_files,
            external_files,
            n_external_tensors,
        })
    }

    /// The file name used in messages.
    pub fn display_path(&self) -> String {
        self.path
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<in-memory model>".into())
    }
}
