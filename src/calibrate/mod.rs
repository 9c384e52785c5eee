//! Calibration: run sample inputs through tract and observe every float tensor the quantizer
//! needs a range for, with streaming observers whose memory does not grow with the number of
//! samples; then turn each tensor's statistics into a range by MinMax, Percentile, Entropy (KL)
//! or MSE-optimal search.

pub mod data;
pub mod observer;
pub mod range;
mod runner;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use data::{
    ChannelOrder, DataSource, ImagePreprocess, InputSpec, Layout, ResizeMode, Sample, SourceKind,
};
pub use observer::{Histogram, HistogramSummary, MinMax};
pub use range::{compute_range, QuantTarget, RangeMethod};
pub use runner::{Observer, TensorStats};

use crate::error::{Error, Result};
use crate::onnx::pb::ModelProto;

/// How to calibrate.
#[derive(Debug, Clone)]
pub struct CalibrationConfig {
    /// How statistics become a range.
    pub method: RangeMethod,
    /// The quantized type the activations will get (entropy and MSE search depend on it).
    pub target: QuantTarget,
    /// Histogram bins, for the methods that need a histogram.
    pub bins: usize,
    /// Worker threads, each running samples on its own tract state.
    pub threads: usize,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Clip a range that a handful of values stretch (see [`range::outlier_guard`]); needs a
    /// histogram, collected for it whatever the method.
    pub outlier_guard: bool,
}

/// Most worker threads: each holds a tract plan state with every intermediate tensor of one
/// sample, so memory grows with them.
pub const MAX_THREADS: usize = 256;

impl CalibrationConfig {
    /// Refuses settings the method cannot work with rather than clamping them: a histogram
    /// coarser than the quantization grid cannot place a range to better than one step, and
    /// one finer than [`observer::MAX_BINS`] costs memory per tensor for nothing.
    pub fn check(&self) -> Result<()> {
        if self.method.needs_histogram() {
            let levels = (self.target.qmax() - self.target.qmin() + 1) as usize;
            if self.bins < levels || self.bins > observer::MAX_BINS {
                return Err(Error::Usage(format!(
                    "--bins {} is outside what --method {} can use: from {levels} (the levels of \
                     the {}-bit target) to {}",
                    self.bins,
                    self.method.name(),
                    self.target.bits,
                    observer::MAX_BINS
                )));
            }
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(Error::Usage(format!(
                "--threads {} is outside 1 to {MAX_THREADS}",
                self.threads
            )));
        }
        Ok(())
    }
}

/// The calibrated range of one tensor, as written to `ranges.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorRange {
    /// Lower end of the range to quantize with.
    pub min: f32,
    /// Upper end of the range to quantize with.
    pub max: f32,
    /// Smallest finite value observed.
    pub observed_min: f32,
    /// Largest finite value observed.
    pub observed_max: f32,
    /// Number of finite values observed.
    pub count: u64,
    /// Number of NaN or infinite values observed (ignored by the range).
    pub non_finite: u64,
    /// Histogram summary, for histogram methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram: Option<HistogramSummary>,
    /// The range the method gave, when the outlier guard clipped it to `min`..`max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclipped: Option<(f32, f32)>,
}

/// Calibration results for a model: the calibration cache `quantize --ranges` reads back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranges {
    /// The model file the ranges were computed for.
    pub model: String,
    /// The range method.
    pub method: RangeMethod,
    /// The activation type the ranges were searched for.
    pub target: QuantTarget,
    /// Number of calibration samples.
    pub samples: usize,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// Range of each observed tensor, by ONNX name.
    pub tensors: BTreeMap<String, TensorRange>,
}

impl Ranges {
    /// No ranges: what a mode that does not calibrate plans with.
    pub fn empty() -> Ranges {
        Ranges {
            model: String::new(),
            method: RangeMethod::MinMax,
            target: QuantTarget::U8,
            samples: 0,
            seconds: 0.0,
            tensors: BTreeMap::new(),
        }
    }

    /// Writes the ranges as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Model(format!("encoding ranges: {e}")))?;
        crate::onnx::write_atomic(path, &json)
    }

    /// Reads ranges written by [`Ranges::save`].
    pub fn load(path: &Path) -> Result<Ranges> {
        crate::onnx::require_readable_file(path)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            input: None,
            message: format!("not a ranges file written by `onnx-ptq calibrate`: {e}"),
        })
    }
}

