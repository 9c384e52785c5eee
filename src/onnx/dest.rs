//! Where a run writes, checked before the run starts.
//!
//! An [`OutputPlan`] collects what a run reads (the models, their external data, the calibration
//! files, caches and settings files) and what it writes, each output with its role (`-o`,
//! `--report`, ...). [`OutputPlan::check`] refuses, naming the roles:
//!
//! - an output that is one of the inputs (same canonical path, or the same device and inode, so
//!   symlinks and hard links count), and two outputs that are the same file;
//! - an output that exists but is not a regular file (a device such as `/dev/null`, a FIFO, a
//!   socket, a folder) or has no write permission bit (checked on the mode, so that running as
//!   root does not make a read-only file fair game);
//! - an output whose folder is missing, is not a folder, or is not writable.
//!
//! [`check_destination`] is the per-file part; the atomic writer in `save.rs` applies it to every
//! file it writes, so library callers get the same refusals.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How deep a folder given as an input is searched for the files the run may read.
const INPUT_FOLDER_DEPTH: usize = 4;

/// A file's identity on disk: device and inode.
type FileId = (u64, u64);

/// A destination that passed [`check_destination`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The canonical path: the file's own when it exists, else the canonical folder joined with
    /// the file name.
    pub canonical: PathBuf,
    /// Permission bits of the existing file, `None` when there is none yet.
    pub existing_mode: Option<u32>,
    id: Option<FileId>,
}

impl Destination {
    fn same_as(&self, canonical: &Path, id: Option<FileId>) -> bool {
        self.canonical == canonical || (self.id.is_some() && self.id == id)
    }
}

#[derive(Debug, Clone)]
struct Input {
    what: String,
    canonical: PathBuf,
    id: Option<FileId>,
}

#[derive(Debug, Clone)]
struct Output {
    role: String,
    path: PathBuf,
    /// Written only in some runs (the external-data side file): checked against the inputs and
    /// the other outputs, but its own state only when it is actually written.
    conditional: bool,
}

/// The inputs and outputs of one run, checked together before the run starts.
#[derive(Debug, Clone, Default)]
pub struct OutputPlan {
    inputs: Vec<Input>,
    outputs: Vec<Output>,
}

impl OutputPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// A file the run reads, described by a noun phrase for messages ("the input model"). A
    /// folder stands for every file in it and its subfolders (a few levels deep), described as
    /// "a file of WHAT (FOLDER)". A path that does not exist is kept by name.
    pub fn input(&mut self, what: &str, path: &Path) -> &mut Self {
        self.input_filtered(what, path, None)
    }

    /// Like [`OutputPlan::input`], but a folder stands only for the files whose lower-cased
    /// extension is one of `extensions`: a folder of samples, where other files are not read
    /// (`calibrate::data::SAMPLE_EXTENSIONS`).
    pub fn data_input(&mut self, what: &str, path: &Path, extensions: &[&str]) -> &mut Self {
        self.input_filtered(what, path, Some(extensions))
    }

    fn input_filtered(&mut self, what: &str, path: &Path, ext: Option<&[&str]>) -> &mut Self {
        if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            let what = format!("a file of {what} ({})", path.display());
            let mut files = Vec::new();
            folder_files(path, INPUT_FOLDER_DEPTH, &mut files);
            for file in files {
                let ext_ok = |exts: &[&str]| {
                    file.extension()
                        .map(|e| e.to_string_lossy().to_ascii_lowercase())
                        .is_some_and(|e| exts.contains(&e.as_str()))
                };
                if ext.is_none_or(ext_ok) {
                    self.push_input(&what, &file);
                }
            }
        } else {
            self.push_input(what, path);
        }
        self
    }

    /// Several files the run reads, all described by `what`.
    pub fn inputs<P: AsRef<Path>>(&mut self, what: &str, paths: &[P]) -> &mut Self {
        for p in paths {
            self.push_input(what, p.as_ref());
        }
        self
    }

    fn push_input(&mut self, what: &str, path: &Path) {
        let (canonical, id) = resolve(path);
        self.inputs.push(Input {
            what: what.to_string(),
            canonical,
            id,
        });
    }

    /// A file the run writes, with its role for messages (`-o`, `--report`).
    pub fn output(&mut self, role: &str, path: &Path) -> &mut Self {
        self.outputs.push(Output {
            role: role.to_string(),
            path: path.to_path_buf(),
            conditional: false,
        });
        self
    }

    /// A file the run writes only in some cases, such as the external-data side file next to a
    /// model: it may not be an input or another output, and its own state is checked when it is
    /// written.
    pub fn conditional_output(&mut self, role: &str, path: &Path) -> &mut Self {
        self.outputs.push(Output {
            role: role.to_string(),
            path: path.to_path_buf(),
            conditional: true,
        });
        self
    }

    /// Refuses the plan when an output cannot or must not be written (see the module docs).
    /// Inputs are resolved when they are added, so checking again after adding more is cheap.
    pub fn check(&self) -> Result<()> {
        let mut checked: Vec<(&Output, Destination)> = Vec::new();
        for out in &self.outputs {
            let dest = if out.conditional {
                let (canonical, id) = resolve(&out.path);
                Destination {
                    canonical,
                    existing_mode: None,
                    id,
                }
            } else {
                check_destination(&out.role, &out.path)?
            };
            if let Some(input) = self
                .inputs
                .iter()
                .find(|i| dest.same_as(&i.canonical, i.id))
            {
                return Err(Error::DestinationIsInput {
                    role: out.role.clone(),
                    path: out.path.clone(),
                    input: input.what.clone(),
                });
            }
            if let Some((first, _)) = checked
                .iter()
                .find(|(_, d)| d.same_as(&dest.canonical, dest.id))
            {
                return Err(Error::SameDestination {
                    first: first.role.clone(),
                    second: out.role.clone(),
                    path: out.path.clone(),
                });
            }
            checked.push((out, dest));
        }
        Ok(())
    }
}

