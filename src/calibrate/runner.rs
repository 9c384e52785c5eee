//! Runs calibration samples through tract and feeds every watched tensor to its observers,
//! without keeping any value beyond the node being evaluated.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceFact;

use super::data::{DataSource, InputSpec};
use super::observer::{Histogram, MinMax};
use crate::engine::guard;
use crate::error::{Error, Result};
use crate::onnx::pb::ModelProto;

/// Model outputs of the first samples of a run, one `Vec` per sample.
pub type KeptOutputs = Vec<Vec<Tensor>>;

/// Statistics of one tensor over every sample seen.
#[derive(Debug, Clone)]
pub struct TensorStats {
    /// Running min/max.
    pub minmax: MinMax,
    /// Histogram, when the range method needs one.
    pub histogram: Option<Histogram>,
}

impl TensorStats {
    fn new(bins: Option<usize>) -> Self {
        TensorStats {
            minmax: MinMax::new(),
            histogram: bins.map(Histogram::new),
        }
    }

    fn observe(&mut self, values: &[f32]) {
        self.minmax.observe(values);
        if let Some(h) = &mut self.histogram {
            h.observe(values);
        }
    }

    fn merge(&mut self, other: &TensorStats) {
        self.minmax.merge(&other.minmax);
        if let (Some(a), Some(b)) = (&mut self.histogram, &other.histogram) {
            a.merge(b);
        }
    }
}

/// A tract plan for one set of concrete input shapes, with its outlets mapped to watched
/// tensors.
struct Built {
    plan: Arc<TypedSimplePlan>,
    /// For each tract node and output slot, the index of the watched tensor it carries.
    watch: Vec<Vec<Option<usize>>>,
    /// tract's input slot for each `InputSpec` of the model, in spec order.
    input_slots: Vec<usize>,
}

/// A model prepared for observation: plans typed for each distinct set of sample shapes (tract
/// cannot always evaluate shape expressions over symbolic dims, such as a Slice bounded by the
/// sequence length), whose node outputs are mapped back to ONNX tensor names.
pub struct Observer {
    /// The model as tract read it, cloned for each set of sample shapes (parsing the protobuf
    /// again per shape dominated calibration time on large models).
    inference: InferenceModel,
    /// ONNX tensor names a node output may carry (tract labels the sub-nodes of ops it
    /// expands with derived names; only the last one carries the ONNX name).
    onnx_names: std::collections::HashSet<String>,
    /// Watched ONNX tensor names, sorted.
    tensors: Vec<String>,
    /// Index of each watched name.
    tensor_index: HashMap<String, usize>,
    /// Index of the watched tensor for each `InputSpec` (float inputs).
    input_watch: Vec<Option<usize>>,
    inputs: Vec<InputSpec>,
    plans: Mutex<HashMap<Vec<Vec<usize>>, Arc<Built>>>,
    /// Off only to measure plain inference in the same plans (benchmarks).
    observe: bool,
}

impl Observer {
    /// Loads `model` in tract and finds each float tensor that an ONNX node produces (and each
    /// float graph input): those get observed.
    pub fn new(model: &ModelProto) -> Result<Observer> {
        let inputs = InputSpec::of_model(model)?;
        guard("loading the model in tract", || {
            Self::prepare(model, inputs)
        })
        .map_err(Error::Tract)
    }

