//! Feeds arbitrary bytes to the NumPy calibration-data readers of `onnx_ptq::numpy`: as an
//! `.npz` file (zip directory, stored and deflated members, size checks, CRC, the array header
//! and data of every member, decoded), as a whole `.npy` held in memory (as one-sample `.npy`
//! files are read), and as the header of a stacked `.npy` read from a file (as a stacked source
//! is opened). Any panic is a bug: bad input must come back as an `Err`.

#![no_main]

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use onnx_ptq::numpy::{NpyArray, NpyHeader, Npz};

struct Scratch {
    _dir: tempfile::TempDir,
    npz: PathBuf,
    npy: PathBuf,
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("creating the scratch folder");
        let npz = dir.path().join("sample.npz");
        let npy = dir.path().join("stack.npy");
        Scratch {
            _dir: dir,
            npz,
            npy,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();

    // An .npz sample: every member read and decoded.
    std::fs::write(&s.npz, data).expect("writing the fuzz input");
    match Npz::open(&s.npz) {
        Ok(mut npz) => {
            for i in 0..npz.names().len() {
                match npz.read(i) {
                    Ok(array) => {
                        let _ = array.header.describe();
                        let _ = array.values();
                    }
                    Err(e) => {
                        let _ = e.len();
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // A one-sample .npy, parsed in memory.
    if let Ok(array) = NpyArray::parse(data) {
        let _ = array.values();
    }

    // The header of a stacked .npy, read from a file.
    std::fs::write(&s.npy, data).expect("writing the fuzz input");
    let file = File::open(&s.npy).expect("opening the fuzz input");
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let Ok((header, offset)) = NpyHeader::read(&mut BufReader::new(file), len) {
        let _ = (header.data_len(), offset <= len);
    }
});
