//! Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight
//! Equalization and Bias Correction", 2019). In a chain `Conv A → (Relu | PRelu | nothing) →
//! Conv B`, output channel `i` of A and input channel `i` of B can trade a factor `s_i > 0`:
//! A's filter `i` and bias `i` divided by it, B's weights reading channel `i` multiplied by it,
//! and the model computes the same function (Relu and PRelu commute with a positive scale).
//! Choosing `s_i = √(r1_i / r2_i)`, with `r1_i` the largest magnitude of A's filter `i` and
//! `r2_i` that of B's weights on channel `i`, gives both the same range `√(r1_i · r2_i)`.
//!
//! Why it matters with per-channel weights: each of B's output channels has one scale over
//! all its input channels, so an input channel whose weights are tiny next to the others
//! (common after BatchNorm folding, and in depthwise → pointwise pairs) rounds to a few levels
//! or to zero. Equalizing evens those ranges out; the activation between A and B, quantized
//! per tensor, has its channels' ranges evened out the same way.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::values::{float_tensor, floats};
use super::{can_add_initializers, is_default_domain, main_graph, remove_unused_constants};
use crate::error::{Error, Result};
use crate::graph::{GraphIndex, Names};
use crate::onnx::attr;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{GraphProto, ModelProto, NodeProto};

/// Sweeps over the chain at most: each pair's scales change its neighbours' ranges, and a few
/// sweeps settle them (the factors of the last sweep are within 0.1 % of 1 on the measured
/// models long before this).
const MAX_SWEEPS: usize = 16;

/// A Conv's weight and bias as `f64`, edited in place by the sweeps.
struct ConvParams {
    weight_name: String,
    weight_type: DataType,
    dims: Vec<i64>,
    weight: Vec<f64>,
    bias: Option<(String, DataType, Vec<f64>)>,
    changed: bool,
}

/// A pair of Convs to equalize: A's output channels against B's input channels, B having
/// `group` groups.
#[derive(Debug, Clone, Copy)]
struct Pair {
    a: usize,
    b: usize,
    group: usize,
}

/// Equalizes every `Conv → (Relu | PRelu | nothing) → Conv` chain of the main graph whose
/// weights (and A's bias) are constant floats and whose intermediate tensors have no other
/// reader. Rewritten weights get fresh names (a weight shared with another node is never
/// modified); constants nobody reads any more are removed. Returns the number of pairs
/// equalized. IR ≤ 3 models are left as they are.
pub fn equalize_layers(model: &mut ModelProto) -> Result<usize> {
    if !can_add_initializers(model) {
        return Ok(0);
    }
    let mut names = Names::of_model(model);
    let graph = main_graph(model)?;
    let index = GraphIndex::new(graph);
    let pairs = find_pairs(graph, &index);
    if pairs.is_empty() {
        return Ok(0);
    }
    let mut convs: BTreeMap<usize, ConvParams> = BTreeMap::new();
    let mut usable = Vec::new();
    for (a, b) in pairs {
        let ok = [a, b].iter().all(|&n| {
            convs.contains_key(&n)
                || match load(graph, &index, n) {
                    Some(p) => {
                        convs.insert(n, p);
                        true
                    }
                    None => false,
                }
        });
        if let Some(group) = ok
            .then(|| fits(&convs[&a], &convs[&b], &graph.node[b]))
            .flatten()
        {
            usable.push(Pair { a, b, group });
        }
    }
    for _ in 0..MAX_SWEEPS {
        let mut largest_change = 0f64;
        for pair in &usable {
            largest_change = largest_change.max(equalize_pair(&mut convs, *pair));
        }
        if largest_change < 1e-3 {
            break;
        }
    }
    let n_pairs = usable.len();
    let model_graph = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::Model("the model has no graph".into()))?;
    write_back(model_graph, convs, &mut names)?;
    Ok(n_pairs)
}

