//! The default-domain opset upgrade against its oracles: upgraded models must pass our structure
//! check and the ONNX checker (full_check), and onnxruntime must reproduce the expected outputs.
//! Cases: ONNX's node test models below opset 13 (to 13 and to 21) and from 13 to 20 (to 21),
//! hand-made legacy models covering every rewrite (`tests/py/opset_legacy.py`), the PaddleOCR
//! models that motivated the pass and the opset-9 light models of the onnx wheel. A last test
//! audits the module's change table against `onnx.defs` (`tests/py/opset_schema_diff.py`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_ptq::graph::Opsets;
use onnx_ptq::onnx::pb::ModelProto;
use onnx_ptq::onnx::{encode_model, Model};
use onnx_ptq::quantize::opset::{can_upgrade, covered_changes, upgrade_default_opset};
use onnx_ptq::validate::{check_structure, has_errors, Severity};

fn default_opset(model: &ModelProto) -> Option<i64> {
    Opsets::new(&model.opset_import).default_domain()
}

fn case_name(case: &Path) -> String {
    case.file_name().unwrap().to_string_lossy().to_string()
}

/// What a sweep over test cases found.
#[derive(Default)]
struct Sweep {
    /// Cases upgraded (to every target).
    upgraded: usize,
    /// Refused cases with the error.
    refused: BTreeMap<String, String>,
    /// Cases that onnxruntime runs at their original opset.
    runnable: usize,
    /// Runnable cases whose upgraded models all reproduce the outputs.
    matched: usize,
    /// Cases onnxruntime refuses at their opset whose upgraded models run and reproduce the
    /// expected outputs (deprecated ops).
    rescued: usize,
    /// Everything that went wrong, one line each.
    failures: Vec<String>,
    /// How often each kind of rewrite happened, by op.
    rewrites: BTreeMap<String, usize>,
}

/// Upgrades every case folder (holding `model.onnx` and `test_data_set_0`) whose default opset
/// `select` accepts to each of `targets`, and asks the oracle about the results.
fn sweep(cases: &[PathBuf], select: impl Fn(i64) -> bool, targets: &[i64]) -> Sweep {
    let out_dir = tempfile::tempdir().unwrap();
    let mut report = Sweep::default();
    let mut jobs = String::new();
    for case in cases {
        let path = case.join("model.onnx");
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
        if !default_opset(&model.proto).is_some_and(&select) {
            continue;
        }
        let name = case_name(case);
        let mut upgraded = Vec::new();
        for &target in targets {
            let mut proto = model.proto.clone();
            match upgrade_default_opset(&mut proto, target) {
                Err(e) => {
                    assert_eq!(encode_model(&proto), encode_model(&model.proto), "{name}");
                    let why = can_upgrade(&model.proto, target).unwrap_err();
                    assert_eq!(why, e.to_string(), "{name}: can_upgrade disagrees");
                    report.refused.insert(format!("{name} -> {target}"), why);
                    continue;
                }
                Ok(upgrade) => {
                    assert_eq!(upgrade.to, upgrade.from.max(target), "{name}");
                    for line in &upgrade.rewritten {
                        // "... node 'n' (Op): what" or "... Op node producing 'y': what"
                        let (label, what) = line.rsplit_once(": ").unwrap_or((line, ""));
                        let label = label.rsplit(" > ").next().unwrap_or(label);
                        let op = match label.rsplit_once(" (") {
                            Some((_, op)) => op.trim_end_matches(')'),
                            None => label.split(' ').next().unwrap_or(label),
                        };
                        *report.rewrites.entry(format!("{op}: {what}")).or_default() += 1;
                    }
                    assert_eq!(can_upgrade(&model.proto, target), Ok(()), "{name}");
                }
            }
            let errors: Vec<String> = check_structure(&proto)
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .map(ToString::to_string)
                .collect();
            if !errors.is_empty() {
                report.failures.push(format!(
                    "{name} -> {target}: structure: {}",
                    errors.join("; ")
                ));
            }
            let out = out_dir.path().join(format!("{name}_{target}.onnx"));
            std::fs::write(&out, encode_model(&proto)).unwrap();
            upgraded.push(out.display().to_string());
        }
        if upgraded.len() == targets.len() {
            report.upgraded += 1;
        }
        if !upgraded.is_empty() {
            let job = serde_json::json!({
                "case": case.display().to_string(),
                "original": path.display().to_string(),
                "upgraded": upgraded,
            });
            jobs.push_str(&format!("{job}\n"));
        }
    }
    for line in common::run_python("opset_check.py", &[], &jobs).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("oracle JSON");
        let name = case_name(Path::new(v["case"].as_str().unwrap()));
        let original = v["original"].as_str().unwrap();
        let runnable = !original.starts_with("error");
        let mut all_match = true;
        let original_checker = v["original_checker"].as_str().unwrap();
        for u in v["upgraded"].as_array().unwrap() {
            let path = u["path"].as_str().unwrap();
            let file = Path::new(path).file_name().unwrap().to_string_lossy();
            let checker = u["checker"].as_str().unwrap();
            // A checker fault the original shares (test_mvn's) is not the upgrade's.
            if !checker.is_empty() && checker != original_checker {
                report.failures.push(format!("{file}: checker: {checker}"));
            }
            let run = u["run"].as_str().unwrap();
            if !run.starts_with("match") {
                all_match = false;
                // What onnxruntime cannot run before the upgrade may stay unrunnable after it.
                if runnable || run.starts_with("mismatch") {
                    report.failures.push(format!("{file}: onnxruntime: {run}"));
                }
            }
        }
        if runnable {
            report.runnable += 1;
            report.matched += usize::from(all_match);
        } else {
            eprintln!("{name}: onnxruntime cannot run the original: {original}");
            report.rescued += usize::from(all_match);
        }
    }
    eprintln!(
        "{} upgraded, {} refused, {} runnable in onnxruntime at their opset, {} of those match; \
         {} only run after the upgrade",
        report.upgraded,
        report.refused.len(),
        report.runnable,
        report.matched,
        report.rescued
    );
    for (case, why) in &report.refused {
        eprintln!("  refused {case}: {why}");
    }
    for (what, n) in &report.rewrites {
        eprintln!("  {n:4} x {what}");
    }
    report
}

