//! Additive attention masks. BERT-style exports add `(1 - mask) × C` to the attention scores
//! before Softmax, with `C` = −10000, −1e9 or the float minimum. One calibrated range then has
//! to cover both the scores (a few units) and the masked positions (`C`): on padded batches
//! every score rounds to the same integer and attention becomes uniform, and on unpadded ones
//! a padded input at inference is clipped to a range that never saw the mask. The Add, the mask
//! tensor and the Softmax input are kept float instead: the mask stays exact and the Softmax
//! sees the true scores.

use std::collections::BTreeSet;

use crate::graph::{GraphIndex, Producer};
use crate::onnx::tensor;

/// A value this far below zero is a mask sentinel, not data: attention scores are dot products
/// divided by √d and stay within a few tens; masks use −1e4 or far less.
const SENTINEL: f32 = -1e3;

/// How many producers back from the Add the sentinel constant is looked for: `(1 - m) × C`
/// reaches the Add through Mul, Sub, Cast, Unsqueeze, Expand or Where within a few nodes.
const MAX_DEPTH: usize = 6;

/// Ops a mask passes through on its way from the sentinel constant to the Add.
const MASK_OPS: &[&str] = &[
    "Add",
    "Cast",
    "Concat",
    "Expand",
    "Identity",
    "Mul",
    "Reshape",
    "Slice",
    "Squeeze",
    "Sub",
    "Tile",
    "Unsqueeze",
    "Where",
];

/// An Add putting an additive mask on scores that go into a Softmax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdditiveMask {
    /// Index of the Add node.
    pub add: usize,
    /// The mask input of the Add.
    pub mask: String,
    /// The Add's output, the Softmax input.
    pub scores: String,
}

/// Every Add of the graph whose output feeds a Softmax and one of whose inputs is a mask: a
/// constant with a sentinel, a tensor computed from one, or a tensor whose calibrated range
/// reaches a sentinel while the other input's does not.
pub fn additive_masks(
    index: &GraphIndex,
    range: &dyn Fn(&str) -> Option<(f32, f32)>,
) -> Vec<AdditiveMask> {
    let graph = index.graph();
    let mut found = Vec::new();
    for (n, node) in graph.node.iter().enumerate() {
        if node.op_type() != "Add" || node.input.len() != 2 {
            continue;
        }
        let Some(out) = node.output.first() else {
            continue;
        };
        let feeds_softmax = index
            .consumers(out)
            .iter()
            .any(|&c| graph.node[c].op_type() == "Softmax");
        if !feeds_softmax {
            continue;
        }
        let sentinel_in_range =
            |t: &str| range(t).is_some_and(|(lo, _)| lo <= SENTINEL || lo.is_nan());
        let mask = (0..2).find(|&i| {
            let (this, other) = (&node.input[i], &node.input[1 - i]);
            derives_from_sentinel(index, this, MAX_DEPTH, &mut BTreeSet::new())
                || (sentinel_in_range(this) && !sentinel_in_range(other))
        });
        if let Some(i) = mask {
            found.push(AdditiveMask {
                add: n,
                mask: node.input[i].clone(),
                scores: out.clone(),
            });
        }
    }
    found
}

/// Whether `name` is a constant holding a sentinel (or −∞), or is computed by mask-carrying
/// ops from one within `depth` producers.
fn derives_from_sentinel(
    index: &GraphIndex,
    name: &str,
    depth: usize,
    seen: &mut BTreeSet<String>,
) -> bool {
    if !seen.insert(name.to_string()) {
        return false;
    }
    if let Some(t) = index.constant(name) {
        return tensor::to_f32(&t)
            .is_ok_and(|values| values.iter().any(|&v| v <= SENTINEL && !v.is_nan()));
    }
    if depth == 0 {
        return false;
    }
    let Some(Producer::Node { node, .. }) = index.producer(name) else {
        return false;
    };
    let producer = &index.graph().node[node];
    MASK_OPS.contains(&producer.op_type())
        && producer
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .any(|i| derives_from_sentinel(index, i, depth - 1, seen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::pb::{GraphProto, NodeProto};

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    /// scores + (1 - m) × c → Softmax, as BERT exports it.
    fn attention(c: f32) -> GraphProto {
        GraphProto {
            node: vec![
                node("Sub", &["one", "m"], "inv"),
                node("Mul", &["inv", "c"], "mask"),
                node("Add", &["scores", "mask"], "masked"),
                node("Softmax", &["masked"], "probs"),
            ],
            initializer: vec![
                tensor::from_f32("one", &[], &[1.0]),
                tensor::from_f32("c", &[], &[c]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_sentinel_constant_marks_the_mask_even_when_calibration_never_saw_padding() {
        let no_padding = |t: &str| match t {
            "mask" => Some((0.0, 0.0)),
            _ => Some((-5.0, 7.0)),
        };
        for c in [-1e4, f32::MIN, f32::NEG_INFINITY] {
            let g = attention(c);
            let found = additive_masks(&GraphIndex::new(&g), &no_padding);
            assert_eq!(
                found,
                [AdditiveMask {
                    add: 2,
                    mask: "mask".into(),
                    scores: "masked".into()
                }],
                "{c}"
            );
        }
        // A bias of ordinary size is not a mask.
        let g = attention(-3.0);
        assert!(additive_masks(&GraphIndex::new(&g), &no_padding).is_empty());
    }

    #[test]
    fn a_calibrated_sentinel_marks_the_mask_input_only() {
        let mut g = attention(-3.0);
        g.node.drain(0..2);
        let padded = |t: &str| match t {
            "mask" => Some((-1e9, 0.0)),
            "masked" => Some((-1e9, 7.0)),
            _ => Some((-5.0, 7.0)),
        };
        let found = additive_masks(&GraphIndex::new(&g), &padded);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].mask, "mask");
        // Without a Softmax after it, a large Add is left to the ranges.
        g.node.pop();
        assert!(additive_masks(&GraphIndex::new(&g), &padded).is_empty());
    }
}