/// Checks that `path` can be replaced by a new regular file: it is not a device, FIFO, socket or
/// folder, it is not read-only, and its folder exists and is writable. `role` names the path in
/// errors.
pub fn check_destination(role: &str, path: &Path) -> Result<Destination> {
    let err_folder = |problem: String| Error::DestinationFolder {
        role: role.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    let existing = match fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        // ENOTDIR (a parent is a file), EACCES, ...: reported through the folder below, or as is.
        Err(e) => {
            check_folder(role, path)?;
            return Err(err_folder(e.to_string()));
        }
    };
    if let Some(meta) = &existing {
        if !meta.is_file() {
            return Err(Error::DestinationNotRegular {
                role: role.to_string(),
                path: path.to_path_buf(),
                kind: kind_of(meta),
            });
        }
        if meta.permissions().readonly() {
            return Err(Error::DestinationReadOnly {
                role: role.to_string(),
                path: path.to_path_buf(),
            });
        }
    }
    let folder = check_folder(role, path)?;
    let canonical = match &existing {
        Some(_) => path.canonicalize().map_err(|e| err_folder(e.to_string()))?,
        None => {
            let name = path
                .file_name()
                .ok_or_else(|| err_folder("not a file path".into()))?;
            folder
                .canonicalize()
                .map_err(|e| err_folder(e.to_string()))?
                .join(name)
        }
    };
    Ok(Destination {
        canonical,
        existing_mode: existing.as_ref().map(mode_of),
        id: existing.as_ref().and_then(file_id),
    })
}

/// The folder a file path lives in (`.` for a bare file name).
pub(crate) fn parent_folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks that the folder of `path` exists, is a folder and is writable; returns it.
fn check_folder<'a>(role: &str, path: &'a Path) -> Result<&'a Path> {
    let folder = parent_folder(path);
    let err = |problem: String| Error::DestinationFolder {
        role: role.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    match fs::metadata(folder) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(err(format!("{} is not a folder", folder.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(err(format!(
                "the folder {} does not exist",
                folder.display()
            )))
        }
        Err(e) => return Err(err(format!("folder {}: {e}", folder.display()))),
    }
    if let Err(e) = writable_folder(folder) {
        return Err(err(format!(
            "the folder {} is not writable: {e}",
            folder.display()
        )));
    }
    Ok(folder)
}

#[cfg(unix)]
fn writable_folder(folder: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(folder.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn writable_folder(folder: &Path) -> std::io::Result<()> {
    if fs::metadata(folder)?.permissions().readonly() {
        return Err(std::io::Error::new(
            ErrorKind::PermissionDenied,
            "read-only",
        ));
    }
    Ok(())
}

/// The canonical path of `path` (or of its folder joined with its name when it does not exist,
/// or `path` itself when neither resolves) and its identity when it exists.
fn resolve(path: &Path) -> (PathBuf, Option<FileId>) {
    let id = fs::metadata(path).ok().as_ref().and_then(file_id);
    if let Ok(c) = path.canonicalize() {
        return (c, id);
    }
    let canonical = match (parent_folder(path).canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    };
    (canonical, id)
}

/// Every non-folder entry under `dir`, following symlinks, `depth` levels deep.
fn folder_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                if depth > 1 {
                    folder_files(&path, depth - 1, out);
                }
            }
            _ => out.push(path),
        }
    }
}