fn node_cases() -> Vec<PathBuf> {
    common::node_models()
        .into_iter()
        .map(|m| m.parent().unwrap().to_path_buf())
        .collect()
}

/// Asserts a sweep found no failure, every runnable case matched, and exactly `refused` were
/// refused (case name prefixes, each with a fragment of the reason).
fn assert_sweep(report: &Sweep, refused: &[(&str, &str)]) {
    assert!(
        report.failures.is_empty(),
        "{} failures:\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
    assert_eq!(
        report.matched, report.runnable,
        "some runnable cases did not match"
    );
    let unexpected: Vec<_> = report
        .refused
        .iter()
        .filter(|(case, why)| {
            !refused
                .iter()
                .any(|(c, w)| case.starts_with(c) && why.contains(w))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected refusals: {unexpected:#?}"
    );
    for (case, _) in refused {
        assert!(
            report.refused.keys().any(|k| k.starts_with(case)),
            "{case} was expected to be refused"
        );
    }
}

#[test]
fn node_models_below_13_upgrade_to_13_and_21() {
    let report = sweep(&node_cases(), |v| v < 13, &[13, 21]);
    // The three opset-1 models (Not-1) are older than the pass accepts.
    assert_sweep(&report, &[("test_not_", "older than opset 7")]);
    assert!(report.upgraded >= 100, "{} upgraded", report.upgraded);
}

#[test]
fn node_models_13_to_20_upgrade_to_21() {
    let report = sweep(&node_cases(), |v| (13..21).contains(&v), &[21]);
    assert_sweep(&report, &[]);
    assert!(report.upgraded >= 800, "{} upgraded", report.upgraded);
}

/// The hand-made legacy models of `tests/py/opset_legacy.py`, whose expected outputs are
/// onnxruntime's at the old opset.
#[test]
fn legacy_models_keep_their_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let listing = common::run_python("opset_legacy.py", &[dir.path().to_str().unwrap()], "");
    let cases: Vec<PathBuf> = listing.lines().map(|name| dir.path().join(name)).collect();
    assert!(cases.len() >= 40, "{} legacy cases", cases.len());
    let report = sweep(&cases, |_| true, &[13, 21]);
    assert_sweep(
        &report,
        &[
            (
                "refused_resize_10_mixed_nearest",
                "from 10 to 13: Resize node producing 'y': nearest Resize-10 with scales",
            ),
            (
                "refused_resize_10_mixed_nearest",
                "from 10 to 21: Resize node producing 'y': nearest Resize-10 with scales",
            ),
            (
                "refused_batchnorm_7_per_activation",
                "BatchNormalization node producing 'y': spatial = 0",
            ),
            (
                "refused_dropout_7_mask_read",
                "Dropout node producing 'd': mask output 'mask' is read",
            ),
        ],
    );
    assert_eq!(report.upgraded + 3, cases.len());
    // onnxruntime refuses Upsample at 10 and Scatter at 11 (deprecated); upgraded, they run.
    assert_eq!(report.runnable + 2, report.upgraded);
    assert_eq!(report.rescued, 2);
}

/// A Loop whose body holds a Resize-10 that cannot be expressed at 11 (nearest rounding up on one
/// axis and down on another).
fn loop_with_mixed_resize() -> ModelProto {
    use onnx_ptq::onnx::pb::attribute_proto::AttributeType;
    use onnx_ptq::onnx::pb::{AttributeProto, GraphProto, NodeProto, OperatorSetIdProto};
    use onnx_ptq::onnx::tensor::from_f32;
    let node = |op: &str, name: &str, inputs: &[&str], outputs: &[&str]| NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let body = GraphProto {
        name: Some("body".into()),
        node: vec![
            node("Identity", "keep", &["cond"], &["cond_out"]),
            node("Resize", "resize", &["state", "scales"], &["state_out"]),
        ],
        initializer: vec![from_f32("scales", &[4], &[1.0, 1.0, 2.0, 0.5])],
        ..Default::default()
    };
    let mut lp = node("Loop", "loop", &["n", "c", "x"], &["y"]);
    lp.attribute.push(AttributeProto {
        name: Some("body".into()),
        r#type: Some(AttributeType::Graph as i32),
        g: Some(body),
        ..Default::default()
    });
    ModelProto {
        ir_version: Some(5),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(10),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![lp],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_refused_model_is_left_untouched_and_the_error_names_the_node() {
    let original = loop_with_mixed_resize();
    let mut model = original.clone();
    let err = upgrade_default_opset(&mut model, 13)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "cannot upgrade the default-domain opset from 10 to 13: node 'loop' (Loop) attribute \
             'body' > node 'resize' (Resize): nearest Resize-10 with scales [1.0, 1.0, 2.0, 0.5]"
        ),
        "{err}"
    );
    assert_eq!(encode_model(&model), encode_model(&original));
    assert_eq!(can_upgrade(&original, 13), Err(err));
    // The node is fine up to opset 10, where it still is a Resize-10.
    assert_eq!(can_upgrade(&original, 10), Ok(()));
}

const RAPIDOCR: &str = "models/rapidocr-onnxruntime/rapidocr_onnxruntime/models";

/// Upgrades each model to 13 and 21, checks the structure, and has onnxruntime compare the
/// upgraded outputs with the original's on a random input of `shape` (`None`: the declared
/// shape); they must agree within 1e-5 and pass the ONNX checker.
fn upgrade_and_compare(models: &[(PathBuf, Option<[usize; 4]>)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = String::new();
    for (path, shape) in models {
        let file = path.file_name().unwrap().to_string_lossy();
        let model = Model::load(path).unwrap_or_else(|e| panic!("{e}"));
        for target in [13, 21] {
            let mut proto = model.proto.clone();
            let upgrade =
                upgrade_default_opset(&mut proto, target).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("{file} {} -> {}:", upgrade.from, upgrade.to);
            for line in &upgrade.rewritten {
                eprintln!("  {line}");
            }
            assert_eq!(default_opset(&proto), Some(target));
            let findings = check_structure(&proto);
            assert!(!has_errors(&findings), "{file} -> {target}: {findings:?}");
            let out = dir.path().join(format!("{target}_{file}"));
            std::fs::write(&out, encode_model(&proto)).unwrap();
            let job = serde_json::json!({
                "original": path.display().to_string(),
                "upgraded": out.display().to_string(),
                "shape": shape,
            });
            jobs.push_str(&format!("{job}\n"));
        }
    }
    let lines = common::run_python("opset_compare.py", &[], &jobs);
    assert_eq!(lines.lines().count(), 2 * models.len());
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("oracle JSON");
        let name = v["upgraded"].as_str().unwrap();
        assert_eq!(v["checker"], "", "{name}: checker");
        assert_eq!(v["error"], "", "{name}: onnxruntime");
        let diff = v["max_abs_diff"].as_f64().unwrap();
        eprintln!("{name}: max |upgraded - original| = {diff:e}");
        assert!(diff <= 1e-5, "{name}: outputs differ by {diff}");
    }
}

#[test]
fn paddleocr_models_upgrade_and_keep_their_outputs() {
    let models = [
        ("ch_PP-OCRv4_det_infer.onnx", 12, [1, 3, 64, 96]),
        ("ch_ppocr_mobile_v2.0_cls_infer.onnx", 11, [1, 3, 48, 192]),
        ("ch_PP-OCRv4_rec_infer.onnx", 12, [1, 3, 48, 320]),
    ];
    let mut paths = Vec::new();
    for (file, opset, shape) in models {
        let path = common::require(common::cache_dir().join(RAPIDOCR).join(file));
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default_opset(&model.proto), Some(opset), "{file}");
        paths.push((path, Some(shape)));
    }
    upgrade_and_compare(&paths);
}

/// The light models of the onnx wheel are the opset-9, IR-3 ResNet-style models that ONNX
/// Runtime's quantizer turns invalid.
#[test]
fn opset_9_light_models_upgrade_and_keep_their_outputs() {
    let models: Vec<_> = common::light_models()
        .into_iter()
        .map(|path| (path, None))
        .collect();
    assert!(models.len() >= 9, "{} light models", models.len());
    upgrade_and_compare(&models);
}

/// Signature changes between opsets 7 and 21 that need no rewrite, with the reason.
const COMPATIBLE: &[(&str, i64, &str)] = &[
    (
        "ArgMax",
        12,
        "select_last_index defaults to the old behaviour",
    ),
    (
        "ArgMin",
        12,
        "select_last_index defaults to the old behaviour",
    ),
    ("AveragePool", 10, "ceil_mode defaults to 0"),
    ("AveragePool", 19, "dilations default to 1"),
    ("Cast", 19, "saturate only concerns float8"),
    ("CastLike", 19, "saturate only concerns float8"),
    ("Constant", 11, "value became optional among alternatives"),
    ("Constant", 12, "value_* alternatives added"),
    ("DepthToSpace", 11, "mode defaults to DCR, the old layout"),
    ("DequantizeLinear", 13, "axis added; old scales are scalars"),
    ("DequantizeLinear", 21, "block_size defaults to 0"),
    ("GRU", 14, "layout defaults to 0"),
    ("GatherND", 12, "batch_dims defaults to 0"),
    ("Gemm", 11, "C became optional"),
    ("LSTM", 14, "layout defaults to 0"),
    (
        "LpPool",
        18,
        "ceil_mode and dilations default to the old behaviour",
    ),
    ("MaxPool", 8, "Indices output and storage_order added"),
    (
        "MaxPool",
        10,
        "ceil_mode and dilations default to the old behaviour",
    ),
    ("OptionalHasElement", 18, "input became optional"),
    ("Pad", 18, "axes input added, optional"),
    ("QuantizeLinear", 13, "axis added; old scales are scalars"),
    ("QuantizeLinear", 19, "saturate only concerns float8"),
    (
        "QuantizeLinear",
        21,
        "block_size and output_dtype default to the old behaviour",
    ),
    ("RNN", 14, "layout defaults to 0"),
    ("Reshape", 14, "allowzero defaults to 0"),
    ("Resize", 13, "roi and scales became optional"),
    (
        "Resize",
        18,
        "antialias, axes, keep_aspect_ratio_policy default to the old behaviour",
    ),
    ("ScatterElements", 16, "reduction defaults to none"),
    ("ScatterND", 16, "reduction defaults to none"),
    ("Shape", 15, "start and end default to the whole shape"),
    (
        "TopK",
        11,
        "largest and sorted default to the old behaviour",
    ),
];

/// Experimental ops have no schema at all; the table refuses them where onnxruntime drops them.
const EXPERIMENTAL: &[&str] = &[
    "Affine",
    "ConstantFill",
    "Crop",
    "DynamicSlice",
    "GRUUnit",
    "GivenTensorFill",
    "ImageScaler",
    "ParametricSoftplus",
    "Scale",
    "ScaledTanh",
];

/// The module's table against `onnx.defs`: every signature change from opset 8 to 21 is either
/// handled (or refused) by the pass or listed in `COMPATIBLE` with its reason.
#[test]
fn the_change_table_covers_every_signature_change_up_to_21() {
    let covered: Vec<(&str, i64)> = covered_changes().collect();
    let mut diffs = Vec::new();
    let mut missing = Vec::new();
    for line in common::run_python("opset_schema_diff.py", &[], "").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("oracle JSON");
        let op = v["op"].as_str().unwrap().to_string();
        let since = v["since"].as_i64().unwrap();
        let known = covered.contains(&(op.as_str(), since))
            || COMPATIBLE.iter().any(|&(o, s, _)| o == op && s == since);
        if !known {
            missing.push(format!("{op}-{since}: {}", v["changes"]));
        }
        diffs.push((op, since));
    }
    assert!(diffs.len() > 50, "{} schema changes", diffs.len());
    assert!(
        missing.is_empty(),
        "unhandled changes:\n{}",
        missing.join("\n")
    );
    for &(op, since) in &covered {
        let in_schema = diffs.iter().any(|(o, s)| o == op && *s == since);
        assert!(
            in_schema || EXPERIMENTAL.contains(&op),
            "{op}-{since} is in the table but not a schema change"
        );
    }
    for &(op, since, _) in COMPATIBLE {
        assert!(
            diffs.iter().any(|(o, s)| o == op && *s == since),
            "{op}-{since} is listed as compatible but is not a schema change"
        );
    }
}
