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
