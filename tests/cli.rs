//! The command line on bad input: every unreadable, truncated, hostile or inconsistent model file
//! must end in exit code 2 with a message naming the file (and the tensor, when one is at fault),
//! never in a panic, a hang or a huge allocation. Plus the positive paths those checks are
//! measured against: a tiny valid model, valid external data, a structurally invalid model, and
//! the help texts.
//!
//! Every input is generated at test time in a temporary folder, from one tiny valid model built
//! with the prost types.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onnx_ptq::onnx::pb::attribute_proto::AttributeType;
use onnx_ptq::onnx::pb::tensor_proto::{DataLocation, DataType};
use onnx_ptq::onnx::pb::tensor_shape_proto::{dimension, Dimension};
use onnx_ptq::onnx::pb::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

/// Longest any single run may take; a bad input must be refused, not ground through.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Longest the refusal of a tensor with absurd dims may take: it must not touch the claimed size.
const FAST_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

/// What one run of the binary produced.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit code {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `onnx-ptq args…`, killing it if it takes longer than `RUN_LIMIT`.
fn run(args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_onnx-ptq"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting onnx-ptq");
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut out_pipe, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut err_pipe, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for onnx-ptq") {
            break status;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("onnx-ptq {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
        elapsed: start.elapsed(),
    }
}