/// Calibrates a model: the library entry point behind `onnx-ptq calibrate`.
pub struct Calibrator {
    observer: Observer,
    model_name: String,
}

impl Calibrator {
    /// Prepares `model` for observation in tract. `model_name` labels the results.
    pub fn new(model: &ModelProto, model_name: &str) -> Result<Calibrator> {
        crate::validate::require_valid_structure(model)?;
        Ok(Calibrator {
            observer: Observer::new(model)?,
            model_name: model_name.to_string(),
        })
    }

    /// The model inputs a data source must provide.
    pub fn inputs(&self) -> &[InputSpec] {
        self.observer.inputs()
    }

    /// Runs samples without observing anything (ranges come out empty): a benchmark of plain
    /// tract inference over the same plans.
    pub fn disable_observation(&mut self) {
        self.observer.disable_observation();
    }

    /// Names of the tensors that get a range.
    pub fn tensor_names(&self) -> &[String] {
        self.observer.tensor_names()
    }

    /// Checks every sample of `source`, runs them all, and computes each tensor's range.
    pub fn calibrate(&self, source: &DataSource, config: &CalibrationConfig) -> Result<Ranges> {
        self.calibrate_keeping_outputs(source, config, 0)
            .map(|(ranges, _)| ranges)
    }

    /// [`Calibrator::calibrate`], also returning the model's outputs on the first `keep`
    /// samples, in the order of the graph's outputs.
    pub fn calibrate_keeping_outputs(
        &self,
        source: &DataSource,
        config: &CalibrationConfig,
        keep: usize,
    ) -> Result<(Ranges, Vec<Vec<tract_onnx::prelude::Tensor>>)> {
        config.check()?;
        if source.is_empty() {
            return Err(Error::Model("the calibration data holds no sample".into()));
        }
        source.check_all()?;
        let start = Instant::now();
        let bar = progress_bar(source.len(), config.progress);
        let bins = (config.method.needs_histogram() || config.outlier_guard).then_some(config.bins);
        let (stats, kept) = self.observer.run_keeping_outputs(
            source,
            bins,
            config.threads,
            &|| bar.inc(1),
            keep,
        )?;
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let ranges = ranges_from_stats(&self.model_name, &stats, source.len(), seconds, config)?;
        Ok((ranges, kept))
    }
}

/// Turns observed statistics into ranges.
pub fn ranges_from_stats(
    model_name: &str,
    stats: &BTreeMap<String, TensorStats>,
    samples: usize,
    seconds: f64,
    config: &CalibrationConfig,
) -> Result<Ranges> {
    let mut tensors = BTreeMap::new();
    for (name, s) in stats {
        if s.minmax.is_empty() {
            // Every value was NaN or infinite (or the tensor was empty): nothing to quantize.
            continue;
        }
        let (min, max) = compute_range(
            &config.method,
            &s.minmax,
            s.histogram.as_ref(),
            &config.target,
        )
        .map_err(|e| Error::Model(format!("tensor '{name}': {e}")))?;
        let clipped = s
            .histogram
            .as_ref()
            .filter(|_| config.outlier_guard)
            .and_then(|h| range::outlier_guard((min, max), h));
        let (min, max, unclipped) = match clipped {
            Some((lo, hi)) => (lo, hi, Some((min, max))),
            None => (min, max, None),
        };
        tensors.insert(
            name.clone(),
            TensorRange {
                min,
                max,
                observed_min: s.minmax.min,
                observed_max: s.minmax.max,
                count: s.minmax.count,
                non_finite: s.minmax.non_finite,
                histogram: s
                    .histogram
                    .as_ref()
                    .filter(|_| config.method.needs_histogram())
                    .map(Histogram::summary),
                unclipped,
            },
        );
    }
    Ok(Ranges {
        model: model_name.to_string(),
        method: config.method,
        target: config.target,
        samples,
        seconds,
        tensors,
    })
}

fn progress_bar(n: usize, show: bool) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let target = if show {
        // indicatif draws nothing when stderr is not a terminal.
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(n as u64), target);
    if let Ok(style) = ProgressStyle::with_template(
        "calibrating {bar:30} {pos}/{len} samples  {per_sec}  eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}
