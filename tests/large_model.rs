//! Models larger than memory: lazy loading (external data checked but left in its files, read one
//! tensor at a time), the streaming `ExternalWriter`, and a generated decoder over 2 GiB copied
//! through both with peak memory well under its size.
//!
//! The models come from `bench/make_decoder.py`; onnxruntime is the oracle for the outputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_ptq::onnx::pb::tensor_proto::{DataLocation, DataType};
use onnx_ptq::onnx::pb::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use onnx_ptq::onnx::{decode_model, encode_model, tensor, ExternalWriter, Model, SaveOptions};
use onnx_ptq::Error;

/// Runs `bench/make_decoder.py --out DIR ARGS`; returns the model path.
fn make_decoder(dir: &Path, args: &[&str]) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/make_decoder.py");
    let out = Command::new(common::python())
        .arg(&script)
        .arg("--out")
        .arg(dir)
        .args(args)
        .output()
        .expect("starting the generator");
    assert!(
        out.status.success(),
        "make_decoder.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = args
        .iter()
        .position(|a| *a == "--name")
        .map_or("model.onnx", |i| args[i + 1]);
    dir.join(name)
}

/// A small decoder: its matrices and MLP biases are external, its [64] LayerNorm vectors and
/// scalar constants inline.
fn small_decoder(dir: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec!["--hidden", "64", "--layers", "2", "--vocab", "100"];
    args.extend_from_slice(extra);
    make_decoder(dir, &args)
}

fn initializers(m: &Model) -> &[TensorProto] {
    &m.proto.graph.as_ref().unwrap().initializer
}

/// `ort_same.py A B ARGS`: onnxruntime runs both on the same ids.
fn ort_same(a: &Path, b: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec![a.to_str().unwrap(), b.to_str().unwrap()];
    all.extend_from_slice(args);
    serde_json::from_str(common::python_ok("ort_same.py", &all).trim()).unwrap()
}

/// A field of `/usr/bin/time -v`'s report in `stderr`.
fn time_field(stderr: &str, label: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no '{label}' in /usr/bin/time's output:\n{stderr}"))
        .trim()
        .to_string()
}

fn file_name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn lazy_load_reads_each_tensor_like_eager_load() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [&[][..], &["--tied", "--name", "tied.onnx"][..]] {
        let path = small_decoder(dir.path(), extra);
        let eager = Model::load(&path).unwrap();
        let lazy = Model::load_lazy(&path).unwrap();
        assert!(lazy.has_external_refs() && !eager.has_external_refs());
        assert!(lazy.n_external_tensors > 10, "{}", lazy.n_external_tensors);
        assert_eq!(lazy.n_external_tensors, eager.n_external_tensors);
        assert_eq!(lazy.external_files, eager.external_files);
        assert_eq!(lazy.source_files, eager.source_files);
        assert_eq!(lazy.path.as_deref(), Some(path.as_path()));
        // The lazy proto holds references only: a fraction of the eager one.
        let (lazy_len, eager_len) = (
            encode_model(&lazy.proto).len(),
            encode_model(&eager.proto).len(),
        );
        assert!(lazy_len * 10 < eager_len, "{lazy_len} vs {eager_len}");
        let (e, l) = (initializers(&eager), initializers(&lazy));
        assert_eq!(e.len(), l.len());
        let mut n_external = 0;
        for (e, l) in e.iter().zip(l) {
            assert_eq!(e.name, l.name);
            n_external += usize::from(tensor::is_external(l));
            let bytes = lazy.tensor_bytes(l).unwrap();
            assert_eq!(bytes, eager.tensor_bytes(e).unwrap(), "{}", e.name());
            assert_eq!(Some(&bytes[..]), e.raw_data.as_deref(), "{}", e.name());
            if e.data_type == Some(DataType::Float as i32) {
                let values = lazy.tensor_f32(l).unwrap();
                assert_eq!(values, tensor::to_f32(e).unwrap(), "{}", e.name());
                assert_eq!(values, eager.tensor_f32(e).unwrap());
            }
        }
        assert_eq!(n_external, lazy.n_external_tensors);
    }
}