fn path_arg(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Building models
// ---------------------------------------------------------------------------------------------

fn float_value(name: &str, dims: &[i64]) -> ValueInfoProto {
    tensor_value(name, DataType::Float, dims)
}

fn tensor_value(name: &str, elem: DataType, dims: &[i64]) -> ValueInfoProto {
    let dims = dims
        .iter()
        .map(|&d| dimension::Value::DimValue(d))
        .collect();
    tensor_value_dims(name, elem, dims)
}

fn tensor_value_dims(name: &str, elem: DataType, dims: Vec<dimension::Value>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|d| Dimension {
                            value: Some(d),
                            denotation: None,
                        })
                        .collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

/// A one-node model: `op(inputs…) → y`, default domain at `opset`.
fn one_node_model(
    op: &str,
    opset: i64,
    inputs: Vec<ValueInfoProto>,
    output: ValueInfoProto,
    initializer: Vec<TensorProto>,
    attribute: Vec<AttributeProto>,
) -> ModelProto {
    let mut input_names: Vec<String> = inputs.iter().map(|v| v.name().to_string()).collect();
    input_names.extend(initializer.iter().map(|t| t.name().to_string()));
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            name: Some(format!("one_{op}")),
            node: vec![NodeProto {
                name: Some(format!("{}0", op.to_lowercase())),
                op_type: Some(op.into()),
                input: input_names,
                output: vec![output.name().to_string()],
                attribute,
                ..Default::default()
            }],
            initializer,
            input: inputs,
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `W`: float [1,4] = [1, 2, 3, 4] in raw_data.
fn weight() -> TensorProto {
    TensorProto {
        name: Some("W".into()),
        data_type: Some(DataType::Float as i32),
        dims: vec![1, 4],
        raw_data: Some(weight_bytes()),
        ..Default::default()
    }
}

fn weight_bytes() -> Vec<u8> {
    [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// x: float [1,4] → Add(x, W) → y, IR 10, opset 17.
fn tiny_model() -> ModelProto {
    ModelProto {
        ir_version: Some(10),
        producer_name: Some("onnx-ptq tests".into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("tiny".into()),
            node: vec![NodeProto {
                name: Some("add0".into()),
                op_type: Some("Add".into()),
                input: vec!["x".into(), "W".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            initializer: vec![weight()],
            input: vec![float_value("x", &[1, 4])],
            output: vec![float_value("y", &[1, 4])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The tiny model with `W` stored externally under the given `external_data` entries.
fn external_model(entries: Entries) -> ModelProto {
    with_weight(tiny_model(), |w| {
        w.raw_data = None;
        w.data_location = Some(DataLocation::External as i32);
        w.external_data = entries
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some((*k).into()),
                value: Some((*v).into()),
            })
            .collect();
    })
}

fn with_weight(mut m: ModelProto, f: impl FnOnce(&mut TensorProto)) -> ModelProto {
    f(&mut m.graph.as_mut().unwrap().initializer[0]);
    m
}

/// The tiny model with `W` produced by a `Constant` node holding `value` instead of an initializer.
fn constant_node_model(value: TensorProto) -> ModelProto {
    let mut m = tiny_model();
    let g = m.graph.as_mut().unwrap();
    g.initializer.clear();
    g.node.insert(
        0,
        NodeProto {
            name: Some("const_w".into()),
            op_type: Some("Constant".into()),
            output: vec!["W".into()],
            attribute: vec![AttributeProto {
                name: Some("value".into()),
                r#type: Some(4), // TENSOR
                t: Some(value),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    m
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.to_path_buf()
}

fn write_model(path: &Path, m: &ModelProto) -> PathBuf {
    write(path, &m.encode_to_vec())
}

/// `external_data` key/value entries.
type Entries<'a> = &'a [(&'a str, &'a str)];
/// Command-line arguments, or strings the output must mention.
type Strs<'a> = &'a [&'a str];

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------------------------

/// One bad input: the path handed to the CLI and what stderr must mention besides the path.
struct BadCase {
    name: String,
    path: PathBuf,
    stderr_mentions: Vec<String>,
    /// Must be refused within `FAST_LIMIT` (absurd dims: nothing of the claimed size is touched).
    fast: bool,
    /// The library bug this case once exposed (now fixed); named in failure messages.
    regression: Option<&'static str>,
}

impl BadCase {
    fn new(name: impl Into<String>, path: PathBuf, mentions: &[&str]) -> Self {
        BadCase {
            name: name.into(),
            path,
            stderr_mentions: mentions.iter().map(|s| s.to_string()).collect(),
            fast: false,
            regression: None,
        }
    }

    fn fast(mut self) -> Self {
        self.fast = true;
        self
    }

    fn regression(mut self, bug: &'static str) -> Self {
        self.regression = Some(bug);
        self
    }
}

/// Every bad input, written under `root`.
fn bad_cases(root: &Path) -> Vec<BadCase> {
    let mut cases = Vec::new();
    let valid = tiny_model().encode_to_vec();

    // Truncations: half, and a spread of other cut points (all inside a length-delimited field
    // or right after a lone tag, so none of them is a complete message with a graph).
    let n = valid.len();
    for (label, cut) in [
        ("1 byte", 1),
        ("3 bytes", 3),
        ("a quarter", n / 4),
        ("a third", n / 3),
        ("half", n / 2),
        ("two thirds", 2 * n / 3),
        ("all but 1 byte", n - 1),
        ("all but 2 bytes", n - 2),
    ] {
        let path = write(&root.join(format!("truncated_{cut}.onnx")), &valid[..cut]);
        cases.push(BadCase::new(
            format!("model truncated to {label} ({cut} of {n} bytes)"),
            path,
            &[],
        ));
    }

    // Random bytes.
    for (seed, size) in [
        (1u64, 1usize),
        (2, 2),
        (3, 16),
        (4, 100),
        (5, 1000),
        (6, 4096),
        (7, 65536),
    ] {
        let path = write(
            &root.join(format!("random_{seed}_{size}.onnx")),
            &random_bytes(seed, size),
        );
        cases.push(BadCase::new(
            format!("{size} random bytes (seed {seed})"),
            path,
            &[],
        ));
    }
    // Random bytes after a valid prefix: decoding gets past the first fields first.
    let mut prefixed = valid[..n / 2].to_vec();
    prefixed.extend(random_bytes(8, 512));
    cases.push(BadCase::new(
        "half a model followed by random bytes",
        write(&root.join("prefixed_random.onnx"), &prefixed),
        &[],
    ));

    cases.push(BadCase::new(
        "empty file",
        write(&root.join("empty.onnx"), b""),
        &["empty"],
    ));
    // A protobuf that decodes but holds no graph.
    let no_graph = ModelProto {
        ir_version: Some(10),
        ..Default::default()
    };
    cases.push(BadCase::new(
        "message without a graph",
        write_model(&root.join("no_graph.onnx"), &no_graph),
        &["graph"],
    ));
    cases.push(BadCase::new(
        "text file",
        write(&root.join("text.onnx"), b"this is not an ONNX model\n"),
        &[],
    ));

    let dir = root.join("a_directory.onnx");
    std::fs::create_dir_all(&dir).unwrap();
    cases.push(BadCase::new("a directory", dir, &["directory"]));

    cases.push(BadCase::new(
        "missing file",
        root.join("does_not_exist.onnx"),
        &[],
    ));

    // External data. Each case gets its own folder so that the files around it are controlled.
    let ext = |case: &str| root.join(case).join("model.onnx");

    let p = write_model(
        &ext("ext_missing"),
        &external_model(&[
            ("location", "weights.bin"),
            ("offset", "0"),
            ("length", "16"),
        ]),
    );
    cases.push(BadCase::new(
        "missing external data file",
        p,
        &["'W'", "weights.bin"],
    ));

    let p = write_model(
        &ext("ext_absolute"),
        &external_model(&[
            ("location", "/etc/passwd"),
            ("offset", "0"),
            ("length", "16"),
        ]),
    );
    cases.push(BadCase::new(
        "external data at an absolute path",
        p,
        &["'W'", "unsafe", "/etc/passwd"],
    ));

    write(&root.join("outside.bin"), &[0u8; 16]);
    let p = write_model(
        &ext("ext_dotdot"),
        &external_model(&[
            ("location", "../outside.bin"),
            ("offset", "0"),
            ("length", "16"),
        ]),
    );
    cases.push(BadCase::new(
        "external data at ../outside.bin",
        p,
        &["'W'", "unsafe", "../outside.bin"],
    ));

    let p = write_model(
        &ext("ext_dotdot_nested"),
        &external_model(&[("location", "sub/../../outside.bin")]),
    );
    cases.push(BadCase::new(
        "external data at sub/../../outside.bin",
        p,
        &["'W'", "unsafe"],
    ));

    let p = write_model(
        &ext("ext_backslash"),
        &external_model(&[("location", "..\\outside.bin")]),
    );
    cases.push(BadCase::new(
        "external data at ..\\outside.bin",
        p,
        &["'W'", "unsafe"],
    ));

    #[cfg(unix)]
    {
        let p = write_model(
            &ext("ext_symlink"),
            &external_model(&[("location", "link.bin"), ("offset", "0"), ("length", "16")]),
        );
        std::os::unix::fs::symlink(root.join("outside.bin"), root.join("ext_symlink/link.bin"))
            .unwrap();
        cases.push(BadCase::new(
            "external data through a symlink leading out of the model's folder",
            p,
            &["'W'", "unsafe", "link.bin"],
        ));

        let p = write_model(
            &ext("ext_symlink_dir"),
            &external_model(&[
                ("location", "up/outside.bin"),
                ("offset", "0"),
                ("length", "16"),
            ]),
        );
        std::os::unix::fs::symlink(root, root.join("ext_symlink_dir/up")).unwrap();
        cases.push(BadCase::new(
            "external data through a symlinked folder leading out of the model's folder",
            p,
            &["'W'", "unsafe"],
        ));
    }

    let p = write_model(
        &ext("ext_empty_location"),
        &external_model(&[("location", ""), ("length", "16")]),
    );
    cases.push(BadCase::new(
        "external data with an empty location",
        p,
        &["'W'"],
    ));

    let p = write_model(
        &ext("ext_no_location"),
        &external_model(&[("offset", "0"), ("length", "16")]),
    );
    cases.push(BadCase::new(
        "external data without a location",
        p,
        &["'W'", "location"],
    ));

    // Range problems, against a 16-byte weights.bin.
    for (label, folder, entries, mentions) in [
        (
            "external offset beyond the end of the file",
            "ext_offset_beyond",
            vec![
                ("location", "weights.bin"),
                ("offset", "32"),
                ("length", "16"),
            ],
            vec!["'W'", "offset 32", "beyond the end"],
        ),
        (
            "external offset beyond the end of the file, no length",
            "ext_offset_beyond_nolen",
            vec![("location", "weights.bin"), ("offset", "17")],
            vec!["'W'", "offset 17", "beyond the end"],
        ),
        (
            "external offset + length beyond the end of the file",
            "ext_range_beyond",
            vec![
                ("location", "weights.bin"),
                ("offset", "8"),
                ("length", "16"),
            ],
            vec!["'W'", "beyond the end"],
        ),
        (
            "external length beyond the end of the file",
            "ext_length_beyond",
            vec![
                ("location", "weights.bin"),
                ("offset", "0"),
                ("length", "1000000"),
            ],
            vec!["'W'", "beyond the end"],
        ),
        (
            "external offset + length overflowing u64",
            "ext_range_overflow",
            vec![
                ("location", "weights.bin"),
                ("offset", "16"),
                ("length", "18446744073709551615"),
            ],
            vec!["'W'", "beyond the end"],
        ),
        (
            "external length shorter than the dims need",
            "ext_length_short",
            vec![
                ("location", "weights.bin"),
                ("offset", "0"),
                ("length", "8"),
            ],
            vec!["'W'", "16 bytes"],
        ),
        (
            "external data without length, too little left after the offset",
            "ext_tail_short",
            vec![("location", "weights.bin"), ("offset", "8")],
            vec!["'W'", "16 bytes"],
        ),
        (
            "external offset that is not a number",
            "ext_offset_nan",
            vec![
                ("location", "weights.bin"),
                ("offset", "-4"),
                ("length", "16"),
            ],
            vec!["'W'", "offset"],
        ),
    ] {
        let p = write_model(&ext(folder), &external_model(&entries));
        write(&root.join(folder).join("weights.bin"), &weight_bytes());
        cases.push(BadCase::new(label, p, &mentions));
    }

    // External data pointing at a folder and at an empty file.
    let p = write_model(
        &ext("ext_points_to_dir"),
        &external_model(&[("location", "sub"), ("offset", "0"), ("length", "16")]),
    );
    std::fs::create_dir_all(root.join("ext_points_to_dir/sub")).unwrap();
    cases.push(
        BadCase::new("external data location is a folder", p, &["'W'"]).regression(
            "ExternalFiles::inline reports open/mmap failures as a bare I/O error on the data file, \
             without the model path or the tensor name",
        ),
    );
    let p = write_model(
        &ext("ext_empty_file"),
        &external_model(&[("location", "weights.bin")]),
    );
    write(&root.join("ext_empty_file/weights.bin"), b"");
    cases.push(BadCase::new("external data file is empty", p, &["'W'"]));

    // Dims claiming far more than the data holds: refused up front, without allocating.
    let huge = |w: &mut TensorProto| w.dims = vec![1_000_000_000, 1000];
    let p = write_model(
        &root.join("huge_raw.onnx"),
        &with_weight(tiny_model(), huge),
    );
    cases.push(
        BadCase::new(
            "dims [1e9, 1000] float with 16 bytes of raw_data",
            p,
            &["'W'", "16"],
        )
        .fast(),
    );

    let p = write_model(
        &root.join("huge_typed.onnx"),
        &with_weight(tiny_model(), |w| {
            w.dims = vec![1_000_000_000, 1000];
            w.raw_data = None;
            w.float_data = vec![1.0, 2.0, 3.0, 4.0];
        }),
    );
    cases.push(
        BadCase::new(
            "dims [1e9, 1000] float with 4 float_data values",
            p,
            &["'W'"],
        )
        .fast(),
    );

    let p = write_model(
        &ext("ext_huge"),
        &with_weight(
            external_model(&[
                ("location", "weights.bin"),
                ("offset", "0"),
                ("length", "16"),
            ]),
            |w| w.dims = vec![1_000_000_000, 1000],
        ),
    );
    write(&root.join("ext_huge/weights.bin"), &weight_bytes());
    cases.push(
        BadCase::new(
            "dims [1e9, 1000] float with 16 bytes of external data",
            p,
            &["'W'"],
        )
        .fast(),
    );

    let p = write_model(
        &root.join("dims_overflow.onnx"),
        &with_weight(tiny_model(), |w| w.dims = vec![i64::MAX, i64::MAX]),
    );
    cases.push(BadCase::new("dims [i64::MAX, i64::MAX]", p, &["'W'", "overflow"]).fast());

    let p = write_model(
        &root.join("dims_negative.onnx"),
        &with_weight(tiny_model(), |w| w.dims = vec![-1, 4]),
    );
    cases.push(BadCase::new("negative dim", p, &["'W'", "negative"]).fast());

    let p = write_model(
        &root.join("unknown_dtype.onnx"),
        &with_weight(tiny_model(), |w| w.data_type = Some(12345)),
    );
    cases.push(BadCase::new("unknown data_type", p, &["'W'", "12345"]));

    // An unnamed tensor in a Constant node is named after the node in messages.
    let mut value = weight();
    value.name = None;
    value.dims = vec![1_000_000_000, 1000];
    let p = write_model(
        &root.join("huge_constant.onnx"),
        &constant_node_model(value),
    );
    cases.push(
        BadCase::new(
            "Constant node with dims [1e9, 1000] and 16 bytes",
            p,
            &["node 'const_w' (Constant)", "'value'"],
        )
        .fast(),
    );

    cases
}

/// Runs `inspect` and `validate` (text and JSON) on one bad input; returns what went wrong.
/// With `strict` false only the exit code, the absence of a panic and the time limit are checked.
fn check_bad_case(case: &BadCase, strict: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for command in ["inspect", "validate"] {
        for json in [false, true] {
            let mut args = vec![command, path_arg(&case.path)];
            if json {
                args.push("--json");
            }
            let r = run(&args);
            let mut problems = Vec::new();
            if r.code != Some(2) {
                problems.push(format!("exit code {:?}, expected 2", r.code));
            }
            if r.stdout.contains("panicked") || r.stderr.contains("panicked") {
                problems.push("the output mentions a panic".into());
            }
            if case.fast && r.elapsed > FAST_LIMIT {
                problems.push(format!("took {:?}, limit {FAST_LIMIT:?}", r.elapsed));
            }
            if strict {
                if !r.stderr.contains(path_arg(&case.path)) {
                    problems.push("stderr does not name the model file".into());
                }
                for m in &case.stderr_mentions {
                    if !r.stderr.contains(m.as_str()) {
                        problems.push(format!("stderr does not mention {m:?}"));
                    }
                }
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "[{}] onnx-ptq {}: {}\n{}",
                    case.name,
                    args.join(" "),
                    problems.join("; "),
                    r.describe()
                ));
            }
        }
    }
    failures
}

#[test]
fn bad_input_exits_2_with_the_path_and_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = bad_cases(tmp.path());
    let failures: Vec<String> = cases
        .iter()
        .flat_map(|case| check_bad_case(case, true))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} runs misbehaved:\n\n{}",
        failures.len(),
        cases.len() * 4,
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs that must load
// ---------------------------------------------------------------------------------------------

#[test]
fn valid_model_inspects_and_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let model = write_model(&tmp.path().join("tiny.onnx"), &tiny_model());
    let m = path_arg(&model);

    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "inspect",
            &["inspect", m],
            &["ir_version:  10", "Add", "external data: none"],
        ),
        ("validate", &["validate", m], &[m]),
        ("validate --no-exec", &["validate", m, "--no-exec"], &[m]),
    ];
    for (name, args, mentions) in cases {
        let r = run(args);
        assert_eq!(r.code, Some(0), "[{name}] {}", r.describe());
        assert!(!r.stderr.contains("panicked"), "[{name}] {}", r.describe());
        for s in *mentions {
            assert!(
                r.stdout.contains(s),
                "[{name}] stdout lacks {s:?}: {}",
                r.describe()
            );
        }
    }

    let r = run(&["inspect", m, "--json"]);
    assert_eq!(r.code, Some(0), "[inspect --json] {}", r.describe());
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("[inspect --json] not JSON: {e}\n{}", r.describe()));
    assert_eq!(v["ir_version"], 10, "[inspect --json] {v:#}");
    assert_eq!(v["n_nodes"], 1, "[inspect --json] {v:#}");
    assert_eq!(v["opsets"][""], 17, "[inspect --json] {v:#}");
    assert_eq!(v["inputs"][0]["name"], "x", "[inspect --json] {v:#}");
    assert_eq!(
        v["parameter_total"]["elements"], 4,
        "[inspect --json] {v:#}"
    );
    assert_eq!(
        v["external_data_files"],
        serde_json::json!([]),
        "[inspect --json] {v:#}"
    );

    for (name, args) in [
        ("validate --json", vec!["validate", m, "--json"]),
        (
            "validate --json --no-exec",
            vec!["validate", m, "--json", "--no-exec"],
        ),
    ] {
        let r = run(&args);
        assert_eq!(r.code, Some(0), "[{name}] {}", r.describe());
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("[{name}] not JSON: {e}\n{}", r.describe()));
        assert_eq!(v["valid"], true, "[{name}] {v:#}");
    }
}

#[test]
fn valid_external_data_loads_and_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, Entries, Vec<u8>)] = &[
        (
            "offset 0, length 16",
            &[
                ("location", "weights.bin"),
                ("offset", "0"),
                ("length", "16"),
            ],
            weight_bytes(),
        ),
        (
            "no offset, no length",
            &[("location", "weights.bin")],
            weight_bytes(),
        ),
        (
            "offset 8, length 16 in a 32-byte file",
            &[
                ("location", "weights.bin"),
                ("offset", "8"),
                ("length", "16"),
            ],
            [vec![0u8; 8], weight_bytes(), vec![0u8; 8]].concat(),
        ),
        (
            "in a subfolder, with a checksum entry",
            &[
                ("location", "data/weights.bin"),
                ("checksum", "ignored"),
                ("length", "16"),
            ],
            weight_bytes(),
        ),
    ];
    for (i, (name, entries, data)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        let model = write_model(&dir.join("model.onnx"), &external_model(entries));
        let location = entries.iter().find(|(k, _)| *k == "location").unwrap().1;
        write(&dir.join(location), data);
        let m = path_arg(&model);

        let r = run(&["inspect", m]);
        assert_eq!(r.code, Some(0), "[{name}] {}", r.describe());
        assert!(
            r.stdout
                .contains(&format!("external data: 1 tensors in {location}")),
            "[{name}] inspect does not list {location}: {}",
            r.describe()
        );
        let r = run(&["inspect", m, "--json"]);
        assert_eq!(r.code, Some(0), "[{name}] {}", r.describe());
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("[{name}] not JSON: {e}\n{}", r.describe()));
        assert_eq!(
            v["external_data_files"],
            serde_json::json!([location]),
            "[{name}] {v:#}"
        );
        assert_eq!(v["external_tensors"], 1, "[{name}] {v:#}");

        let r = run(&["validate", m, "--json"]);
        assert_eq!(r.code, Some(0), "[{name}] {}", r.describe());
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("[{name}] not JSON: {e}\n{}", r.describe()));
        assert_eq!(v["valid"], true, "[{name}] {v:#}");
    }
}

#[test]
fn structurally_invalid_model_exits_1_naming_node_and_input() {
    let tmp = tempfile::tempdir().unwrap();
    let undefined_input = {
        let mut m = tiny_model();
        m.graph.as_mut().unwrap().node[0].input[1] = "nowhere".into();
        m
    };
    let out_of_order = {
        let mut m = tiny_model();
        let g = m.graph.as_mut().unwrap();
        g.node[0].input[1] = "W2".into();
        g.node.push(NodeProto {
            name: Some("late".into()),
            op_type: Some("Identity".into()),
            input: vec!["W".into()],
            output: vec!["W2".into()],
            ..Default::default()
        });
        m
    };
    let cases: &[(&str, ModelProto, &[&str])] = &[
        (
            "node input never defined",
            undefined_input,
            &["node 'add0' (Add)", "'nowhere'", "not defined"],
        ),
        (
            "node input produced by a later node",
            out_of_order,
            &["node 'add0' (Add)", "'W2'", "topological order"],
        ),
    ];
    for (i, (name, model, mentions)) in cases.iter().enumerate() {
        let path = write_model(&tmp.path().join(format!("invalid{i}.onnx")), model);
        let m = path_arg(&path);
        for args in [vec!["validate", m], vec!["validate", m, "--no-exec"]] {
            let r = run(&args);
            assert_eq!(r.code, Some(1), "[{name}] {args:?}: {}", r.describe());
            assert!(!r.stderr.contains("panicked"), "[{name}] {}", r.describe());
            for s in *mentions {
                assert!(
                    r.stdout.contains(s),
                    "[{name}] {args:?}: stdout lacks {s:?}: {}",
                    r.describe()
                );
            }
        }
        let r = run(&["validate", m, "--json"]);
        assert_eq!(r.code, Some(1), "[{name}] --json: {}", r.describe());
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("[{name}] not JSON: {e}\n{}", r.describe()));
        assert_eq!(v["valid"], false, "[{name}] {v:#}");
        let findings = v["report"]["structure"].to_string();
        for s in *mentions {
            assert!(
                findings.contains(s),
                "[{name}] JSON findings lack {s:?}: {v:#}"
            );
        }
        // inspect summarises without judging.
        let r = run(&["inspect", m]);
        assert_eq!(r.code, Some(0), "[{name}] inspect: {}", r.describe());
    }
}

