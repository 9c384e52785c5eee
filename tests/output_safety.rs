//! Where the command line writes: an output may not be a file the run reads, another output, a
//! device, FIFO, socket or folder, or a read-only file, and its folder must exist; all of this is
//! refused with exit 2 before any work starts and leaves the folder as it was. Written files get
//! mode 0666 minus the umask, a signal removes the temporaries in flight, and stale temporaries
//! of dead processes are removed by the next write.
//!
//! Every run works on copies of `fixtures/cnn.onnx` and `fixtures/cnn_calib` in a temporary
//! folder, so that a regression cannot damage the fixtures.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use onnx_ptq::onnx::{PendingFiles, TEMP_PREFIX};

const BIN: &str = env!("CARGO_BIN_EXE_onnx-ptq");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// A temporary folder holding `cnn.onnx` and `calib/` (copies of the fixtures).
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        fs::copy(fixture("cnn.onnx"), dir.path().join("cnn.onnx")).unwrap();
        let calib = dir.path().join("calib");
        fs::create_dir(&calib).unwrap();
        for e in fs::read_dir(fixture("cnn_calib")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), calib.join(e.file_name())).unwrap();
        }
        Work { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn model(&self) -> PathBuf {
        self.path("cnn.onnx")
    }

    fn calib(&self) -> PathBuf {
        self.path("calib")
    }

    /// `quantize cnn.onnx --calib calib -q` followed by `extra`.
    fn quantize(&self, extra: &[&str]) -> Output {
        let (model, calib) = (self.model(), self.calib());
        let mut args = vec!["quantize", s(&model), "--calib", s(&calib), "-q"];
        args.extend_from_slice(extra);
        run(&args)
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("starting onnx-ptq")
}

/// Runs the binary under `umask 022`.
fn run_umask_022(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("starting sh")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", describe(out));
}

/// Asserts exit 2 with every one of `mentions` in the message.
fn assert_refused(out: &Output, mentions: &[&str]) {
    assert_eq!(out.status.code(), Some(2), "{}", describe(out));
    let err = stderr(out);
    for m in mentions {
        assert!(err.contains(m), "message lacks {m:?}: {err}");
    }
}

/// Everything under `dir`: kind, mode and contents (or link target) of each entry.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let t = meta.file_type();
            let mode = meta.permissions().mode();
            let (kind, bytes) = if t.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                ("symlink", target.into_os_string().into_encoded_bytes())
            } else if t.is_dir() {
                stack.push(path.clone());
                ("dir", Vec::new())
            } else if t.is_file() {
                ("file", fs::read(&path).unwrap())
            } else if t.is_fifo() {
                ("fifo", Vec::new())
            } else if t.is_socket() {
                ("socket", Vec::new())
            } else {
                ("other", Vec::new())
            };
            out.insert(path, (kind.to_string(), mode, bytes));
        }
    }
    out
}

fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn report_equal_to_output_is_refused_before_anything_is_written() {
    let w = Work::new();
    let out = w.path("out.onnx");
    fs::write(&out, b"a previous file").unwrap();
    let before = snapshot(w.dir.path());
    let r = w.quantize(&["-o", s(&out), "--report", s(&out)]);
    assert_refused(&r, &["--report and -o both name", s(&out)]);
    assert_eq!(snapshot(w.dir.path()), before, "the folder changed");
    // Spelled differently, and not there yet.
    let new = w.path("new.onnx");
    let other_spelling = w.path("calib/../new.onnx");
    let r = w.quantize(&["-o", s(&new), "--report", s(&other_spelling)]);
    assert_refused(&r, &["--report and -o both name"]);
    assert_eq!(snapshot(w.dir.path()), before, "the folder changed");
}

