//! Glue between onnx-ptq and tract: element-type mapping, and a guard that turns a panic inside
//! tract (it has a few on malformed graphs, such as integer division by zero) into an error.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceFact;

use crate::onnx::pb::tensor_proto::DataType;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}
static HOOK: Once = Once::new();

/// Runs `f`, converting a panic inside it into `Err` without printing the panic message: the
/// caller reports the failure as an error of its own.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.unwrap_or_else(|payload| {
        Err(format!(
            "{what}: tract failed internally: {}",
            panic_message(payload.as_ref())
        ))
    })
}

/// How a run refused for the memory budget starts: the caller can tell it from a model tract
/// cannot run (which is no reason to refuse a quantization) without parsing more.
pub const MEMORY_REFUSAL: &str = "refusing to run the model";

/// Estimates the peak memory of one run of `typed` (at the concrete shapes it was typed for)
/// and refuses it when that exceeds the machine's budget ([`crate::memory::Budget`]).
///
/// The estimate walks tract's evaluation order, adding each node's outputs when they are
/// computed and removing them after their last consumer, which is what a plan state holds.
/// Constants are left out (they are in memory already, in the loaded model); so are outputs
/// whose size depends on the data (tract cannot know it before running).
pub fn check_memory(typed: &TypedModel) -> Result<(), String> {
    let Some(budget) = crate::memory::Budget::from_environment()? else {
        return Ok(());
    };
    let estimate = estimate_memory(typed)?;
    if estimate.peak <= budget.bytes {
        return Ok(());
    }
    use crate::memory::Bytes;
    let biggest = match &estimate.biggest {
        Some((bytes, outlet)) => {
            let node = typed.node(outlet.node);
            let label = typed
                .outlet_label(*outlet)
                .map(|l| format!("'{l}', "))
                .unwrap_or_default();
            format!(
                "; the largest tensor is {label}output of node '{}' ({}), of shape {:?}: {}",
                node.name,
                node.op.name(),
                typed
                    .outlet_fact(*outlet)
                    .ok()
                    .and_then(|f| f.shape.as_concrete().map(<[usize]>::to_vec))
                    .unwrap_or_default(),
                Bytes(*bytes)
            )
        }
        None => String::new(),
    };
    Err(format!(
        "{MEMORY_REFUSAL}: at these input shapes it needs about {} of memory, more \
         than the budget of {} ({}){biggest}",
        Bytes(estimate.peak),
        Bytes(budget.bytes),
        budget.source
    ))
}

/// The result of [`estimate_memory`].
struct Estimate {
    /// Largest sum of live tensors, in bytes.
    peak: u64,
    /// The largest single tensor and where it comes from.
    biggest: Option<(u64, OutletId)>,
}

fn estimate_memory(typed: &TypedModel) -> Result<Estimate, String> {
    use std::collections::HashMap;
    let order = typed.eval_order().map_err(|e| format!("{e:#}"))?;
    let mut last_use: HashMap<OutletId, usize> = HashMap::new();
    for (step, &n) in order.iter().enumerate() {
        for input in &typed.node(n).inputs {
            last_use.insert(*input, step);
        }
    }
    for output in typed.output_outlets().map_err(|e| e.to_string())? {
        last_use.insert(*output, usize::MAX);
    }
    let mut sizes: HashMap<OutletId, u64> = HashMap::new();
    let mut live = 0u64;
    let mut estimate = Estimate {
        peak: 0,
        biggest: None,
    };
    for (step, &n) in order.iter().enumerate() {
        let node = typed.node(n);
        if node
            .op_as::<tract_onnx::tract_core::ops::konst::Const>()
            .is_none()
        {
            for (slot, output) in node.outputs.iter().enumerate() {
                let Some(shape) = output.fact.shape.as_concrete() else {
                    continue;
                };
                let bytes = shape
                    .iter()
                    .try_fold(output.fact.datum_type.size_of() as u64, |acc, &d| {
                        acc.checked_mul(d as u64)
                    })
                    .unwrap_or(u64::MAX);
                let outlet = OutletId::new(n, slot);
                live = live.saturating_add(bytes);
                sizes.insert(outlet, bytes);
                if estimate.biggest.is_none_or(|(b, _)| bytes > b) {
                    estimate.biggest = Some((bytes, outlet));
                }
            }
        }
        estimate.peak = estimate.peak.max(live);
        sizes.retain(|outlet, bytes| {
            let done = last_use.get(outlet).is_none_or(|&last| last <= step);
            if done {
                live -= *bytes;
            }
            !done
        });
    }
    Ok(estimate)
}

