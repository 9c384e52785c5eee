//! Self-repair: when the quantized model does not run (tract cannot type or execute it) while
//! the float model does, the quantized nodes responsible return to float, one at a time, and
//! the model that runs is written with those nodes listed, instead of refusing the model.
//!
//! Culprits are found by bisection over the quantized nodes in graph order: the shortest
//! prefix whose return to float makes the model run ends with a culprit. That costs about
//! log2(n) checks per culprit; a model with a single bad pattern among 200 quantized nodes
//! needs 9 builds and runs, not 200.

use std::collections::BTreeSet;

use serde::Serialize;

/// A node returned to float because the quantized model did not run with it quantized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepairedNode {
    /// Node label.
    pub node: String,
    /// Op type.
    pub op_type: String,
    /// The error the model gave with this node quantized.
    pub error: String,
}

/// Finds nodes among `candidates` (in the order to try them) whose return to float makes `runs` succeed.
/// `runs(excluded)` builds the model with `excluded` returned to float and checks it;
/// `first_error` is what it said with nothing excluded. Returns the culprits with the error
/// each removed, or, when the model does not run even with every candidate float, that error:
/// quantization is not the cause.
///
/// `named(error)` is the candidate an error message names, if any: it is tried first, and kept
/// when returning it alone to float makes the model run or changes the error. Bisection would
/// also find a node whose return to float makes the error go away, but possibly a neighbour
/// that merely stops feeding the failing node quantized data.
pub fn find_culprits(
    candidates: &[usize],
    first_error: String,
    named: &dyn Fn(&str) -> Option<usize>,
    runs: &mut dyn FnMut(&BTreeSet<usize>) -> Result<(), String>,
) -> Result<Vec<(usize, String)>, String> {
    let all: BTreeSet<usize> = candidates.iter().copied().collect();
    runs(&all)?;
    let mut culprits: Vec<(usize, String)> = Vec::new();
    let mut excluded: BTreeSet<usize> = BTreeSet::new();
    let mut next_error = first_error;
    loop {
        let error = std::mem::take(&mut next_error);
        if let Some(n) = named(&error).filter(|n| all.contains(n) && !excluded.contains(n)) {
            let mut trial = excluded.clone();
            trial.insert(n);
            let outcome = runs(&trial);
            if outcome.as_ref().err() != Some(&error) {
                excluded.insert(n);
                culprits.push((n, error));
                match outcome {
                    Ok(()) => return Ok(culprits),
                    Err(e) => {
                        next_error = e;
                        continue;
                    }
                }
            }
        }
        let remaining: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|n| !excluded.contains(n))
            .collect();
        // The shortest prefix of `remaining` that makes the model run: excluding all of it
        // runs (checked above for the first round, and excluded ⊆ all), excluding none does not.
        let with_prefix = |len: usize| {
            let mut trial = excluded.clone();
            trial.extend(&remaining[..len]);
            trial
        };
        // Errors of the prefixes that did not run, by length: the one just short of the
        // culprit is the culprit's own error (everything else that failed is excluded).
        let mut failures: std::collections::BTreeMap<usize, String> = Default::default();
        failures.insert(0, error);
        let (mut lo, mut hi) = (1, remaining.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match runs(&with_prefix(mid)) {
                Ok(()) => hi = mid,
                Err(e) => {
                    failures.insert(mid, e);
                    lo = mid + 1;
                }
            }
        }
        let culprit = remaining[lo - 1];
        let own_error = match failures.remove(&(lo - 1)) {
            Some(e) => e,
            None => runs(&with_prefix(lo - 1)).err().unwrap_or_default(),
        };
        excluded.insert(culprit);
        culprits.push((culprit, own_error));
        match runs(&excluded) {
            Ok(()) => return Ok(culprits),
            Err(e) => next_error = e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that runs unless one of `bad` is quantized (not in `excluded`); counts checks.
    fn model(bad: &[usize]) -> impl FnMut(&BTreeSet<usize>) -> Result<(), String> + '_ {
        move |excluded| match bad.iter().find(|b| !excluded.contains(b)) {
            Some(b) => Err(format!("node {b} fails")),
            None => Ok(()),
        }
    }

    #[test]
    fn finds_every_culprit_and_only_them() {
        let candidates: Vec<usize> = (0..200).collect();
        let mut runs = model(&[17, 150]);
        let mut found =
            find_culprits(&candidates, "node 17 fails".into(), &|_| None, &mut runs).unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![(17, "node 17 fails".into()), (150, "node 150 fails".into())],
            "each culprit with its own error"
        );
    }

    #[test]
    fn costs_logarithmic_checks_per_culprit() {
        let candidates: Vec<usize> = (0..256).collect();
        let bad = [200];
        let mut inner = model(&bad);
        let mut checks = 0;
        let mut runs = |e: &BTreeSet<usize>| {
            checks += 1;
            inner(e)
        };
        find_culprits(&candidates, "x".into(), &|_| None, &mut runs).unwrap();
        assert!(checks <= 2 + 8, "{checks} checks for one culprit among 256");
    }

    #[test]
    fn the_node_an_error_names_is_tried_first() {
        let candidates: Vec<usize> = (0..64).collect();
        // Returning 3 (a producer) would also silence node 40's error; 40 is the one named.
        let mut runs = |e: &BTreeSet<usize>| {
            if e.contains(&40) || e.contains(&3) {
                Ok(())
            } else {
                Err("node 40 fails".to_string())
            }
        };
        let named = |e: &str| e.strip_prefix("node ")?.split(' ').next()?.parse().ok();
        let found = find_culprits(&candidates, "node 40 fails".into(), &named, &mut runs);
        assert_eq!(found, Ok(vec![(40, "node 40 fails".into())]));
    }

    #[test]
    fn a_failure_quantization_does_not_cause_is_returned() {
        let candidates: Vec<usize> = (0..10).collect();
        let mut runs = |_: &BTreeSet<usize>| Err::<(), _>("the float model fails".to_string());
        assert_eq!(
            find_culprits(&candidates, "e".into(), &|_| None, &mut runs),
            Err("the float model fails".into())
        );
    }
}
