//! The library's error type. Every variant names the file, tensor or node it is about so that
//! the message alone tells the user what to fix.

use std::path::PathBuf;

/// Errors returned by the onnx-ptq library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file that could not be read or written.
        path: PathBuf,
        /// The underlying I/O error.
        cause: std::io::Error,
    },
    /// The bytes are not a decodable ONNX `ModelProto`.
    #[error("{}: not a valid ONNX model: {cause}", path.display())]
    Decode {
        /// The model file.
        path: PathBuf,
        /// What protobuf decoding reported.
        cause: prost::DecodeError,
    },
    /// A tensor's data is inconsistent with its declared type and shape, or cannot be read.
    #[error("{}: tensor '{tensor}': {message}", path.display())]
    Tensor {
        /// The model file the tensor belongs to.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// An external-data location that would read outside the model's folder.
    #[error("{}: tensor '{tensor}': unsafe external data location '{location}': {reason}", path.display())]
    UnsafeExternalData {
        /// The model file.
        path: PathBuf,
        /// The tensor that refers to the location.
        tensor: String,
        /// The location as written in the model.
        location: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A calibration sample (or data folder) is unusable.
    #[error("{}: {}{message}", path.display(), input.as_ref().map(|i| format!("input '{i}': ")).unwrap_or_default())]
    Data {
        /// The sample file, or the data folder when no file is at fault.
        path: PathBuf,
        /// The model input concerned, if one is.
        input: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Saving would replace the model (or one of its data files) that was loaded.
    #[error("refusing to overwrite the input file {}", .0.display())]
    WouldOverwriteInput(PathBuf),
    /// The settings asked for something this run cannot do (a mode without the data it
    /// needs, for instance).
    #[error("{0}")]
    Usage(String),
    /// The model is structurally unusable for the requested operation.
    #[error("{0}")]
    Model(String),
    /// tract failed to load or run the model.
    #[error("tract: {0}")]
    Tract(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
