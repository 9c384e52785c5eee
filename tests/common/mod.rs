//! Paths to the cached test data that `.ci/setup` installs, and the Python oracle.
//! Missing data is a failure with instructions, never a skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

// Helpers for tests that run the CLI and check its output with the Python oracle.

/// `$ONNX_PTQ_CACHE`, or `~/.cache/onnx-ptq`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ONNX_PTQ_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            Path::new(&home).join(".cache/onnx-ptq")
        })
}

/// Panics with the way to get `path` when it is missing.
pub fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "missing test data {}: run `bash .ci/setup` (or `bash .ci/test`) first",
        path.display()
    );
    path
}

/// The folder of ONNX's node test cases (onnx 1.22.0 wheel).
pub fn node_test_dir() -> PathBuf {
    require(cache_dir().join("data/onnx-1.22.0/onnx/backend/test/data/node"))
}

/// Every node test case's `model.onnx`, sorted.
pub fn node_models() -> Vec<PathBuf> {
    let mut models: Vec<PathBuf> = std::fs::read_dir(node_test_dir())
        .expect("reading the node test folder")
        .map(|e| e.expect("dir entry").path().join("model.onnx"))
        .filter(|p| p.exists())
        .collect();
    models.sort();
    assert_eq!(
        models.len(),
        1765,
        "expected the 1765 node test models of onnx 1.22.0; rerun `bash .ci/setup`"
    );
    models
}

/// The light models (`light_*.onnx`) of the current onnx wheel.
pub fn light_models() -> Vec<PathBuf> {
    let dir = require(cache_dir().join("data/onnx-light"));
    let mut models: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("reading the light model folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();
    assert!(
        !models.is_empty(),
        "no light models found; rerun `bash .ci/setup`"
    );
    models
}

/// The Python interpreter of the test virtualenv (with `onnx` and `onnxruntime`).
pub fn python() -> PathBuf {
    let p = std::env::var_os("ONNX_PTQ_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("venv/bin/python"));
    require(p)
}

/// Runs a script from `tests/py/` with the oracle interpreter, feeding `stdin`; returns stdout.
pub fn run_python(script: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let mut child = Command::new(python())
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the Python oracle");
    // Feed stdin from another thread: the oracle answers line by line, and a full stdout pipe
    // would otherwise block it while we are still writing.
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_string();
    let feeder = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("waiting for the oracle");
    feeder.join().unwrap().expect("writing to the oracle");
    assert!(
        out.status.success(),
        "{} failed: {:?}",
        script.display(),
        out.status
    );
    String::from_utf8(out.stdout).expect("oracle output is UTF-8")
}

fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// Runs a Python script of tests/py with the oracle interpreter; panics with its output on
/// failure.
pub fn python_ok(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(python_script(script))
        .args(args)
        .output()
        .expect("starting python");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `model_data.py KIND DIR --samples N --seed S [--source SRC]`.
pub fn make_data(kind: &str, dir: &Path, samples: usize, seed: u32, source: Option<&Path>) {
    let (n, s) = (samples.to_string(), seed.to_string());
    let mut args = vec![kind, dir.to_str().unwrap(), "--samples", &n, "--seed", &s];
    if let Some(src) = source {
        args.extend(["--source", src.to_str().unwrap()]);
    }
    python_ok("model_data.py", &args);
}

/// Quantizes with the CLI (plus `extra` arguments); returns the report.
pub fn quantize_with(model: &Path, calib: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let report = out.with_extension("report.json");
    let r = Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
        .arg("quantize")
        .arg(model)
        .arg("--calib")
        .arg(calib)
        .arg("-o")
        .arg(out)
        .arg("--report")
        .arg(&report)
        .args(["--compare-samples", "1000", "-q"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "{}: quantize failed:\n{}",
        model.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

/// `quantize MODEL --mode MODE -o OUT` (plus `extra`), no calibration data needed; returns the
/// report.
pub fn quantize_mode(model: &Path, mode: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let report = out.with_extension("report.json");
    let r = Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
        .arg("quantize")
        .arg(model)
        .args(["--mode", mode, "-q", "-o"])
        .arg(out)
        .arg("--report")
        .arg(&report)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "{} --mode {mode} {extra:?}: quantize failed:\n{}",
        model.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

/// Quantizes with the CLI; returns the report.
pub fn quantize(model: &Path, calib: &Path, out: &Path) -> serde_json::Value {
    quantize_with(model, calib, out, &[])
}

/// `check`'s verdict with `quantized` run under onnxruntime's default optimizations (its fused
/// int8 kernels) instead of none.
pub fn check_optimized(float: &Path, quantized: &Path, held_out: &Path) -> serde_json::Value {
    let args = [
        float.to_str().unwrap(),
        quantized.to_str().unwrap(),
        held_out.to_str().unwrap(),
        "--optimized",
    ];
    serde_json::from_str(python_ok("quant_check.py", &args).trim()).unwrap()
}

/// onnxruntime's `quantize_static` of `float` on `calib` (a .npy or a folder of .npz) with the
/// bench's recipe (QDQ, per-channel, MinMax, U8/S8), written to `out`.
pub fn ort_quantize_static(float: &Path, calib: &Path, out: &Path) {
    python_ok(
        "ort_static.py",
        &[
            float.to_str().unwrap(),
            calib.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
}

/// The reference tools' verdict on `quantized`, over the held-out samples.
pub fn check(
    float: &Path,
    quantized: &Path,
    held_out: &Path,
    labels: Option<&str>,
) -> serde_json::Value {
    let mut args = vec![
        float.to_str().unwrap(),
        quantized.to_str().unwrap(),
        held_out.to_str().unwrap(),
    ];
    let labels_file = held_out.join("labels.json");
    if let Some(output) = labels {
        args.extend([
            "--labels",
            labels_file.to_str().unwrap(),
            "--label-output",
            output,
        ]);
    }
    serde_json::from_str(python_ok("quant_check.py", &args).trim()).unwrap()
}