/// Writes `tensors` (name, type, raw bytes) to `w.bin` next to `model.onnx`, with a gap before
/// each so that offsets are not trivially 0; returns the model path.
fn external_model(dir: &Path, tensors: &[(&str, DataType, Vec<i64>, Vec<u8>)]) -> PathBuf {
    let mut data = Vec::new();
    let mut initializer = Vec::new();
    for (name, dt, dims, bytes) in tensors {
        data.extend_from_slice(&[0xAB; 12]);
        let offset = data.len();
        data.extend_from_slice(bytes);
        initializer.push(TensorProto {
            name: Some(name.to_string()),
            data_type: Some(*dt as i32),
            dims: dims.clone(),
            data_location: Some(DataLocation::External as i32),
            external_data: entries(&[
                ("location", "w.bin".into()),
                ("offset", offset.to_string()),
                ("length", bytes.len().to_string()),
            ]),
            ..Default::default()
        });
    }
    std::fs::write(dir.join("w.bin"), data).unwrap();
    let proto = ModelProto {
        ir_version: Some(8),
        graph: Some(GraphProto {
            name: Some("g".into()),
            initializer,
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    std::fs::write(&path, encode_model(&proto)).unwrap();
    path
}

fn entries(kv: &[(&str, String)]) -> Vec<StringStringEntryProto> {
    kv.iter()
        .map(|(k, v)| StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v.clone()),
        })
        .collect()
}

#[test]
fn tensor_f32_decodes_external_half_bfloat_and_double() {
    let dir = tempfile::tempdir().unwrap();
    let values = [1.5f32, -2.25, 0.0, 65504.0, 1e-3, -7.0];
    let f16: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let f64s: Vec<u8> = values
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    let ints: Vec<u8> = [1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = external_model(
        dir.path(),
        &[
            ("h", DataType::Float16, vec![2, 3], f16),
            ("b", DataType::Bfloat16, vec![6], bf16),
            ("d", DataType::Double, vec![3, 2], f64s),
            ("i", DataType::Int64, vec![3], ints.clone()),
        ],
    );
    let lazy = Model::load_lazy(&path).unwrap();
    let eager = Model::load(&path).unwrap();
    let t = initializers(&lazy);
    // What the 16-bit types can hold of each value.
    let want_h: Vec<f32> = values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    let want_b: Vec<f32> = values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(lazy.tensor_f32(&t[0]).unwrap(), want_h);
    assert_eq!(lazy.tensor_f32(&t[1]).unwrap(), want_b);
    assert_eq!(lazy.tensor_f32(&t[2]).unwrap(), values);
    for (l, e) in t.iter().zip(initializers(&eager)).take(3) {
        assert_eq!(lazy.tensor_f32(l).unwrap(), tensor::to_f32(e).unwrap());
    }
    assert_eq!(lazy.tensor_bytes(&t[3]).unwrap(), ints);
    let err = lazy.tensor_f32(&t[3]).unwrap_err().to_string();
    assert!(
        err.contains("'i'") && err.contains("not a float type"),
        "{err}"
    );
}

/// The small decoder copied to another folder through an `ExternalWriter`: attention weights
/// rewritten (decoded and encoded again, as a quantizer would write new bytes), MLP tensors
/// passed through explicitly, the rest (embedding, LayerNorms, LM head, constants) left to
/// `finish`. onnxruntime must give the same logits for the copy.
#[test]
fn writer_output_runs_in_onnxruntime_like_the_input() {
    let root = tempfile::tempdir().unwrap();
    let (src_dir, out_dir) = (root.path().join("in"), root.path().join("out"));
    std::fs::create_dir_all(&out_dir).unwrap();
    for extra in [&[][..], &["--tied", "--name", "tied.onnx"][..]] {
        let path = small_decoder(&src_dir, extra);
        let src = Model::load_lazy(&path).unwrap();
        let out = out_dir.join(path.file_name().unwrap());
        let mut writer = ExternalWriter::create(&out, &src.source_files).unwrap();
        let mut proto = src.proto.clone();
        let (mut rewritten, mut passed) = (0, 0);
        for t in &mut proto.graph.as_mut().unwrap().initializer {
            if t.name().contains(".attn.") {
                let bytes: Vec<u8> = src
                    .tensor_f32(t)
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                writer.append(t, &bytes).unwrap();
                rewritten += 1;
            } else if t.name().contains(".mlp.") {
                writer.pass_through(&src, t).unwrap();
                passed += 1;
            }
        }
        assert_eq!((rewritten, passed), (8, 8));
        // Passing a tensor through again once it is stored changes nothing.
        let first = &mut proto.graph.as_mut().unwrap().initializer;
        let stored = first
            .iter_mut()
            .find(|t| t.name().contains(".attn."))
            .unwrap();
        let before = stored.clone();
        writer.pass_through(&src, stored).unwrap();
        assert_eq!(*stored, before);
        // All but the two [64] down-projection biases, which are under 1 KiB and stay inline.
        assert_eq!(writer.n_tensors(), 14);
        assert!(
            !writer.data_path().exists(),
            "the data file appears only when the model is saved"
        );
        let data = writer.data_path().to_path_buf();
        assert_eq!(data, out_dir.join(format!("{}.data", file_name_of(&out))));
        let report = writer.finish(proto, Some(&src)).unwrap();
        assert_eq!(report.external_file.as_deref(), Some(data.as_path()));
        assert_eq!(report.n_external_tensors, src.n_external_tensors);
        // Every reference points at the copy's own data file, at an aligned offset.
        let copy = Model::load_lazy(&out).unwrap();
        assert_eq!(copy.external_files, vec![data.canonicalize().unwrap()]);
        for t in initializers(&copy)
            .iter()
            .filter(|t| tensor::is_external(t))
        {
            let offset = onnx_ptq::onnx::external::parse_ref(t).unwrap().offset;
            assert_eq!(offset % onnx_ptq::onnx::EXTERNAL_ALIGN, 0, "{}", t.name());
        }
        // Same values as the input, tensor by tensor.
        for (a, b) in initializers(&src).iter().zip(initializers(&copy)) {
            assert_eq!(a.name, b.name);
            assert_eq!(src.tensor_bytes(a).unwrap(), copy.tensor_bytes(b).unwrap());
        }
        // A model mixing inline and external tensors saves again (lazily, to a third folder).
        let again = root.path().join("again").join(out.file_name().unwrap());
        std::fs::create_dir_all(again.parent().unwrap()).unwrap();
        copy.save(&again, &SaveOptions::default()).unwrap();
        assert_eq!(
            Model::load(&again).unwrap().proto,
            Model::load(&path).unwrap().proto
        );

        let same = ort_same(&path, &out, &["--seq", "5", "--checker"]);
        assert_eq!(same["checker"], "ok", "{same}");
        assert_eq!(same["shape"], serde_json::json!([1, 5, 100]));
        assert_eq!(same["max_abs_diff"], 0.0, "{same}");
        assert!(same["max_abs"].as_f64().unwrap() > 0.0, "{same}");
    }
    let mut names = files_in(&out_dir);
    names.sort();
    assert_eq!(
        names,
        [
            "model.onnx",
            "model.onnx.data",
            "tied.onnx",
            "tied.onnx.data"
        ],
        "no temporary file is left"
    );
}

#[test]
fn saving_a_lazy_model_matches_saving_the_loaded_one() {
    let root = tempfile::tempdir().unwrap();
    let path = small_decoder(&root.path().join("in"), &[]);
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
    }
    let lazy = Model::load_lazy(&path).unwrap();
    let report = lazy
        .save(a.join("m.onnx"), &SaveOptions::default())
        .unwrap();
    assert_eq!(report.n_external_tensors, lazy.n_external_tensors);
    let eager = SaveOptions {
        external_threshold: Some(1024),
        ..Default::default()
    };
    Model::load(&path)
        .unwrap()
        .save(b.join("m.onnx"), &eager)
        .unwrap();
    for name in ["m.onnx", "m.onnx.data"] {
        assert!(
            std::fs::read(a.join(name)).unwrap() == std::fs::read(b.join(name)).unwrap(),
            "{name} differs between the lazy and the eager save"
        );
    }
}

/// Rewrites the external_data of the initializer `name` of `src`, saves the result as `bad.onnx`
/// beside it and loads it lazily.
fn load_with_ref(src: &Path, name: &str, kv: &[(&str, String)]) -> Error {
    let mut proto = decode_model(&std::fs::read(src).unwrap(), src).unwrap();
    let t = proto
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name() == name)
        .unwrap();
    t.external_data = entries(kv);
    let bad = src.with_file_name("bad.onnx");
    std::fs::write(&bad, encode_model(&proto)).unwrap();
    let lazy = Model::load_lazy(&bad).unwrap_err();
    // The eager load refuses it the same way.
    assert_eq!(Model::load(&bad).unwrap_err().to_string(), lazy.to_string());
    lazy
}

