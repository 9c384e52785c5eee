//! `.npz` archives: a zip of `.npy` members, stored (`np.savez`) or deflated
//! (`np.savez_compressed`), read with the `zip` crate.
//!
//! Before a member's data is allocated its sizes are checked: its compressed data must lie
//! within the file; a stored member's two sizes must agree, and a deflated member cannot declare
//! more than deflate can produce from its compressed size; its declared size must be exactly the
//! array header plus the data that header announces. The data buffer is then exactly what the
//! header's shape implies, and the member is read to its end so that its CRC-32 is verified.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::{read_error, NpyArray, NpyHeader};
use crate::error::{Error, Result};

/// The most bytes deflate can produce per compressed byte (a run of 258-byte matches coded in
/// about 2 bits each: 1032:1).
const MAX_DEFLATE_RATIO: u64 = 1032;

/// An open `.npz` archive.
pub struct Npz<R> {
    archive: ZipArchive<R>,
    len: u64,
    names: Vec<String>,
}

impl Npz<BufReader<File>> {
    /// Opens the archive at `path`; errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Npz::new(BufReader::new(file)).map_err(|message| Error::Data {
            path: path.to_path_buf(),
            input: None,
            message,
        })
    }
}

impl<R: Read + Seek> Npz<R> {
    /// Reads the archive's central directory.
    pub fn new(mut reader: R) -> Result<Self, String> {
        let unreadable = |e: std::io::Error| format!("cannot read the file: {e}");
        let len = reader.seek(SeekFrom::End(0)).map_err(unreadable)?;
        reader.seek(SeekFrom::Start(0)).map_err(unreadable)?;
        let first = first_member_name(&mut reader);
        reader.seek(SeekFrom::Start(0)).map_err(unreadable)?;
        let archive = ZipArchive::new(reader).map_err(|e| match first {
            Some(name) => format!(
                "member '{name}': the archive's central directory (at the end of the file) is \
                 missing or damaged: the file is truncated or corrupt ({e})"
            ),
            None => format!("not a zip archive (an .npz file is a zip of .npy arrays): {e}"),
        })?;
        let names = (0..archive.len())
            .map(|i| archive.name_for_index(i).unwrap_or_default().to_string())
            .collect();
        Ok(Npz {
            archive,
            len,
            names,
        })
    }

    /// The members' file names (such as `x.npy`), in directory order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Reads member `index` as an array. The message of an error starts with the member's name.
    pub fn read(&mut self, index: usize) -> Result<NpyArray, String> {
        let name = self.names.get(index).cloned().unwrap_or_default();
        self.read_member(index)
            .map_err(|m| format!("member '{name}': {m}"))
    }

    fn read_member(&mut self, index: usize) -> Result<NpyArray, String> {
        let (method, size, compressed, data_start) = {
            let raw = self
                .archive
                .by_index_raw(index)
                .map_err(|e| e.to_string())?;
            (
                raw.compression(),
                raw.size(),
                raw.compressed_size(),
                raw.data_start(),
            )
        };
        if data_start
            .checked_add(compressed)
            .is_none_or(|end| end > self.len)
        {
            return Err(format!(
                "its {compressed} bytes of data at offset {data_start} run past the end of the \
                 file ({} bytes): the file is truncated or corrupt",
                self.len
            ));
        }
        match method {
            CompressionMethod::Stored if size != compressed => {
                return Err(format!(
                    "it is stored but declares {size} bytes uncompressed and {compressed} stored"
                ))
            }
            CompressionMethod::Stored => {}
            CompressionMethod::Deflated if size / MAX_DEFLATE_RATIO > compressed => {
                return Err(format!(
                    "it declares {size} bytes uncompressed from {compressed} compressed bytes, \
                     more than deflate can produce (corrupt file)"
                ))
            }
            CompressionMethod::Deflated => {}
            #[allow(deprecated)] // to_u16: the raw number is what zip tools show
            other => {
                return Err(format!(
                    "it is compressed with zip method {} ({other}); only stored members \
                     (np.savez) and deflated ones (np.savez_compressed) can be read",
                    other.to_u16()
                ))
            }
        }
        let mut member = self.archive.by_index(index).map_err(|e| e.to_string())?;
        let (header, header_len) = NpyHeader::read(&mut member, size)?;
        let need = header.data_len()?;
        if header_len.checked_add(need) != Some(size) {
            return Err(format!(
                "it declares {size} bytes but its array header announces {} ({need} bytes after \
                 a {header_len}-byte header)",
                header.describe()
            ));
        }
        let need = usize::try_from(need).map_err(|_| format!("{need} bytes do not fit memory"))?;
        let mut data = vec![0; need];
        member.read_exact(&mut data).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                format!("its data ends before the {need} bytes its header announces (corrupt file)")
            }
            _ => read_error(&e),
        })?;
        // Reading past the end is what verifies the CRC.
        match member.read(&mut [0]) {
            Ok(0) => Ok(NpyArray { header, data }),
            Ok(_) => Err(format!(
                "it holds more than the {size} bytes it declares (corrupt file)"
            )),
            Err(e) => Err(read_error(&e)),
        }
    }
}

