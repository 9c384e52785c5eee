//! External tensor data: parsing the `external_data` entries, refusing locations that would read
//! outside the model's folder, and reading the bytes through a memory map.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;

use super::pb::TensorProto;
use super::tensor;
use crate::error::{Error, Result};

/// One tensor's `external_data` entries, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    /// `location`: a path relative to the model's folder.
    pub location: String,
    /// `offset` in bytes, 0 when absent.
    pub offset: u64,
    /// `length` in bytes, to the end of the file when absent.
    pub length: Option<u64>,
}

/// Parses the `external_data` key/value entries of a tensor.
pub fn parse_ref(t: &TensorProto) -> Result<ExternalRef, String> {
    let mut location = None;
    let mut offset = 0;
    let mut length = None;
    for kv in &t.external_data {
        let value = kv.value();
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("external_data {} '{value}' is not a byte count", kv.key()))
        };
        match kv.key() {
            "location" => location = Some(value.to_string()),
            "offset" => offset = number()?,
            "length" => length = Some(number()?),
            _ => {} // "checksum" and future keys do not affect where the bytes are.
        }
    }
    let location = location.ok_or("external_data has no 'location'")?;
    Ok(ExternalRef {
        location,
        offset,
        length,
    })
}

/// Why a location is refused, before touching the file system.
fn lexical_problem(location: &str) -> Option<&'static str> {
    if location.is_empty() {
        return Some("the location is empty");
    }
    let p = Path::new(location);
    let looks_absolute = p.is_absolute()
        || location.starts_with('/')
        || location.starts_with('\\')
        || location.as_bytes().get(1) == Some(&b':');
    if looks_absolute
        || p.components()
            .any(|c| matches!(c, Component::RootDir | Component::Prefix(_)))
    {
        return Some("absolute paths are not allowed");
    }
    // Split on both separators: a model written on Windows may say `..\weights.bin`.
    if location.split(['/', '\\']).any(|part| part == "..") {
        return Some("'..' is not allowed");
    }
    if location.contains('\0') {
        return Some("the location contains a NUL byte");
    }
    None
}

/// Memory maps of the external files a model refers to, opened once each.
pub struct ExternalFiles {
    model_path: PathBuf,
    dir: PathBuf,
    canonical_dir: Option<PathBuf>,
    maps: HashMap<PathBuf, Option<Mmap>>,
}

impl ExternalFiles {
    /// External files relative to `model_path`'s folder.
    pub fn new(model_path: &Path) -> Self {
        let dir = model_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        ExternalFiles {
            model_path: model_path.to_path_buf(),
            dir,
            canonical_dir: None,
            maps: HashMap::new(),
        }
    }

    /// The canonical paths of every external file that was read.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.maps.keys().map(PathBuf::as_path)
    }

    /// Resolves `location` to a canonical path inside the model's folder.
    fn resolve(&mut self, tensor: &str, location: &str) -> Result<PathBuf> {
        let unsafe_location = |reason| Error::UnsafeExternalData {
            path: self.model_path.clone(),
            tensor: tensor.to_string(),
            location: location.to_string(),
            reason,
        };
        if let Some(reason) = lexical_problem(location) {
            return Err(unsafe_location(reason));
        }
        let canonical_dir = match &self.canonical_dir {
            Some(d) => d.clone(),
            None => {
                let dir = if self.dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    &self.dir
                };
                let d = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
                self.canonical_dir = Some(d.clone());
                d
            }
        };
        let joined = self.dir.join(location);
        let canonical = joined.canonicalize().map_err(|e| Error::Tensor {
            path: self.model_path.clone(),
            tensor: tensor.to_string(),
            message: format!("cannot open external data file {}: {e}", joined.display()),
        })?;
        if !canonical.starts_with(&canonical_dir) {
            return Err(unsafe_location("it resolves outside the model's folder"));
        }
        Ok(canonical)
    }

    /// Replaces an external tensor's reference with its bytes, after checking that the file holds
    /// exactly what the tensor's type and dims need.
    pub fn inline(&mut self, t: &mut TensorProto, tensor_name: &str) -> Result<()> {
        let model_path = self.model_path.clone();
        let bad = |message: String| Error::Tensor {
            path: model_path.clone(),
            tensor: tensor_name.to_string(),
            message,
        };
        let r = parse_ref(t).map_err(&bad)?;
        let file = self.resolve(tensor_name, &r.location)?;
        let need = tensor::expected_raw_len(t)
            .map_err(&bad)?
            .ok_or_else(|| bad("string tensors cannot be stored as external data".into()))?;
        if !self.maps.contains_key(&file) {
            let cannot_read = |e: std::io::Error| {
                bad(format!(
                    "cannot read external data file {}: {e}",
                    file.display()
                ))
            };
            let meta = std::fs::metadata(&file).map_err(cannot_read)?;
            if !meta.is_file() {
                return Err(bad(format!(
                    "external data location {} is not a regular file",
                    file.display()
                )));
            }
            let f = File::open(&file).map_err(cannot_read)?;
            let len = meta.len();
            // SAFETY: the map is only read while `self` lives; a file truncated underneath us by
            // another process is outside what any reader of memory maps can defend against.
            let map = if len == 0 {
                None
            } else {
                Some(unsafe { Mmap::map(&f) }.map_err(cannot_read)?)
            };
            self.maps.insert(file.clone(), map);
        }
        let bytes: &[u8] = self.maps[&file].as_deref().unwrap_or(&[]);
        let file_len = bytes.len() as u64;
        if r.offset > file_len {
            return Err(bad(format!(
                "external data offset {} is beyond the end of {} ({file_len} bytes)",
                r.offset,
                file.display()
            )));
        }
        let available = r.length.unwrap_or(file_len - r.offset);
        if r.offset
            .checked_add(available)
            .is_none_or(|end| end > file_len)
        {
            return Err(bad(format!(
                "external data range {}..+{available} is beyond the end of {} ({file_len} bytes)",
                r.offset,
                file.display()
            )));
        }
        if available < need {
            return Err(bad(format!(
                "dims {:?} claim {need} bytes but the external data holds {available}",
                t.dims
            )));
        }
        if r.length.is_some() && available != need {
            return Err(bad(format!(
                "external data length {available} does not match the {need} bytes dims {:?} need",
                t.dims
            )));
        }
        let start = r.offset as usize;
        t.raw_data = Some(bytes[start..start + need as usize].to_vec());
        t.external_data.clear();
        t.data_location = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_that_escape_are_refused_lexically() {
        assert!(lexical_problem("/etc/passwd").is_some());
        assert!(lexical_problem("../w.bin").is_some());
        assert!(lexical_problem("a/../../w.bin").is_some());
        assert!(lexical_problem("..\\w.bin").is_some());
        assert!(lexical_problem("C:\\w.bin").is_some());
        assert!(lexical_problem("").is_some());
        assert!(lexical_problem("weights/w.bin").is_none());
        assert!(lexical_problem("w..bin").is_none());
    }
}
