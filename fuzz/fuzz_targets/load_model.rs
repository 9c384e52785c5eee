//! Feeds arbitrary bytes to the model loader: `Model::load` on a file (protobuf decoding, tensor
//! checks, external data resolved against the file's folder), then `decode_model` followed by the
//! structural checks and `inspect`. Any panic is a bug: bad input must come back as an `Err`.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use onnx_ptq::onnx::{decode_model, Model};

/// A folder holding the model file under test and a small `weights.bin`, so that inputs referring
/// to external data can reach both the success path and the range checks.
struct Scratch {
    _dir: tempfile::TempDir,
    model: PathBuf,
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("creating the scratch folder");
        let weights: Vec<u8> = (0..64u8).collect();
        std::fs::write(dir.path().join("weights.bin"), weights).expect("writing weights.bin");
        std::fs::write(dir.path().join("empty.bin"), b"").expect("writing empty.bin");
        let model = dir.path().join("model.onnx");
        Scratch { _dir: dir, model }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    std::fs::write(&s.model, data).expect("writing the fuzz input");

    // The whole file path: metadata, memory map, decode, tensor checks, external data.
    match Model::load(&s.model) {
        Ok(model) => {
            let summary = onnx_ptq::inspect::inspect(&model);
            let _ = summary.to_string();
            let _ = onnx_ptq::validate::check_structure(&model.proto);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // The in-memory path: decode, structural checks on the raw message (tensor data not yet
    // checked against dims), then wrapping it as a Model and summarising it.
    match decode_model(data, &s.model) {
        Ok(proto) => {
            for finding in onnx_ptq::validate::check_structure(&proto) {
                let _ = finding.to_string();
            }
            let report = onnx_ptq::validate::validate(&proto, None);
            let _ = report.to_string();
            match Model::from_proto(proto, &s.model) {
                Ok(model) => {
                    let _ = onnx_ptq::inspect::inspect(&model).to_string();
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