/// The chains (A, B) whose intermediate tensors are read only along the chain.
fn find_pairs(graph: &GraphProto, index: &GraphIndex) -> Vec<(usize, usize)> {
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    // The only reader of `name`, when it has exactly one and is no graph output.
    let sole_reader = |name: &str| -> Option<usize> {
        match index.consumers(name) {
            [only] if !outputs.contains(name) => Some(*only),
            _ => None,
        }
    };
    let is_conv = |n: &NodeProto| n.op_type() == "Conv" && is_default_domain(n.domain());
    let mut pairs = Vec::new();
    for (a, node) in graph.node.iter().enumerate() {
        if !is_conv(node) || node.output.len() != 1 {
            continue;
        }
        let Some(mut next) = sole_reader(&node.output[0]) else {
            continue;
        };
        let mut feeding = node.output[0].as_str();
        let between = &graph.node[next];
        if matches!(between.op_type(), "Relu" | "PRelu") && is_default_domain(between.domain()) {
            // PRelu(x / s) = PRelu(x) / s for s > 0, whatever its slopes.
            if between.input.first().map(String::as_str) != Some(feeding)
                || between.output.len() != 1
            {
                continue;
            }
            feeding = between.output[0].as_str();
            let Some(after) = sole_reader(feeding) else {
                continue;
            };
            next = after;
        }
        let b = &graph.node[next];
        if is_conv(b) && b.input.first().map(String::as_str) == Some(feeding) && next != a {
            pairs.push((a, next));
        }
    }
    pairs
}

/// The Conv's constant float weight (rank ≥ 3) and bias, or `None`.
fn load(graph: &GraphProto, index: &GraphIndex, n: usize) -> Option<ConvParams> {
    let node = &graph.node[n];
    let constant = |name: &str| {
        let t = index.constant(name)?;
        let dt = DataType::try_from(t.data_type()).ok()?;
        let values = floats(&t).ok()?;
        Some((t.dims.clone(), dt, values))
    };
    let weight_name = node.input.get(1)?.clone();
    let (dims, weight_type, weight) = constant(&weight_name)?;
    if dims.len() < 3 || dims.iter().any(|&d| d <= 0) {
        return None;
    }
    let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
        None => None,
        Some(b) => {
            let (bdims, bt, values) = constant(b)?;
            if bdims.len() != 1 || values.len() as i64 != dims[0] {
                return None;
            }
            Some((b.clone(), bt, values))
        }
    };
    if weight.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(ConvParams {
        weight_name,
        weight_type,
        dims,
        weight,
        bias,
        changed: false,
    })
}

/// B's `group` when A's output channels are B's input channels under it.
fn fits(a: &ConvParams, b: &ConvParams, b_node: &NodeProto) -> Option<usize> {
    let group = attr::int(b_node, "group").ok().flatten().unwrap_or(1);
    (group >= 1 && b.dims[1] * group == a.dims[0] && b.dims[0] % group == 0)
        .then_some(group as usize)
}

/// Equalizes one pair in place; returns the largest `|ln s_i|` it applied.
fn equalize_pair(convs: &mut BTreeMap<usize, ConvParams>, pair: Pair) -> f64 {
    let group = pair.group;
    let channels = convs[&pair.a].dims[0] as usize;
    let per_filter = convs[&pair.a].weight.len() / channels;
    let (b_out, b_in) = (
        convs[&pair.b].dims[0] as usize,
        convs[&pair.b].dims[1] as usize,
    );
    let kernel = convs[&pair.b].weight.len() / (b_out * b_in);
    let outs_per_group = b_out / group;
    // B's weights reading channel i: outputs of i's group, at i's place within the group.
    let b_slices = |i: usize| {
        let (g, local) = (i / b_in, i % b_in);
        (g * outs_per_group..(g + 1) * outs_per_group)
            .map(move |o| (o * b_in + local) * kernel..(o * b_in + local + 1) * kernel)
    };
    let max_abs = |v: &[f64]| v.iter().fold(0f64, |m, x| m.max(x.abs()));
    let mut scales = vec![1f64; channels];
    {
        let (a, b) = (&convs[&pair.a], &convs[&pair.b]);
        for (i, s) in scales.iter_mut().enumerate() {
            let r1 = max_abs(&a.weight[i * per_filter..(i + 1) * per_filter]);
            let r2 = b_slices(i)
                .map(|r| max_abs(&b.weight[r]))
                .fold(0f64, f64::max);
            if r1 > 0.0 && r2 > 0.0 {
                let candidate = (r1 / r2).sqrt();
                if candidate.is_finite() && candidate > 0.0 {
                    *s = candidate;
                }
            }
        }
    }
    let largest = scales.iter().fold(0f64, |m, s| m.max(s.ln().abs()));
    if largest == 0.0 {
        return 0.0;
    }
    let a = convs.get_mut(&pair.a).expect("loaded");
    for (i, s) in scales.iter().enumerate() {
        a.weight[i * per_filter..(i + 1) * per_filter]
            .iter_mut()
            .for_each(|w| *w /= s);
        if let Some((_, _, bias)) = a.bias.as_mut() {
            bias[i] /= s;
        }
    }
    a.changed = true;
    let b = convs.get_mut(&pair.b).expect("loaded");
    for (i, s) in scales.iter().enumerate() {
        let (g, local) = (i / b_in, i % b_in);
        for o in g * outs_per_group..(g + 1) * outs_per_group {
            let at = (o * b_in + local) * kernel;
            b.weight[at..at + kernel].iter_mut().for_each(|w| *w *= s);
        }
    }
    b.changed = true;
    largest
}