/// Evaluates one node of a plan (the default evaluation), naming the node in its errors and
/// turning a panic inside it into an error that names it too.
pub fn eval_node<F, O>(
    ctx: &tract_onnx::tract_core::plan::EvalContext,
    op_state: Option<&mut (dyn tract_onnx::tract_core::ops::OpState + 'static)>,
    node: &tract_onnx::tract_core::model::Node<F, O>,
    inputs: TVec<TValue>,
) -> TractResult<TVec<TValue>>
where
    F: Fact + Clone + 'static,
    O: std::fmt::Debug + std::fmt::Display + AsRef<dyn Op> + AsMut<dyn Op> + Clone + 'static,
{
    let name = || format!("node '{}' ({})", node.name, node.op().name());
    match panic::catch_unwind(AssertUnwindSafe(|| {
        tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs)
    })) {
        Ok(result) => anyhow::Context::with_context(result, name),
        Err(payload) => anyhow::bail!(
            "{}: tract failed internally: {}",
            name(),
            panic_message(payload.as_ref())
        ),
    }
}

/// The text of a panic's payload, without the backtrace an unwrapped anyhow error carries.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown failure");
    message
        .split("\n\nStack backtrace")
        .next()
        .unwrap_or(message)
        .trim()
        .to_string()
}

/// Loads encoded ONNX bytes in tract, ignoring the file's output shapes and value_info: tract
/// infers its own, and exporters' symbolic expressions there often fail to unify.
pub fn load_bytes(bytes: &[u8]) -> Result<InferenceModel, String> {
    tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_read(&mut &bytes[..])
        .map_err(|e| format!("tract could not load the model: {e:#}"))
}

/// Sets the fact of each named input; returns each one's tract input slot, in the given order.
pub fn set_input_facts(
    inference: &mut InferenceModel,
    facts: &[(&str, InferenceFact)],
) -> Result<Vec<usize>, String> {
    let outlets = inference
        .input_outlets()
        .map_err(|e| e.to_string())?
        .to_vec();
    facts
        .iter()
        .map(|(name, fact)| {
            let slot = outlets
                .iter()
                .position(|o| inference.node(o.node).name == *name)
                .ok_or_else(|| format!("tract has no input named '{name}'"))?;
            inference
                .set_input_fact(slot, fact.clone())
                .map_err(|e| format!("input '{name}': {e:#}"))?;
            Ok(slot)
        })
        .collect()
}

/// ONNX names of a typed model's outputs, in order.
pub fn output_names(typed: &TypedModel) -> Result<Vec<String>, String> {
    Ok(typed
        .output_outlets()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|o| {
            typed
                .outlet_label(*o)
                .map(str::to_string)
                .unwrap_or_else(|| typed.node(o.node).name.clone())
        })
        .collect())
}

/// tract's type for an ONNX element type, `None` for those tract cannot hold.
pub fn datum_type(dt: DataType) -> Option<DatumType> {
    use DataType::*;
    Some(match dt {
        Float => f32::datum_type(),
        Double => f64::datum_type(),
        Float16 => f16::datum_type(),
        Int8 => i8::datum_type(),
        Int16 => i16::datum_type(),
        Int32 => i32::datum_type(),
        Int64 => i64::datum_type(),
        Uint8 => u8::datum_type(),
        Uint16 => u16::datum_type(),
        Uint32 => u32::datum_type(),
        Uint64 => u64::datum_type(),
        Bool => bool::datum_type(),
        String => std::string::String::datum_type(),
        _ => return None,
    })
}

/// Plan states keyed by the concrete input shapes they were typed for.
type PlanCache = std::sync::Mutex<std::collections::HashMap<Vec<Vec<usize>>, Arc<Built>>>;

/// A model ready to run in tract, with inputs and outputs addressed by ONNX name. A plan is
/// typed for each distinct set of input shapes and cached: tract cannot always evaluate shape
/// expressions over symbolic dims (a Slice bounded by the sequence length, a Concat of two
/// differently rounded `height/32` expressions), while concrete shapes always type.
pub struct Runner {
    /// Parsed once: re-reading the protobuf for every shape costs more than typing (a 66 MB
    /// transformer took seconds per shape, mostly in page faults).
    inference: InferenceModel,
    input_names: Vec<String>,
    optimize: bool,
    output_names: Vec<String>,
    plans: PlanCache,
}

struct Built {
    plan: Arc<TypedSimplePlan>,
    /// tract input slot of each name given to [`Runner::new`], in that order.
    input_slots: Vec<usize>,
    /// The ONNX tensor name each node output carries, by tract node and slot.
    labels: Vec<Vec<Option<String>>>,
}

