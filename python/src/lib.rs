//! `onnx_ptq._native`: the Python package's native module, a thin layer over the library like
//! the CLI: it parses the settings the Python side passes (a JSON object whose keys are the
//! CLI's flags), calls the library, and returns the result as JSON. The ONNX Runtime-style
//! wrappers, the calibration-reader spooling and the enum handling are in
//! `python/onnx_ptq/__init__.py`.
//!
//! Every library call runs on a worker thread while the calling thread waits with the GIL
//! released and checks for signals every 100 ms: Ctrl-C raises `KeyboardInterrupt` at once,
//! the abandoned computation's result is dropped, and nothing is written (files are written by
//! the calling thread, atomically, only after the computation succeeded).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Deserialize;

use onnx_ptq::calibrate::data::SAMPLE_EXTENSIONS;
use onnx_ptq::calibrate::observer::DEFAULT_BINS;
use onnx_ptq::calibrate::{
    CalibrationConfig, Calibrator, DataSource, ImagePreprocess, InputSpec, QuantTarget,
    RangeMethod, Ranges,
};
use onnx_ptq::compare::{compare_models, Bounds, CompareConfig};
use onnx_ptq::onnx::{
    decode_model, external_data_path, Model, OutputPlan, PendingFiles, SaveOptions,
};
use onnx_ptq::quantize::blockwise::Algorithm;
use onnx_ptq::quantize::plan::{WeightForm, WeightOnlyConfig};
use onnx_ptq::quantize::{
    AccuracyConfig, ActType, Mode, PlanConfig, QuantizeConfig, TensorOverride,
};
use onnx_ptq::validate::ExecOptions;

create_exception!(
    onnx_ptq,
    QuantizationError,
    PyException,
    "An error reported by the onnx-ptq library (unreadable model, bad calibration data, a model \
     that cannot be quantized...), with the library's message."
);

/// Why a call failed: a setting that makes no sense (`ValueError`) or the library's error
/// (`QuantizationError`, except the refusals of settings and destinations, `ValueError`).
enum Failure {
    Arg(String),
    Lib(onnx_ptq::Error),
}

impl From<onnx_ptq::Error> for Failure {
    fn from(e: onnx_ptq::Error) -> Self {
        Failure::Lib(e)
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        use onnx_ptq::Error as E;
        match f {
            Failure::Arg(m) | Failure::Lib(E::Usage(m)) => PyValueError::new_err(m),
            Failure::Lib(
                e @ (E::DestinationIsInput { .. }
                | E::SameDestination { .. }
                | E::DestinationNotRegular { .. }
                | E::DestinationReadOnly { .. }
                | E::DestinationFolder { .. }),
            ) => PyValueError::new_err(e.to_string()),
            Failure::Lib(e) => QuantizationError::new_err(e.to_string()),
        }
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

fn ensure(cond: bool, message: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Failure::Arg(message.to_string()))
    }
}

fn parse<T: std::str::FromStr>(value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e: T::Err| Failure::Arg(e.to_string()))
}

/// A model given as a path or as the bytes of a serialized `ModelProto`.
enum ModelArg {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

const IN_MEMORY: &str = "<in-memory model>";

impl ModelArg {
    /// Adds the model to `plan` as an input (a path only: bytes are no file).
    fn plan_input(&self, plan: &mut OutputPlan, what: &str) {
        if let ModelArg::Path(p) = self {
            plan.input(what, p);
        }
    }

