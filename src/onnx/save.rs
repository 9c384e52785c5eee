use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use prost::Message;

use super::dest::{check_destination, parent_folder};
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
        let threshold = options.external_threshold.or_else(|| {
            (self.proto.encoded_len() as u64 >= options.size_limit)
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
        let data_path = external_data_path(path)
            .ok_or_else(|| Error::Model(format!("{}: not a file path", path.display())))?;
        let data_name = data_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
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
            pending.add(&data_path, &side)?;
        }
        pending.add(path, &bytes)?;
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
        let (temp, mut file) = create_temporary(dir)?;
        self.staged.push(Staged {
            temp,
            dest: dest.to_path_buf(),
            canonical: checked.canonical,
        });
        file.write_all(bytes).map_err(|e| Error::io(dest, e))?;
        if let Some(mode) = checked.existing_mode {
            set_mode(&file, mode).map_err(|e| Error::io(dest, e))?;
        }
        file.sync_all().map_err(|e| Error::io(dest, e))?;
        Ok(())
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
