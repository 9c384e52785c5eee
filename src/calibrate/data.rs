//! Calibration data sources: where the sample inputs come from, chosen by what the path holds.
//!
//! - a folder of `.npz` files, one sample each, arrays keyed by model input name;
//! - a folder of `.npy` files for a single-input model, one sample each;
//! - one `.npy` file whose first axis is the sample axis (read one row at a time);
//! - ONNX test-data folders, `test_data_set_*/input_*.pb`;
//! - a folder of PNG/JPEG images, preprocessed by an [`ImagePreprocess`].
//!
//! [`DataSource::open`] only lists the sample files: values are read by [`DataSource::load`], one
//! sample at a time, and checked against the model's inputs (element type, rank, static dims,
//! finite values) so that a bad file is reported by name before the calibration run starts.

mod check;
mod images;
mod npy;
mod proto;

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tract_onnx::prelude::Tensor;

pub use images::{ChannelOrder, ImagePreprocess, Layout, ResizeMode, CENTER_CROP_FRACTION};

use crate::error::{Error, Result};
use crate::graph::{tensor_type, Dim};
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::ModelProto;

/// One model input as data must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// The input's name in the graph.
    pub name: String,
    /// Its element type.
    pub elem_type: DataType,
    /// Its dimensions: a `Dim::Value` must match exactly, symbolic ones accept any size.
    pub shape: Vec<Dim>,
}

impl InputSpec {
    /// The graph inputs that are not initializers, in order. Error when an input is not a tensor
    /// or has no shape.
    pub fn of_model(model: &ModelProto) -> Result<Vec<InputSpec>> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| Error::Model("the model has no graph".into()))?;
        let mut constants: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        constants.extend(
            graph
                .sparse_initializer
                .iter()
                .filter_map(|s| s.values.as_ref().map(|v| v.name())),
        );
        graph
            .input
            .iter()
            .filter(|v| !constants.contains(v.name()))
            .map(|v| {
                let name = v.name();
                let t = v.r#type.as_ref().and_then(tensor_type).ok_or_else(|| {
                    Error::Model(format!(
                        "input '{name}' is not a tensor of a known element type"
                    ))
                })?;
                let shape = t.shape.ok_or_else(|| {
                    Error::Model(format!(
                        "input '{name}' has no shape: calibration data cannot be checked against it"
                    ))
                })?;
                Ok(InputSpec {
                    name: name.to_string(),
                    elem_type: t.elem_type,
                    shape,
                })
            })
            .collect()
    }

    /// The shape written like `[N,3,224,224]`.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(","))
    }
}

/// What a calibration data path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A folder of `.npz` files (or one `.npz` file), one sample each.
    Npz,
    /// A folder of `.npy` files for a single-input model, one sample each.
    Npy,
    /// One `.npy` file whose first axis is the sample axis.
    NpyStack,
    /// ONNX test data: `test_data_set_*/input_*.pb`, or one such folder.
    TestData,
    /// A folder of PNG/JPEG images (or one image).
    Images,
}

impl SourceKind {
    /// Every kind with its flag spelling, in the order `--help` should list them.
    pub const ALL: &'static [(SourceKind, &'static str)] = &[
        (SourceKind::Npz, "npz"),
        (SourceKind::Npy, "npy"),
        (SourceKind::NpyStack, "npy-stack"),
        (SourceKind::TestData, "test-data"),
        (SourceKind::Images, "images"),
    ];
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(k, _)| k == self)
            .map_or("?", |(_, n)| n);
        f.write_str(name)
    }
}

impl FromStr for SourceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_name("data kind", s, Self::ALL)
    }
}

/// Finds `s` (case-insensitively) in a table of spellings, or says which ones exist.
fn parse_name<T: Copy>(what: &str, s: &str, table: &[(T, &str)]) -> Result<T, String> {
    table
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(v, _)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(_, n)| *n).collect();
            format!(
                "unknown {what} '{s}' (expected one of: {})",
                names.join(", ")
            )
        })
}

