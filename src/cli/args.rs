//! Argument groups shared by several commands, and their conversion into library settings.

use std::path::PathBuf;

use anyhow::Result;

use onnx_ptq::calibrate::{
    CalibrationConfig, DataSource, ImagePreprocess, QuantTarget, RangeMethod,
};

/// Calibration data and range options, shared by the commands that calibrate.
#[derive(clap::Args, Debug)]
pub struct CalibArgs {
    /// Calibration data: a folder of .npz (or .npy for one input), one stacked .npy, an ONNX
    /// test-data folder (test_data_set_*/input_*.pb), or a folder of PNG/JPEG images. Needed
    /// by `calibrate` and static `quantize`; with `quantize --mode dynamic` it is optional and
    /// only measures the result (summary figures, accuracy bound), never sets ranges.
    #[arg(long, value_name = "PATH")]
    pub calib: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Range method: minmax, percentile, entropy or mse.
    #[arg(long, default_value = "minmax")]
    pub method: String,
    /// Percentile for --method percentile.
    #[arg(long, default_value_t = 99.999)]
    pub percentile: f64,
    /// Histogram bins for percentile, entropy and mse (default 2048; at least the number of
    /// quantization levels, 256).
    #[arg(long)]
    pub bins: Option<usize>,
    /// Keep every range as the method gives it, even when a handful of values (at most 1 in
    /// 10^4 at either end) stretch it more than 8x beyond the bulk of the values; by default
    /// such a range is clipped to the bulk and the summary lists the tensors clipped.
    #[arg(long)]
    pub no_outlier_guard: bool,
    /// Activation type the ranges are searched for: u8 (asymmetric) or s8 (symmetric).
    #[arg(long, default_value = "u8", value_parser = ["u8", "s8"])]
    pub activations: String,
    /// Worker threads (each runs whole samples).
    #[arg(long, default_value_t = default_threads())]
    pub threads: usize,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Benchmarks only: run the samples without observing (plain tract inference).
    #[arg(long, hide = true)]
    pub bench_no_observe: bool,
}

