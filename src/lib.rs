//! onnx-ptq: post-training int8 quantization of ONNX models, calibrated through tract.
//!
//! The pipeline has one module per stage: [`onnx`] reads and writes models, [`graph`] indexes
//! them, [`validate`] checks structure and executes a model in tract, and [`inspect`] summarises one.
#![warn(missing_docs)]

#[cfg(feature = "tract")]
pub mod calibrate;
pub mod compare;
#[cfg(feature = "tract")]
pub mod engine;
pub mod error;
pub mod graph;
pub mod inspect;
pub mod memory;
pub mod numpy;
pub mod onnx;
#[cfg(feature = "tract")]
pub mod quantize;
pub mod validate;

pub use error::{Error, Result};
