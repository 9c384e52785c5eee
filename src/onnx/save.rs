use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use prost::Message;

use super::dest::{check_destination, parent_folder};
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

/// The external-data side file `Model::save` writes next to a model saved at `path`
/// (`model.onnx` -> `model.onnx.data`); `None` when `path` has no file name.
pub fn external_data_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    Some(path.with_file_name(format!("{}.data", name.to_string_lossy())))
}

impl Model {
    /// Writes the model atomically to `path` (temporary file in the same folder, flushed, then
    /// renamed), refusing to replace the file it was loaded from or any of its data files, and
    /// any destination [`check_destination`](super::check_destination) refuses. With a side
    /// file, both appear together or neither does.
    pub fn save(&self, path: impl AsRef<Path>, options: &SaveOptions) -> Result<SaveReport> {
        let mut pending = PendingFiles::new();
        let report = self.save_pending(path, options, &mut pending)?;
        pending.commit()?;
        Ok(report)
    }

    /// Like [`Model::save`], but the files are only staged in `pending` as temporaries: they
    /// appear when `pending` is committed, together with whatever else it holds.
    pub fn save_pending(
        &self,
        path: impl AsRef<Path>,
        options: &SaveOptions,
        pending: &mut PendingFiles,
    ) -> Result<SaveReport> {
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
            pending.add(path, &bytes)?;
            return Ok(SaveReport {
                path: path.to_path_buf(),
                external_file: None,
                n_external_tensors: 0,
                model_bytes: bytes.len() as u64,
            });
        };
        // Streams through the writer: tensors still in the input's external files (a lazy
        // load) are copied chunk by chunk, in-memory ones written straight from their buffers;
        // the side file is staged in `pending` with the model.
        let (report, staged) = ExternalWriter::create(path, &self.source_files)?
            .with_threshold(threshold)
            .finish_staged(self.proto.clone(), Some(self))?;
        pending.append(staged);
        Ok(report)
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
/// reader never sees a half-written file and a failure leaves any previous file intact. The
/// destination is checked first (see [`check_destination`](super::check_destination)).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut pending = PendingFiles::new();
    pending.add(path, bytes)?;
    pending.commit()
}

/// Temporary files are named `.onnx-ptq-PID-N-XXXXXXXX.tmp`, beside their destination.
pub const TEMP_PREFIX: &str = ".onnx-ptq-";
/// See [`TEMP_PREFIX`].
pub const TEMP_SUFFIX: &str = ".tmp";
/// Age from which a temporary file of our naming is removed whatever its process.
const STALE_AGE: Duration = Duration::from_secs(6 * 3600);

/// The temporary files this process has created and not yet renamed or removed: what the signal
/// handler removes.
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn in_flight() -> MutexGuard<'static, Vec<PathBuf>> {
    IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unregister(registry: &mut Vec<PathBuf>, path: &Path) {
    registry.retain(|p| p != path);
}

/// One staged file: its temporary and where it goes.
#[derive(Debug)]
struct Staged {
    temp: PathBuf,
    dest: PathBuf,
    canonical: PathBuf,
}

/// Files one run writes, made visible together.
///
/// [`PendingFiles::add`] checks the destination, then writes the bytes to a temporary file in
/// the destination's folder (mode `0666` minus the umask, or the existing file's mode) and syncs
/// it. [`PendingFiles::commit`] renames every temporary over its destination; if a rename fails,
/// the files already renamed by this commit are removed as well, so a run leaves all of its
/// outputs or none. Dropping without committing removes the temporaries. Temporaries are
/// registered process-wide so that the handler of [`remove_temporaries_on_signal`] can delete
/// them, and writing into a folder removes the stale temporaries of dead processes there.
#[derive(Debug, Default)]
pub struct PendingFiles {
    staged: Vec<Staged>,
}

impl PendingFiles {
    /// Nothing staged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stages `bytes` for `dest`.
    pub fn add(&mut self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let mut file = self.add_streamed(dest)?;
        file.write_all(bytes).map_err(|e| Error::io(dest, e))?;
        file.sync_all().map_err(|e| Error::io(dest, e))
    }

