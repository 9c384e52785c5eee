//! Streaming output of external data: tensors are appended to the output's side file one at a
//! time (a weight that is passed through unchanged is copied chunk by chunk), so that a model
//! larger than memory can be written while only its protobuf and one tensor are held.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::external::parse_ref;
use super::load::{tensor_label, Model};
use super::pb::tensor_proto::DataLocation;
use super::pb::{ModelProto, StringStringEntryProto, TensorProto};
use super::save::{refuse_sources, PendingFiles, SaveReport, AUTO_EXTERNAL_THRESHOLD};
use super::tensor;
use super::walk::{for_each_tensor_mut, TensorSite};
use crate::error::{Error, Result};

/// Offsets in the side file are aligned so that the data can be memory-mapped and read in place.
pub const EXTERNAL_ALIGN: u64 = 64;

/// Writes `<output>.data` next to an output model, one tensor at a time.
///
/// The data goes to a temporary file in the output's folder, staged in [`PendingFiles`] (mode
/// from the umask, removed on SIGINT/SIGTERM) and renamed into place together with the model
/// file by [`ExternalWriter::finish`]; dropping the writer (on an error, say) removes it, so a
/// failed run leaves nothing behind.
pub struct ExternalWriter {
    model_path: PathBuf,
    data_name: String,
    data_path: PathBuf,
    file: BufWriter<File>,
    pending: PendingFiles,
    len: u64,
    threshold: u64,
    /// (name, offset, length) of every tensor this writer stored, to tell its references from
    /// references to the input's data in [`ExternalWriter::finish`].
    written: HashSet<(String, u64, u64)>,
}