    fn extract(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<ModelArg> {
        if let Ok(bytes) = obj.cast::<PyBytes>() {
            return Ok(ModelArg::Bytes(bytes.as_bytes().to_vec()));
        }
        obj.extract::<PathBuf>().map(ModelArg::Path).map_err(|_| {
            PyTypeError::new_err(format!(
                "{what}: expected a path or the bytes of a serialized ModelProto, got {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })
    }

    /// Loads the model; also returns the name the CLI would label it with.
    fn load(self) -> Result<(Model, String)> {
        self.load_with(false)
    }

    /// [`ModelArg::load`], leaving a file's external data on disk when `lazy` (weight-only
    /// mode without data reads each weight when it quantizes it, as the CLI does).
    fn load_with(self, lazy: bool) -> Result<(Model, String)> {
        match self {
            ModelArg::Path(p) if lazy => Ok((Model::load_lazy(&p)?, p.display().to_string())),
            ModelArg::Path(p) => Ok((Model::load(&p)?, p.display().to_string())),
            ModelArg::Bytes(b) => {
                // External data, if any, is looked up relative to the working directory.
                let label = Path::new(IN_MEMORY);
                let proto = decode_model(&b, label)?;
                Ok((Model::from_proto(proto, label)?, IN_MEMORY.to_string()))
            }
        }
    }
}

/// The CLI's check of a run's destinations against its inputs and each other, before any
/// work (the CLI also installs a handler that deletes temporaries on SIGINT: not here, where
/// Ctrl-C is Python's KeyboardInterrupt and nothing is written after it).
fn check_plan(plan: &OutputPlan) -> Result<()> {
    Ok(plan.check()?)
}

/// After loading: the model's external-data files are inputs too.
fn check_external(plan: &mut OutputPlan, what: &str, model: &Model) -> Result<()> {
    check_plan(plan.inputs(what, &model.external_files))
}

/// Runs `job` on a worker thread; the caller waits with the GIL released and raises
/// `KeyboardInterrupt` (or whatever a signal handler raises) as soon as a signal arrives.
fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    job: impl FnOnce() -> Result<T> + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("onnx-ptq".into())
        // The CLI runs on the main thread's 8 MiB stack; give the worker more than that.
        .stack_size(64 << 20)
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let _ = tx.send(outcome);
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a worker thread: {e}")))?;
    let mut rx = rx;
    loop {
        let (received, back) = py.detach(move || {
            let r = rx.recv_timeout(Duration::from_millis(100));
            (r, rx)
        });
        rx = back;
        match received {
            Ok(Ok(result)) => return result.map_err(PyErr::from),
            Ok(Err(panic)) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                return Err(QuantizationError::new_err(format!(
                    "internal error (panic): {message}"
                )));
            }
            Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(QuantizationError::new_err(
                    "internal error: the worker thread ended without a result",
                ))
            }
        }
    }
}

fn from_json<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Failure::Arg(format!("{what}: {e}")))
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Failure::Lib(onnx_ptq::Error::Model(format!("encoding JSON: {e}"))))
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// How to read sample data: the CLI's `--data-kind`, `--samples` and image flags.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct DataOptions {
    data_kind: Option<String>,
    samples: Option<usize>,
    preset: Option<String>,
    size: Option<(u32, u32)>,
    resize: Option<String>,
    channels: Option<String>,
    scale: Option<f32>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    layout: Option<String>,
}

impl DataOptions {
    fn image_preprocess(&self) -> Result<ImagePreprocess> {
        let mut p = match &self.preset {
            Some(name) => ImagePreprocess::preset(name)?,
            None => ImagePreprocess::default(),
        };
        if let Some((w, h)) = self.size {
            ensure(w > 0 && h > 0, "size: width and height must be positive")?;
        }
        p.size = self.size.or(p.size);
        if let Some(r) = &self.resize {
            p.resize = parse(r)?;
        }
        if let Some(c) = &self.channels {
            p.channel_order = parse(c)?;
        }
        p.scale = self.scale.unwrap_or(p.scale);
        p.mean = self.mean.unwrap_or(p.mean);
        p.std = self.std.unwrap_or(p.std);
        if let Some(l) = &self.layout {
            p.layout = parse(l)?;
        }
        Ok(p)
    }

    fn open(&self, path: &Path, inputs: &[InputSpec]) -> Result<DataSource> {
        let kind = self.data_kind.as_deref().map(parse).transpose()?;
        let image = self.image_preprocess()?;
        Ok(DataSource::open(
            path,
            kind,
            inputs,
            Some(&image),
            self.samples,
        )?)
    }
}