/// The name in the local header the file starts with, if it starts with one: what a truncated
/// archive can still tell about its first member.
fn first_member_name(reader: &mut impl Read) -> Option<String> {
    let mut head = [0u8; 30];
    reader.read_exact(&mut head).ok()?;
    if !head.starts_with(b"PK\x03\x04") {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([head[26], head[27]]));
    let mut name = vec![0; len.min(256)];
    reader.read_exact(&mut name).ok()?;
    Some(String::from_utf8_lossy(&name).into_owned())
}

/// A one-member archive as `np.savez` would write it (stored), with the sizes and offset in a
/// ZIP64 extra field of the central directory when `zip64` is set.
#[cfg(test)]
pub(crate) fn one_member_archive(name: &str, data: &[u8], zip64: bool) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    let crc = crc.sum();
    let len32 = |n: usize| if zip64 { u32::MAX } else { n as u32 };
    let mut out = Vec::new();
    out.extend(b"PK\x03\x04");
    for v in [20u16, 0, 0, 0, 0] {
        out.extend(v.to_le_bytes());
    }
    out.extend(crc.to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out.extend((name.len() as u16).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(name.as_bytes());
    out.extend(data);
    let dir_offset = out.len();
    out.extend(b"PK\x01\x02");
    for v in [45u16, 45, 0, 0, 0, 0] {
        out.extend(v.to_le_bytes());
    }
    out.extend(crc.to_le_bytes());
    out.extend(len32(data.len()).to_le_bytes());
    out.extend(len32(data.len()).to_le_bytes());
    let extra_len: u16 = if zip64 { 28 } else { 0 };
    for v in [name.len() as u16, extra_len, 0, 0, 0] {
        out.extend(v.to_le_bytes());
    }
    out.extend(0u32.to_le_bytes());
    out.extend(len32(0).to_le_bytes());
    out.extend(name.as_bytes());
    if zip64 {
        out.extend(1u16.to_le_bytes());
        out.extend(24u16.to_le_bytes());
        for v in [data.len() as u64, data.len() as u64, 0] {
            out.extend(v.to_le_bytes());
        }
    }
    let dir_size = out.len() - dir_offset;
    out.extend(b"PK\x05\x06");
    for v in [0u16, 0, 1, 1] {
        out.extend(v.to_le_bytes());
    }
    out.extend((dir_size as u32).to_le_bytes());
    out.extend((dir_offset as u32).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use half::f16;
    use zip::write::SimpleFileOptions;

    use super::*;
    use crate::numpy::Values;

    fn npy<A: ndarray_npy::WritableElement, D: ndarray::Dimension>(
        a: &ndarray::Array<A, D>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(a, &mut out).unwrap();
        out
    }

    /// An archive of deflated members, as `np.savez_compressed` writes it.
    fn deflated(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        for (name, data) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn read_all(archive: &[u8]) -> Result<Vec<(String, NpyArray)>, String> {
        let mut npz = Npz::new(Cursor::new(archive))?;
        let names = npz.names().to_vec();
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Ok((name, npz.read(i)?)))
            .collect()
    }

    /// Offset of the first central directory record.
    fn central(archive: &[u8]) -> usize {
        archive.windows(4).position(|w| w == b"PK\x01\x02").unwrap()
    }

    fn patch_u32(archive: &mut [u8], at: usize, value: u32) {
        archive[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn stored_members_with_and_without_zip64_fields() {
        let data = npy(&ndarray::arr1(&[1.5f32, -2.0]));
        for zip64 in [false, true] {
            let got = read_all(&one_member_archive("x.npy", &data, zip64)).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, "x.npy");
            assert_eq!(got[0].1, NpyArray::parse(&data).unwrap());
        }
    }

    #[test]
    fn deflated_members_read_like_stored_ones() {
        let x = ndarray::Array::from_shape_fn((2, 3, 8), |(a, b, c)| (a * 100 + b * 10 + c) as f32);
        let h = ndarray::arr1(&[0.5f32, -3.25, 65504.0]);
        let h16: Vec<u8> = h
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let h_npy = [
            crate::numpy::tests::npy_with_header(
                "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }",
                &[],
            ),
            h16,
        ]
        .concat();
        let archive = deflated(&[("x.npy", &npy(&x)), ("h.npy", &h_npy)]);
        let got = read_all(&archive).unwrap();
        assert_eq!(got[0].0, "x.npy");
        assert_eq!(got[0].1.values().unwrap(), Values::Float(x.into_dyn()));
        assert_eq!(got[1].0, "h.npy");
        let want = h.mapv(f16::from_f32).into_dyn();
        assert_eq!(got[1].1.values().unwrap(), Values::Float16(want));
    }

    #[test]
    fn damaged_deflated_members_are_errors_naming_the_member() {
        let x = ndarray::Array::from_shape_fn(4096, |i| (i % 7) as f32);
        let good = deflated(&[("x.npy", &npy(&x))]);
        let data_start = 30 + "x.npy".len();
        let data_end = central(&good);
        // Flip a byte anywhere in the compressed data: an error (corrupt stream, wrong length
        // or CRC), never a panic.
        for at in data_start..data_end {
            let mut bad = good.clone();
            bad[at] ^= 0x55;
            let err = read_all(&bad).unwrap_err();
            assert!(err.starts_with("member 'x.npy': "), "byte {at}: {err}");
        }
        // A wrong CRC (in both headers): the data decompresses but fails the check.
        let mut bad = good.clone();
        let c = central(&bad);
        for at in [14, c + 16] {
            let crc = u32::from_le_bytes(bad[at..at + 4].try_into().unwrap());
            patch_u32(&mut bad, at, crc ^ 1);
        }
        let err = read_all(&bad).unwrap_err();
        assert!(err.contains("'x.npy'") && err.contains("CRC"), "{err}");
        // Cut anywhere: an error, never a panic; once the local header is whole, the error
        // names the member.
        for cut in 0..good.len() {
            let err = read_all(&good[..cut]).unwrap_err();
            if cut >= data_start {
                assert!(err.contains("member 'x.npy': "), "cut at {cut}: {err}");
            }
        }
    }

    #[test]
    fn declared_sizes_are_checked_before_allocating() {
        let x = ndarray::Array::from_shape_fn(1000, |i| i as f32);
        let good = deflated(&[("x.npy", &npy(&x))]);
        let c = central(&good);
        // Claiming 4 GB from a few hundred compressed bytes.
        let mut huge = good.clone();
        for at in [22, c + 24] {
            patch_u32(&mut huge, at, 0xFFFF_FFF0);
        }
        let err = read_all(&huge).unwrap_err();
        assert!(
            err.contains("'x.npy'") && err.contains("more than deflate"),
            "{err}"
        );
        // A size deflate could produce, but not what the array header announces.
        let mut wrong = good.clone();
        let size = u32::from_le_bytes(good[c + 24..c + 28].try_into().unwrap());
        for at in [22, c + 24] {
            patch_u32(&mut wrong, at, size + 4);
        }
        let err = read_all(&wrong).unwrap_err();
        assert!(
            err.contains("array header announces float32 [1000]"),
            "{err}"
        );
        // A stored member whose two sizes differ.
        let mut stored = one_member_archive("x.npy", &npy(&x), false);
        let c = central(&stored);
        patch_u32(&mut stored, c + 24, 1 << 30);
        let err = read_all(&stored).unwrap_err();
        assert!(err.contains("stored but declares"), "{err}");
    }

    #[test]
    fn garbage_and_other_methods_are_errors() {
        for content in [&b""[..], b"PK\x05\x06", b"not a zip at all, just some text"] {
            let err = Npz::new(Cursor::new(content)).err().unwrap();
            assert!(err.contains("not a zip archive"), "{err}");
        }
        // Method 12 (bzip2) is not read.
        let mut bz = one_member_archive("x.npy", b"hello", false);
        let c = central(&bz);
        for at in [8, c + 10] {
            bz[at] = 12;
        }
        let err = read_all(&bz).unwrap_err();
        assert!(
            err.contains("'x.npy'") && err.contains("zip method 12"),
            "{err}"
        );
    }
}
