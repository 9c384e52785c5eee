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
    /// An output of the run names a file the run reads.
    #[error("{role} {} is {input}", path.display())]
    DestinationIsInput {
        /// The output's role, such as `-o` or `--report`.
        role: String,
        /// The output path as given.
        path: PathBuf,
        /// What the run reads there, such as "the input model".
        input: String,
    },
    /// Two outputs of one run name the same file.
    #[error("{second} and {first} both name {}", path.display())]
    SameDestination {
        /// The role given first.
        first: String,
        /// The role given second.
        second: String,
        /// The path, as the second role gave it.
        path: PathBuf,
    },
    /// An output names something that is not a regular file (a device, a FIFO, a socket, a
    /// folder): replacing it would replace the node itself.
    #[error("{role} {}: is {kind}, not a regular file; refusing to replace it", path.display())]
    DestinationNotRegular {
        /// The output's role.
        role: String,
        /// The output path as given.
        path: PathBuf,
        /// What it is, such as "a character device".
        kind: &'static str,
    },
    /// An output names an existing file that has no write permission.
    #[error("{role} {}: the file is read-only; refusing to replace it", path.display())]
    DestinationReadOnly {
        /// The output's role.
        role: String,
        /// The output path as given.
        path: PathBuf,
    },
    /// An output's folder is missing, not a folder, or not writable.
    #[error("{role} {}: {problem}", path.display())]
    DestinationFolder {
        /// The output's role.
        role: String,
        /// The output path as given.
        path: PathBuf,
        /// What is wrong with the folder.
        problem: String,
    },
    /// The handler that removes temporary files on SIGINT/SIGTERM could not be installed.
    #[error("installing the signal handler: {0}")]
    Signal(std::io::Error),
    /// The model is structurally unusable for the requested operation.
    #[error("{0}")]
    Model(String),
    /// tract failed to load or run the model.
    #[error("tract: {0}")]
    Tract(String),
    /// A file to read is a device, FIFO or socket: reading it would block or never end.
    #[error("{}: is {kind}, not a regular file; refusing to read it", path.display())]
    NotRegularFile {
        /// The path as given.
        path: PathBuf,
        /// What it is, such as "a FIFO".
        kind: &'static str,
    },
    /// The input model fails the structural check: it is invalid, not our failure (exit 1).
    #[error("the model is invalid:\n  {}", findings.join("\n  "))]
    InvalidModel {
        /// Each error finding, naming the node or tensor.
        findings: Vec<String>,
    },
}

impl Error {
    /// Whether the error means "the model is invalid" (exit code 1) rather than "the run
    /// could not be done" (exit code 2).
    pub fn is_invalid_model(&self) -> bool {
        matches!(self, Error::InvalidModel { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
