//! Accuracy-aware quantization: returns the most sensitive nodes to float, one step at a time,
//! until the quantized model meets the user's bounds on held-out samples.
//!
//! Sensitivity is measured the direct way: for every quantized compute node, the model with
//! only that node (and the activations it reads and writes) back in float is built and run in
//! tract on the held-out samples, and its output error is compared with the fully quantized
//! model's. Nodes are then returned to float in order of that gain, each step measured on the
//! real rewritten model; a step that does not make the model better is undone. With `int16`, a step
//! raises the node's activations to 16 bits instead (the model is upgraded to opset 21). Data-movement nodes
//! (Reshape, Transpose, MaxPool...) add no error of their own and are not candidates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use tract_onnx::prelude::Tensor;

use super::params::ActType;
use super::plan::{Plan, PlanConfig};
use super::rules::{rule_for, InputRole, OutputRole};
use super::simulate::fold_constant_dequantize;
use crate::calibrate::DataSource;
use crate::compare::{compare_to_reference, reference_outputs, Bounds, ErrorMetrics};
use crate::error::{Error, Result};
use crate::onnx::pb::{GraphProto, ModelProto};
use crate::onnx::walk::node_label;

/// Settings of the accuracy search.
#[derive(Debug, Clone)]
pub struct AccuracyConfig {
    /// The bounds to meet.
    pub bounds: Bounds,
    /// Calibration samples set aside to measure the error on (they are not calibrated on).
    pub held_out: usize,
    /// Candidate models measured at once.
    pub threads: usize,
    /// Raise a sensitive node's activations to 16 bits (opset 21) instead of returning the
    /// node to float.
    pub int16: bool,
}

/// The fp32-vs-int8 error of one model on the held-out samples, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// The search's ranking score (lowest watched SQNR, less a penalty per top-1 flip).
    pub score: f64,
    /// The watched outputs' metrics.
    pub outputs: BTreeMap<String, ErrorMetrics>,
}

/// One node returned to float.
#[derive(Debug, Clone, Serialize)]
pub struct FallbackStep {
    /// The node.
    pub node: String,
    /// Its op type.
    pub op_type: String,
    /// What the node got: "float", or "int16" activations.
    pub to: &'static str,
    /// Score gain when this node alone is float (the sensitivity ranking).
    pub gain_alone: f64,
    /// The whole model after this step.
    pub after: Measured,
}

/// What the accuracy search did, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    /// The bounds.
    pub bounds: Bounds,
    /// Held-out samples the error was measured on.
    pub held_out_samples: usize,
    /// The fully quantized model.
    pub initial: Measured,
    /// Candidate nodes whose sensitivity was measured.
    pub candidates: usize,
    /// Nodes returned to float, in order, each with the model's error after it.
    pub steps: Vec<FallbackStep>,
    /// Steps tried and undone because the model did not get better, by node.
    pub undone: Vec<String>,
    /// The final model.
    pub result: Measured,
    /// Whether the final model meets every bound.
    pub met: bool,
    /// Wall time of the search, in seconds.
    pub seconds: f64,
}

/// The fp32 outputs of the held-out samples, computed once, and a way to measure a quantized
/// model against them.
struct Evaluator<'a> {
    held: &'a DataSource,
    output_names: Vec<String>,
    reference: Vec<Vec<Tensor>>,
    bounds: &'a Bounds,
}

impl<'a> Evaluator<'a> {
    fn new(float: &ModelProto, held: &'a DataSource, bounds: &'a Bounds) -> Result<Self> {
        let (output_names, reference) = reference_outputs(float, held)?;
        Ok(Evaluator {
            held,
            output_names,
            reference,
            bounds,
        })
    }

    /// The error of `quantized`, its samples spread over `threads` workers.
    fn measure(&self, quantized: &ModelProto, threads: usize) -> Result<Measured> {
        let all = compare_to_reference(
            &fold_constant_dequantize(quantized),
            self.held,
            &self.reference,
            &self.output_names,
            threads,
        )?;
        let score = self.bounds.score(&all)?;
        let watched: BTreeMap<String, ErrorMetrics> = self
            .bounds
            .watched(&all)?
            .into_iter()
            .map(|(n, m)| (n.to_string(), *m))
            .collect();
        Ok(Measured {
            score,
            outputs: watched,
        })
    }

    fn met(&self, m: &Measured) -> Result<bool> {
        Ok(self.bounds.check(&m.outputs)?.is_empty())
    }
}

/// The quantized activations node `n` reads and writes.
pub(super) fn activations_of(graph: &GraphProto, plan: &Plan, n: usize) -> Vec<String> {
    let node = &graph.node[n];
    node.input
        .iter()
        .chain(&node.output)
        .filter(|t| plan.activations.contains_key(t.as_str()))
        .cloned()
        .collect()
}

/// `current` with node `n` returned to float (with the activations it reads and writes), or,
/// with `int16`, with those activations raised to 16 bits.
fn with_step(
    current: &PlanConfig,
    graph: &GraphProto,
    plan: &Plan,
    n: usize,
    int16: bool,
) -> PlanConfig {
    let mut cfg = current.clone();
    let tensors = activations_of(graph, plan, n);
    if current.mode == super::Mode::WeightOnly && weight_only_step(current, n) == "8-bit" {
        cfg.weight_only.eight_bit_nodes.insert(n);
        return cfg;
    }
    if int16 {
        let wide = if current.activations.is_signed() {
            ActType::S16
        } else {
            ActType::U16
        };
        for t in tensors {
            let o = cfg.overrides.entry(t).or_default();
            if !o.keep_float {
                o.ty = Some(wide);
            }
        }
    } else {
        cfg.fallback.nodes.insert(n);
        cfg.fallback.tensors.extend(tensors);
    }
    cfg
}