/// The CLI's calibration flags: `--method`, `--percentile`, `--bins`, `--activations`,
/// `--threads`, `--quiet` (here `progress`) and `--no-outlier-guard` (here `outlier_guard`).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CalibOptions {
    method: String,
    percentile: f64,
    bins: usize,
    activations: String,
    threads: Option<usize>,
    progress: bool,
    outlier_guard: bool,
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions {
            method: "minmax".into(),
            percentile: onnx_ptq::calibrate::range::DEFAULT_PERCENTILE,
            bins: DEFAULT_BINS,
            activations: "u8".into(),
            threads: None,
            progress: true,
            outlier_guard: true,
        }
    }
}

impl CalibOptions {
    fn config(&self) -> Result<CalibrationConfig> {
        let mut method: RangeMethod = parse(&self.method)?;
        if let RangeMethod::Percentile { percentile } = &mut method {
            ensure(
                self.percentile > 50.0 && self.percentile <= 100.0,
                &format!("percentile must be in (50, 100], got {}", self.percentile),
            )?;
            *percentile = self.percentile;
        }
        let target = match self.activations.as_str() {
            "u8" => QuantTarget::U8,
            "s8" => QuantTarget::S8_SYMMETRIC,
            other => {
                return Err(Failure::Arg(format!(
                    "activations must be u8 or s8, got '{other}'"
                )))
            }
        };
        Ok(CalibrationConfig {
            method,
            target,
            bins: self.bins,
            threads: self.threads.unwrap_or_else(default_threads).max(1),
            progress: self.progress,
            outlier_guard: self.outlier_guard,
        })
    }

    fn act_type(&self) -> ActType {
        match self.activations.as_str() {
            "s8" => ActType::S8,
            _ => ActType::U8,
        }
    }
}

/// Accuracy bounds: `--min-sqnr`, `--min-cosine`, `--max-top1-drop`, `--bound-output`.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct BoundOptions {
    min_sqnr: Option<f64>,
    min_cosine: Option<f64>,
    max_top1_drop: Option<f64>,
    bound_outputs: Vec<String>,
}

impl BoundOptions {
    fn bounds(&self) -> Result<Bounds> {
        if let Some(c) = self.min_cosine {
            ensure(
                (-1.0..=1.0).contains(&c),
                &format!("min_cosine must be in [-1, 1], got {c}"),
            )?;
        }
        if let Some(p) = self.max_top1_drop {
            ensure(
                (0.0..=100.0).contains(&p),
                &format!("max_top1_drop is in percentage points, from 0 to 100; got {p}"),
            )?;
        }
        if let Some(db) = self.min_sqnr {
            ensure(
                db.is_finite(),
                &format!("min_sqnr must be a number of dB, got {db}"),
            )?;
        }
        Ok(Bounds {
            min_sqnr_db: self.min_sqnr,
            min_cosine: self.min_cosine,
            max_top1_drop: self.max_top1_drop,
            outputs: self.bound_outputs.clone(),
        })
    }
}

/// Weight-only mode's flags: `--bits`, `--table-bits`, `--block`, `--asymmetric`,
/// `--algorithm`, `--form`.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct WeightOnlyOptions {
    bits: u8,
    table_bits: u8,
    /// A power of two from 16 to 256, or "per-channel".
    block: serde_json::Value,
    asymmetric: bool,
    algorithm: Option<String>,
    form: String,
}

impl Default for WeightOnlyOptions {
    fn default() -> Self {
        WeightOnlyOptions {
            bits: 4,
            table_bits: 8,
            block: serde_json::json!(32),
            asymmetric: false,
            algorithm: None,
            form: "onnxruntime".into(),
        }
    }
}