    fn prepare(
        model: &ModelProto,
        inputs: Vec<InputSpec>,
    ) -> std::result::Result<Observer, String> {
        let bytes = model.encode_to_vec();
        let graph = model.graph.as_ref().ok_or("the model has no graph")?;
        let mut onnx_names: std::collections::HashSet<String> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().cloned())
            .collect();
        onnx_names.extend(inputs.iter().map(|i| i.name.clone()));
        let mut names: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let inference = crate::engine::load_bytes(&bytes)?;
        match inference.clone().into_typed() {
            Ok(typed) => {
                for node in typed.nodes() {
                    for (slot, fact) in node.outputs.iter().enumerate() {
                        if let Some(label) = typed.outlet_label(OutletId::new(node.id, slot)) {
                            if onnx_names.contains(label) && is_float(fact.fact.datum_type) {
                                names.insert(label.to_string());
                            }
                        }
                    }
                }
            }
            // Some models only type with concrete input shapes (symbolic sizes that tract
            // cannot prove equal): watch every node output, non-float ones stay unobserved.
            Err(_) => names.extend(
                graph
                    .node
                    .iter()
                    .flat_map(|n| n.output.iter().filter(|o| !o.is_empty()).cloned()),
            ),
        }
        for spec in &inputs {
            if spec.elem_type == crate::onnx::pb::tensor_proto::DataType::Float {
                names.insert(spec.name.clone());
            }
        }
        let tensors: Vec<String> = names.into_iter().collect();
        let tensor_index: HashMap<String, usize> = tensors
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let input_watch = inputs
            .iter()
            .map(|s| tensor_index.get(&s.name).copied())
            .collect();
        Ok(Observer {
            inference,
            onnx_names,
            tensors,
            tensor_index,
            input_watch,
            inputs,
            plans: Mutex::new(HashMap::new()),
            observe: true,
        })
    }

    /// Runs the same plans without looking at any value: what plain inference costs, for
    /// measuring the observers' overhead.
    pub fn disable_observation(&mut self) {
        self.observe = false;
    }

    /// The plan for samples of these input shapes, built on first use.
    fn plan_for(&self, shapes: Vec<Vec<usize>>) -> Result<Arc<Built>> {
        if let Some(b) = self.plans.lock().ok().and_then(|p| p.get(&shapes).cloned()) {
            return Ok(b);
        }
        let built = guard("typing the model for the sample shapes", || {
            self.build(&shapes)
        })
        .map_err(Error::Tract)?;
        let built = Arc::new(built);
        if let Ok(mut p) = self.plans.lock() {
            p.insert(shapes, built.clone());
        }
        Ok(built)
    }

    fn build(&self, shapes: &[Vec<usize>]) -> std::result::Result<Built, String> {
        let mut inference = self.inference.clone();
        let facts = self
            .inputs
            .iter()
            .zip(shapes)
            .map(|(spec, shape)| {
                let dt = crate::engine::datum_type(spec.elem_type)
                    .ok_or_else(|| format!("input '{}' has a type tract cannot hold", spec.name))?;
                Ok((
                    spec.name.as_str(),
                    InferenceFact::dt_shape(dt, shape.clone()),
                ))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let input_slots = crate::engine::set_input_facts(&mut inference, &facts)?;
        let typed = inference
            .into_typed()
            .map_err(|e| format!("tract could not type the model: {e:#}"))?;
        crate::engine::check_memory(&typed)?;
        let mut watch: Vec<Vec<Option<usize>>> = typed
            .nodes()
            .iter()
            .map(|n| vec![None; n.outputs.len()])
            .collect();
        for node in typed.nodes() {
            for (slot, w) in watch[node.id].iter_mut().enumerate() {
                let Some(label) = typed.outlet_label(OutletId::new(node.id, slot)) else {
                    continue;
                };
                if self.onnx_names.contains(label) {
                    *w = self.tensor_index.get(label).copied();
                }
            }
        }
        let plan = typed
            .into_runnable()
            .map_err(|e| format!("tract could not plan the model: {e:#}"))?;
        Ok(Built {
            plan,
            watch,
            input_slots,
        })
    }

    /// The ONNX names of the observed tensors, sorted.
    pub fn tensor_names(&self) -> &[String] {
        &self.tensors
    }

    /// The model inputs samples must provide.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    /// Runs every sample of `source` (on `threads` threads, each with its own plan state and
    /// observers, merged at the end) and returns each tensor's statistics by name.
    /// `on_sample` is called after each sample (for progress display).
    pub fn run(
        &self,
        source: &DataSource,
        histogram_bins: Option<usize>,
        threads: usize,
        on_sample: &(dyn Fn() + Sync),
    ) -> Result<BTreeMap<String, TensorStats>> {
        self.run_keeping_outputs(source, histogram_bins, threads, on_sample, 0)
            .map(|(stats, _)| stats)
    }

    /// [`Observer::run`], also returning the model outputs of the first `keep` samples (in
    /// sample order): the float reference a comparison would otherwise run the model again for.
    pub fn run_keeping_outputs(
        &self,
        source: &DataSource,
        histogram_bins: Option<usize>,
        threads: usize,
        on_sample: &(dyn Fn() + Sync),
        keep: usize,
    ) -> Result<(BTreeMap<String, TensorStats>, KeptOutputs)> {
        let kept: Mutex<BTreeMap<usize, Vec<Tensor>>> = Mutex::new(BTreeMap::new());
        let next = AtomicUsize::new(0);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let threads = threads.clamp(1, source.len().max(1));
        if let Some(bins) = histogram_bins {
            // One histogram per tensor per worker, plus the merged one.
            let histograms = (self.tensors.len() as u64) * (threads as u64 + 1);
            crate::memory::check_allocation(
                histograms.saturating_mul((bins * super::observer::SLOTS_PER_BIN) as u64),
                8,
                &format!(
                    "{histograms} histograms of {bins} bins ({} tensors, {threads} threads)",
                    self.tensors.len()
                ),
            )
            .map_err(Error::Usage)?;
        }
        let partials: Vec<Vec<TensorStats>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut stats: Vec<TensorStats> = (0..self.tensors.len())
                            .map(|_| TensorStats::new(histogram_bins))
                            .collect();
                        loop {
                            if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                                break;
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= source.len() {
                                break;
                            }
                            match self.run_sample(source, i, &mut stats) {
                                Ok(outputs) if i < keep => {
                                    if let Ok(mut k) = kept.lock() {
                                        k.insert(i, outputs);
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    record(&first_error, e);
                                    break;
                                }
                            }
                            on_sample();
                        }
                        stats
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        if let Some(e) = first_error.into_inner().ok().flatten() {
            return Err(e);
        }
        let mut merged: Vec<TensorStats> = (0..self.tensors.len())
            .map(|_| TensorStats::new(histogram_bins))
            .collect();
        for partial in &partials {
            for (m, p) in merged.iter_mut().zip(partial) {
                m.merge(p);
            }
        }
        let kept = kept
            .into_inner()
            .unwrap_or_default()
            .into_values()
            .collect();
        Ok((self.tensors.iter().cloned().zip(merged).collect(), kept))
    }

    fn run_sample(
        &self,
        source: &DataSource,
        index: usize,
        stats: &mut [TensorStats],
    ) -> Result<Vec<Tensor>> {
        let sample = source.load(index)?;
        let shapes: Vec<Vec<usize>> = sample.inputs.iter().map(|t| t.shape().to_vec()).collect();
        let built = self.plan_for(shapes)?;
        let mut state = built
            .plan
            .spawn()
            .map_err(|e| Error::Tract(format!("{e:#}")))?;
        let mut ordered: Vec<Option<TValue>> = vec![None; built.input_slots.len()];
        for (spec_idx, tensor) in sample.inputs.into_iter().enumerate() {
            // Graph inputs are observed here: tract does not evaluate its source nodes.
            if let Some(idx) = self.input_watch[spec_idx] {
                let value = tensor.clone().into_tvalue();
                observe_value(&mut stats[idx], &value)
                    .map_err(|e| Error::Tract(format!("{e:#}")))?;
            }
            ordered[built.input_slots[spec_idx]] = Some(tensor.into_tvalue());
        }
        let inputs: TVec<TValue> = ordered.into_iter().flatten().collect();
        let watch = &built.watch;
        let observe = self.observe;
        let label = sample.label;
        guard(&label, || {
            state
                .run_plan_with_eval(inputs, |ctx, op_state, node, ins| {
                    let outs = crate::engine::eval_node(ctx, op_state, node, ins)?;
                    if !observe {
                        return Ok::<_, anyhow::Error>(outs);
                    }
                    for (slot, value) in outs.iter().enumerate() {
                        if let Some(idx) = watch[node.id][slot] {
                            observe_value(&mut stats[idx], value)?;
                        }
                    }
                    Ok::<_, anyhow::Error>(outs)
                })
                .map(|outputs| outputs.into_iter().map(|v| v.into_tensor()).collect())
                .map_err(|e| format!("running sample {label} in tract: {e:#}"))
        })
        .map_err(Error::Tract)
    }
}

fn record(slot: &Mutex<Option<Error>>, e: Error) {
    if let Ok(mut guard) = slot.lock() {
        guard.get_or_insert(e);
    }
}

/// Whether tensors of this type get a range. Double tensors do not: QuantizeLinear takes
/// float, float16 and bfloat16 only, so a double tensor can never be quantized (observing it
/// once made the planner quantize it, and the written model did not type).
fn is_float(dt: DatumType) -> bool {
    dt == f32::datum_type() || dt == f16::datum_type()
}

fn observe_value(stats: &mut TensorStats, value: &TValue) -> TractResult<()> {
    if !value.is_plain() {
        return Ok(()); // packed weights of an optimized op: not an activation
    }
    if value.datum_type() == f32::datum_type() {
        stats.observe(value.try_as_plain_ram()?.as_slice::<f32>()?);
    } else if is_float(value.datum_type()) {
        let cast = value.cast_to::<f32>()?;
        stats.observe(cast.try_as_plain_ram()?.as_slice::<f32>()?);
    }
    Ok(())
}
