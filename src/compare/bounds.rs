//! The accuracy bounds a pipeline gates on (`compare --min-sqnr ...`) and the accuracy-aware
//! quantizer aims for (`quantize --min-sqnr ...`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ErrorMetrics;
use crate::error::{Error, Result};

/// Bounds on the outputs of a quantized model, against its float original.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Smallest acceptable SQNR, in dB.
    pub min_sqnr_db: Option<f64>,
    /// Smallest acceptable mean per-sample cosine similarity.
    pub min_cosine: Option<f64>,
    /// Largest acceptable top-1 drop, in percentage points: the share of rows whose arg-max
    /// differs from the float model's (class-score outputs only).
    pub max_top1_drop: Option<f64>,
    /// The outputs the bounds apply to; empty means every float output.
    pub outputs: Vec<String>,
}

/// One bound a model missed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// The output concerned.
    pub output: String,
    /// The metric: `sqnr_db`, `mean_cosine` or `top1_drop`.
    pub metric: &'static str,
    /// What the model reached.
    pub value: f64,
    /// The bound.
    pub bound: f64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cmp, unit) = match self.metric {
            "sqnr_db" => ("below the minimum", " dB"),
            "mean_cosine" => ("below the minimum", ""),
            _ => ("above the maximum", " points"),
        };
        write!(
            f,
            "output '{}': {} {:.4}{unit} is {cmp} {}{unit}",
            self.output, self.metric, self.value, self.bound
        )
    }
}

impl Bounds {
    /// Whether no bound is set.
    pub fn is_empty(&self) -> bool {
        self.min_sqnr_db.is_none() && self.min_cosine.is_none() && self.max_top1_drop.is_none()
    }

    /// The metrics of the outputs the bounds apply to. `Err` when a named output does not
    /// exist, or when a top-1 bound is set and none of them holds class scores.
    pub fn watched<'m>(
        &self,
        outputs: &'m BTreeMap<String, ErrorMetrics>,
    ) -> Result<Vec<(&'m str, &'m ErrorMetrics)>> {
        let watched: Vec<(&str, &ErrorMetrics)> = if self.outputs.is_empty() {
            // Integer outputs (labels) compare exactly or not at all; they are not bounded.
            outputs
                .iter()
                .filter(|(_, m)| m.values > 0)
                .map(|(n, m)| (n.as_str(), m))
                .collect()
        } else {
            self.outputs
                .iter()
                .map(|name| {
                    outputs
                        .get_key_value(name)
                        .map(|(n, m)| (n.as_str(), m))
                        .ok_or_else(|| {
                            let known: Vec<&str> = outputs.keys().map(String::as_str).collect();
                            Error::Model(format!(
                                "no model output named '{name}' (outputs: {})",
                                known.join(", ")
                            ))
                        })
                })
                .collect::<Result<_>>()?
        };
        if self.max_top1_drop.is_some() && watched.iter().all(|(_, m)| m.top1_agreement.is_none()) {
            return Err(Error::Model(
                "a top-1 bound needs an output of class scores ([N, C]); none of the compared \
                 outputs is one"
                    .into(),
            ));
        }
        Ok(watched)
    }

    /// Every bound the metrics miss (empty when all are met).
    pub fn check(&self, outputs: &BTreeMap<String, ErrorMetrics>) -> Result<Vec<Violation>> {
        let mut missed = Vec::new();
        for (name, m) in self.watched(outputs)? {
            let mut push = |metric, value: f64, bound: f64, ok: bool| {
                if !ok {
                    missed.push(Violation {
                        output: name.to_string(),
                        metric,
                        value,
                        bound,
                    });
                }
            };
            if let Some(b) = self.min_sqnr_db {
                push("sqnr_db", m.sqnr_db, b, m.sqnr_db >= b);
            }
            if let Some(b) = self.min_cosine {
                push("mean_cosine", m.mean_cosine, b, m.mean_cosine >= b);
            }
            if let (Some(b), Some(agree)) = (self.max_top1_drop, m.top1_agreement) {
                let drop = (1.0 - agree) * 100.0;
                // Agreement is a ratio of counts; keep float noise from failing a 0 bound.
                push("top1_drop", drop, b, drop <= b + 1e-9);
            }
        }
        Ok(missed)
    }

    /// One number to rank candidate models by, higher is better: the lowest SQNR among the
    /// watched outputs, less a large penalty per missed top-1 row, so that search steps that
    /// fix class flips win over those that only polish SQNR.
    pub fn score(&self, outputs: &BTreeMap<String, ErrorMetrics>) -> Result<f64> {
        let watched = self.watched(outputs)?;
        let sqnr = watched
            .iter()
            .map(|(_, m)| m.sqnr_db)
            .fold(f64::INFINITY, f64::min);
        let flips: f64 = if self.max_top1_drop.is_some() {
            watched
                .iter()
                .filter_map(|(_, m)| m.top1_agreement)
                .map(|a| (1.0 - a) * 100.0)
                .sum()
        } else {
            0.0
        };
        Ok(sqnr.min(200.0) - 10.0 * flips)
    }
}