impl WeightOnlyOptions {
    /// The library settings, refusing what the CLI refuses.
    fn config(&self, mode: Mode, has_data: bool) -> Result<WeightOnlyConfig> {
        for (name, bits) in [("bits", self.bits), ("table_bits", self.table_bits)] {
            ensure(
                bits == 4 || bits == 8,
                &format!("{name}: 4 or 8, got {bits}"),
            )?;
        }
        let block = match &self.block {
            serde_json::Value::String(s) if s == "per-channel" => None,
            v => match v.as_u64() {
                Some(b) if (16..=256).contains(&b) && b.is_power_of_two() => Some(b as usize),
                _ => {
                    return Err(Failure::Arg(format!(
                        "block: {v} is not a block size: a power of two from 16 to 256, or \
                         \"per-channel\""
                    )))
                }
            },
        };
        let defaults = WeightOnlyConfig::default();
        let changed = self.bits != defaults.bits
            || self.table_bits != defaults.table_bits
            || block != Some(32)
            || self.asymmetric
            || self.algorithm.is_some()
            || self.form != "onnxruntime";
        ensure(
            mode == Mode::WeightOnly || !changed,
            "bits, table_bits, block, asymmetric, algorithm and form apply to mode=\"weight-only\"",
        )?;
        ensure(
            block.is_some() || self.bits == 8,
            "block=\"per-channel\" needs bits=8: 4-bit weights need blocks to stay accurate",
        )?;
        let algorithm = match (self.algorithm.as_deref(), has_data) {
            (Some("rtn"), _) => Algorithm::Rtn,
            (Some("clip"), _) | (None, false) => Algorithm::Clip,
            (Some("gptq"), false) => {
                return Err(Failure::Arg(
                    "algorithm=\"gptq\" needs calibration data".into(),
                ))
            }
            (Some("gptq"), true) | (None, true) => Algorithm::Gptq,
            (Some(other), _) => {
                return Err(Failure::Arg(format!(
                    "algorithm must be gptq, clip or rtn, got '{other}'"
                )))
            }
        };
        let form = match self.form.as_str() {
            "onnxruntime" => WeightForm::OnnxRuntime,
            "standard" => WeightForm::Standard,
            other => {
                return Err(Failure::Arg(format!(
                    "form must be onnxruntime or standard, got '{other}'"
                )))
            }
        };
        Ok(WeightOnlyConfig {
            bits: self.bits,
            table_bits: self.table_bits,
            block,
            symmetric: !self.asymmetric,
            algorithm,
            form,
            ..defaults
        })
    }
}

/// `onnx-ptq quantize`'s flags, plus `only_nodes`/`only_op_types` (ONNX Runtime's
/// `nodes_to_quantize`/`op_types_to_quantize`, turned into exclusions against the model) and
/// `external_data` (`use_external_data_format`).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct QuantizeOptions {
    mode: String,
    weight_only: WeightOnlyOptions,
    reduce_range: bool,
    calibration: CalibOptions,
    data: DataOptions,
    ranges: Option<PathBuf>,
    per_channel: bool,
    equalize: Option<bool>,
    exclude_nodes: Vec<String>,
    exclude_op_types: Vec<String>,
    only_nodes: Option<Vec<String>>,
    only_op_types: Option<Vec<String>>,
    overrides: BTreeMap<String, TensorOverride>,
    compare_samples: usize,
    bounds: BoundOptions,
    held_out: Option<usize>,
    allow_int16: bool,
    external_data: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            mode: "static".into(),
            weight_only: WeightOnlyOptions::default(),
            reduce_range: false,
            calibration: CalibOptions::default(),
            data: DataOptions::default(),
            ranges: None,
            per_channel: true,
            equalize: None,
            exclude_nodes: Vec::new(),
            exclude_op_types: Vec::new(),
            only_nodes: None,
            only_op_types: None,
            overrides: BTreeMap::new(),
            compare_samples: 8,
            bounds: BoundOptions::default(),
            held_out: None,
            allow_int16: false,
            external_data: false,
        }
    }
}

