//! Glue between onnx-ptq and tract: element-type mapping, and a guard that turns a panic inside
//! tract (it has a few on malformed graphs, such as integer division by zero) into an error.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use tract_onnx::prelude::*;

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
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        // An unwrapped anyhow error carries its backtrace in the Debug text: keep the message.
        let message = message
            .split("\n\nStack backtrace")
            .next()
            .unwrap_or(message)
            .trim();
        Err(format!("{what}: tract failed internally: {message}"))
    })
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

/// A model ready to run in tract (optimized plan, symbolic input dims kept symbolic so that one
/// plan runs every sample shape), with inputs and outputs addressed by ONNX name.
pub struct Runner {
    plan: std::sync::Arc<TypedSimplePlan>,
    /// tract input slot of each name given to [`Runner::new`], in that order.
    input_slots: Vec<usize>,
    output_names: Vec<String>,
}

impl Runner {
    /// Loads `model` in tract. `input_names` fixes the order in which [`Runner::run`] takes
    /// inputs. `optimize` trades plan-building time for faster runs.
    pub fn new(
        model: &crate::onnx::pb::ModelProto,
        input_names: &[String],
        optimize: bool,
    ) -> Result<Runner, String> {
        guard("loading the model in tract", || {
            use prost::Message;
            let bytes = model.encode_to_vec();
            let typed = load_bytes(&bytes)?
                .into_typed()
                .map_err(|e| format!("tract could not type the model: {e:#}"))?;
            let output_names = output_names(&typed)?;
            let outlets = typed.input_outlets().map_err(|e| e.to_string())?.to_vec();
            let input_slots = input_names
                .iter()
                .map(|name| {
                    outlets
                        .iter()
                        .position(|o| typed.node(o.node).name == *name)
                        .ok_or_else(|| format!("tract has no input named '{name}'"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let typed = if optimize {
                typed
                    .into_optimized()
                    .map_err(|e| format!("tract could not optimize the model: {e:#}"))?
            } else {
                typed
            };
            let plan = typed
                .into_runnable()
                .map_err(|e| format!("tract could not plan the model: {e:#}"))?;
            Ok(Runner {
                plan,
                input_slots,
                output_names,
            })
        })
    }

    /// ONNX names of the outputs, in the order [`Runner::run`] returns them.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs one sample; `inputs` in the order of the names given to [`Runner::new`].
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        guard("running the model in tract", || {
            let mut ordered: Vec<Option<TValue>> = vec![None; self.input_slots.len()];
            for (i, t) in inputs.into_iter().enumerate() {
                let slot = *self.input_slots.get(i).ok_or("too many inputs")?;
                ordered[slot] = Some(t.into_tvalue());
            }
            let inputs: TVec<TValue> = ordered.into_iter().flatten().collect();
            let outputs = self.plan.run(inputs).map_err(|e| format!("{e:#}"))?;
            Ok(outputs.into_iter().map(|v| v.into_tensor()).collect())
        })
    }
}
