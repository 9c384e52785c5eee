//! Just enough of the zip format to read the arrays of an `.npz` file as `np.savez` writes them:
//! stored (uncompressed) entries, with ZIP64 records. Every size and offset read from the file is
//! checked against the file's length before anything is allocated, and each entry's CRC-32 is
//! verified, so a corrupt archive is an error, never a panic or a huge allocation.
//!
//! `ndarray_npy::NpzReader` is not used because it reads only the element types it knows
//! (no float16), reports a wrong dtype only as "incorrect descriptor", and allocates what the
//! array header claims before reading.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// One member of the archive, from the central directory.
pub(super) struct Entry {
    /// The member's file name, such as `x.npy`.
    pub name: String,
    flags: u16,
    method: u16,
    crc: u32,
    compressed_size: u64,
    size: u64,
    header_offset: u64,
}

const EOCD: &[u8; 4] = b"PK\x05\x06";
const EOCD64_LOCATOR: &[u8; 4] = b"PK\x06\x07";
const EOCD64: &[u8; 4] = b"PK\x06\x06";
const CENTRAL: &[u8; 4] = b"PK\x01\x02";
const LOCAL: &[u8; 4] = b"PK\x03\x04";

/// The archive's members, in directory order.
pub(super) fn entries(file: &mut File, len: u64) -> Result<Vec<Entry>, String> {
    let tail_len = len.min(22 + 0xFFFF);
    let tail = read_at(file, len, len - tail_len, tail_len)?;
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail.get(i..i + 4) == Some(EOCD))
        .ok_or("not a zip archive (an .npz file is a zip of .npy arrays)")?;
    let eocd = &tail[at..];
    let mut count = u64::from(u16_at(eocd, 10)?);
    let mut dir_size = u64::from(u32_at(eocd, 12)?);
    let mut dir_offset = u64::from(u32_at(eocd, 16)?);
    if count == 0xFFFF || dir_size == 0xFFFF_FFFF || dir_offset == 0xFFFF_FFFF {
        let locator = at
            .checked_sub(20)
            .and_then(|l| tail.get(l..at))
            .filter(|l| l.starts_with(EOCD64_LOCATOR))
            .ok_or("ZIP64 end record locator is missing")?;
        let record = read_at(file, len, u64_at(locator, 8)?, 56)?;
        if !record.starts_with(EOCD64) {
            return Err("ZIP64 end record is missing".into());
        }
        count = u64_at(&record, 32)?;
        dir_size = u64_at(&record, 40)?;
        dir_offset = u64_at(&record, 48)?;
    }
    let dir = read_at(file, len, dir_offset, dir_size)?;
    let mut entries = Vec::with_capacity(dir.len() / 46);
    let mut pos = 0usize;
    for _ in 0..count {
        let rec = dir.get(pos..).unwrap_or_default();
        if !rec.starts_with(CENTRAL) {
            return Err("corrupt zip central directory".into());
        }
        let name_len = usize::from(u16_at(rec, 28)?);
        let extra_len = usize::from(u16_at(rec, 30)?);
        let comment_len = usize::from(u16_at(rec, 32)?);
        let name = bytes(rec, 46, name_len)?;
        let extra = bytes(rec, 46 + name_len, extra_len)?;
        let mut entry = Entry {
            name: String::from_utf8_lossy(name).into_owned(),
            flags: u16_at(rec, 8)?,
            method: u16_at(rec, 10)?,
            crc: u32_at(rec, 16)?,
            compressed_size: u64::from(u32_at(rec, 20)?),
            size: u64::from(u32_at(rec, 24)?),
            header_offset: u64::from(u32_at(rec, 42)?),
        };
        apply_zip64_extra(&mut entry, extra)?;
        entries.push(entry);
        pos += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

/// Replaces the 32-bit fields saturated at `0xFFFFFFFF` by their ZIP64 values (extra field 1,
/// which lists only the saturated ones, in this order).
fn apply_zip64_extra(entry: &mut Entry, mut extra: &[u8]) -> Result<(), String> {
    while extra.len() >= 4 {
        let id = u16_at(extra, 0)?;
        let size = usize::from(u16_at(extra, 2)?);
        let data = bytes(extra, 4, size)?;
        if id == 1 {
            let mut fields = data.chunks_exact(8).map(|c| u64_at(c, 0));
            for field in [
                &mut entry.size,
                &mut entry.compressed_size,
                &mut entry.header_offset,
            ] {
                if *field == 0xFFFF_FFFF {
                    *field = fields.next().ok_or("truncated ZIP64 extra field")??;
                }
            }
        }
        extra = &extra[4 + size..];
    }
    Ok(())
}

/// The bytes of a stored member, after checking its CRC.
pub(super) fn read(file: &mut File, len: u64, entry: &Entry) -> Result<Vec<u8>, String> {
    let name = &entry.name;
    if entry.flags & 1 != 0 {
        return Err(format!("member '{name}' is encrypted"));
    }
    if entry.method != 0 {
        return Err(format!(
            "member '{name}' is compressed (zip method {}, as np.savez_compressed writes): only \
             uncompressed .npz files can be read; save them with np.savez",
            entry.method
        ));
    }
    if entry.compressed_size != entry.size {
        return Err(format!("member '{name}' is stored but its sizes differ"));
    }
    let local = read_at(file, len, entry.header_offset, 30)?;
    if !local.starts_with(LOCAL) {
        return Err(format!("member '{name}' has no local header"));
    }
    let skip = 30 + u64::from(u16_at(&local, 26)?) + u64::from(u16_at(&local, 28)?);
    let data = read_at(file, len, entry.header_offset + skip, entry.size)?;
    if crc32(&data) != entry.crc {
        return Err(format!(
            "member '{name}' fails its CRC check (corrupt file)"
        ));
    }
    Ok(data)
}

/// `n` bytes at `offset`, refusing ranges past the end of a file of length `len`.
fn read_at(file: &mut File, len: u64, offset: u64, n: u64) -> Result<Vec<u8>, String> {
    let end = offset.checked_add(n).filter(|&end| end <= len);
    let n = match (end, usize::try_from(n)) {
        (Some(_), Ok(n)) => n,
        _ => return Err("truncated zip archive".into()),
    };
    let mut buf = vec![0; n];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| format!("read failed: {e}"))?;
    Ok(buf)
}