/// The exclusions that quantize only `only_nodes` and `only_op_types` of `model`: every other
/// node name (and "", so that unnamed nodes, which cannot be listed, stay float) and every
/// other op type of the model or of the rule table.
fn exclusions(model: &Model, o: &QuantizeOptions) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut nodes: BTreeSet<String> = o.exclude_nodes.iter().cloned().collect();
    let mut ops: BTreeSet<String> = o.exclude_op_types.iter().cloned().collect();
    let graph_nodes = model.proto.graph.iter().flat_map(|g| g.node.iter());
    if let Some(only) = &o.only_nodes {
        let only: BTreeSet<&str> = only.iter().map(String::as_str).collect();
        nodes.insert(String::new());
        nodes.extend(
            graph_nodes
                .clone()
                .map(|n| n.name())
                .filter(|n| !only.contains(n))
                .map(str::to_string),
        );
    }
    if let Some(only) = &o.only_op_types {
        let only: BTreeSet<&str> = only.iter().map(String::as_str).collect();
        ops.extend(
            graph_nodes
                .map(|n| n.op_type())
                .chain(onnx_ptq::quantize::rules::RULES.iter().map(|r| r.op))
                .filter(|t| !only.contains(t))
                .map(str::to_string),
        );
    }
    (nodes, ops)
}

/// Quantizes `model` and writes it to `output`; returns the report (`--report`'s JSON).
#[pyfunction]
#[pyo3(signature = (model, output, data, options))]
fn quantize(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    output: PathBuf,
    data: Option<PathBuf>,
    options: &str,
) -> PyResult<String> {
    let model = ModelArg::extract("model", model)?;
    let o: QuantizeOptions = from_json("quantize options", options)?;
    let mut plan = OutputPlan::new();
    model.plan_input(&mut plan, "the input model");
    if let Some(d) = &data {
        plan.data_input("the calibration data", d, SAMPLE_EXTENSIONS);
    }
    if let Some(r) = &o.ranges {
        plan.input("the ranges file", r);
    }
    plan.output("output", &output);
    if let Some(side) = external_data_path(&output) {
        plan.conditional_output("the external-data file of output", &side);
    }
    check_plan(&plan)?;
    let calibration = o.calibration.config()?;
    let bounds = o.bounds.bounds()?;
    let mode = match o.mode.as_str() {
        "static" => Mode::Static,
        "dynamic" => Mode::Dynamic,
        "weight-only" => Mode::WeightOnly,
        other => {
            return Err(PyValueError::new_err(format!(
                "mode must be 'static', 'dynamic' or 'weight-only', got '{other}'"
            )))
        }
    };
    let weight_only = o.weight_only.config(mode, data.is_some())?;
    let checks = [
        (
            mode == Mode::Dynamic || !o.reduce_range,
            "reduce_range applies to dynamic mode (static mode's int8 kernels do not saturate)",
        ),
        (
            mode == Mode::Static || o.ranges.is_none(),
            "ranges apply to static mode: dynamic mode computes activation ranges at run time",
        ),
        (
            mode == Mode::Static || (o.overrides.is_empty() && !o.allow_int16),
            "overrides and allow_int16 apply to static mode's activations",
        ),
        (
            !o.allow_int16 || !bounds.is_empty(),
            "allow_int16 applies to the accuracy search: give a bound (min_sqnr, min_cosine or max_top1_drop)",
        ),
        (o.compare_samples >= 1, "compare_samples must be at least 1"),
    ];
    for (ok, message) in checks {
        ensure(ok, message)?;
    }
    let save = SaveOptions {
        // ONNX Runtime's use_external_data_format: tensors of 1 KiB and more go to OUTPUT.data.
        external_threshold: o.external_data.then_some(1024),
        ..SaveOptions::default()
    };
    // Weight-only mode without data never needs the float model whole, as in the CLI: its
    // weights stay on disk, and the quantized ones are staged in the output's side file as
    // they are made, so a model larger than memory converts.
    let lazy = mode == Mode::WeightOnly && data.is_none();
    let destination = output.clone();
    let (written, report) = interruptible(py, move || {
        let (loaded, _) = model.load_with(lazy)?;
        check_external(
            &mut plan,
            "an external-data file of the input model",
            &loaded,
        )?;
        let inputs = InputSpec::of_model(&loaded.proto)?;
        let source = data
            .as_deref()
            .map(|p| o.data.open(p, &inputs))
            .transpose()?;
        let ranges = o.ranges.as_deref().map(Ranges::load).transpose()?;
        let accuracy = (!bounds.is_empty()).then(|| AccuracyConfig {
            bounds,
            held_out: o
                .held_out
                .unwrap_or((source.as_ref().map_or(0, |s| s.len()) / 4).max(1)),
            threads: calibration.threads,
            int16: o.allow_int16,
        });
        let (exclude_nodes, exclude_op_types) = exclusions(&loaded, &o);
        let config = QuantizeConfig {
            plan: PlanConfig {
                mode,
                reduce_range: o.reduce_range,
                weight_only,
                activations: o.calibration.act_type(),
                per_channel: o.per_channel,
                exclude_nodes,
                exclude_op_types,
                overrides: o.overrides,
                fallback: Default::default(),
                equalize: o.equalize,
            },
            calibration,
            compare_samples: o.compare_samples,
            accuracy,
        };
        let (converted, report) = onnx_ptq::quantize::quantize_for(
            loaded,
            &destination,
            source.as_ref(),
            ranges,
            &config,
        )?;
        let mut staged = PendingFiles::new();
        converted.stage(&save, &mut staged)?;
        Ok((staged, to_json(&report)?))
    })?;
    // After an interrupt nothing is committed: staged files are removed when dropped.
    py.check_signals()?;
    py.detach(|| written.commit())
        .map_err(|e| PyErr::from(Failure::Lib(e)))?;
    Ok(report)
}

