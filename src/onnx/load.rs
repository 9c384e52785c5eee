use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use prost::Message;

use super::external::{ExternalFiles, ExternalSpan};
use super::pb::tensor_proto::DataType;
use super::pb::{ModelProto, TensorProto};
use super::walk::{any_tensor, for_each_tensor_mut, TensorSite};
use super::{dtype, tensor};
use crate::error::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Leave tensors whose data is in external files as references (checked, not read), so that
    /// memory stays about the size of the protobuf; read them one at a time with
    /// [`Model::tensor_bytes`] or [`Model::tensor_f32`]. Sparse tensors are always read: their
    /// values and indices are decoded together.
    pub lazy_external: bool,
}

/// A decoded model together with where it came from.
///
/// By default external data is read into the tensors at load time, so everything downstream
/// sees plain in-memory tensors; [`Model::load_lazy`] leaves it in its files instead. The paths
/// the data comes from are kept so that saving can refuse to overwrite them.
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
        Model::load_with(path, &LoadOptions::default())
    }

    /// Loads a model file but leaves external data in its files: every reference is checked
    /// (safe location inside the model's folder, an existing regular file, a range inside it of
    /// exactly the size the dims need) and nothing of it is read.
    pub fn load_lazy(path: impl AsRef<Path>) -> Result<Model> {
        Model::load_with(
            path,
            &LoadOptions {
                lazy_external: true,
            },
        )
    }

    /// Loads a model file as `options` say.
    pub fn load_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let meta = super::require_readable_file(path)?;
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
        let mut model = Model::from_proto_with(proto, path, options)?;
        model.path = Some(path.to_path_buf());
        Ok(model)
    }

    /// Wraps a decoded message as if it had been loaded from `path`: checks tensors and reads
    /// external data relative to `path`'s folder.
    pub fn from_proto(proto: ModelProto, path: &Path) -> Result<Model> {
        Model::from_proto_with(proto, path, &LoadOptions::default())
    }

    fn from_proto_with(mut proto: ModelProto, path: &Path, options: &LoadOptions) -> Result<Model> {
        let mut external = ExternalFiles::new(path);
        let mut n_external_tensors = 0;
        for_each_tensor_mut(&mut proto, &mut |t, name, site| -> Result<()> {
            if tensor::is_external(t) {
                n_external_tensors += 1;
                if options.lazy_external && site != TensorSite::SparseInitializer {
                    external.locate(t, name).map(drop)
                } else {
                    external.inline(t, name)
                }
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

    /// Whether any tensor still refers to external data (a model loaded with
    /// [`Model::load_lazy`]).
    pub fn has_external_refs(&self) -> bool {
        any_tensor(&self.proto, &mut |t| tensor::is_external(t))
    }

    /// Checks an external tensor's reference against the files next to this model.
    pub(crate) fn locate(
        &self,
        t: &TensorProto,
        name: &str,
    ) -> Result<(ExternalFiles, ExternalSpan)> {
        let path = self.path.as_deref().ok_or_else(|| Error::Tensor {
            path: PathBuf::from(self.display_path()),
            tensor: name.to_string(),
            message: "refers to external data but the model has no file to resolve it from".into(),
        })?;
        let mut files = ExternalFiles::new(path);
        let span = files.locate(t, name)?;
        Ok((files, span))
    }

    /// A tensor's data as the little-endian raw bytes its type and dims need.
    ///
    /// An inline tensor's `raw_data` is borrowed (typed fields are converted); an external one
    /// is checked again and exactly its byte range is read from its file, so that one tensor
    /// at a time is in memory. Errors name the model, the tensor and, for external data, the file.
    pub fn tensor_bytes<'t>(&self, t: &'t TensorProto) -> Result<Cow<'t, [u8]>> {
        let name = tensor_label(t);
        if tensor::is_external(t) {
            let (files, span) = self.locate(t, name)?;
            return Ok(Cow::Owned(files.read(&span, name)?));
        }
        let bad = |message: String| Error::Tensor {
            path: PathBuf::from(self.display_path()),
            tensor: name.to_string(),
            message,
        };
        tensor::check_inline_data(t).map_err(bad)?;
        tensor::raw_bytes(t).ok_or_else(|| {
            bad(format!(
                "{} data has no raw byte form",
                super::dtype::name_of_code(t.data_type.unwrap_or(0))
            ))
        })
    }

    /// A float tensor's values (float, double, float16, bfloat16) as `f32`, reading external
    /// data on demand like [`Model::tensor_bytes`] and decoding it with the decoder of
    /// [`tensor::to_f32`] as it is read.
    pub fn tensor_f32(&self, t: &TensorProto) -> Result<Vec<f32>> {
        let mut values = Vec::new();
        self.read_f32_into(t, &mut values)?;
        Ok(values)
    }

    /// [`Model::tensor_f32`] into `values`, whose allocation is reused: a float32 tensor in
    /// external data is read straight into it, with no intermediate copy.
    pub fn read_f32_into(&self, t: &TensorProto, values: &mut Vec<f32>) -> Result<()> {
        let bad = |message: String| Error::Tensor {
            path: PathBuf::from(self.display_path()),
            tensor: tensor_label(t).to_string(),
            message,
        };
        values.clear();
        if !tensor::is_external(t) {
            *values = tensor::to_f32(t).map_err(bad)?;
            return Ok(());
        }
        let dt = tensor::data_type(t).map_err(bad)?;
        if !matches!(
            dt,
            DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16
        ) {
            return Err(bad(format!("{} is not a float type", dtype::name(dt))));
        }
        let name = tensor_label(t);
        let (files, span) = self.locate(t, name)?;
        // Decoded chunk by chunk (whole elements each: the chunk size is a multiple of 8), so
        // that only the f32 values are ever whole in memory, not the raw bytes as well.
        let n = (span.len / dtype::raw_len(dt, 1).unwrap_or(1)) as usize;
        if dt == DataType::Float && cfg!(target_endian = "little") {
            if direct_io_pays(&span.file) && files.read_f32_direct(&span, name, values)? {
                return Ok(());
            }
            values.resize(n, 0.0);
            // SAFETY: the bytes of `n` initialised f32s; every bit pattern is a valid f32,
            // and on a little-endian machine the file's bytes are the values.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), n * 4) };
            return files.read_into(&span, name, bytes);
        }
        values.reserve(n);
        files.for_each_chunk(&span, name, &mut |chunk| {
            tensor::extend_f32(dt, chunk, values).map_err(bad)
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

/// Whether weights are better read past the page cache: when their file is over half the
/// machine's memory (`ONNX_PTQ_DIRECT_IO=1` or `0` decides instead), since it could not stay
/// cached anyway and caching it only makes the kernel evict page after page. A smaller file is
/// read through the cache, which serves a second run from memory.
fn direct_io_pays(file: &Path) -> bool {
    match std::env::var("ONNX_PTQ_DIRECT_IO").as_deref() {
        Ok("1") => return true,
        Ok("0") => return false,
        _ => {}
    }
    let (Ok(meta), Some(total)) = (std::fs::metadata(file), crate::memory::mem_total()) else {
        return false;
    };
    meta.len() > total / 2
}

/// A tensor's name for messages; tensors held in node attributes may have none.
pub(crate) fn tensor_label(t: &TensorProto) -> &str {
    if t.name().is_empty() {
        "<unnamed tensor>"
    } else {
        t.name()
    }
}