/// Writes the changed weights and biases as fresh initializers and points their Convs at them.
fn write_back(
    graph: &mut GraphProto,
    convs: BTreeMap<usize, ConvParams>,
    names: &mut Names,
) -> Result<()> {
    let mut released = BTreeSet::new();
    for (n, conv) in convs.into_iter().filter(|(_, c)| c.changed) {
        let w_name = names.fresh(&format!("{}_equalized", conv.weight_name));
        let w = float_tensor(w_name.clone(), conv.weight_type, conv.dims, &conv.weight)
            .map_err(|e| Error::Model(format!("{}: {e}", conv.weight_name)))?;
        graph.initializer.push(w);
        released.insert(conv.weight_name);
        graph.node[n].input[1] = w_name;
        if let Some((b_name, dt, values)) = conv.bias {
            let fresh = names.fresh(&format!("{b_name}_equalized"));
            let len = values.len() as i64;
            let t = float_tensor(fresh.clone(), dt, vec![len], &values)
                .map_err(|e| Error::Model(format!("{b_name}: {e}")))?;
            graph.initializer.push(t);
            released.insert(b_name);
            graph.node[n].input[2] = fresh;
        }
    }
    remove_unused_constants(graph, &released);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(dims: Vec<i64>, seed: u64, bias: bool) -> ConvParams {
        let len = dims.iter().product::<i64>() as usize;
        let mut x = seed;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let weight: Vec<f64> = (0..len)
            .map(|i| next() * 10f64.powi((i % 5) as i32 - 2))
            .collect();
        let channels = dims[0] as usize;
        ConvParams {
            weight_name: "w".into(),
            weight_type: DataType::Float,
            dims,
            weight,
            bias: bias.then(|| {
                (
                    "b".into(),
                    DataType::Float,
                    (0..channels).map(|_| next()).collect(),
                )
            }),
            changed: false,
        }
    }

    /// Grouped B: channel i of A is input `i % (C / group)` of B's outputs in group
    /// `i / (C / group)`. After equalizing, both sides of every channel have the same range,
    /// and every product of an A weight with a B weight on its channel is unchanged (the
    /// function is the same: Relu commutes with the positive scales).
    #[test]
    fn equalized_channels_have_equal_ranges_and_the_same_products() {
        for group in [1usize, 2, 6] {
            let channels = 6;
            let a = conv(vec![channels as i64, 3, 3, 3], 1, true);
            let b = conv(
                vec![12, (channels / group) as i64, 1, 1],
                2 + group as u64,
                false,
            );
            let before = (
                a.weight.clone(),
                a.bias.clone().unwrap().2,
                b.weight.clone(),
            );
            let mut convs = BTreeMap::from([(0, a), (1, b)]);
            for _ in 0..MAX_SWEEPS {
                equalize_pair(&mut convs, Pair { a: 0, b: 1, group });
            }
            let (a, b) = (&convs[&0], &convs[&1]);
            let b_in = channels / group;
            let outs = 12 / group;
            for i in 0..channels {
                let (g, local) = (i / b_in, i % b_in);
                let r1 = a.weight[i * 27..(i + 1) * 27]
                    .iter()
                    .fold(0f64, |m, w| m.max(w.abs()));
                let r2 = (g * outs..(g + 1) * outs)
                    .map(|o| b.weight[o * b_in + local].abs())
                    .fold(0f64, f64::max);
                assert!(
                    (r1 - r2).abs() <= 1e-9 * r1.max(r2),
                    "group {group} channel {i}: {r1} {r2}"
                );
                // The bias moves with its filter.
                let s = before.0[i * 27] / a.weight[i * 27];
                assert!((before.1[i] / a.bias.as_ref().unwrap().2[i] - s).abs() < 1e-9 * s.abs());
                for o in g * outs..(g + 1) * outs {
                    let was = before.0[i * 27] * before.2[o * b_in + local];
                    let now = a.weight[i * 27] * b.weight[o * b_in + local];
                    assert!(
                        (was - now).abs() <= 1e-9 * was.abs(),
                        "group {group} channel {i}"
                    );
                }
            }
        }
    }
}