/// Calibrates `model` on `data`; writes the ranges to `output` when given and returns them.
#[pyfunction]
#[pyo3(signature = (model, data, output, options))]
fn calibrate(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    data: PathBuf,
    output: Option<PathBuf>,
    options: &str,
) -> PyResult<String> {
    #[derive(Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct CalibrateOptions {
        calibration: CalibOptions,
        data: DataOptions,
    }
    let model = ModelArg::extract("model", model)?;
    let o: CalibrateOptions = from_json("calibrate options", options)?;
    let mut plan = OutputPlan::new();
    model.plan_input(&mut plan, "the input model");
    plan.data_input("the calibration data", &data, SAMPLE_EXTENSIONS);
    if let Some(out) = &output {
        plan.output("output", out);
    }
    check_plan(&plan)?;
    let config = o.calibration.config()?;
    let ranges = interruptible(py, move || {
        let (loaded, name) = model.load()?;
        check_external(
            &mut plan,
            "an external-data file of the input model",
            &loaded,
        )?;
        let calibrator = Calibrator::new(&loaded.proto, &name)?;
        let source = o.data.open(&data, calibrator.inputs())?;
        Ok(calibrator.calibrate(&source, &config)?)
    })?;
    py.check_signals()?;
    if let Some(out) = &output {
        py.detach(|| ranges.save(out))
            .map_err(|e| PyErr::from(Failure::Lib(e)))?;
    }
    Ok(to_json(&ranges)?)
}