/// How to read sample data, shared by every command that reads some.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// Force the kind of data instead of detecting it: npz, npy, npy-stack, test-data, images.
    #[arg(long, value_name = "KIND")]
    pub data_kind: Option<onnx_ptq::calibrate::SourceKind>,
    /// Use only the first N samples (in sorted order).
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Image preprocessing preset: imagenet or yolo (other image flags override its values).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Image size as WIDTHxHEIGHT (default: the model input's static size).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// Image resize mode: stretch, letterbox or center-crop.
    #[arg(long, value_name = "MODE")]
    pub resize: Option<onnx_ptq::calibrate::data::ResizeMode>,
    /// Image channel order: rgb or bgr.
    #[arg(long, value_name = "ORDER")]
    pub channels: Option<onnx_ptq::calibrate::data::ChannelOrder>,
    /// Multiply pixel values (0-255) by this before mean/std, e.g. 0.00392156862745098 (1/255).
    #[arg(long)]
    pub scale: Option<f32>,
    /// Per-channel mean subtracted after scaling, as R,G,B.
    #[arg(long, value_name = "R,G,B", value_parser = parse_triple)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel std divided by after the mean, as R,G,B.
    #[arg(long, value_name = "R,G,B", value_parser = parse_triple)]
    pub std: Option<[f32; 3]>,
    /// Image tensor layout: nchw or nhwc.
    #[arg(long)]
    pub layout: Option<onnx_ptq::calibrate::data::Layout>,
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

impl DataArgs {
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

    /// The image preprocessing flags given, by their spelling.
    fn image_flags(&self) -> Vec<&'static str> {
        [
            ("--preset", self.preset.is_some()),
            ("--size", self.size.is_some()),
            ("--resize", self.resize.is_some()),
            ("--channels", self.channels.is_some()),
            ("--scale", self.scale.is_some()),
            ("--mean", self.mean.is_some()),
            ("--std", self.std.is_some()),
            ("--layout", self.layout.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    /// Opens the data at `path` for a model with these inputs.
    pub fn open(
        &self,
        path: &std::path::Path,
        inputs: &[onnx_ptq::calibrate::InputSpec],
    ) -> Result<DataSource> {
        let image = self.image_preprocess()?;
        let source = DataSource::open(path, self.data_kind, inputs, Some(&image), self.samples)?;
        if let Some(n) = self.samples.filter(|&n| n > source.len()) {
            eprintln!(
                "warning: --samples {n}: {} holds {} sample(s); using them all",
                path.display(),
                source.len()
            );
        }
        let image_flags = self.image_flags();
        if source.kind() != onnx_ptq::calibrate::SourceKind::Images && !image_flags.is_empty() {
            return Err(onnx_ptq::Error::Usage(format!(
                "{} apply to image data, but {} holds {} data",
                image_flags.join(", "),
                path.display(),
                source.kind()
            ))
            .into());
        }
        Ok(source)
    }
}

impl CalibArgs {
    /// The calibration settings.
    pub fn config(&self) -> Result<CalibrationConfig> {
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
        if self.bins.is_some() && !method.needs_histogram() {
            eprintln!(
                "warning: --bins ignored: --method {} uses no histogram",
                method.name()
            );
        }
        let config = CalibrationConfig {
            method,
            target,
            bins: self
                .bins
                .unwrap_or(onnx_ptq::calibrate::observer::DEFAULT_BINS),
            threads: self.threads,
            progress: !self.quiet,
            outlier_guard: !self.no_outlier_guard,
        };
        config.check()?;
        Ok(config)
    }

    /// Opens the calibration data for a model with these inputs, `None` when none was given.
    pub fn open(&self, inputs: &[onnx_ptq::calibrate::InputSpec]) -> Result<Option<DataSource>> {
        let image_flags = self.data.image_flags();
        if self.calib.is_none() && !image_flags.is_empty() {
            return Err(onnx_ptq::Error::Usage(format!(
                "{} apply to image calibration data, and no --calib was given",
                image_flags.join(", ")
            ))
            .into());
        }
        self.calib
            .as_ref()
            .map(|path| self.data.open(path, inputs))
            .transpose()
    }

    /// The activation type asked for.
    pub fn act_type(&self) -> onnx_ptq::quantize::ActType {
        match self.activations.as_str() {
            "s8" => onnx_ptq::quantize::ActType::S8,
            _ => onnx_ptq::quantize::ActType::U8,
        }
    }
}

/// Accuracy bounds, shared by `compare` (gating) and `quantize` (accuracy-aware mode).
#[derive(clap::Args, Debug, Default)]
pub struct BoundArgs {
    /// Smallest acceptable SQNR against the float model, in dB.
    #[arg(long, value_name = "DB")]
    pub min_sqnr: Option<f64>,
    /// Smallest acceptable cosine similarity to the float model (mean over samples).
    #[arg(long, value_name = "C")]
    pub min_cosine: Option<f64>,
    /// Largest acceptable top-1 drop, in percentage points: the share of rows whose arg-max
    /// differs from the float model's (outputs of class scores [N, C] only).
    #[arg(long, value_name = "P")]
    pub max_top1_drop: Option<f64>,
    /// An output the bounds apply to (repeatable; default: every float output).
    #[arg(long = "bound-output", value_name = "NAME")]
    pub outputs: Vec<String>,
}

impl BoundArgs {
    /// The bounds, checked for sense.
    pub fn bounds(&self) -> Result<onnx_ptq::compare::Bounds> {
        if let Some(c) = self.min_cosine {
            anyhow::ensure!(
                (-1.0..=1.0).contains(&c),
                "--min-cosine must be in [-1, 1], got {c}"
            );
        }
        if let Some(p) = self.max_top1_drop {
            anyhow::ensure!(
                (0.0..=100.0).contains(&p),
                "--max-top1-drop is in percentage points, from 0 to 100; got {p}"
            );
        }
        if let Some(db) = self.min_sqnr {
            anyhow::ensure!(
                db.is_finite(),
                "--min-sqnr must be a number of dB, got {db}"
            );
        }
        Ok(onnx_ptq::compare::Bounds {
            min_sqnr_db: self.min_sqnr,
            min_cosine: self.min_cosine,
            max_top1_drop: self.max_top1_drop,
            outputs: self.outputs.clone(),
        })
    }
}

/// Weight-only mode's settings.
#[derive(clap::Args, Debug)]
pub struct WeightOnlyArgs {
    /// Weight-only: bits of MatMul/Gemm weights (4 or 8).
    #[arg(long, default_value_t = 4, value_parser = parse_bits)]
    pub bits: u8,
    /// Weight-only: bits of embedding tables (Gather on a constant table): 8 keeps them
    /// nearly exact at a quarter of their size, 4 halves that again at a visible cost.
    #[arg(long, default_value_t = 8, value_parser = parse_bits)]
    pub table_bits: u8,
    /// Weight-only: values per block along the reduction axis, a power of two from 16 to 256,
    /// or `per-channel` (one block per output column; 8 bits only; ONNX Runtime's
    /// MatMulNBits takes blocks of at most 256, so with --form onnxruntime a longer K is cut in
    /// blocks of 256). Smaller blocks are more accurate and a little larger.
    #[arg(long, default_value = "32", value_parser = parse_block)]
    pub block: BlockArg,
    /// Weight-only: unsigned levels with a zero point per block instead of symmetric ones.
    #[arg(long)]
    pub asymmetric: bool,
    /// Weight-only: rounding algorithm: `gptq` (the default with --calib: each input row's
    /// rounding error is compensated on the rows after it through the inverse Hessian of the
    /// layer's input on the calibration data), `clip` (the default without data: per block,
    /// the clipping of the range that minimises the block's squared error) or `rtn` (round to
    /// nearest on the full range, what ONNX Runtime's MatMulNBitsQuantizer does).
    #[arg(long, value_parser = ["gptq", "clip", "rtn"])]
    pub algorithm: Option<String>,
    /// Weight-only: output form: `onnxruntime` (com.microsoft.MatMulNBits and
    /// GatherBlockQuantized, what ONNX Runtime runs fastest) or `standard` (INT4/INT8 weights
    /// behind blocked DequantizeLinear, opset 21, for any runtime).
    #[arg(long, default_value = "onnxruntime", value_parser = ["onnxruntime", "standard"])]
    pub form: String,
    /// Weight-only, --form onnxruntime: MatMulNBits' accuracy_level, 0 (activations in
    /// float) to 4 (activations quantized to int8 per block, about 1.5x faster on x86). Default:
    /// 4 for 4-bit weights (what ONNX Runtime picks itself when it fuses the standard form), 0
    /// for 8-bit ones (chosen for accuracy).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub accuracy_level: Option<u8>,
}

fn parse_bits(s: &str) -> Result<u8, String> {
    match s {
        "4" => Ok(4),
        "8" => Ok(8),
        _ => Err(format!("'{s}' bits: 4 or 8")),
    }
}

/// A block size, or one block per output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockArg {
    /// Values per block.
    Size(usize),
    /// One block per output channel.
    PerChannel,
}

fn parse_block(s: &str) -> Result<BlockArg, String> {
    if s == "per-channel" {
        return Ok(BlockArg::PerChannel);
    }
    match s.parse::<usize>() {
        Ok(b) if (16..=256).contains(&b) && b.is_power_of_two() => Ok(BlockArg::Size(b)),
        _ => Err(format!(
            "'{s}' is not a block size: a power of two from 16 to 256, or per-channel"
        )),
    }
}

impl WeightOnlyArgs {
    /// The library settings; errors for combinations that cannot work.
    pub fn config(
        &self,
        mode: onnx_ptq::quantize::Mode,
        has_data: bool,
    ) -> Result<onnx_ptq::quantize::plan::WeightOnlyConfig> {
        use onnx_ptq::quantize::blockwise::Algorithm;
        use onnx_ptq::quantize::plan::{WeightForm, WeightOnlyConfig};
        let defaults = WeightOnlyConfig::default();
        let changed = self.bits != defaults.bits
            || self.table_bits != defaults.table_bits
            || self.block != BlockArg::Size(32)
            || self.asymmetric
            || self.algorithm.is_some()
            || self.form != "onnxruntime"
            || self.accuracy_level.is_some();
        anyhow::ensure!(
            mode == onnx_ptq::quantize::Mode::WeightOnly || !changed,
            "--bits, --table-bits, --block, --asymmetric, --algorithm, --form and --accuracy-level apply to --mode weight-only"
        );
        anyhow::ensure!(
            self.block != BlockArg::PerChannel || self.bits == 8,
            "--block per-channel needs --bits 8: 4-bit weights need blocks to stay accurate"
        );
        Ok(WeightOnlyConfig {
            bits: self.bits,
            table_bits: self.table_bits,
            block: match self.block {
                BlockArg::Size(b) => Some(b),
                BlockArg::PerChannel => None,
            },
            symmetric: !self.asymmetric,
            algorithm: match (self.algorithm.as_deref(), has_data) {
                (Some("rtn"), _) => Algorithm::Rtn,
                (Some("clip"), _) | (None, false) => Algorithm::Clip,
                (Some(_), false) => {
                    anyhow::bail!("--algorithm gptq needs calibration data (--calib)")
                }
                _ => Algorithm::Gptq,
            },
            form: if self.form == "standard" {
                WeightForm::Standard
            } else {
                WeightForm::OnnxRuntime
            },
            eight_bit_nodes: Default::default(),
            hessians: Default::default(),
            accuracy_level: self.accuracy_level,
        })
    }
}