/// One calibration sample: a value for every model input, in [`InputSpec`] order.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Where the sample comes from: the file, `file.npy[3]` for a row of a stacked `.npy`, or
    /// the `test_data_set_*` folder.
    pub label: String,
    /// One value per model input, in input order.
    pub inputs: Vec<Tensor>,
}

impl Sample {
    /// A sample of zeros for models run without data (dynamic and weight-only modes check
    /// that the written model runs): static dims as declared, symbolic ones 1.
    pub fn zeros(inputs: &[InputSpec]) -> Result<Sample> {
        let inputs = inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Value(v) if *v >= 0 => *v as usize,
                        _ => 1,
                    })
                    .collect();
                let dt = crate::engine::datum_type(spec.elem_type).ok_or_else(|| {
                    Error::Model(format!(
                        "input '{}': element type {:?} cannot be fed to tract",
                        spec.name, spec.elem_type
                    ))
                })?;
                let count = shape
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
                crate::memory::check_allocation(
                    count.unwrap_or(u64::MAX),
                    dt.size_of() as u64,
                    &format!("a zero sample for input '{}' of shape {shape:?}", spec.name),
                )
                .map_err(Error::Usage)?;
                Tensor::zero_dt(dt, &shape).map_err(|e| {
                    Error::Model(format!(
                        "input '{}': a zero tensor of shape {shape:?}: {e}",
                        spec.name
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sample {
            label: "a zero-filled input (no data given)".into(),
            inputs,
        })
    }
}

/// A listed, not yet loaded, set of calibration samples.
#[derive(Debug, Clone)]
pub struct DataSource {
    kind: SourceKind,
    root: PathBuf,
    inputs: Vec<InputSpec>,
    items: Items,
    /// The listed samples this source covers (all of them unless split).
    window: std::ops::Range<usize>,
}

#[derive(Debug, Clone)]
enum Items {
    /// One file (or test-data folder) per sample, sorted.
    Files(Vec<PathBuf>),
    /// Rows of one stacked `.npy`.
    Stack(npy::Stack),
    /// Image files, with the resolved preprocessing.
    Images(Vec<PathBuf>, images::Plan),
}

/// A value for one input together with the file it came from (for error messages).
struct Loaded {
    source: PathBuf,
    value: Tensor,
}

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];
/// Extensions (lower case) of every file a data source may read from a folder: what an output
/// inside a calibration folder may not be.
pub const SAMPLE_EXTENSIONS: &[&str] = &["npz", "npy", "pb", "png", "jpg", "jpeg"];

