//! The command line: the clap definitions, and `run`, which turns parsed arguments into library
//! calls and the result into an [`Outcome`]. Printing lives in [`print`].

pub mod args;
mod print;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use args::{BoundArgs, CalibArgs, DataArgs};
use onnx_ptq::calibrate::data::SAMPLE_EXTENSIONS;
use onnx_ptq::calibrate::{Calibrator, InputSpec, Ranges};
use onnx_ptq::compare::html::{self, HtmlContext};
use onnx_ptq::compare::{compare_models, CompareConfig};
use onnx_ptq::onnx::{external_data_path, Model, OutputPlan, PendingFiles, SaveOptions};
use onnx_ptq::quantize::{AccuracyConfig, Mode, PlanConfig, QuantizeConfig, TensorOverride};
use onnx_ptq::validate::{self, ExecOptions};

/// Worst layers whose values the HTML report draws as histograms.
const HTML_HISTOGRAMS: usize = 6;

/// Post-training int8 quantization of ONNX models.
#[derive(Parser, Debug)]
#[command(name = "onnx-ptq", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Quantize a float model: plan, rewrite, validate, then write.
    ///
    /// Modes: `static` (default) calibrates activation ranges on --calib data and writes
    /// QuantizeLinear/DequantizeLinear pairs, so ONNX Runtime runs Conv/MatMul/Gemm as int8
    /// kernels; best for CNNs. `dynamic` needs no data: MatMul/Gemm weights become int8, LSTMs
    /// become DynamicQuantizeLSTM, embedding tables 8-bit, and activations are quantized at
    /// run time from their actual range; best for transformers and recurrent nets, whose
    /// activations have outliers or padding masks no calibrated range fits. `weight-only`
    /// needs no data either: MatMul/Gemm weights in 4 bits (tables 8) in blocks of 32 along
    /// the reduction axis, activations float; the standard for LLMs and other models whose
    /// size is their weights.
    #[command(
        after_help = "Examples:\n  onnx-ptq quantize fixtures/cnn.onnx --calib samples/ -o cnn.int8.onnx\n  onnx-ptq quantize model.onnx --calib photos/ --preset imagenet --method entropy -o m.int8.onnx --report report.json\n  onnx-ptq quantize bert.onnx --mode dynamic -o bert.int8.onnx\n  onnx-ptq quantize bert.onnx --mode dynamic --calib sentences/ --min-cosine 0.99 -o bert.int8.onnx\n  onnx-ptq quantize llm.onnx --mode weight-only -o llm.int4.onnx\n  onnx-ptq quantize llm.onnx --mode weight-only --bits 8 --block per-channel --form standard -o llm.int8.onnx"
    )]
    Quantize {
        /// The float ONNX model (never modified).
        model: PathBuf,
        /// static (calibrated QDQ; needs --calib), dynamic or weight-only (no calibration
        /// data).
        #[arg(long, default_value = "static", value_parser = ["static", "dynamic", "weight-only"])]
        mode: String,
        #[command(flatten)]
        weight_only: args::WeightOnlyArgs,
        /// Dynamic mode: int8 weights in [-63, 63] instead of [-127, 127]. Use it when the
        /// model will run on x86 CPUs with AVX2 but without VNNI (before Intel Cascade Lake /
        /// AMD Zen 4): there ONNX Runtime's uint8 x int8 kernel sums products in pairs into
        /// int16, which saturates with full-range weights and silently corrupts outputs.
        #[arg(long)]
        reduce_range: bool,
        #[command(flatten)]
        calib: CalibArgs,
        /// Where to write the int8 model.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Ranges from `onnx-ptq calibrate` instead of calibrating again (the data is still used
        /// for the validation run and the fp32-vs-int8 report).
        #[arg(long, value_name = "JSON")]
        ranges: Option<PathBuf>,
        /// Per-tensor weights instead of per-channel.
        #[arg(long)]
        per_tensor: bool,
        /// Static mode: rescale the channels of Conv → (Relu | PRelu) → Conv chains so that
        /// each channel's weight range is the same on both sides (cross-layer equalization: the
        /// same function, weights that quantize better). By default on exactly when weights are
        /// per tensor (measured +3.7 to +8.7 dB there; with per-channel weights it cost 2-4 dB
        /// on two of the measured models).
        #[arg(long, overrides_with = "no_equalize")]
        equalize: bool,
        /// Static mode: no cross-layer equalization, even with per-tensor weights.
        #[arg(long, overrides_with = "equalize")]
        no_equalize: bool,
        /// Node names to leave float, comma-separated.
        #[arg(long, value_delimiter = ',')]
        exclude_nodes: Vec<String>,
        /// Op types to leave float, comma-separated.
        #[arg(long, value_delimiter = ',')]
        exclude_op_types: Vec<String>,
        /// Also write the summary as JSON.
        #[arg(long, value_name = "JSON")]
        report: Option<PathBuf>,
        /// Also write an HTML page comparing the float and the written model on the
        /// --compare-samples first samples (as `compare --html`; needs --calib).
        #[arg(long, value_name = "HTML")]
        report_html: Option<PathBuf>,
        /// Calibration samples the fp32-vs-int8 figures of the summary are computed on.
        #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        compare_samples: u64,
        /// Per-tensor settings (JSON): {"tensor": {"range": [lo, hi], "type": "u8"|"s8"|"u16"|"s16",
        /// "symmetric": true, "keep_float": true}, ...}.
        #[arg(long, value_name = "JSON")]
        overrides: Option<PathBuf>,
        /// Accuracy-aware mode: with a bound, the most sensitive nodes return to float, one at
        /// a time, until the bound is met on held-out calibration samples (exit 1 if it cannot
        /// be met; the best model found is still written).
        #[command(flatten)]
        bounds: BoundArgs,
        /// Calibration samples set aside to measure the accuracy bound on (default: a quarter,
        /// at least 1).
        #[arg(long, value_name = "N")]
        held_out: Option<usize>,
        /// With a bound: raise the most sensitive nodes' activations to 16 bits (the model is
        /// upgraded to opset 21) instead of returning them to float.
        #[arg(long)]
        allow_int16: bool,
    },
    /// Compare a float model with its quantized version on data: per-output errors and, with
    /// --per-layer, the error of every quantized tensor, worst first.
    ///
    /// Exit code 1 when a bound (--min-sqnr, --min-cosine, --max-top1-drop) is missed, so that
    /// a CI job can refuse a model.
    #[command(
        after_help = "Examples:\n  onnx-ptq compare model.onnx model.int8.onnx --data samples/ --per-layer\n  onnx-ptq compare m.onnx m.int8.onnx --data held_out/ --min-sqnr 20 --max-top1-drop 0.5 --json cmp.json"
    )]
    Compare {
        /// The float model.
        float: PathBuf,
        /// Its quantized version.
        int8: PathBuf,
        /// Samples to run both models on (any kind --calib accepts).
        #[arg(long, value_name = "PATH")]
        data: PathBuf,
        #[command(flatten)]
        data_args: DataArgs,
        /// Also compare every quantized tensor with the float tensor of the same name.
        #[arg(long)]
        per_layer: bool,
        /// Rows of the per-layer table printed (the JSON has them all).
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Timed runs per model for the latency figures (tract, first sample; 0: none).
        #[arg(long, default_value_t = 5)]
        latency_runs: usize,
        /// Also write the numbers as JSON.
        #[arg(long, value_name = "JSON")]
        json: Option<PathBuf>,
        /// Also write a self-contained HTML page: the output metrics, a chart of every
        /// quantized layer's SQNR in graph order, value histograms of the worst layers (implies
        /// --per-layer).
        #[arg(long, value_name = "HTML")]
        html: Option<PathBuf>,
        #[command(flatten)]
        bounds: BoundArgs,
    },
    /// Run calibration data through the model and write each float tensor's range as JSON.
    ///
    /// The ranges file is a calibration cache: `quantize --ranges` reads it back instead of
    /// running the data again.
    #[command(
        after_help = "Examples:\n  onnx-ptq calibrate model.onnx --calib samples/ -o ranges.json\n  onnx-ptq calibrate resnet.onnx --calib photos/ --preset imagenet --method entropy -o ranges.json\n  onnx-ptq calibrate bert.onnx --calib test_data/ --method percentile --percentile 99.99 -o r.json"
    )]
    Calibrate {
        /// The ONNX model file.
        model: PathBuf,
        #[command(flatten)]
        calib: CalibArgs,
        /// Where to write the ranges (JSON).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Summarise a model: metadata, inputs/outputs, ops, parameters and where weights live.
    #[command(
        after_help = "Example:\n  onnx-ptq inspect fixtures/cnn.onnx\n  onnx-ptq inspect model.onnx --json > summary.json"
    )]
    Inspect {
        /// The ONNX model file.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a model's structure, then run it once in tract.
    ///
    /// Exit code 0 when both checks pass, 1 when the model is invalid, 2 when it cannot be read.
    #[command(
        after_help = "Example:\n  onnx-ptq validate fixtures/cnn.onnx\n  onnx-ptq validate detector.onnx --dim height=640 --dim width=640 --json"
    )]
    Validate {
        /// The ONNX model file.
        model: PathBuf,
        /// Value of a symbolic input dimension for the execution check, as NAME=VALUE (repeatable).
        #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim)]
        dims: Vec<(String, i64)>,
        /// Value of symbolic dimensions not given with --dim.
        #[arg(long, default_value_t = 1)]
        default_dim: i64,
        /// Only check the structure; do not run the model in tract.
        #[arg(long)]
        no_exec: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_dim(s: &str) -> Result<(String, i64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=VALUE"))?;
    let value: i64 = value
        .parse()
        .map_err(|_| format!("'{value}' is not a whole number"))?;
    if value < 1 {
        return Err(format!("dimension {name} must be at least 1, got {value}"));
    }
    Ok((name.to_string(), value))
}

/// What a successful run concluded.
pub enum Outcome {
    /// Everything asked for holds.
    Ok,
    /// The model is invalid, or misses an accuracy bound.
    Failed,
}

/// Checks every destination of a command against its inputs and each other before any work
/// starts, and installs the handler that removes in-flight temporaries on SIGINT/SIGTERM.
fn check_outputs(plan: &OutputPlan) -> Result<()> {
    plan.check()?;
    onnx_ptq::onnx::remove_temporaries_on_signal()?;
    Ok(())
}

/// `value` as pretty JSON.
fn json_bytes(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).context("encoding JSON")
}

