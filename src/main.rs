//! The `onnx-ptq` command line: parses arguments, calls the library, prints, and maps the result
//! to an exit code (0 ok, 1 the model is invalid, 2 usage or I/O error).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use onnx_ptq::calibrate::{
    CalibrationConfig, Calibrator, DataSource, ImagePreprocess, QuantTarget, RangeMethod,
};
use onnx_ptq::onnx::Model;
use onnx_ptq::validate::{self, ExecOptions};

/// Post-training int8 quantization of ONNX models.
#[derive(Parser, Debug)]
#[command(name = "onnx-ptq", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Quantize a float model to int8 QDQ: calibrate, plan, rewrite, validate, then write.
    #[command(
        after_help = "Examples:\n  onnx-ptq quantize fixtures/cnn.onnx --calib samples/ -o cnn.int8.onnx\n  onnx-ptq quantize model.onnx --calib photos/ --preset imagenet --method entropy -o m.int8.onnx --report report.json"
    )]
    Quantize {
        /// The float ONNX model (never modified).
        model: PathBuf,
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
        /// Node names to leave float, comma-separated.
        #[arg(long, value_delimiter = ',')]
        exclude_nodes: Vec<String>,
        /// Op types to leave float, comma-separated.
        #[arg(long, value_delimiter = ',')]
        exclude_op_types: Vec<String>,
        /// Also write the summary as JSON.
        #[arg(long, value_name = "JSON")]
        report: Option<PathBuf>,
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

/// Calibration data and range options, shared by the commands that calibrate.
#[derive(clap::Args, Debug)]
struct CalibArgs {
    /// Calibration data: a folder of .npz (or .npy for one input), one stacked .npy, an ONNX
    /// test-data folder (test_data_set_*/input_*.pb), or a folder of PNG/JPEG images.
    #[arg(long, value_name = "PATH")]
    calib: PathBuf,
    /// Force the kind of data instead of detecting it: npz, npy, npy-stack, test-data, images.
    #[arg(long, value_name = "KIND")]
    data_kind: Option<onnx_ptq::calibrate::SourceKind>,
    /// Use only the first N samples (in sorted order).
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// Range method: minmax, percentile, entropy or mse.
    #[arg(long, default_value = "minmax")]
    method: String,
    /// Percentile for --method percentile.
    #[arg(long, default_value_t = 99.999)]
    percentile: f64,
    /// Histogram bins for percentile, entropy and mse.
    #[arg(long, default_value_t = onnx_ptq::calibrate::observer::DEFAULT_BINS)]
    bins: usize,
    /// Activation type the ranges are searched for: u8 (asymmetric) or s8 (symmetric).
    #[arg(long, default_value = "u8", value_parser = ["u8", "s8"])]
    activations: String,
    /// Worker threads (each runs whole samples).
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Benchmarks only: run the samples without observing (plain tract inference).
    #[arg(long, hide = true)]
    bench_no_observe: bool,
    /// Image preprocessing preset: imagenet or yolo (other image flags override its values).
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Image size as WIDTHxHEIGHT (default: the model input's static size).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// Image resize mode: stretch, letterbox or center-crop.
    #[arg(long, value_name = "MODE")]
    resize: Option<onnx_ptq::calibrate::data::ResizeMode>,
    /// Image channel order: rgb or bgr.
    #[arg(long, value_name = "ORDER")]
    channels: Option<onnx_ptq::calibrate::data::ChannelOrder>,
    /// Multiply pixel values (0-255) by this before mean/std, e.g. 0.00392156862745098 (1/255).
    #[arg(long)]
    scale: Option<f32>,
    /// Per-channel mean subtracted after scaling, as R,G,B.
    #[arg(long, value_name = "R,G,B", value_parser = parse_triple)]
    mean: Option<[f32; 3]>,
    /// Per-channel std divided by after the mean, as R,G,B.
    #[arg(long, value_name = "R,G,B", value_parser = parse_triple)]
    std: Option<[f32; 3]>,
    /// Image tensor layout: nchw or nhwc.
    #[arg(long)]
    layout: Option<onnx_ptq::calibrate::data::Layout>,
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}' is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| v.trim().parse::<u32>().ok().filter(|&v| v > 0);
    match (parse(w), parse(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(format!(
            "'{s}' is not WIDTHxHEIGHT with positive whole numbers"
        )),
    }
}

fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{s}' is not three numbers separated by commas"))?;
    <[f32; 3]>::try_from(v).map_err(|_| format!("'{s}' is not three numbers separated by commas"))
}

impl CalibArgs {
    fn image_preprocess(&self) -> Result<ImagePreprocess> {
        let mut p = match &self.preset {
            Some(name) => ImagePreprocess::preset(name)?,
            None => ImagePreprocess::default(),
        };
        p.size = self.size.or(p.size);
        p.resize = self.resize.unwrap_or(p.resize);
        p.channel_order = self.channels.unwrap_or(p.channel_order);
        p.scale = self.scale.unwrap_or(p.scale);
        p.mean = self.mean.unwrap_or(p.mean);
        p.std = self.std.unwrap_or(p.std);
        p.layout = self.layout.unwrap_or(p.layout);
        Ok(p)
    }

    fn config(&self) -> Result<CalibrationConfig> {
        let mut method: RangeMethod = self.method.parse().map_err(anyhow::Error::msg)?;
        if let RangeMethod::Percentile { percentile } = &mut method {
            anyhow::ensure!(
                self.percentile > 50.0 && self.percentile <= 100.0,
                "--percentile must be in (50, 100], got {}",
                self.percentile
            );
            *percentile = self.percentile;
        }
        let target = match self.activations.as_str() {
            "s8" => QuantTarget::S8_SYMMETRIC,
            _ => QuantTarget::U8,
        };
        Ok(CalibrationConfig {
            method,
            target,
            bins: self.bins,
            threads: self.threads.max(1),
            progress: !self.quiet,
        })
    }

    fn open(&self, inputs: &[onnx_ptq::calibrate::InputSpec]) -> Result<DataSource> {
        let image = self.image_preprocess()?;
        Ok(DataSource::open(
            &self.calib,
            self.data_kind,
            inputs,
            Some(&image),
            self.samples,
        )?)
    }
}

fn print_summary(s: &onnx_ptq::quantize::QuantizeReport, out: &std::path::Path) {
    println!("wrote {}", out.display());
    println!(
        "size: {} -> {} ({:.2}x)",
        onnx_ptq::inspect::human_bytes(s.bytes_before),
        onnx_ptq::inspect::human_bytes(s.bytes_after),
        s.bytes_after as f64 / s.bytes_before.max(1) as f64
    );
    if s.opset_after != s.opset_before {
        println!("opset: {} -> {}", s.opset_before, s.opset_after);
    }
    if let Some(why) = &s.per_tensor_reason {
        println!("per-tensor weights: {why}");
    }
    println!(
        "calibration: {} on {} samples in {:.2} s",
        s.calibration_method, s.calibration_samples, s.calibration_seconds
    );
    let ops: Vec<String> = s
        .quantized_ops
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    println!(
        "quantized: {} tensors; nodes: {}; {} weights int8, {} biases int32",
        s.quantized_tensors,
        ops.join(", "),
        s.rewrite.weights,
        s.rewrite.biases
    );
    // One line per reason, listing the op types it kept float: a model has hundreds of shape
    // nodes, and the report file has each node by name.
    let mut reasons: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for f in &s.float_nodes {
        *reasons
            .entry(f.kind.as_str())
            .or_default()
            .entry(f.op_type.as_str())
            .or_default() += 1;
    }
    for (reason, ops) in reasons {
        let n: usize = ops.values().sum();
        let ops: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        println!("float: {n} nodes, {reason}: {}", ops.join(", "));
    }
    for (name, m) in &s.outputs {
        println!(
            "output {name}: SQNR {:.2} dB, cosine {:.5}, max abs error {:.4} ({} samples, tract)",
            m.sqnr_db, m.cosine, m.max_abs, s.compared_samples
        );
    }
}

/// Refuses to write `output` over `input` (compared through canonical paths).
fn refuse_same_file(output: &std::path::Path, input: &std::path::Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (output.canonicalize(), input.canonicalize()) {
        anyhow::ensure!(
            a != b,
            "refusing to overwrite the input file {}",
            input.display()
        );
    }
    Ok(())
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
enum Outcome {
    Ok,
    Invalid,
}

fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Quantize {
            model,
            calib,
            output,
            ranges,
            per_tensor,
            exclude_nodes,
            exclude_op_types,
            report,
        } => {
            let calibration = calib.config()?;
            refuse_same_file(&output, &model)?;
            let loaded = Model::load(&model)?;
            let inputs = onnx_ptq::calibrate::InputSpec::of_model(&loaded.proto)?;
            let source = calib.open(&inputs)?;
            let ranges = ranges
                .map(|p| onnx_ptq::calibrate::Ranges::load(&p))
                .transpose()?;
            let config = onnx_ptq::quantize::QuantizeConfig {
                plan: onnx_ptq::quantize::PlanConfig {
                    activations: match calib.activations.as_str() {
                        "s8" => onnx_ptq::quantize::ActType::S8,
                        _ => onnx_ptq::quantize::ActType::U8,
                    },
                    per_channel: !per_tensor,
                    exclude_nodes: exclude_nodes.into_iter().collect(),
                    exclude_op_types: exclude_op_types.into_iter().collect(),
                },
                calibration,
                compare_samples: 32,
            };
            let name = model.display().to_string();
            let (quantized, summary) =
                onnx_ptq::quantize::quantize(&loaded.proto, &name, &source, ranges, &config)?;
            let written = Model {
                proto: quantized,
                ..loaded
            }
            .save(&output, &onnx_ptq::onnx::SaveOptions::default())?;
            if let Some(path) = report {
                let json = serde_json::to_vec_pretty(&summary)?;
                std::fs::write(&path, json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print_summary(&summary, &written.path);
            Ok(Outcome::Ok)
        }
        Command::Calibrate {
            model,
            calib,
            output,
        } => {
            let config = calib.config()?;
            refuse_same_file(&output, &model)?;
            let loaded = Model::load(&model)?;
            let mut calibrator = Calibrator::new(&loaded.proto, &model.display().to_string())?;
            if calib.bench_no_observe {
                calibrator.disable_observation();
            }
            let source = calib.open(calibrator.inputs())?;
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
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
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
            let report = validate::validate(&loaded.proto, (!no_exec).then_some(&options));
            if json {
                let value = serde_json::json!({
                    "model": model.display().to_string(),
                    "valid": report.is_valid(),
                    "report": report,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).context("encoding JSON")?
                );
            } else {
                println!("{}", model.display());
                print!("{report}");
            }
            Ok(if report.is_valid() {
                Outcome::Ok
            } else {
                Outcome::Invalid
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Invalid) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
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
}