impl DataSource {
    /// Detects the kind from what `path` holds unless `kind` is given; lists the sample files
    /// sorted by name and keeps the first `limit`. Nothing is loaded yet: memory does not grow
    /// with the number of samples (a stacked `.npy` is read one row at a time).
    ///
    /// `image` is the preprocessing for image folders (the default one when `None`); other
    /// kinds ignore it.
    pub fn open(
        path: &Path,
        kind: Option<SourceKind>,
        inputs: &[InputSpec],
        image: Option<&ImagePreprocess>,
        limit: Option<usize>,
    ) -> Result<DataSource> {
        if inputs.is_empty() {
            return Err(data_error(
                path,
                None,
                "the model has no inputs to feed calibration data to",
            ));
        }
        let meta = crate::onnx::require_readable_file(path)?;
        let kind = match kind {
            Some(kind) => kind,
            None => detect(path, meta.is_dir())?,
        };
        let mut items = match kind {
            SourceKind::Npz => Items::Files(list_files(path, &["npz"], ".npz files")?),
            SourceKind::Npy => {
                require_one_input(path, inputs, "a folder of .npy files")?;
                Items::Files(list_files(path, &["npy"], ".npy files")?)
            }
            SourceKind::NpyStack => {
                require_one_input(path, inputs, "a stacked .npy file")?;
                if meta.is_dir() {
                    return Err(data_error(
                        path,
                        None,
                        "a stacked .npy source is one file whose first axis is the sample axis, not a folder",
                    ));
                }
                Items::Stack(npy::Stack::open(path, &inputs[0])?)
            }
            SourceKind::TestData => Items::Files(proto::list_sets(path)?),
            SourceKind::Images => {
                let default = ImagePreprocess::default();
                let plan = images::Plan::new(path, image.unwrap_or(&default), inputs)?;
                let files = list_files(path, IMAGE_EXTENSIONS, "image files (.png, .jpg, .jpeg)")?;
                Items::Images(files, plan)
            }
        };
        if let Some(limit) = limit {
            match &mut items {
                Items::Files(files) | Items::Images(files, _) => files.truncate(limit),
                Items::Stack(stack) => stack.truncate(limit),
            }
        }
        let listed = match &items {
            Items::Files(files) | Items::Images(files, _) => files.len(),
            Items::Stack(stack) => stack.rows(),
        };
        let source = DataSource {
            kind,
            root: path.to_path_buf(),
            inputs: inputs.to_vec(),
            items,
            window: 0..listed,
        };
        if source.is_empty() {
            let message = match limit {
                Some(0) => "a sample limit of 0 selects no samples".to_string(),
                _ => format!("the {kind} source holds no samples"),
            };
            return Err(data_error(path, None, message));
        }
        Ok(source)
    }

    /// The kind of source, as detected or given.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// Number of samples (after the limit).
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// The first `n` samples (all of them when there are fewer).
    pub fn head(&self, n: usize) -> DataSource {
        let mut head = self.clone();
        head.window = self.window.start..self.window.start + n.min(self.len());
        head
    }

    /// Splits off the last `held_out` samples, keeping at least one on each side: returns
    /// (the first part, the held-out part). A single sample cannot be split and is both.
    pub fn split_tail(&self, held_out: usize) -> (DataSource, DataSource) {
        let n = self.len();
        if n < 2 {
            return (self.clone(), self.clone());
        }
        let held_out = held_out.clamp(1, n - 1);
        let cut = self.window.start + n - held_out;
        let mut head = self.clone();
        head.window = self.window.start..cut;
        let mut tail = self.clone();
        tail.window = cut..self.window.end;
        (head, tail)
    }

    /// Whether there are no samples (never true for an opened source).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads sample `index` and checks it against the inputs (name, dtype, rank, static dims,
    /// finite values).
    pub fn load(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            return Err(data_error(
                &self.root,
                None,
                format!(
                    "sample index {index} is out of range ({} samples)",
                    self.len()
                ),
            ));
        }
        let index = self.window.start + index;
        let (label, loaded) = match &self.items {
            Items::Files(files) => {
                let file = &files[index];
                let loaded = match self.kind {
                    SourceKind::Npz => npy::load_npz(file, &self.inputs)?,
                    SourceKind::TestData => proto::load_set(file, &self.inputs)?,
                    _ => npy::load_npy(file, &self.inputs[0])?,
                };
                (file.display().to_string(), loaded)
            }
            Items::Stack(stack) => {
                let (label, value) = stack.load_row(index)?;
                let source = PathBuf::from(&label);
                (label, vec![Loaded { source, value }])
            }
            Items::Images(files, plan) => {
                let file = &files[index];
                let value = plan.load(file, &self.inputs[0])?;
                let source = file.clone();
                (file.display().to_string(), vec![Loaded { source, value }])
            }
        };
        let mut inputs = Vec::with_capacity(loaded.len());
        for (spec, Loaded { source, value }) in self.inputs.iter().zip(loaded) {
            check::value(&source, spec, &value)?;
            inputs.push(value);
        }
        Ok(Sample { label, inputs })
    }

    /// Loads and checks every sample once (the run calls this before starting), returning
    /// nothing but the first error.
    pub fn check_all(&self) -> Result<()> {
        (0..self.len()).try_for_each(|i| self.load(i).map(drop))
    }
}