impl ExternalWriter {
    /// A writer for the model that will be saved at `path`, its data going to `<path>.data`.
    ///
    /// `sources` are the files the input was read from ([`Model::source_files`]): writing over
    /// any of them, model or data, is refused before anything is created.
    pub fn create(path: impl AsRef<Path>, sources: &[PathBuf]) -> Result<ExternalWriter> {
        let path = path.as_ref();
        refuse_sources(path, sources)?;
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::Model(format!("{}: not a file path", path.display())))?;
        let data_name = format!("{}.data", file_name.to_string_lossy());
        let data_path = path.with_file_name(&data_name);
        refuse_sources(&data_path, sources)?;
        let mut pending = PendingFiles::new();
        let file = pending.add_streamed(&data_path)?;
        Ok(ExternalWriter {
            model_path: path.to_path_buf(),
            data_name,
            data_path,
            file: BufWriter::with_capacity(1 << 20, file),
            pending,
            len: 0,
            threshold: AUTO_EXTERNAL_THRESHOLD,
            written: HashSet::new(),
        })
    }

    /// Tensors of fewer bytes than this stay inline in the model file (1024 unless set).
    pub fn with_threshold(mut self, bytes: u64) -> ExternalWriter {
        self.threshold = bytes;
        self
    }

    /// Where the data file will be once the model is saved.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// Bytes written to the data file so far.
    pub fn data_len(&self) -> u64 {
        self.len
    }

    /// Number of tensors stored in the data file so far.
    pub fn n_tensors(&self) -> usize {
        self.written.len()
    }

    fn error(&self, t: &TensorProto, message: String) -> Error {
        Error::Tensor {
            path: self.model_path.clone(),
            tensor: tensor_label(t).to_string(),
            message,
        }
    }

    /// Stores `bytes` as `t`'s data: at the next 64-byte aligned offset of the data file, `t`
    /// becoming a reference to it (its data fields cleared); or inline in `raw_data` when it is
    /// below the threshold. `bytes` must be exactly what `t`'s type and dims need.
    pub fn append(&mut self, t: &mut TensorProto, bytes: &[u8]) -> Result<()> {
        let need = tensor::expected_raw_len(t)
            .map_err(|m| self.error(t, m))?
            .ok_or_else(|| self.error(t, "string tensors cannot be stored as raw bytes".into()))?;
        if bytes.len() as u64 != need {
            return Err(self.error(
                t,
                format!("{} bytes given, dims {:?} need {need}", bytes.len(), t.dims),
            ));
        }
        if need < self.threshold {
            tensor::clear_data(t);
            t.external_data.clear();
            t.data_location = None;
            t.raw_data = Some(bytes.to_vec());
            return Ok(());
        }
        let offset = self.start_tensor()?;
        self.write(bytes)?;
        self.point(t, offset, need);
        Ok(())
    }

    /// Copies `t` from `source` unchanged: an external tensor of the source is streamed into
    /// the data file in chunks (never whole in memory), or read inline when below the
    /// threshold; an inline tensor is stored like [`ExternalWriter::append`] would. Tensors
    /// with no raw byte form (strings) and tensors this writer already stored are left as they
    /// are.
    pub fn pass_through(&mut self, source: &Model, t: &mut TensorProto) -> Result<()> {
        if self.wrote(t) {
            return Ok(());
        }
        if !tensor::is_external(t) {
            return self.pass_through_inline(t);
        }
        let name = tensor_label(t).to_string();
        let (files, span) = source.locate(t, &name)?;
        if span.len < self.threshold {
            t.raw_data = Some(files.read(&span, &name)?);
            t.external_data.clear();
            t.data_location = None;
            return Ok(());
        }
        let offset = self.start_tensor()?;
        files.for_each_chunk(&span, &name, &mut |chunk| self.write(chunk))?;
        self.point(t, offset, span.len);
        Ok(())
    }

    /// Pads the data file to the alignment; returns the offset the next tensor starts at.
    fn start_tensor(&mut self) -> Result<u64> {
        let pad = (EXTERNAL_ALIGN - self.len % EXTERNAL_ALIGN) % EXTERNAL_ALIGN;
        self.write(&[0; EXTERNAL_ALIGN as usize][..pad as usize])?;
        Ok(self.len)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.data_path, e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Turns `t` into a reference to `len` bytes at `offset` of the data file.
    fn point(&mut self, t: &mut TensorProto, offset: u64, len: u64) {
        tensor::clear_data(t);
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = [
            ("location", self.data_name.clone()),
            ("offset", offset.to_string()),
            ("length", len.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        })
        .collect();
        self.written.insert((t.name().to_string(), offset, len));
    }

    /// Whether `t` refers to data this writer stored.
    fn wrote(&self, t: &TensorProto) -> bool {
        parse_ref(t).is_ok_and(|r| {
            r.location == self.data_name
                && r.length.is_some_and(|len| {
                    self.written
                        .contains(&(t.name().to_string(), r.offset, len))
                })
        })
    }

    /// Completes the output: every tensor of `proto` not yet stored is handled like
    /// [`ExternalWriter::pass_through`] (references to the input's data are copied from
    /// `source`, inline tensors at or above the threshold move to the data file), then the
    /// data file is synced and both files are renamed into place together.
    ///
    /// A model left with no external tensor gets no data file. Sparse tensors stay inline.
    pub fn finish(self, proto: ModelProto, source: Option<&Model>) -> Result<SaveReport> {
        let (report, pending) = self.finish_staged(proto, source)?;
        pending.commit()?;
        Ok(report)
    }

    /// [`ExternalWriter::finish`] without the renames: the model and data files are staged in
    /// the returned [`PendingFiles`], for the caller to commit with its other outputs.
    pub fn finish_staged(
        mut self,
        mut proto: ModelProto,
        source: Option<&Model>,
    ) -> Result<(SaveReport, PendingFiles)> {
        for_each_tensor_mut(&mut proto, &mut |t, _name, site| -> Result<()> {
            if site == TensorSite::SparseInitializer || self.wrote(t) {
                return Ok(());
            }
            match source {
                Some(source) => self.pass_through(source, t),
                None if tensor::is_external(t) => Err(self.error(
                    t,
                    "still refers to the input's external data, and no source model was given to copy it from".into(),
                )),
                None => self.pass_through_inline(t),
            }
        })?;
        let bytes = proto.encode_to_vec();
        let n_external_tensors = self.written.len();
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(&self.data_path, e.into_error()))?;
        let mut pending = self.pending;
        let external_file = if n_external_tensors > 0 {
            file.sync_all().map_err(|e| Error::io(&self.data_path, e))?;
            Some(self.data_path)
        } else {
            drop(file);
            pending.discard(&self.data_path);
            None
        };
        pending.add(&self.model_path, &bytes)?;
        Ok((
            SaveReport {
                path: self.model_path,
                external_file,
                n_external_tensors,
                model_bytes: bytes.len() as u64,
            },
            pending,
        ))
    }

    /// [`ExternalWriter::pass_through`] for a tensor known to be inline (needs no source).
    fn pass_through_inline(&mut self, t: &mut TensorProto) -> Result<()> {
        debug_assert!(!tensor::is_external(t));
        let stored = match tensor::raw_bytes(t) {
            Some(bytes) if bytes.len() as u64 >= self.threshold => {
                let offset = self.start_tensor()?;
                self.write(&bytes)?;
                Some((offset, bytes.len() as u64))
            }
            _ => None,
        };
        if let Some((offset, len)) = stored {
            self.point(t, offset, len);
        }
        Ok(())
    }
}