#[test]
fn unsafe_locations_and_bad_ranges_are_refused_naming_the_tensor() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    let path = small_decoder(&dir, &[]);
    let w = "layer0.attn.q.weight";
    let need = 64 * 64 * 4u64;
    let data = dir.join("model.onnx.data");
    let data_len = std::fs::metadata(&data).unwrap().len();
    std::fs::copy(&data, root.path().join("outside.data")).unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.data"), dir.join("link.data")).unwrap();
    let at = |location: &str, offset: u64, length: u64| {
        vec![
            ("location", location.to_string()),
            ("offset", offset.to_string()),
            ("length", length.to_string()),
        ]
    };
    for (location, why) in [
        ("../outside.data", "'..'"),
        (
            root.path().join("outside.data").to_str().unwrap(),
            "absolute",
        ),
        ("link.data", "outside the model's folder"),
    ] {
        let err = load_with_ref(&path, w, &at(location, 0, need));
        match &err {
            Error::UnsafeExternalData { tensor, .. } => assert_eq!(tensor, w),
            other => panic!("{location}: {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(why) && msg.contains(w), "{msg}");
    }
    for (kv, words) in [
        (
            at("model.onnx.data", data_len + 64, need),
            vec!["offset", "beyond the end"],
        ),
        (
            at("model.onnx.data", data_len - need / 2, need),
            vec!["beyond the end"],
        ),
        (at("model.onnx.data", 0, need - 4), vec!["16384", "16380"]),
        (
            at("model.onnx.data", 0, need + 4),
            vec!["does not match", "16388"],
        ),
        (at("missing.data", 0, need), vec!["missing.data"]),
    ] {
        let err = load_with_ref(&path, w, &kv);
        assert!(
            matches!(err, Error::Tensor { ref tensor, .. } if tensor == w),
            "{err}"
        );
        let msg = err.to_string();
        for word in words {
            assert!(msg.contains(word), "{kv:?}: {msg}");
        }
    }
    // A reference made up after loading is checked again when it is read.
    let lazy = Model::load_lazy(&path).unwrap();
    let mut t = initializers(&lazy)
        .iter()
        .find(|t| t.name() == w)
        .unwrap()
        .clone();
    t.external_data = entries(&at("../outside.data", 0, need));
    let err = lazy.tensor_bytes(&t).unwrap_err();
    assert!(
        matches!(err, Error::UnsafeExternalData { ref tensor, .. } if tensor == w),
        "{err}"
    );
    let err = lazy.tensor_f32(&t).unwrap_err();
    assert!(matches!(err, Error::UnsafeExternalData { .. }), "{err}");
    t.external_data = entries(&at("model.onnx.data", data_len, need));
    let msg = lazy.tensor_bytes(&t).unwrap_err().to_string();
    assert!(msg.contains(w) && msg.contains("model.onnx.data"), "{msg}");
}

#[test]
fn the_writer_refuses_the_input_and_leaves_nothing_when_dropped() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    let path = small_decoder(&dir, &[]);
    let src = Model::load_lazy(&path).unwrap();
    // The model itself, and a new name whose data file would be the input's.
    for target in [path.clone(), dir.join("model.onnx")] {
        let err = ExternalWriter::create(&target, &src.source_files)
            .err()
            .unwrap();
        assert!(matches!(err, Error::WouldOverwriteInput(_)), "{err}");
    }
    let before = files_in(&dir);
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    {
        let mut writer = ExternalWriter::create(out.join("q.onnx"), &src.source_files).unwrap();
        let mut t = initializers(&src)
            .iter()
            .find(|t| t.name() == "embed.weight")
            .unwrap()
            .clone();
        let bytes = src.tensor_bytes(&t).unwrap().into_owned();
        let err = writer.append(&mut t, &bytes[4..]).unwrap_err();
        assert!(err.to_string().contains(t.name()), "{err}");
        writer.append(&mut t, &bytes).unwrap();
        assert!(tensor::is_external(&t) && t.raw_data.is_none());
        assert_eq!(writer.data_len(), bytes.len() as u64);
        // Dropped here, as on an error before `finish`.
    }
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
    assert_eq!(files_in(&dir), before);
    // Without a source to copy from, references to the input are refused.
    let writer = ExternalWriter::create(out.join("q.onnx"), &src.source_files).unwrap();
    let err = writer
        .finish(src.proto.clone(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no source model"), "{err}");
    assert!(files_in(&out).is_empty(), "{:?}", files_in(&out));
}

const CHILD_IN: &str = "ONNX_PTQ_TEST_STREAM_IN";
const CHILD_OUT: &str = "ONNX_PTQ_TEST_STREAM_OUT";

/// The conversion measured by `a_decoder_over_2_gib_copies_in_half_its_size_of_memory`, run in a
/// child process (this test binary, under `/usr/bin/time -v`) so that its peak RSS is its own:
/// a lazy load, then every layer matrix decoded to f32 and written back (one at a time, as a
/// weight quantizer would), everything else passed through in chunks.
#[test]
#[ignore = "run in a child process by a_decoder_over_2_gib_copies_in_half_its_size_of_memory"]
fn stream_copy_child() {
    let (Some(input), Some(output)) = (std::env::var_os(CHILD_IN), std::env::var_os(CHILD_OUT))
    else {
        panic!("only run by a_decoder_over_2_gib_copies_in_half_its_size_of_memory");
    };
    let src = Model::load_lazy(&input).unwrap();
    let mut writer = ExternalWriter::create(&output, &src.source_files).unwrap();
    let mut proto = src.proto.clone();
    for t in &mut proto.graph.as_mut().unwrap().initializer {
        if t.name().starts_with("layer") && t.dims.len() == 2 {
            let bytes: Vec<u8> = src
                .tensor_f32(t)
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            writer.append(t, &bytes).unwrap();
        } else {
            writer.pass_through(&src, t).unwrap();
        }
    }
    let report = writer.finish(proto, Some(&src)).unwrap();
    println!("{report:?}");
}

/// `onnx-ptq quantize MODEL --mode weight-only -q -o OUT` with `ONNX_PTQ_DIRECT_IO` set to
/// `direct_io`, under `/usr/bin/time -v` when `timed`.
fn weight_only(timed: bool, model: &Path, out: &Path, direct_io: &str) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_onnx-ptq");
    let mut command = if timed {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    command
        .args([
            "quantize",
            model.to_str().unwrap(),
            "--mode",
            "weight-only",
            "-q",
        ])
        .arg("-o")
        .arg(out)
        .env("ONNX_PTQ_DIRECT_IO", direct_io)
        .output()
        .unwrap()
}

/// The acceptance bound for large models: the default decoder of `make_decoder.py` (about
/// 2.34 GB, over the 2 GiB protobuf limit) converts with peak RSS, file-backed pages included,
/// at most half its size, and the output runs in onnxruntime with the same logits.
#[test]
fn a_decoder_over_2_gib_copies_in_half_its_size_of_memory() {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "/usr/bin/time (GNU time) is missing: run `bash .ci/setup` or `apt-get install -y time`"
    );
    let root = tempfile::tempdir().unwrap();
    let (src_dir, out_dir) = (root.path().join("in"), root.path().join("out"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let started = std::time::Instant::now();
    let path = make_decoder(&src_dir, &[]);
    let generated = started.elapsed();
    let size = std::fs::metadata(&path).unwrap().len()
        + std::fs::metadata(src_dir.join("model.onnx.data"))
            .unwrap()
            .len();
    assert!(
        size > 2 << 30,
        "the model must be over 2 GiB, it is {size} bytes"
    );

    let out = out_dir.join("model.onnx");
    let child = Command::new(time)
        .arg("-v")
        .arg(std::env::current_exe().unwrap())
        .args([
            "stream_copy_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_IN, &path)
        .env(CHILD_OUT, &out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(
        child.status.success(),
        "the copy failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&child.stdout)
    );
    let field = |label: &str| time_field(&stderr, label);
    let peak_kib: u64 = field("Maximum resident set size (kbytes):")
        .parse()
        .unwrap();
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):");
    eprintln!(
        "generated {size} bytes in {generated:.1?}; copy: peak RSS {} MiB ({:.3} of the model), {wall} wall",
        peak_kib / 1024,
        (peak_kib * 1024) as f64 / size as f64
    );
    assert!(
        peak_kib * 1024 <= size / 2,
        "peak RSS {peak_kib} KiB is over half the model's {size} bytes"
    );
    let out_size = std::fs::metadata(&out).unwrap().len()
        + std::fs::metadata(out_dir.join("model.onnx.data"))
            .unwrap()
            .len();
    assert!(out_size >= size - (1 << 20), "{out_size} vs {size}");

    let same = ort_same(&path, &out, &["--seq", "2"]);
    assert_eq!(same["shape"], serde_json::json!([1, 2, 32000]), "{same}");
    assert_eq!(same["max_abs_diff"], 0.0, "{same}");
    std::fs::remove_dir_all(&out_dir).unwrap();

    // The same model through `quantize --mode weight-only`: its weights are read one at a
    // time from the input's data file, and the output's side file is written as they come.
    let q_dir = root.path().join("q");
    std::fs::create_dir_all(&q_dir).unwrap();
    let q = q_dir.join("model.int4.onnx");
    // Measured with direct I/O, which a model over half the machine's memory gets.
    let run = weight_only(true, &path, &q, "1");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "quantize failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&run.stdout)
    );
    let field = |label: &str| time_field(&stderr, label);
    let peak_kib: u64 = field("Maximum resident set size (kbytes):")
        .parse()
        .unwrap();
    let q_size = std::fs::metadata(&q).unwrap().len()
        + std::fs::metadata(q_dir.join("model.int4.onnx.data"))
            .unwrap()
            .len();
    eprintln!(
        "weight-only quantize: peak RSS {} MiB ({:.3} of the model), {} wall, output {:.3} of the model",
        peak_kib / 1024,
        (peak_kib * 1024) as f64 / size as f64,
        field("Elapsed (wall clock) time (h:mm:ss or m:ss):"),
        q_size as f64 / size as f64
    );
    assert!(
        peak_kib * 1024 <= size / 2,
        "weight-only quantize: peak RSS {peak_kib} KiB is over half the model's {size} bytes"
    );
    assert!(q_size < size / 4, "{q_size} vs {size}");
    // Read through the page cache instead, the output is the same to the byte.
    let cached_dir = root.path().join("q-cached");
    std::fs::create_dir_all(&cached_dir).unwrap();
    let cached = cached_dir.join("model.int4.onnx");
    let run = weight_only(false, &path, &cached, "0");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for (a, b) in [
        (q.clone(), cached.clone()),
        (
            q_dir.join("model.int4.onnx.data"),
            cached_dir.join("model.int4.onnx.data"),
        ),
    ] {
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{} and {} differ",
            a.display(),
            b.display()
        );
    }
    std::fs::remove_dir_all(&cached_dir).unwrap();
    let same = ort_same(&path, &q, &["--seq", "2", "--checker"]);
    assert_eq!(same["checker"], "ok", "{same}");
    assert_eq!(same["shape"], serde_json::json!([1, 2, 32000]), "{same}");
    assert!(same["cosine"].as_f64().unwrap() > 0.95, "{same}");
}