#[test]
fn outputs_that_are_inputs_are_refused_naming_both_roles() {
    let w = Work::new();
    let model = w.model();
    let calib = w.calib();
    let int8 = w.path("cnn.int8.onnx");
    assert_ok(&w.quantize(&["-o", s(&int8)]));
    let ranges = w.path("ranges.json");
    assert_ok(&run(&[
        "calibrate",
        s(&model),
        "--calib",
        s(&calib),
        "-q",
        "-o",
        s(&ranges),
    ]));
    let overrides = w.path("overrides.json");
    fs::write(&overrides, b"{}").unwrap();
    let symlink = w.path("link.onnx");
    std::os::unix::fs::symlink(&model, &symlink).unwrap();
    let hard = w.path("hard.onnx");
    fs::hard_link(&model, &hard).unwrap();
    let sample_link = w.path("sample_link.npz");
    std::os::unix::fs::symlink(calib.join("sample_002.npz"), &sample_link).unwrap();
    let sample = calib.join("sample_003.npz");
    let q = w.path("q.onnx");

    let quantize = |extra: &[&str]| {
        let mut a = vec!["quantize", s(&model), "--calib", s(&calib), "-q"];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let calibrate = |out: &Path| {
        [
            "calibrate",
            s(&model),
            "--calib",
            s(&calib),
            "-q",
            "-o",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
    };
    let compare = |json: &Path| {
        [
            "compare",
            s(&model),
            s(&int8),
            "--data",
            s(&calib),
            "--latency-runs",
            "0",
            "--json",
            s(json),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
    };
    let model_msg = format!("-o {} is the input model", s(&model));
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (quantize(&["-o", s(&model)]), vec![model_msg.clone()]),
        (
            quantize(&["-o", s(&sample)]),
            vec![format!(
                "-o {} is a file of the calibration data",
                s(&sample)
            )],
        ),
        (
            quantize(&["-o", s(&q), "--report", s(&model)]),
            vec![format!("--report {} is the input model", s(&model))],
        ),
        (calibrate(&model), vec![model_msg.clone()]),
        (
            calibrate(&sample),
            vec!["is a file of the calibration data".into()],
        ),
        (
            compare(&int8),
            vec![format!("--json {} is the int8 model", s(&int8))],
        ),
        (
            compare(&model),
            vec![format!("--json {} is the float model", s(&model))],
        ),
        (
            compare(&sample),
            vec!["is a file of the --data samples".into()],
        ),
        (
            quantize(&["-o", s(&ranges), "--ranges", s(&ranges)]),
            vec![format!("-o {} is the --ranges file", s(&ranges))],
        ),
        (
            quantize(&["-o", s(&overrides), "--overrides", s(&overrides)]),
            vec![format!("-o {} is the --overrides file", s(&overrides))],
        ),
        (
            quantize(&["-o", s(&symlink)]),
            vec![format!("-o {} is the input model", s(&symlink))],
        ),
        (
            quantize(&["-o", s(&hard)]),
            vec![format!("-o {} is the input model", s(&hard))],
        ),
        (
            quantize(&["-o", s(&sample_link)]),
            vec!["is a file of the calibration data".into()],
        ),
    ];
    let before = snapshot(w.dir.path());
    for (args, mentions) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&args);
        let mentions: Vec<&str> = mentions.iter().map(String::as_str).collect();
        assert_eq!(r.status.code(), Some(2), "{args:?}\n{}", describe(&r));
        for m in &mentions {
            assert!(
                stderr(&r).contains(m),
                "{args:?}: message lacks {m:?}: {}",
                stderr(&r)
            );
        }
        assert_eq!(
            snapshot(w.dir.path()),
            before,
            "{args:?} changed the folder"
        );
    }
}

