//! Float vs quantized comparison on data: error metrics of every model output and, per layer,
//! of every quantized tensor; file sizes and tract latency; and the bounds a pipeline gates on.
//!
//! Both models run in tract on the same samples, one sample at a time: memory holds one
//! sample's tensors, whatever the number of samples.

mod bounds;
mod histogram;
pub mod html;
mod layers;
mod metrics;
#[cfg(feature = "tract")]
mod run;

use std::collections::BTreeMap;

use serde::Serialize;

pub use bounds::{Bounds, Violation};
pub use histogram::{Histogram, HistogramBuilder};
pub use layers::quantized_tensors;
pub use metrics::{ErrorAccumulator, ErrorMetrics};
#[cfg(feature = "tract")]
pub use run::{compare_models, compare_to_reference, reference_outputs};

/// What to compare besides the outputs.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Also compare every quantized tensor with the float tensor of the same name.
    pub per_layer: bool,
    /// Runs of the first sample timed per model for the latency figures (0: no timing).
    pub latency_runs: usize,
    /// With `per_layer`: value histograms of this many of the worst layers (0: none), from
    /// a second run of the first samples.
    pub histograms: usize,
}

/// Most timed runs per model: the runs' times are kept to take their median, and a median of
/// a thousand runs is as steady as it gets.
pub const MAX_LATENCY_RUNS: usize = 1000;

impl CompareConfig {
    /// Refuses settings whose cost grows without bound (the latency runs' times are kept, and
    /// each run takes the model's full run time).
    pub fn check(&self) -> crate::Result<()> {
        if self.latency_runs > MAX_LATENCY_RUNS {
            return Err(crate::Error::Usage(format!(
                "--latency-runs {} is more than {MAX_LATENCY_RUNS} (each is a full run of both \
                 models)",
                self.latency_runs
            )));
        }
        Ok(())
    }
}

/// Error of one quantized tensor against its float counterpart.
#[derive(Debug, Clone, Serialize)]
pub struct LayerError {
    /// The tensor's name in the float model.
    pub tensor: String,
    /// The float model's node that writes it ("" for a graph input).
    pub node: String,
    /// That node's op type ("input" for a graph input).
    pub op_type: String,
    /// Position of that node in the float graph (graph inputs 0, the first node 1): the
    /// order of the layers from input to output.
    pub order: usize,
    /// Its metrics over every sample.
    pub metrics: ErrorMetrics,
}

/// The result of [`compare_models`].
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// Samples compared.
    pub samples: usize,
    /// Metrics of every float output of the reference model, by name.
    pub outputs: BTreeMap<String, ErrorMetrics>,
    /// With `per_layer`: every quantized tensor, worst (lowest SQNR) first.
    pub layers: Vec<LayerError>,
    /// Encoded size of the reference model, in bytes.
    pub reference_bytes: u64,
    /// Encoded size of the tested model, in bytes.
    pub test_bytes: u64,
    /// Median tract run time of the reference model on the first sample, in milliseconds.
    pub reference_ms: Option<f64>,
    /// Median tract run time of the tested model on the first sample, in milliseconds.
    pub test_ms: Option<f64>,
    /// With `histograms`: value histograms of the worst layers, worst first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub histograms: Vec<Histogram>,
    /// How the tested model ran when tract could not run it as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emulation: Option<String>,
}
