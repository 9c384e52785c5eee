//! Checks that a model is well formed before anything is written: structure (names, order,
//! domains, tensors, Q/DQ parameters) and then execution in tract with concrete input shapes.

#[cfg(feature = "tract")]
mod exec;
mod qdq;
mod structure;

use std::collections::BTreeMap;
use std::fmt;

#[cfg(feature = "tract")]
pub use exec::check_execution;
pub use structure::{check_runtime_support, check_structure, MAX_OPSET, MIN_RUNTIME_OPSET};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The model is invalid: the ONNX checker or onnxruntime would refuse it.
    Error,
    /// The model breaks the letter of the ONNX spec in a way the reference tools tolerate.
    Warning,
}

/// One problem found in a model, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Whether this makes the model invalid.
    pub severity: Severity,
    /// Where: the graph path and, when relevant, the node or tensor.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(f, "{tag}{}: {}", self.location, self.message)
    }
}

/// How to pick concrete shapes for the execution check.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Values for symbolic dimensions, by their `dim_param` name.
    pub dims: BTreeMap<String, i64>,
    /// Value for symbolic dimensions not named in `dims`, and for unknown ones.
    pub default_dim: i64,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            dims: BTreeMap::new(),
            default_dim: 1,
        }
    }
}

impl ExecOptions {
    /// Refuses `dims` naming no symbolic dimension of the model's inputs: a typo would
    /// otherwise leave the dimension at [`default_dim`](Self::default_dim) without a word.
    pub fn check(&self, model: &crate::onnx::pb::ModelProto) -> crate::Result<()> {
        let params: std::collections::BTreeSet<String> = model
            .graph
            .iter()
            .flat_map(|g| &g.input)
            .filter_map(|v| v.r#type.as_ref().and_then(crate::graph::tensor_type))
            .flat_map(|t| t.shape.unwrap_or_default())
            .filter_map(|d| match d {
                crate::graph::Dim::Param(p) => Some(p),
                _ => None,
            })
            .collect();
        let unknown: Vec<&str> = self
            .dims
            .keys()
            .filter(|k| !params.contains(*k))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let known = if params.is_empty() {
            "the model's inputs have no symbolic dimensions".to_string()
        } else {
            format!(
                "its inputs' symbolic dimensions are {}",
                params.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        Err(crate::Error::Usage(format!(
            "--dim {}: no input of the model has a dimension of that name ({known})",
            unknown.join(", ")
        )))
    }
}

/// What the execution check ran.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExecSummary {
    /// Each input's name and the concrete shape it was fed.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Each output's name and the shape tract produced.
    pub outputs: Vec<(String, Vec<usize>)>,
}

/// The newest IR version the vendored schema describes.
pub const MAX_IR_VERSION: i64 = 13;

/// Outcome of the execution check.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Execution {
    /// Not run: asked not to, or the structure is already invalid.
    Skipped {
        /// Why it was not run.
        reason: String,
    },
    /// tract ran the model.
    Passed(ExecSummary),
    /// tract refused or failed.
    Failed {
        /// tract's error chain.
        error: String,
    },
}

/// Both checks of `onnx-ptq validate`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Validation {
    /// Structural findings; the structure is valid when none is an error.
    pub structure: Vec<Finding>,
    /// The execution check.
    pub execution: Execution,
}

impl Validation {
    /// Whether both checks passed (a skipped execution check counts as passed only when asked for).
    pub fn is_valid(&self) -> bool {
        !has_errors(&self.structure) && !matches!(self.execution, Execution::Failed { .. })
    }
}

/// Runs the structural checks, then (when `exec` is given and the structure is sound) the
/// execution check.
pub fn validate(model: &crate::onnx::pb::ModelProto, exec: Option<&ExecOptions>) -> Validation {
    let mut structure = check_structure(model);
    structure.extend(check_runtime_support(model));
    let execution = match exec {
        None => Execution::Skipped {
            reason: "not requested".into(),
        },
        Some(_) if has_errors(&structure) => Execution::Skipped {
            reason: "the structure is invalid".into(),
        },
        #[cfg(feature = "tract")]
        Some(options) => match check_execution(model, options) {
            Ok(summary) => Execution::Passed(summary),
            Err(error) => Execution::Failed { error },
        },
        #[cfg(not(feature = "tract"))]
        Some(_) => Execution::Skipped {
            reason: "built without the tract feature".into(),
        },
    };
    Validation {
        structure,
        execution,
    }
}

impl fmt::Display for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n_errors = self
            .structure
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        if n_errors == 0 {
            writeln!(f, "structure: ok")?;
        } else {
            writeln!(f, "structure: {n_errors} error(s)")?;
        }
        for finding in &self.structure {
            writeln!(f, "  {finding}")?;
        }
        match &self.execution {
            Execution::Skipped { reason } => writeln!(f, "execution: skipped ({reason})"),
            Execution::Failed { error } => writeln!(f, "execution: failed: {error}"),
            Execution::Passed(s) => {
                let shapes = |v: &[(String, Vec<usize>)]| {
                    v.iter()
                        .map(|(n, s)| format!("{n}{s:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                writeln!(
                    f,
                    "execution: ok in tract (inputs {}; outputs {})",
                    shapes(&s.inputs),
                    shapes(&s.outputs)
                )
            }
        }
    }
}

/// Whether any finding is an error.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// The structural check as a precondition: `Err(Error::InvalidModel)` listing every error
/// finding, so that a broken model is reported by node rather than by what tract trips on.
pub fn require_valid_structure(model: &crate::onnx::pb::ModelProto) -> crate::Result<()> {
    let findings = check_structure(model);
    if !has_errors(&findings) {
        return Ok(());
    }
    Err(crate::Error::InvalidModel {
        findings: findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(ToString::to_string)
            .collect(),
    })
}