/// An [`Error::Data`] about `path` (and `input`, when one is concerned).
fn data_error(path: impl Into<PathBuf>, input: Option<&str>, message: impl Into<String>) -> Error {
    Error::Data {
        path: path.into(),
        input: input.map(str::to_string),
        message: message.into(),
    }
}

/// The kind of data `path` holds, from its extension (a file) or its contents (a folder).
fn detect(path: &Path, is_dir: bool) -> Result<SourceKind> {
    if !is_dir {
        return match extension(path).as_deref() {
            Some("npy") => Ok(SourceKind::NpyStack),
            Some("npz") => Ok(SourceKind::Npz),
            Some(e) if IMAGE_EXTENSIONS.contains(&e) => Ok(SourceKind::Images),
            _ => Err(data_error(
                path,
                None,
                "cannot tell the kind of calibration data from the file name: expected a stacked \
                 .npy, an .npz, a .png/.jpg image or a folder (or give the kind)",
            )),
        };
    }
    if proto::is_test_data(path)? {
        return Ok(SourceKind::TestData);
    }
    let files = sorted_files(path)?;
    let count = |exts: &[&str]| {
        files
            .iter()
            .filter(|f| extension(f).is_some_and(|e| exts.contains(&e.as_str())))
            .count()
    };
    let found: Vec<(SourceKind, usize, &str)> = [
        (SourceKind::Npz, count(&["npz"]), ".npz"),
        (SourceKind::Npy, count(&["npy"]), ".npy"),
        (SourceKind::Images, count(IMAGE_EXTENSIONS), "image"),
    ]
    .into_iter()
    .filter(|(_, n, _)| *n > 0)
    .collect();
    match found.as_slice() {
        [(kind, _, _)] => Ok(*kind),
        [] => Err(data_error(
            path,
            None,
            "no calibration samples found: looked for *.npz, *.npy, *.png/*.jpg/*.jpeg files \
             and test_data_set_*/input_*.pb folders",
        )),
        several => {
            let counts: Vec<String> = several
                .iter()
                .map(|(_, n, what)| format!("{n} {what} files"))
                .collect();
            Err(data_error(
                path,
                None,
                format!(
                    "the folder mixes kinds of calibration data ({}); give the kind explicitly",
                    counts.join(", ")
                ),
            ))
        }
    }
}

/// The folder's regular, non-hidden files, sorted by name.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `path` itself when it is a file, else the folder's files with one of `extensions`, sorted.
fn list_files(path: &Path, extensions: &[&str], what: &str) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let files: Vec<PathBuf> = sorted_files(path)?
        .into_iter()
        .filter(|f| extension(f).is_some_and(|e| extensions.contains(&e.as_str())))
        .collect();
    if files.is_empty() {
        return Err(data_error(path, None, format!("no {what} in the folder")));
    }
    Ok(files)
}

/// The lower-cased extension.
fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

fn require_one_input(path: &Path, inputs: &[InputSpec], what: &str) -> Result<()> {
    if inputs.len() == 1 {
        return Ok(());
    }
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    Err(data_error(
        path,
        None,
        format!(
            "{what} holds one array per sample, but the model has {} inputs ({}); save each \
             sample as an .npz keyed by input name",
            inputs.len(),
            names.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_spellings_round_trip() {
        for &(kind, name) in SourceKind::ALL {
            assert_eq!(name.parse::<SourceKind>(), Ok(kind));
            assert_eq!(kind.to_string(), name);
        }
        let err = "npzz".parse::<SourceKind>().unwrap_err();
        assert!(err.contains("npy-stack") && err.contains("'npzz'"), "{err}");
    }

    #[test]
    fn data_source_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DataSource>();
    }
}
