//! Quantization: graph preparation passes, the per-op rule table, the planner and the QDQ
//! rewriter.

pub mod opset;
pub mod params;
pub mod plan;
pub mod prep;
pub mod rewrite;
pub mod rules;
