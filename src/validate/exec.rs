//! The execution check: load the model in tract with concrete input shapes and run it once.

use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceFact;

use super::{ExecOptions, ExecSummary};
use crate::engine::{check_memory, datum_type, eval_node, guard, load_bytes, output_names};
use crate::graph::{tensor_type, Dim};
use crate::onnx::dtype;
use crate::onnx::pb::ModelProto;

/// Runs `model` once in tract on synthetic inputs (deterministic values in [-1, 1) for floats,
/// zeros for integers, which keeps index inputs in range). `Err` explains what tract refused.
pub fn check_execution(model: &ModelProto, options: &ExecOptions) -> Result<ExecSummary, String> {
    guard("execution check", || run_once(model, options))
}

/// Largest synthetic input, in elements: a bigger one is almost surely a missing `--dim`.
const MAX_INPUT_ELEMENTS: u64 = 1 << 28;

/// Domains whose ops tract implements (by op type: it ignores the domain).
const TRACT_DOMAINS: &[&str] = &["", "ai.onnx", "ai.onnx.ml", "com.microsoft"];

fn run_once(model: &ModelProto, options: &ExecOptions) -> Result<ExecSummary, String> {
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    // tract would run an op of another domain as the standard op of the same name: a "pass"
    // would then say nothing about the model (ONNX Runtime refuses it without its kernel).
    let is_function = |n: &crate::onnx::pb::NodeProto| {
        model
            .functions
            .iter()
            .any(|f| f.domain() == n.domain() && f.name() == n.op_type())
    };
    if let Some(node) = graph
        .node
        .iter()
        .find(|n| !TRACT_DOMAINS.contains(&n.domain()) && !is_function(n))
    {
        return Err(format!(
            "{}: op '{}' of domain '{}' has no implementation here (tract would run it as the \
             standard '{}', ONNX Runtime needs a kernel registered for that domain)",
            crate::onnx::walk::node_label(node),
            node.op_type(),
            node.domain(),
            node.op_type()
        ));
    }
    let bytes = model.encode_to_vec();
    let mut inference = load_bytes(&bytes)?;
    let mut fed = Vec::new();
    for (slot, outlet) in inference
        .input_outlets()
        .map_err(|e| e.to_string())?
        .to_vec()
        .into_iter()
        .enumerate()
    {
        let name = inference.node(outlet.node).name.clone();
        let decl = graph
            .input
            .iter()
            .find(|v| v.name() == name)
            .ok_or_else(|| format!("tract input '{name}' is not a graph input"))?;
        let tt = decl
            .r#type
            .as_ref()
            .and_then(tensor_type)
            .ok_or_else(|| format!("input '{name}' is not a tensor"))?;
        let dt = datum_type(tt.elem_type).ok_or_else(|| {
            format!(
                "input '{name}' has element type {}, which tract cannot feed",
                dtype::name(tt.elem_type)
            )
        })?;
        let shape: Vec<usize> = tt
            .shape
            .as_deref()
            .ok_or_else(|| format!("input '{name}' has no shape: its rank is unknown"))?
            .iter()
            .map(|d| match d {
                Dim::Value(v) if *v >= 0 => *v as usize,
                Dim::Param(p) => *options.dims.get(p).unwrap_or(&options.default_dim) as usize,
                _ => options.default_dim as usize,
            })
            .collect();
        let n = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&n| n <= MAX_INPUT_ELEMENTS);
        if n.is_none() {
            return Err(format!(
                "input '{name}' of shape {shape:?} is too large for the execution check \
                 (at most {MAX_INPUT_ELEMENTS} elements): set its symbolic dims with --dim"
            ));
        }
        crate::memory::check_allocation(
            n.unwrap_or(u64::MAX),
            dt.size_of() as u64,
            &format!("the synthetic input '{name}' of shape {shape:?}"),
        )?;
        inference
            .set_input_fact(slot, InferenceFact::dt_shape(dt, shape.clone()))
            .map_err(|e| format!("input '{name}': {e:#}"))?;
        fed.push((name, shape, dt));
    }
    let typed = inference
        .into_typed()
        .map_err(|e| format!("tract could not type the model: {e:#}"))?;
    let output_names = output_names(&typed)?;
    check_memory(&typed)?;
    let plan = typed
        .into_decluttered()
        .and_then(|m| m.into_runnable())
        .map_err(|e| format!("tract could not plan the model: {e:#}"))?;
    let inputs: TVec<TValue> = fed
        .iter()
        .enumerate()
        .map(|(k, (_, shape, dt))| synthetic_input(*dt, shape, k as u64).map(|t| t.into_tvalue()))
        .collect::<Result<_, _>>()?;
    let mut state = plan.spawn().map_err(|e| format!("{e:#}"))?;
    let outputs = state
        .run_plan_with_eval(inputs, eval_node)
        .map_err(|e| format!("tract failed to run the model: {e:#}"))?;
    Ok(ExecSummary {
        inputs: fed.into_iter().map(|(n, s, _)| (n, s)).collect(),
        outputs: output_names
            .into_iter()
            .zip(outputs.iter().map(|t| t.shape().to_vec()))
            .collect(),
    })
}

fn synthetic_input(dt: DatumType, shape: &[usize], seed: u64) -> Result<Tensor, String> {
    if dt == f32::datum_type() || dt == f64::datum_type() || dt == f16::datum_type() {
        let n: usize = shape.iter().product();
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let t = tract_ndarray::ArrayD::from_shape_vec(shape, values)
            .map_err(|e| e.to_string())?
            .into_tensor();
        t.cast_to_dt(dt)
            .map(|c| c.into_owned())
            .map_err(|e| e.to_string())
    } else {
        Tensor::zero_dt(dt, shape).map_err(|e| e.to_string())
    }
}