#[test]
fn special_files_are_refused_and_left_alone() {
    let w = Work::new();
    let fifo = w.path("fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let sock = w.path("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let folder = w.path("folder.onnx");
    fs::create_dir(&folder).unwrap();
    let before = snapshot(w.dir.path());
    let null = Path::new("/dev/null");

    let r = w.quantize(&["-o", "/dev/null"]);
    assert_refused(&r, &["-o /dev/null", "a character device"]);
    let r = w.quantize(&["-o", s(&w.path("q.onnx")), "--report", "/dev/null"]);
    assert_refused(&r, &["--report /dev/null", "a character device"]);
    let r = run(&[
        "calibrate",
        s(&w.model()),
        "--calib",
        s(&w.calib()),
        "-o",
        "/dev/null",
    ]);
    assert_refused(&r, &["a character device"]);
    let r = w.quantize(&["-o", s(&fifo)]);
    assert_refused(&r, &["a FIFO"]);
    let r = w.quantize(&["-o", s(&w.path("q.onnx")), "--report", s(&sock)]);
    assert_refused(&r, &["a socket"]);
    let r = w.quantize(&["-o", s(&folder)]);
    assert_refused(&r, &["a folder"]);

    assert!(fs::metadata(null).unwrap().file_type().is_char_device());
    assert_eq!(snapshot(w.dir.path()), before, "the folder changed");
}

#[test]
fn read_only_destinations_are_refused_and_left_alone() {
    let w = Work::new();
    let ro = w.path("ro.onnx");
    fs::write(&ro, b"keep me").unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
    let before = snapshot(w.dir.path());
    let r = w.quantize(&["-o", s(&ro)]);
    assert_refused(&r, &["-o", "read-only"]);
    let r = w.quantize(&["-o", s(&w.path("q.onnx")), "--report", s(&ro)]);
    assert_refused(&r, &["--report", "read-only"]);
    let r = run(&[
        "calibrate",
        s(&w.model()),
        "--calib",
        s(&w.calib()),
        "-o",
        s(&ro),
    ]);
    assert_refused(&r, &["read-only"]);
    assert_eq!(snapshot(w.dir.path()), before, "the folder changed");
    assert_eq!(mode(&ro), 0o444);
}

#[test]
fn report_into_a_missing_folder_writes_nothing() {
    let w = Work::new();
    let before = snapshot(w.dir.path());
    let report = w.path("missing/report.json");
    let r = w.quantize(&["-o", s(&w.path("q.onnx")), "--report", s(&report)]);
    assert_refused(&r, &["--report", "does not exist"]);
    assert_eq!(snapshot(w.dir.path()), before, "the folder changed");
    let r = w.quantize(&["-o", s(&w.path("missing/q.onnx"))]);
    assert_refused(&r, &["-o", "does not exist"]);
    assert_eq!(snapshot(w.dir.path()), before, "the folder changed");
}

#[test]
fn an_output_beside_the_samples_is_not_an_input() {
    // Only the files a data source reads count: a model written into the calibration folder,
    // twice, is fine.
    let w = Work::new();
    let q = w.calib().join("q.onnx");
    assert_ok(&w.quantize(&["-o", s(&q)]));
    assert_ok(&w.quantize(&["-o", s(&q)]));
}

#[test]
fn written_files_get_the_usual_mode() {
    let w = Work::new();
    let q = w.path("q.onnx");
    let report = w.path("report.json");
    let ranges = w.path("ranges.json");
    let cmp = w.path("compare.json");
    let (model, calib) = (w.model(), w.calib());
    assert_ok(&run_umask_022(&[
        "quantize",
        s(&model),
        "--calib",
        s(&calib),
        "-q",
        "-o",
        s(&q),
        "--report",
        s(&report),
    ]));
    assert_ok(&run_umask_022(&[
        "calibrate",
        s(&model),
        "--calib",
        s(&calib),
        "-q",
        "-o",
        s(&ranges),
    ]));
    assert_ok(&run_umask_022(&[
        "compare",
        s(&model),
        s(&q),
        "--data",
        s(&calib),
        "--latency-runs",
        "0",
        "--json",
        s(&cmp),
    ]));
    for p in [&q, &report, &ranges, &cmp] {
        assert_eq!(mode(p), 0o644, "{}", p.display());
    }
    // A replaced file keeps its mode.
    fs::set_permissions(&report, fs::Permissions::from_mode(0o640)).unwrap();
    assert_ok(&run_umask_022(&[
        "quantize",
        s(&model),
        "--calib",
        s(&calib),
        "-q",
        "-o",
        s(&q),
        "--report",
        s(&report),
    ]));
    assert_eq!(mode(&report), 0o640);
    assert_eq!(mode(&q), 0o644);
    assert!(temporaries(w.dir.path()).is_empty());
}

#[test]
fn stale_temporaries_of_dead_processes_are_removed_by_the_next_write() {
    let w = Work::new();
    let out = w.path("out");
    fs::create_dir(&out).unwrap();
    // No process can have this PID (Linux caps PIDs at 2^22).
    let dead = out.join(format!("{TEMP_PREFIX}2000000000-0-deadbeef.tmp"));
    // This test process is alive.
    let live = out.join(format!(
        "{TEMP_PREFIX}{}-0-00000000.tmp",
        std::process::id()
    ));
    // The naming of older versions, without a PID: removed only when old.
    let old_unnamed = out.join(format!("{TEMP_PREFIX}aB3dE9.tmp"));
    let fresh_unnamed = out.join(format!("{TEMP_PREFIX}Zz9Yy8.tmp"));
    let unrelated = out.join("notes.tmp");
    for p in [&dead, &live, &old_unnamed, &fresh_unnamed, &unrelated] {
        fs::write(p, b"partial").unwrap();
    }
    let seven_hours_ago = SystemTime::now() - Duration::from_secs(7 * 3600);
    fs::File::options()
        .write(true)
        .open(&old_unnamed)
        .unwrap()
        .set_modified(seven_hours_ago)
        .unwrap();
    assert_ok(&w.quantize(&["-o", s(&out.join("q.onnx"))]));
    assert!(
        !dead.exists(),
        "the dead process's temporary is still there"
    );
    assert!(!old_unnamed.exists(), "the old temporary is still there");
    for p in [&live, &fresh_unnamed, &unrelated] {
        assert!(p.exists(), "{} was removed", p.display());
    }
    assert!(out.join("q.onnx").exists());
}

#[test]
fn pending_files_appear_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.json"));
    // Dropped without a commit: nothing.
    let mut pending = PendingFiles::new();
    pending.add(&a, b"model").unwrap();
    pending.add(&b, b"report").unwrap();
    assert_eq!(temporaries(dir.path()).len(), 2);
    drop(pending);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    // The second rename fails (its destination became a non-empty folder): the first file,
    // already renamed, is removed again.
    let mut pending = PendingFiles::new();
    pending.add(&a, b"model").unwrap();
    pending.add(&b, b"report").unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(b.join("x"), b"x").unwrap();
    assert!(pending.commit().is_err());
    assert!(!a.exists());
    assert!(temporaries(dir.path()).is_empty());
    fs::remove_dir_all(&b).unwrap();
    // Committed: both.
    let mut pending = PendingFiles::new();
    pending.add(&a, b"model").unwrap();
    pending.add(&b, b"report").unwrap();
    pending.commit().unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"model");
    assert_eq!(fs::read(&b).unwrap(), b"report");
    assert!(temporaries(dir.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

const CHILD_DIR: &str = "ONNX_PTQ_TEST_SIGNAL_CHILD_DIR";

/// Not a test on its own: when run as a child by `a_signal_removes_in_flight_temporaries`, installs
/// the handler, stages a file in the given folder and waits to be killed.
#[test]
fn signal_child_helper() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    onnx_ptq::onnx::remove_temporaries_on_signal().unwrap();
    let mut pending = PendingFiles::new();
    pending
        .add(&Path::new(&dir).join("out.bin"), &[7u8; 4096])
        .unwrap();
    std::thread::sleep(Duration::from_secs(60));
    panic!("not killed within a minute");
}

fn kill(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_with_limit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the child did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_signal_removes_in_flight_temporaries() {
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "signal_child_helper", "--nocapture"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while temporaries(dir.path()).is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no temporary appeared"
            );
            if let Some(st) = child.try_wait().unwrap() {
                panic!("the child exited early: {st}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        kill(child.id(), signal);
        let st = wait_with_limit(&mut child, Duration::from_secs(30));
        assert_eq!(st.code(), Some(code), "SIG{signal}: {st}");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "SIG{signal} left {left:?}");
    }
}

/// Whether `pid` has a thread named like the signal handler's (Linux names are cut at 15 bytes).
#[cfg(target_os = "linux")]
fn has_signal_thread(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "onnx-ptq-signal")
    })
}

#[cfg(target_os = "linux")]
#[test]
fn sigterm_during_quantize_exits_143_and_leaves_no_temporaries() {
    let w = Work::new();
    // A longer calibration set, so the run is still going when the signal arrives.
    let calib = w.path("many");
    fs::create_dir(&calib).unwrap();
    for i in 0..200 {
        fs::copy(
            w.calib().join(format!("sample_00{}.npz", i % 8)),
            calib.join(format!("s{i:03}.npz")),
        )
        .unwrap();
    }
    let out = w.path("out");
    fs::create_dir(&out).unwrap();
    let (q, report) = (out.join("q.onnx"), out.join("r.json"));
    let mut child = Command::new(BIN)
        .args([
            "quantize",
            s(&w.model()),
            "--calib",
            s(&calib),
            "-q",
            "--threads",
            "1",
            "-o",
            s(&q),
            "--report",
            s(&report),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !has_signal_thread(child.id()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the signal handler did not start"
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("quantize exited before the signal: {st}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    kill(child.id(), "TERM");
    let st = wait_with_limit(&mut child, Duration::from_secs(60));
    assert_eq!(st.code(), Some(143), "{st}");
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    // All outputs or none.
    assert_eq!(q.exists(), report.exists());
}