fn read_overrides(path: &Path) -> Result<BTreeMap<String, TensorOverride>> {
    onnx_ptq::onnx::require_readable_file(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{}: not an overrides file ({{\"tensor\": {{\"range\": [lo, hi], \"type\": \"u8\", \"s8\", \"u16\" or \"s16\", \"symmetric\": bool, \"keep_float\": bool}}}})",
            path.display()
        )
    })
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<Outcome> {
    // A malformed budget is a usage error, reported before any work rather than by the first
    // tract run.
    onnx_ptq::memory::Budget::from_environment().map_err(onnx_ptq::Error::Usage)?;
    match cli.command {
        Command::Quantize {
            model,
            mode,
            weight_only,
            reduce_range,
            calib,
            output,
            ranges,
            per_tensor,
            equalize,
            no_equalize,
            exclude_nodes,
            exclude_op_types,
            report,
            report_html,
            compare_samples,
            overrides,
            bounds,
            held_out,
            allow_int16,
        } => {
            let mut plan = OutputPlan::new();
            plan.input("the input model", &model);
            if let Some(data) = &calib.calib {
                plan.data_input("the calibration data", data, SAMPLE_EXTENSIONS);
            }
            if let Some(p) = &ranges {
                plan.input("the --ranges file", p);
            }
            if let Some(p) = &overrides {
                plan.input("the --overrides file", p);
            }
            plan.output("-o", &output);
            if let Some(side) = external_data_path(&output) {
                plan.conditional_output("the external-data file of -o", &side);
            }
            if let Some(p) = &report {
                plan.output("--report", p);
            }
            if let Some(p) = &report_html {
                plan.output("--report-html", p);
            }
            check_outputs(&plan)?;
            anyhow::ensure!(
                report_html.is_none() || calib.calib.is_some(),
                "--report-html compares the float and the quantized model on data: give --calib"
            );
            let calibration = calib.config()?;
            let bounds = bounds.bounds()?;
            let overrides = overrides.map(|p| read_overrides(&p)).transpose()?;
            let mode = match mode.as_str() {
                "dynamic" => Mode::Dynamic,
                "weight-only" => Mode::WeightOnly,
                _ => Mode::Static,
            };
            // Weight-only mode without data never needs the float model whole: its weights
            // stay on disk and are read one at a time, so a model larger than memory converts.
            let loaded = if mode == Mode::WeightOnly && calib.calib.is_none() {
                Model::load_lazy(&model)?
            } else {
                Model::load(&model)?
            };
            plan.inputs(
                "an external-data file of the input model",
                &loaded.external_files,
            )
            .check()?;
            let inputs = InputSpec::of_model(&loaded.proto)?;
            let source = calib.open(&inputs)?;
            let weight_only = weight_only.config(mode, calib.calib.is_some())?;
            anyhow::ensure!(
                mode == Mode::Dynamic || !reduce_range,
                "--reduce-range applies to --mode dynamic (static mode's int8 kernels do not saturate)"
            );
            anyhow::ensure!(
                mode == Mode::Static || ranges.is_none(),
                "--ranges applies to static mode: dynamic mode computes activation ranges at run time"
            );
            anyhow::ensure!(
                mode == Mode::Static || (overrides.is_none() && !allow_int16),
                "--overrides and --allow-int16 apply to static mode's activations"
            );
            let ranges = ranges.map(|p| Ranges::load(&p)).transpose()?;
            let accuracy = (!bounds.is_empty()).then(|| AccuracyConfig {
                bounds,
                held_out: held_out.unwrap_or((source.as_ref().map_or(0, |s| s.len()) / 4).max(1)),
                threads: calibration.threads,
                int16: allow_int16,
            });
            anyhow::ensure!(
                !allow_int16 || accuracy.is_some(),
                "--allow-int16 applies to the accuracy search: give a bound (--min-sqnr, --min-cosine or --max-top1-drop)"
            );
            let plan_config = PlanConfig {
                mode,
                reduce_range,
                weight_only,
                activations: calib.act_type(),
                per_channel: !per_tensor,
                exclude_nodes: exclude_nodes.into_iter().collect(),
                exclude_op_types: exclude_op_types.into_iter().collect(),
                overrides: overrides.unwrap_or_default(),
                fallback: Default::default(),
                equalize: match (equalize, no_equalize) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
            };
            onnx_ptq::quantize::check_exclusions(&loaded.proto, &plan_config)?;
            let config = QuantizeConfig {
                plan: plan_config,
                calibration,
                compare_samples: compare_samples as usize,
                accuracy,
            };
            let (converted, summary) = onnx_ptq::quantize::quantize_for(
                loaded,
                &output,
                source.as_ref(),
                ranges,
                &config,
            )?;
            // Compared before anything is written, so that a failure leaves no file.
            let html_page = match (&report_html, &source) {
                (Some(path), Some(source)) => {
                    let comparison = compare_models(
                        &converted.float.proto,
                        &converted.proto,
                        &source.head(compare_samples as usize),
                        &CompareConfig {
                            per_layer: true,
                            latency_runs: 0,
                            histograms: HTML_HISTOGRAMS,
                        },
                    )?;
                    let context = HtmlContext {
                        title: format!("onnx-ptq quantize: {}", model.display()),
                        facts: vec![
                            ("float model".into(), model.display().to_string()),
                            ("quantized model".into(), output.display().to_string()),
                            (
                                "mode".into(),
                                format!(
                                    "{:?}, {} on {} samples",
                                    summary.mode,
                                    summary.calibration_method,
                                    summary.calibration_samples
                                )
                                .to_lowercase(),
                            ),
                        ],
                    };
                    Some((path, html::render(&comparison, &context)))
                }
                _ => None,
            };
            // The model (and side file) and the report appear together, or none of them.
            let mut pending = PendingFiles::new();
            let written = converted.stage(&SaveOptions::default(), &mut pending)?;
            if let Some(path) = &report {
                pending.add(path, &json_bytes(&summary)?)?;
            }
            if let Some((path, page)) = html_page {
                pending.add(path, page.as_bytes())?;
            }
            pending.commit()?;
            print::quantize_summary(&summary, &written.path);
            print::warnings(&summary);
            Ok(match &summary.accuracy {
                Some(a) if !a.met => Outcome::Failed,
                _ => Outcome::Ok,
            })
        }
        Command::Compare {
            float,
            int8,
            data,
            data_args,
            per_layer,
            top_k,
            latency_runs,
            json,
            html,
            bounds,
        } => {
            let mut plan = OutputPlan::new();
            plan.input("the float model", &float)
                .input("the int8 model", &int8)
                .data_input("the --data samples", &data, SAMPLE_EXTENSIONS);
            if let Some(p) = &json {
                plan.output("--json", p);
            }
            if let Some(p) = &html {
                plan.output("--html", p);
            }
            check_outputs(&plan)?;
            let compare_config = CompareConfig {
                per_layer: per_layer || html.is_some(),
                latency_runs,
                histograms: if html.is_some() { HTML_HISTOGRAMS } else { 0 },
            };
            compare_config.check()?;
            let bounds = bounds.bounds()?;
            let a = Model::load(&float)?;
            let b = Model::load(&int8)?;
            plan.inputs(
                "an external-data file of the float model",
                &a.external_files,
            )
            .inputs("an external-data file of the int8 model", &b.external_files)
            .check()?;
            let source = data_args.open(&data, &InputSpec::of_model(&a.proto)?)?;
            let report = compare_models(&a.proto, &b.proto, &source, &compare_config)?;
            let violations = if bounds.is_empty() {
                Vec::new()
            } else {
                bounds.check(&report.outputs)?
            };
            // The JSON and the HTML appear together, or neither.
            let mut pending = PendingFiles::new();
            if let Some(path) = json {
                let value = serde_json::json!({
                    "float": float.display().to_string(),
                    "int8": int8.display().to_string(),
                    "report": report,
                    "bounds": bounds,
                    "violations": violations,
                    "passed": violations.is_empty(),
                });
                pending.add(&path, &json_bytes(&value)?)?;
            }
            if let Some(path) = &html {
                let mut facts = vec![
                    ("float model".to_string(), float.display().to_string()),
                    ("quantized model".to_string(), int8.display().to_string()),
                    ("data".to_string(), data.display().to_string()),
                ];
                if !violations.is_empty() {
                    let missed: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
                    facts.push(("bounds missed".into(), missed.join("; ")));
                }
                let context = HtmlContext {
                    title: format!("onnx-ptq compare: {}", int8.display()),
                    facts,
                };
                pending.add(path, html::render(&report, &context).as_bytes())?;
            }
            pending.commit()?;
            print::compare_table(&report, top_k, &violations);
            Ok(if violations.is_empty() {
                Outcome::Ok
            } else {
                Outcome::Failed
            })
        }
        Command::Calibrate {
            model,
            calib,
            output,
        } => {
            let mut plan = OutputPlan::new();
            plan.input("the input model", &model);
            if let Some(data) = &calib.calib {
                plan.data_input("the calibration data", data, SAMPLE_EXTENSIONS);
            }
            plan.output("-o", &output);
            check_outputs(&plan)?;
            let config = calib.config()?;
            let loaded = Model::load(&model)?;
            plan.inputs(
                "an external-data file of the input model",
                &loaded.external_files,
            )
            .check()?;
            let mut calibrator = Calibrator::new(&loaded.proto, &model.display().to_string())?;
            if calib.bench_no_observe {
                calibrator.disable_observation();
            }
            let source = calib
                .open(calibrator.inputs())?
                .context("calibrate needs calibration data: --calib PATH")?;
            let ranges = calibrator.calibrate(&source, &config)?;
            ranges.save(&output)?;
            eprintln!(
                "{} tensors calibrated with {} on {} samples in {:.2} s; ranges written to {}",
                ranges.tensors.len(),
                config.method.name(),
                ranges.samples,
                ranges.seconds,
                output.display()
            );
            Ok(Outcome::Ok)
        }
        Command::Inspect { model, json } => {
            let loaded = Model::load(&model)?;
            let summary = onnx_ptq::inspect::inspect(&loaded);
            if json {
                print::out(&format!("{}\n", serde_json::to_string_pretty(&summary)?));
            } else {
                print::out(&summary.to_string());
            }
            Ok(Outcome::Ok)
        }
        Command::Validate {
            model,
            dims,
            default_dim,
            no_exec,
            json,
        } => {
            let loaded = Model::load(&model)?;
            let options = ExecOptions {
                dims: dims.into_iter().collect::<BTreeMap<_, _>>(),
                default_dim,
            };
            options.check(&loaded.proto)?;
            let report = validate::validate(&loaded.proto, (!no_exec).then_some(&options));
            if json {
                let value = serde_json::json!({
                    "model": model.display().to_string(),
                    "valid": report.is_valid(),
                    "report": report,
                });
                print::out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&value).context("encoding JSON")?
                ));
            } else {
                print::out(&format!("{}\n{report}", model.display()));
            }
            Ok(if report.is_valid() {
                Outcome::Ok
            } else {
                Outcome::Failed
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dims_parse_as_name_value() {
        let cli =
            Cli::try_parse_from(["onnx-ptq", "validate", "m.onnx", "--dim", "batch=4"]).unwrap();
        match cli.command {
            Command::Validate { dims, .. } => assert_eq!(dims, vec![("batch".to_string(), 4)]),
            _ => panic!("expected validate"),
        }
        assert!(Cli::try_parse_from(["onnx-ptq", "validate", "m.onnx", "--dim", "batch"]).is_err());
        assert!(Cli::try_parse_from(["onnx-ptq", "validate", "m.onnx", "--dim", "b=0"]).is_err());
    }

    #[test]
    fn compare_takes_data_and_bounds() {
        let cli = Cli::try_parse_from([
            "onnx-ptq",
            "compare",
            "a.onnx",
            "b.onnx",
            "--data",
            "d/",
            "--per-layer",
            "--min-sqnr",
            "20",
            "--max-top1-drop",
            "0",
            "--bound-output",
            "probs",
        ])
        .unwrap();
        match cli.command {
            Command::Compare {
                per_layer, bounds, ..
            } => {
                assert!(per_layer);
                let b = bounds.bounds().unwrap();
                assert_eq!(b.min_sqnr_db, Some(20.0));
                assert_eq!(b.max_top1_drop, Some(0.0));
                assert_eq!(b.outputs, vec!["probs".to_string()]);
            }
            _ => panic!("expected compare"),
        }
        assert!(Cli::try_parse_from(["onnx-ptq", "compare", "a.onnx", "b.onnx"]).is_err());
        let cli = Cli::try_parse_from([
            "onnx-ptq",
            "compare",
            "a",
            "b",
            "--data",
            "d",
            "--min-cosine",
            "1.5",
        ])
        .unwrap();
        match cli.command {
            Command::Compare { bounds, .. } => assert!(bounds.bounds().is_err()),
            _ => panic!("expected compare"),
        }
    }

    #[test]
    fn quantize_bounds_turn_on_the_accuracy_search() {
        let cli = Cli::try_parse_from([
            "onnx-ptq",
            "quantize",
            "m.onnx",
            "--calib",
            "d/",
            "-o",
            "q.onnx",
            "--min-cosine",
            "0.99",
            "--held-out",
            "4",
            "--overrides",
            "o.json",
        ])
        .unwrap();
        match cli.command {
            Command::Quantize {
                bounds,
                held_out,
                overrides,
                ..
            } => {
                assert_eq!(bounds.bounds().unwrap().min_cosine, Some(0.99));
                assert_eq!(held_out, Some(4));
                assert_eq!(overrides, Some(PathBuf::from("o.json")));
            }
            _ => panic!("expected quantize"),
        }
    }

    #[test]
    fn overrides_parse_and_refuse_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.json");
        std::fs::write(
            &p,
            r#"{"x": {"range": [-1, 2], "type": "s8"}, "y": {"keep_float": true}}"#,
        )
        .unwrap();
        let o = read_overrides(&p).unwrap();
        assert_eq!(o["x"].range, Some((-1.0, 2.0)));
        assert_eq!(o["x"].ty, Some(onnx_ptq::quantize::ActType::S8));
        assert!(o["y"].keep_float);
        std::fs::write(&p, r#"{"x": {"rnage": [0, 1]}}"#).unwrap();
        let e = format!("{:#}", read_overrides(&p).unwrap_err());
        assert!(e.contains("rnage") && e.contains("o.json"), "{e}");
    }
}