impl Runner {
    /// Loads `model` in tract. `input_names` fixes the order in which [`Runner::run`] takes
    /// inputs. `optimize` trades plan-building time for faster runs.
    pub fn new(
        model: &crate::onnx::pb::ModelProto,
        input_names: &[String],
        optimize: bool,
    ) -> Result<Runner, String> {
        use prost::Message;
        let graph = model.graph.as_ref().ok_or("the model has no graph")?;
        let output_names = graph.output.iter().map(|o| o.name().to_string()).collect();
        let inference = guard("loading the model in tract", || {
            load_bytes(&model.encode_to_vec())
        })?;
        Ok(Runner {
            inference,
            input_names: input_names.to_vec(),
            optimize,
            output_names,
            plans: Default::default(),
        })
    }

    /// ONNX names of the outputs, in the order [`Runner::run`] returns them.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    fn plan_for(&self, inputs: &[Tensor]) -> Result<Arc<Built>, String> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        if let Some(b) = self.plans.lock().ok().and_then(|p| p.get(&shapes).cloned()) {
            return Ok(b);
        }
        let facts: Vec<InferenceFact> = inputs
            .iter()
            .map(|t| InferenceFact::dt_shape(t.datum_type(), t.shape()))
            .collect();
        let built = Arc::new(guard("typing the model in tract", || self.build(&facts))?);
        if let Ok(mut p) = self.plans.lock() {
            p.insert(shapes, built.clone());
        }
        Ok(built)
    }

    fn build(&self, facts: &[InferenceFact]) -> Result<Built, String> {
        let mut inference = self.inference.clone();
        let named: Vec<(&str, InferenceFact)> = self
            .input_names
            .iter()
            .map(String::as_str)
            .zip(facts.iter().cloned())
            .collect();
        let input_slots = set_input_facts(&mut inference, &named)?;
        let typed = inference
            .into_typed()
            .map_err(|e| format!("tract could not type the model: {e:#}"))?;
        check_memory(&typed)?;
        // The optimized plan is only faster: where tract's optimizer fails on a graph its
        // plain plan runs (FlashSDPA codegen on a boolean mask, MultiBroadcastTo of a quantized
        // constant), the plain plan computes the same values.
        let typed = if self.optimize {
            typed.clone().into_optimized().unwrap_or(typed)
        } else {
            typed
        };
        let labels = typed
            .nodes()
            .iter()
            .map(|n| {
                (0..n.outputs.len())
                    .map(|slot| {
                        typed
                            .outlet_label(OutletId::new(n.id, slot))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .collect();
        let plan = typed
            .into_runnable()
            .map_err(|e| format!("tract could not plan the model: {e:#}"))?;
        Ok(Built {
            plan,
            input_slots,
            labels,
        })
    }

    /// Runs one sample; `inputs` in the order of the names given to [`Runner::new`].
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        self.run_observing(inputs, &mut |_, _| Ok(()))
    }

    /// Runs one sample and shows `observe` every labelled intermediate value (by ONNX tensor
    /// name) as it is computed; values are not kept beyond the call.
    pub fn run_observing(
        &self,
        inputs: Vec<Tensor>,
        observe: &mut dyn FnMut(&str, &TValue) -> Result<(), String>,
    ) -> Result<Vec<Tensor>, String> {
        let built = self.plan_for(&inputs)?;
        guard("running the model in tract", || {
            let mut ordered: Vec<Option<TValue>> = vec![None; built.input_slots.len()];
            for (i, t) in inputs.into_iter().enumerate() {
                let slot = *built.input_slots.get(i).ok_or("too many inputs")?;
                ordered[slot] = Some(t.into_tvalue());
            }
            let inputs: TVec<TValue> = ordered.into_iter().flatten().collect();
            let mut state = built.plan.spawn().map_err(|e| format!("{e:#}"))?;
            let labels = &built.labels;
            let mut failure: Option<String> = None;
            let outputs = state
                .run_plan_with_eval(inputs, |ctx, op_state, node, ins| {
                    let outs = eval_node(ctx, op_state, node, ins)?;
                    if failure.is_none() {
                        for (slot, value) in outs.iter().enumerate() {
                            if let Some(Some(name)) = labels[node.id].get(slot) {
                                if let Err(e) = observe(name, value) {
                                    failure = Some(e);
                                }
                            }
                        }
                    }
                    Ok::<_, anyhow::Error>(outs)
                })
                .map_err(|e| format!("{e:#}"))?;
            if let Some(e) = failure {
                return Err(e);
            }
            Ok(outputs.into_iter().map(|v| v.into_tensor()).collect())
        })
    }
}