fn bytes(b: &[u8], at: usize, n: usize) -> Result<&[u8], String> {
    b.get(at..at.saturating_add(n))
        .ok_or_else(|| "truncated zip record".to_string())
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    let mut a = [0; 2];
    a.copy_from_slice(bytes(b, at, 2)?);
    Ok(u16::from_le_bytes(a))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    let mut a = [0; 4];
    a.copy_from_slice(bytes(b, at, 4)?);
    Ok(u32::from_le_bytes(a))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    let mut a = [0; 8];
    a.copy_from_slice(bytes(b, at, 8)?);
    Ok(u64::from_le_bytes(a))
}

/// CRC-32 (IEEE, reflected), as zip uses.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// A one-member archive as `np.savez` would write it (method 0 = stored), with the sizes and
/// offset in a ZIP64 extra field of the central directory when `zip64` is set.
#[cfg(test)]
pub(super) fn one_member_archive(name: &str, data: &[u8], method: u16, zip64: bool) -> Vec<u8> {
    let len32 = |n: usize| if zip64 { u32::MAX } else { n as u32 };
    let mut out = Vec::new();
    out.extend(LOCAL);
    for v in [20u16, 0, method, 0, 0] {
        out.extend(v.to_le_bytes());
    }
    out.extend(crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out.extend((name.len() as u16).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(name.as_bytes());
    out.extend(data);
    let dir_offset = out.len();
    out.extend(CENTRAL);
    for v in [20u16, 20, 0, method, 0, 0] {
        out.extend(v.to_le_bytes());
    }
    out.extend(crc32(data).to_le_bytes());
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
    out.extend(EOCD);
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
    use super::*;

    fn read_member(archive: &[u8]) -> Result<(String, Vec<u8>), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        std::fs::write(&path, archive).unwrap();
        let mut file = File::open(&path).unwrap();
        let len = archive.len() as u64;
        let found = entries(&mut file, len)?;
        assert_eq!(found.len(), 1);
        let data = read(&mut file, len, &found[0])?;
        Ok((found[0].name.clone(), data))
    }

    #[test]
    fn stored_members_with_and_without_zip64_fields() {
        for zip64 in [false, true] {
            let archive = one_member_archive("x.npy", b"hello", 0, zip64);
            assert_eq!(
                read_member(&archive),
                Ok(("x.npy".to_string(), b"hello".to_vec()))
            );
        }
    }

    #[test]
    fn compressed_and_damaged_members_are_errors() {
        let err = read_member(&one_member_archive("x.npy", b"hello", 8, false)).unwrap_err();
        assert!(
            err.contains("np.savez_compressed") && err.contains("'x.npy'"),
            "{err}"
        );
        let mut archive = one_member_archive("x.npy", b"hello", 0, false);
        archive[30 + 5] ^= 0x20;
        assert!(read_member(&archive).unwrap_err().contains("CRC"));
        // Cut anywhere: an error, never a panic.
        let archive = one_member_archive("x.npy", b"hello", 0, true);
        for cut in 0..archive.len() {
            assert!(read_member(&archive[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for content in [&b""[..], b"PK\x05\x06", b"not a zip at all, just some text"] {
            let path = dir.path().join("x.npz");
            std::fs::write(&path, content).unwrap();
            let mut file = File::open(&path).unwrap();
            assert!(entries(&mut file, content.len() as u64).is_err());
        }
    }
}