/// What a step does to node `n` in weight-only mode: a 4-bit weight goes to 8 bits first,
/// an 8-bit one to float.
fn weight_only_step(cfg: &PlanConfig, n: usize) -> &'static str {
    if cfg.weight_only.bits < 8 && !cfg.weight_only.eight_bit_nodes.contains(&n) {
        "8-bit"
    } else {
        "float"
    }
}

/// Whether `cfg` already applied the step for node `n`.
fn stepped(cfg: &PlanConfig, graph: &GraphProto, plan: &Plan, n: usize, int16: bool) -> bool {
    if cfg.mode == super::Mode::WeightOnly {
        return cfg.fallback.nodes.contains(&n);
    }
    if int16 {
        activations_of(graph, plan, n).iter().all(|t| {
            cfg.overrides
                .get(t)
                .and_then(|o| o.ty)
                .is_some_and(|ty| ty.is_16_bit())
        })
    } else {
        cfg.fallback.nodes.contains(&n)
    }
}

/// Nodes that add quantization error of their own: they have weights or their own output
/// range. Data movement (outputs sharing the input's parameters) does not. In dynamic mode,
/// every rewritten op.
fn candidates(graph: &GraphProto, plan: &Plan) -> Vec<usize> {
    if !plan.dynamic.is_empty() {
        return plan.dynamic.iter().map(|u| u.node()).collect();
    }
    if !plan.weight_only.is_empty() {
        return plan.weight_only.iter().map(|u| u.node).collect();
    }
    plan.quantized
        .iter()
        .copied()
        .filter(|&n| {
            rule_for(graph.node[n].op_type()).is_some_and(|r| {
                !matches!(r.output, OutputRole::SameAsInput(_))
                    || r.inputs.iter().any(|i| matches!(i, InputRole::Weight(_)))
            })
        })
        .collect()
}

/// Searches the fallback set that meets `config.bounds` on `held`. `build` turns a plan
/// configuration into the quantized model (plan + rewrite); `float` is the model the errors
/// are measured against. Returns the final configuration and the report.
pub fn search(
    float: &ModelProto,
    graph: &GraphProto,
    base: &PlanConfig,
    baseline: &Plan,
    held: &DataSource,
    config: &AccuracyConfig,
    build: &(dyn Fn(&PlanConfig) -> Result<ModelProto> + Sync),
) -> Result<(PlanConfig, AccuracyReport)> {
    let start = std::time::Instant::now();
    let evaluator = Evaluator::new(float, held, &config.bounds)?;
    let threads = config.threads.max(1);
    let initial = evaluator.measure(&build(base)?, threads)?;
    let mut report = AccuracyReport {
        bounds: config.bounds.clone(),
        held_out_samples: held.len(),
        initial: initial.clone(),
        candidates: 0,
        steps: Vec::new(),
        undone: Vec::new(),
        result: initial.clone(),
        met: evaluator.met(&initial)?,
        seconds: 0.0,
    };
    if report.met {
        report.seconds = start.elapsed().as_secs_f64();
        return Ok((base.clone(), report));
    }
    // Sensitivity of each candidate alone, several candidate models at once.
    let nodes = candidates(graph, baseline);
    report.candidates = nodes.len();
    let gains: Mutex<Vec<(usize, f64)>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(nodes.len().max(1)) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= nodes.len() || first_error.lock().map_or(true, |e| e.is_some()) {
                    break;
                }
                let n = nodes[k];
                let cfg = with_step(base, graph, baseline, n, config.int16);
                // Candidates run `threads` at a time, each on one core.
                match build(&cfg).and_then(|m| evaluator.measure(&m, 1)) {
                    Ok(m) => {
                        if let Ok(mut g) = gains.lock() {
                            g.push((n, m.score - initial.score));
                        }
                    }
                    Err(e) => {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut gains = gains.into_inner().unwrap_or_default();
    // Largest gain first; ties by graph order so that the search is deterministic.
    gains.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));

    let mut current = base.clone();
    let mut current_measured = initial;
    // Weight-only steps go 4 -> 8 bits on a first pass over the ranking, 8 bits -> float on
    // a second; other modes take one pass.
    let passes = if base.mode == super::Mode::WeightOnly && base.weight_only.bits < 8 {
        2
    } else {
        1
    };
    let order: Vec<(usize, f64)> = (0..passes).flat_map(|_| gains.iter().copied()).collect();
    for (n, gain) in order {
        if evaluator.met(&current_measured)? {
            break;
        }
        if stepped(&current, graph, baseline, n, config.int16) {
            continue;
        }
        let to = if current.mode == super::Mode::WeightOnly {
            weight_only_step(&current, n)
        } else if config.int16 {
            "int16"
        } else {
            "float"
        };
        let cfg = with_step(&current, graph, baseline, n, config.int16);
        let measured = evaluator.measure(&build(&cfg)?, threads)?;
        let node = node_label(&graph.node[n]);
        // A step that does not help would only cost speed (and size): undone.
        if measured.score <= current_measured.score + 1e-6 {
            report.undone.push(node);
            continue;
        }
        report.steps.push(FallbackStep {
            node,
            op_type: graph.node[n].op_type().to_string(),
            to,
            gain_alone: gain,
            after: measured.clone(),
        });
        current = cfg;
        current_measured = measured;
        if evaluator.met(&current_measured)? {
            break;
        }
    }
    report.met = evaluator.met(&current_measured)?;
    report.result = current_measured;
    report.seconds = start.elapsed().as_secs_f64();
    Ok((current, report))
}