#[test]
fn help_texts_have_examples() {
    for command in ["inspect", "validate"] {
        let r = run(&[command, "--help"]);
        assert_eq!(r.code, Some(0), "[{command} --help] {}", r.describe());
        assert!(
            r.stdout.contains("Example"),
            "[{command} --help] {}",
            r.describe()
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let cases: &[(&str, &[&str])] = &[
        ("no subcommand", &[]),
        ("unknown subcommand", &["quantise"]),
        ("inspect without a model", &["inspect"]),
        ("malformed --dim", &["validate", "m.onnx", "--dim", "batch"]),
        ("zero --dim", &["validate", "m.onnx", "--dim", "batch=0"]),
    ];
    for (name, args) in cases {
        let r = run(args);
        assert_eq!(r.code, Some(2), "[{name}] {}", r.describe());
        assert!(!r.stderr.contains("panicked"), "[{name}] {}", r.describe());
    }
}

// ---------------------------------------------------------------------------------------------
// Crafted edge cases (found by reading the code and by fuzzing)
// ---------------------------------------------------------------------------------------------

/// DequantizeLinear with a blocked scale on an input whose blocked axis is `i64::MAX` long:
/// computing the expected scale dim as `(len + block_size - 1) / block_size` overflows.
fn dq_blocked_overflow_model() -> ModelProto {
    let scale = TensorProto {
        name: Some("s".into()),
        data_type: Some(DataType::Float as i32),
        dims: vec![1, 4],
        raw_data: Some(weight_bytes()),
        ..Default::default()
    };
    one_node_model(
        "DequantizeLinear",
        21,
        vec![tensor_value("x", DataType::Int8, &[i64::MAX, 4])],
        float_value("y", &[i64::MAX, 4]),
        vec![scale],
        vec![int_attr("axis", 0), int_attr("block_size", 2)],
    )
}

/// Two data-less UNDEFINED initializers claiming almost `u64::MAX` elements each: the loader
/// accepts them (exporters emit empty UNDEFINED tensors) and `inspect` adds their element counts.
fn undefined_overflow_model() -> ModelProto {
    let mut m = tiny_model();
    let g = m.graph.as_mut().unwrap();
    for (name, dims) in [("u1", vec![i64::MAX, 2]), ("u2", vec![i64::MAX])] {
        g.initializer.push(TensorProto {
            name: Some(name.into()),
            data_type: Some(DataType::Undefined as i32),
            dims,
            ..Default::default()
        });
    }
    m
}

/// `a op b` on integers: the execution check feeds zeros to integer inputs, so `b` is zero.
fn integer_binary_model(op: &str, elem: DataType) -> ModelProto {
    one_node_model(
        op,
        17,
        vec![tensor_value("a", elem, &[2]), tensor_value("b", elem, &[2])],
        tensor_value("y", elem, &[2]),
        vec![],
        vec![],
    )
}

/// The tiny model with `x` declared as [1e9, 1e9]: the execution check would feed 4e18 bytes.
fn huge_input_model() -> ModelProto {
    let mut m = tiny_model();
    let g = m.graph.as_mut().unwrap();
    g.input[0] = float_value("x", &[1_000_000_000, 1_000_000_000]);
    g.output[0] = float_value("y", &[1_000_000_000, 1_000_000_000]);
    m
}

/// The tiny model with `x` declared as [N, 4].
fn symbolic_input_model() -> ModelProto {
    let mut m = tiny_model();
    let g = m.graph.as_mut().unwrap();
    let dims = vec![
        dimension::Value::DimParam("N".into()),
        dimension::Value::DimValue(4),
    ];
    g.input[0] = tensor_value_dims("x", DataType::Float, dims.clone());
    g.output[0] = tensor_value_dims("y", DataType::Float, dims);
    m
}

/// An `If` whose then-branch yields one output and whose else-branch yields none (found by
/// running the fuzz corpus through `validate`): the structure check accepts it and tract's
/// analyser unwraps the error it raises about it.
fn if_branch_mismatch_model() -> ModelProto {
    let constant = |out: &str| NodeProto {
        op_type: Some("Constant".into()),
        output: vec![out.into()],
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(TensorProto {
                data_type: Some(DataType::Float as i32),
                dims: vec![1],
                raw_data: Some(1.0f32.to_le_bytes().to_vec()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let branch = |name: &str, out: &str, outputs: Vec<ValueInfoProto>| AttributeProto {
        name: Some(format!("{name}_branch")),
        r#type: Some(AttributeType::Graph as i32),
        g: Some(GraphProto {
            name: Some(name.into()),
            node: vec![constant(out)],
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    };
    one_node_model(
        "If",
        17,
        vec![tensor_value("cond", DataType::Bool, &[])],
        float_value("res", &[1]),
        vec![],
        vec![
            branch("then", "t", vec![float_value("t", &[1])]),
            branch("else", "e", vec![]),
        ],
    )
}

#[test]
fn crafted_edge_cases_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dq = write_model(
        &tmp.path().join("dq_overflow.onnx"),
        &dq_blocked_overflow_model(),
    );
    let undef = write_model(
        &tmp.path().join("undefined.onnx"),
        &undefined_overflow_model(),
    );
    let (dq, undef) = (path_arg(&dq), path_arg(&undef));
    let cases: &[(&str, Strs, &[i32], Strs)] = &[
        (
            "blocked DQ on an i64::MAX axis, structure only",
            &["validate", dq, "--no-exec"],
            &[1],
            &["dequantizelinear0", "block_size"],
        ),
        (
            "blocked DQ on an i64::MAX axis",
            &["validate", dq],
            &[1],
            &["dequantizelinear0"],
        ),
        (
            "blocked DQ on an i64::MAX axis, inspect",
            &["inspect", dq],
            &[0],
            &["DequantizeLinear"],
        ),
        (
            "UNDEFINED tensors with huge dims, inspect",
            &["inspect", undef],
            &[0, 2],
            &[],
        ),
        (
            "UNDEFINED tensors with huge dims, inspect --json",
            &["inspect", undef, "--json"],
            &[0, 2],
            &[],
        ),
        (
            "UNDEFINED tensors with huge dims, validate",
            &["validate", undef],
            &[1, 2],
            &["'u1'"],
        ),
    ];
    for (name, args, codes, mentions) in cases {
        let r = run(args);
        assert!(
            r.code.is_some_and(|c| codes.contains(&c)),
            "[{name}] exit code not in {codes:?}: {}",
            r.describe()
        );
        assert!(
            !r.stdout.contains("panicked") && !r.stderr.contains("panicked"),
            "[{name}] {}",
            r.describe()
        );
        for m in *mentions {
            assert!(
                r.stdout.contains(m) || r.stderr.contains(m),
                "[{name}] output lacks {m:?}: {}",
                r.describe()
            );
        }
    }
}

/// Library bugs found while writing these tests and by fuzzing, kept as regression tests. Each
/// case names the bug it reproduced.
#[test]
fn regressions_found_by_fuzzing_and_review() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();

    // Bad inputs whose message lacks the model path or the tensor name.
    for case in bad_cases(tmp.path())
        .iter()
        .filter(|c| c.regression.is_some())
    {
        for f in check_bad_case(case, true) {
            failures.push(format!("{} ({})", f, case.regression.unwrap()));
        }
    }

    // The execution check feeds zeros to integer inputs and lets tract divide by them: tract
    // panics and the process exits with 101 instead of reporting a failed or passed check.
    for (op, elem) in [
        ("Div", DataType::Int32),
        ("Div", DataType::Uint8),
        ("Mod", DataType::Int64),
    ] {
        let name = format!("validate runs integer {op} on {elem:?} zeros");
        let path = write_model(
            &tmp.path().join(format!("{op}_{elem:?}.onnx")),
            &integer_binary_model(op, elem),
        );
        let r = run(&["validate", path_arg(&path)]);
        if !matches!(r.code, Some(0 | 1)) || r.stderr.contains("panicked") {
            failures.push(format!(
                "[{name}] expected exit 0 or 1 without a panic: {}",
                r.describe()
            ));
        }
    }

    // The execution check allocates whatever the declared input shape asks for: the process
    // aborts on the failed allocation (or is killed by the OOM killer for merely large shapes).
    let huge = write_model(&tmp.path().join("huge_input.onnx"), &huge_input_model());
    let symbolic = write_model(
        &tmp.path().join("symbolic_input.onnx"),
        &symbolic_input_model(),
    );
    for (name, args) in [
        (
            "validate with an input declared [1e9, 1e9]",
            vec!["validate", path_arg(&huge)],
        ),
        (
            "validate --dim N=1000000000000",
            vec!["validate", path_arg(&symbolic), "--dim", "N=1000000000000"],
        ),
    ] {
        let r = run(&args);
        let mut problems = Vec::new();
        if !matches!(r.code, Some(1 | 2)) {
            problems.push("expected exit 1 or 2");
        }
        if r.stderr.contains("memory allocation") || r.stderr.contains("panicked") {
            problems.push("allocation failure or panic");
        }
        if !(r.stdout.contains("'x'") || r.stderr.contains("'x'")) {
            problems.push("the message does not name input 'x'");
        }
        if r.elapsed > FAST_LIMIT {
            problems.push("too slow");
        }
        if !problems.is_empty() {
            failures.push(format!(
                "[{name}] {}: {}",
                problems.join("; "),
                r.describe()
            ));
        }
    }

    // The structure check accepts an If whose branches disagree on the number of outputs;
    // tract then panics (an `unwrap` in tract-hir's analyser) instead of returning the error.
    let mismatch = write_model(
        &tmp.path().join("if_mismatch.onnx"),
        &if_branch_mismatch_model(),
    );
    for args in [
        vec!["validate", path_arg(&mismatch)],
        vec!["validate", path_arg(&mismatch), "--no-exec"],
    ] {
        let r = run(&args);
        if r.code != Some(1) || r.stderr.contains("panicked") || !r.stdout.contains("if0") {
            failures.push(format!(
                "[If branches with 1 and 0 outputs] {args:?}: expected exit 1 naming node 'if0': {}",
                r.describe()
            ));
        }
    }

    // qdq.rs computes the expected blocked scale dim with `(len + block_size - 1) / block_size`:
    // it overflows (a panic with overflow checks, as under cargo fuzz; a negative number in
    // release builds, reported as "expected -4611686018427387904").
    let dq = write_model(
        &tmp.path().join("dq_overflow.onnx"),
        &dq_blocked_overflow_model(),
    );
    let r = run(&["validate", path_arg(&dq), "--no-exec"]);
    if r.stdout.contains("expected -") || r.stderr.contains("panicked") {
        failures.push(format!(
            "[blocked DQ on an i64::MAX axis] overflowed expected dim: {}",
            r.describe()
        ));
    }

    // inspect.rs `ParamStats::add` sums element counts with `+=`: two UNDEFINED data-less
    // tensors claiming ~u64::MAX elements overflow it (a panic with overflow checks, a wrapped
    // total in release builds).
    let undef = write_model(
        &tmp.path().join("undefined.onnx"),
        &undefined_overflow_model(),
    );
    let r = run(&["inspect", path_arg(&undef), "--json"]);
    if r.code == Some(0) {
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let total = v["parameter_total"]["elements"].as_u64().unwrap_or(0);
        if total != 0 && total < u64::MAX - 1 {
            failures.push(format!(
                "[UNDEFINED tensors with huge dims] parameter_total.elements wrapped to {total}"
            ));
        }
    } else if r.code != Some(2) {
        failures.push(format!(
            "[UNDEFINED tensors with huge dims] {}",
            r.describe()
        ));
    }

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