    /// Stages an empty temporary for `dest` and hands out the open file, for data written a
    /// piece at a time (a side file of external data larger than memory).
    pub fn add_streamed(&mut self, dest: &Path) -> Result<fs::File> {
        let checked = check_destination("output", dest)?;
        if let Some(other) = self
            .staged
            .iter()
            .find(|s| s.canonical == checked.canonical)
        {
            return Err(Error::SameDestination {
                first: "output".into(),
                second: "output".into(),
                path: other.dest.clone(),
            });
        }
        let dir = parent_folder(dest);
        remove_stale_temporaries(dir);
        let (temp, file) = create_temporary(dir)?;
        self.staged.push(Staged {
            temp,
            dest: dest.to_path_buf(),
            canonical: checked.canonical,
        });
        if let Some(mode) = checked.existing_mode {
            set_mode(&file, mode).map_err(|e| Error::io(dest, e))?;
        }
        Ok(file)
    }

    /// Unstages `dest`, removing its temporary.
    pub fn discard(&mut self, dest: &Path) {
        let mut registry = in_flight();
        self.staged.retain(|s| {
            if s.dest == dest {
                let _ = fs::remove_file(&s.temp);
                unregister(&mut registry, &s.temp);
                false
            } else {
                true
            }
        });
    }

    /// Takes over everything `other` staged.
    pub fn append(&mut self, mut other: PendingFiles) {
        self.staged.append(&mut other.staged);
    }

    /// Renames every staged file into place: all of them, or none (see the type docs).
    pub fn commit(mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        // Held across the renames: a signal arriving now is handled after the last one.
        let mut registry = in_flight();
        for (i, s) in staged.iter().enumerate() {
            if let Err(e) = fs::rename(&s.temp, &s.dest) {
                for done in &staged[..i] {
                    let _ = fs::remove_file(&done.dest);
                }
                for rest in &staged[i..] {
                    let _ = fs::remove_file(&rest.temp);
                }
                for s in &staged {
                    unregister(&mut registry, &s.temp);
                }
                return Err(Error::io(&s.dest, e));
            }
        }
        for s in &staged {
            unregister(&mut registry, &s.temp);
        }
        drop(registry);
        // Make the renames durable; a failure here loses nothing already visible.
        let mut folders: Vec<&Path> = staged.iter().map(|s| parent_folder(&s.dest)).collect();
        folders.dedup();
        for dir in folders {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for PendingFiles {
    fn drop(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let mut registry = in_flight();
        for s in self.staged.drain(..) {
            let _ = fs::remove_file(&s.temp);
            unregister(&mut registry, &s.temp);
        }
    }
}

/// Creates a new, registered temporary file in `dir`. Creation and registration happen under the
/// registry's lock, so the signal handler sees either both or neither.
fn create_temporary(dir: &Path) -> Result<(PathBuf, fs::File)> {
    let dir_abs = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    let pid = std::process::id();
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = dir_abs.join(format!("{TEMP_PREFIX}{pid}-{n}-{nanos:08x}{TEMP_SUFFIX}"));
        let mut registry = in_flight();
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o666);
        }
        match options.open(&path) {
            Ok(file) => {
                registry.push(path.clone());
                return Ok((path, file));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(dir, e)),
        }
    }
}

#[cfg(unix)]
fn set_mode(file: &fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
}

#[cfg(not(unix))]
fn set_mode(_: &fs::File, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Removes the temporaries of our naming in `dir` that no running process will rename: those
/// whose process (the PID in the name) is gone, and any older than [`STALE_AGE`] (a reused PID,
/// or the names of older versions, which had no PID). Best effort: errors are ignored.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let have_proc = Path::new("/proc/self").exists();
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(middle) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
        else {
            continue;
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let parts: Vec<&str> = middle.split('-').collect();
        let pid = match parts.as_slice() {
            [pid, _, _] => pid.parse::<u32>().ok(),
            _ => None,
        };
        let dead = match pid {
            Some(pid) => have_proc && pid != me && !Path::new(&format!("/proc/{pid}")).exists(),
            None => false,
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AGE);
        if (dead || old) && pid != Some(me) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Installs a handler for SIGINT, SIGTERM and SIGHUP that removes this process's in-flight
/// temporary files, then exits with 128 + the signal number (130, 143, 129). Idempotent.
#[cfg(unix)]
pub fn remove_temporaries_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if *installed {
        return Ok(());
    }
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(Error::Signal)?;
    std::thread::Builder::new()
        .name("onnx-ptq-signal".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Keep the lock until exit: no temporary is created or renamed after this.
                let registry = in_flight();
                for path in registry.iter() {
                    let _ = fs::remove_file(path);
                }
                std::process::exit(128 + signal);
            }
        })
        .map_err(Error::Signal)?;
    *installed = true;
    Ok(())
}

/// Does nothing where there are no Unix signals.
#[cfg(not(unix))]
pub fn remove_temporaries_on_signal() -> Result<()> {
    Ok(())
}