/// Compares a float model with its quantized version on `data`: the JSON of `compare --json`;
/// with `html`, also writes the page of `compare --html` there.
#[pyfunction]
#[pyo3(signature = (float_model, int8_model, data, html, options))]
fn compare(
    py: Python<'_>,
    float_model: &Bound<'_, PyAny>,
    int8_model: &Bound<'_, PyAny>,
    data: PathBuf,
    html: Option<PathBuf>,
    options: &str,
) -> PyResult<String> {
    #[derive(Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct CompareOptions {
        data: DataOptions,
        per_layer: bool,
        latency_runs: usize,
        bounds: BoundOptions,
    }
    impl Default for CompareOptions {
        fn default() -> Self {
            CompareOptions {
                data: DataOptions::default(),
                per_layer: false,
                latency_runs: 5,
                bounds: BoundOptions::default(),
            }
        }
    }
    let float_model = ModelArg::extract("float_model", float_model)?;
    let int8_model = ModelArg::extract("int8_model", int8_model)?;
    let o: CompareOptions = from_json("compare options", options)?;
    let mut plan = OutputPlan::new();
    float_model.plan_input(&mut plan, "the float model");
    int8_model.plan_input(&mut plan, "the int8 model");
    plan.data_input("the data", &data, SAMPLE_EXTENSIONS);
    if let Some(out) = &html {
        plan.output("html", out);
    }
    check_plan(&plan)?;
    let bounds = o.bounds.bounds()?;
    let json = interruptible(py, move || {
        let (a, float_name) = float_model.load()?;
        let (b, int8_name) = int8_model.load()?;
        let source = o.data.open(&data, &InputSpec::of_model(&a.proto)?)?;
        let report = compare_models(
            &a.proto,
            &b.proto,
            &source,
            &CompareConfig {
                per_layer: o.per_layer || html.is_some(),
                latency_runs: o.latency_runs,
                histograms: if html.is_some() { 6 } else { 0 },
            },
        )?;
        if let Some(out) = &html {
            let context = onnx_ptq::compare::html::HtmlContext {
                title: format!("onnx-ptq compare: {int8_name}"),
                facts: vec![
                    ("float model".into(), float_name.clone()),
                    ("quantized model".into(), int8_name.clone()),
                    ("data".into(), data.display().to_string()),
                ],
            };
            let page = onnx_ptq::compare::html::render(&report, &context);
            onnx_ptq::onnx::write_atomic(out, page.as_bytes())?;
        }
        let violations = if bounds.is_empty() {
            Vec::new()
        } else {
            bounds.check(&report.outputs)?
        };
        let violation_text: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
        to_json(&serde_json::json!({
            "float": float_name,
            "int8": int8_name,
            "report": report,
            "bounds": bounds,
            "violations": violations,
            "violation_messages": violation_text,
            "passed": violations.is_empty(),
        }))
    })?;
    Ok(json)
}

/// Summarises a model (`onnx-ptq inspect --json`).
#[pyfunction]
fn inspect(py: Python<'_>, model: &Bound<'_, PyAny>) -> PyResult<String> {
    let model = ModelArg::extract("model", model)?;
    interruptible(py, move || {
        let (loaded, _) = model.load()?;
        to_json(&onnx_ptq::inspect::inspect(&loaded))
    })
}

/// Checks a model's structure and runs it once in tract (`onnx-ptq validate --json`).
#[pyfunction]
#[pyo3(signature = (model, options))]
fn validate(py: Python<'_>, model: &Bound<'_, PyAny>, options: &str) -> PyResult<String> {
    #[derive(Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct ValidateOptions {
        dims: BTreeMap<String, i64>,
        default_dim: i64,
        execute: bool,
    }
    impl Default for ValidateOptions {
        fn default() -> Self {
            ValidateOptions {
                dims: BTreeMap::new(),
                default_dim: 1,
                execute: true,
            }
        }
    }
    let model = ModelArg::extract("model", model)?;
    let o: ValidateOptions = from_json("validate options", options)?;
    for (name, value) in o
        .dims
        .iter()
        .chain([(&"default_dim".to_string(), &o.default_dim)])
    {
        if *value < 1 {
            return Err(PyValueError::new_err(format!(
                "dimension {name} must be at least 1, got {value}"
            )));
        }
    }
    interruptible(py, move || {
        let (loaded, name) = model.load()?;
        let exec = ExecOptions {
            dims: o.dims,
            default_dim: o.default_dim,
        };
        let report = onnx_ptq::validate::validate(&loaded.proto, o.execute.then_some(&exec));
        to_json(&serde_json::json!({
            "model": name,
            "valid": report.is_valid(),
            "report": report,
        }))
    })
}

/// The native part of onnx_ptq: use the functions of the `onnx_ptq` package instead.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_BINS", DEFAULT_BINS)?;
    m.add("QuantizationError", m.py().get_type::<QuantizationError>())?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(calibrate, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(validate, m)?)?;
    Ok(())
}