/// The metadata of `path`, refusing devices, FIFOs and sockets before anything opens them:
/// opening a FIFO blocks until a writer appears, and a device such as `/dev/zero` never ends.
/// Folders pass (the caller decides what a folder means).
pub fn require_readable_file(path: &Path) -> Result<fs::Metadata> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() || meta.is_dir() {
        return Ok(meta);
    }
    Err(Error::NotRegularFile {
        path: path.to_path_buf(),
        kind: kind_of(&meta),
    })
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

#[cfg(unix)]
fn file_id(meta: &fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &fs::Metadata) -> Option<FileId> {
    None
}

#[cfg(unix)]
fn mode_of(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode_of(_: &fs::Metadata) -> u32 {
    0o666
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_refused_when_they_are_inputs_or_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        fs::write(&model, b"model").unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("test_data_set_0")).unwrap();
        let sample = data.join("test_data_set_0/input_0.pb");
        fs::write(&sample, b"x").unwrap();
        let notes = data.join("notes.txt");
        fs::write(&notes, b"x").unwrap();
        let plan = |outs: &[(&str, &Path)]| {
            let mut p = OutputPlan::new();
            p.input("the input model", &model)
                .data_input("the calibration data", &data, &["pb"]);
            for (role, path) in outs {
                p.output(role, path);
            }
            p.check()
        };
        let out = dir.path().join("q.onnx");
        plan(&[("-o", &out), ("--report", &dir.path().join("r.json"))]).unwrap();
        let e = plan(&[("-o", &model)]).unwrap_err();
        assert!(matches!(e, Error::DestinationIsInput { .. }), "{e}");
        assert!(e.to_string().contains("is the input model"), "{e}");
        let e = plan(&[("-o", &sample)]).unwrap_err();
        assert!(
            e.to_string().contains("a file of the calibration data"),
            "{e}"
        );
        // A file of the data folder that no data source reads is fair game.
        plan(&[("-o", &notes)]).unwrap();
        let e = plan(&[("-o", &out), ("--report", &out)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--report and -o both name {}", out.display())
        );
        // Through another spelling of the same folder.
        let e = plan(&[("-o", &out), ("--report", &data.join("../q.onnx"))]).unwrap_err();
        assert!(matches!(e, Error::SameDestination { .. }), "{e}");
        // A side file that would be the model.
        let mut p = OutputPlan::new();
        p.input("the input model", &model)
            .conditional_output("the external-data file of -o", &model);
        assert!(matches!(
            p.check().unwrap_err(),
            Error::DestinationIsInput { .. }
        ));
    }

    #[test]
    fn special_read_only_and_folderless_destinations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_destination("-o", dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                Error::DestinationNotRegular {
                    kind: "a folder",
                    ..
                }
            ),
            "{e}"
        );
        #[cfg(unix)]
        {
            let e = check_destination("-o", Path::new("/dev/null")).unwrap_err();
            assert!(e.to_string().contains("a character device"), "{e}");
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.path().join("ro.json");
            fs::write(&ro, b"{}").unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
            let e = check_destination("--report", &ro).unwrap_err();
            assert!(matches!(e, Error::DestinationReadOnly { .. }), "{e}");
        }
        let e = check_destination("--report", &dir.path().join("missing/r.json")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        let e = check_destination("-o", &file.join("x.onnx")).unwrap_err();
        assert!(e.to_string().contains("not a folder"), "{e}");
        let ok = check_destination("-o", &dir.path().join("new.onnx")).unwrap();
        assert_eq!(ok.existing_mode, None);
        assert_eq!(
            ok.canonical,
            dir.path().canonicalize().unwrap().join("new.onnx")
        );
    }
}
