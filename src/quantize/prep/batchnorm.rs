//! Folding inference-mode `BatchNormalization` into the `Conv`, `ConvTranspose` or `Gemm` that
//! feeds it: `W' = W·s` along the output-channel axis and `b' = (b − μ)·s + β`, with
//! `s = γ / √(var + ε)`. A per-channel constant `Add` between the two (PaddlePaddle keeps
//! ConvTranspose biases that way) is folded into the bias as well.

mod weights;

use std::collections::{BTreeSet, HashSet};

use super::values::{float_tensor, floats};
use super::{can_add_initializers, is_default_domain, main_graph, remove_unused_constants};
use crate::error::{Error, Result};
use crate::graph::{GraphIndex, Names, Opsets, Producer};
use crate::onnx::attr;
use crate::onnx::pb::attribute_proto::AttributeType;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use weights::{channel_map, gemm_bias, Kind};

/// Folds every `BatchNormalization` (default domain, opset ≥ 6, inference mode, only its first
/// output used) whose input comes from a `Conv`, `ConvTranspose` or `Gemm` with constant
/// floating-point weights and no other consumer. The folded node takes the BatchNormalization's
/// output name and new initializers (fresh names: shared weights are never modified); constants
/// nobody reads any more are removed. Returns the number of BatchNormalization nodes folded.
///
/// IR ≤ 3 models are left as they are (their initializers would have to be graph inputs).
pub fn fold_batchnorm(model: &mut ModelProto) -> Result<usize> {
    main_graph(model)?;
    let opset = Opsets::new(&model.opset_import)
        .default_domain()
        .unwrap_or(0);
    if opset < 6 || !can_add_initializers(model) {
        return Ok(0);
    }
    let mut total = 0;
    // A BatchNormalization after another one folds once the first is gone.
    loop {
        let n = fold_once(model)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// One planned fold.
struct Fold {
    bn: usize,
    producer: usize,
    add: Option<usize>,
    weight: TensorProto,
    bias: TensorProto,
    gemm: bool,
    /// Constants the rewritten graph may no longer read.
    released: Vec<String>,
    /// Intermediate tensors that no longer exist.
    vanished: Vec<String>,
}

fn fold_once(model: &mut ModelProto) -> Result<usize> {
    let mut names = Names::of_model(model);
    let graph = main_graph(model)?;
    let folds = {
        let index = GraphIndex::new(graph);
        let ctx = Ctx {
            graph,
            index: &index,
            outputs: graph.output.iter().map(|v| v.name()).collect(),
        };
        let mut folds = Vec::new();
        for (i, node) in graph.node.iter().enumerate() {
            if node.op_type() == "BatchNormalization" && is_default_domain(node.domain()) {
                if let Some(fold) = ctx.plan(i, node, &mut names).map_err(Error::Model)? {
                    folds.push(fold);
                }
            }
        }
        folds
    };
    let n = folds.len();
    if n > 0 {
        if let Some(graph) = model.graph.as_mut() {
            apply(graph, folds);
        }
    }
    Ok(n)
}

fn apply(graph: &mut GraphProto, folds: Vec<Fold>) {
    let mut removed = HashSet::new();
    let mut released = BTreeSet::new();
    let mut vanished = HashSet::new();
    for fold in folds {
        let y = graph.node[fold.bn].output[0].clone();
        let node = &mut graph.node[fold.producer];
        if node.input.len() < 3 {
            node.input.resize(3, String::new());
        }
        node.input[1] = fold.weight.name().to_string();
        node.input[2] = fold.bias.name().to_string();
        node.output[0] = y;
        if fold.gemm {
            set_float(node, "beta", 1.0);
        }
        graph.initializer.push(fold.weight);
        graph.initializer.push(fold.bias);
        removed.insert(fold.bn);
        removed.extend(fold.add);
        released.extend(fold.released);
        vanished.extend(fold.vanished);
    }
    let mut k = 0;
    graph.node.retain(|_| {
        k += 1;
        !removed.contains(&(k - 1))
    });
    graph.value_info.retain(|v| !vanished.contains(v.name()));
    remove_unused_constants(graph, &released);
}

fn set_float(node: &mut NodeProto, name: &str, value: f32) {
    node.attribute.retain(|a| a.name() != name);
    node.attribute.push(AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    });
}

struct Ctx<'g, 'i> {
    graph: &'g GraphProto,
    index: &'i GraphIndex<'g>,
    outputs: HashSet<&'g str>,
}

impl<'g> Ctx<'g, '_> {
    /// Whether node `consumer` is the only reader of `name` (and it is no graph output).
    fn sole_use(&self, name: &str, consumer: usize) -> bool {
        self.index.consumers(name) == [consumer] && !self.outputs.contains(name)
    }

    fn is_used(&self, name: &str) -> bool {
        !self.index.consumers(name).is_empty() || self.outputs.contains(name)
    }

    /// The node producing `name` as its first output.
    fn first_output_of(&self, name: &str) -> Option<(usize, &'g NodeProto)> {
        match self.index.producer(name)? {
            Producer::Node { node, output: 0 } => Some((node, &self.graph.node[node])),
            _ => None,
        }
    }

    fn floats(&self, name: &str) -> Option<(TensorProto, Vec<f64>)> {
        let t = self.index.constant(name)?.into_owned();
        let values = floats(&t).ok()?;
        Some((t, values))
    }

    /// The fold of BatchNormalization node `bn_idx`, `None` when it cannot be folded. `Err`
    /// only for malformed attributes.
    fn plan(
        &self,
        bn_idx: usize,
        bn: &NodeProto,
        names: &mut Names,
    ) -> Result<Option<Fold>, String> {
        if attr::int(bn, "training_mode")?.unwrap_or(0) != 0
            || attr::int(bn, "spatial")?.unwrap_or(1) == 0
        {
            return Ok(None);
        }
        let epsilon = f64::from(attr::float(bn, "epsilon")?.unwrap_or(1e-5));
        if bn.input.len() != 5 || bn.input.iter().any(String::is_empty) {
            return Ok(None);
        }
        if bn.output.first().is_none_or(String::is_empty)
            || bn.output[1..]
                .iter()
                .any(|o| !o.is_empty() && self.is_used(o))
        {
            return Ok(None);
        }
        let mut params = Vec::with_capacity(4);
        for name in &bn.input[1..] {
            match self.floats(name) {
                Some((_, v)) => params.push(v),
                None => return Ok(None),
            }
        }
        let (gamma, beta, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
        let c = gamma.len();
        if c == 0 || params.iter().any(|p| p.len() != c) {
            return Ok(None);
        }
        let scale: Vec<f64> = (0..c)
            .map(|i| gamma[i] / (var[i] + epsilon).sqrt())
            .collect();
        let shift: Vec<f64> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
        if scale.iter().chain(&shift).any(|v| !v.is_finite()) {
            return Ok(None);
        }

        // X comes from the producer, maybe through an Add of a per-channel constant.
        let x = &bn.input[0];
        if !self.sole_use(x, bn_idx) {
            return Ok(None);
        }
        let Some((mut p_idx, mut producer)) = self.first_output_of(x) else {
            return Ok(None);
        };
        let mut add = None;
        if producer.op_type() == "Add" && is_default_domain(producer.domain()) {
            let Some((t, k)) = self.split_add(producer) else {
                return Ok(None);
            };
            if !self.sole_use(t, p_idx) {
                return Ok(None);
            }
            add = Some((p_idx, k));
            let Some(inner) = self.first_output_of(t) else {
                return Ok(None);
            };
            (p_idx, producer) = inner;
        }
        if !is_default_domain(producer.domain()) || producer.output.len() != 1 {
            return Ok(None);
        }
        let kind = match producer.op_type() {
            "Conv" => Kind::Conv,
            "ConvTranspose" => match usize::try_from(attr::int(producer, "group")?.unwrap_or(1)) {
                Ok(group) if group > 0 => Kind::ConvTranspose { group },
                _ => return Ok(None),
            },
            "Gemm" => Kind::Gemm {
                trans_b: attr::int(producer, "transB")?.unwrap_or(0) != 0,
            },
            _ => return Ok(None),
        };
        let Some(w_name) = producer.input.get(1).filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let Some((w, w_values)) = self.floats(w_name) else {
            return Ok(None);
        };
        let Ok(w_type) = DataType::try_from(w.data_type()) else {
            return Ok(None);
        };
        let b_name = producer.input.get(2).filter(|n| !n.is_empty());
        let b = match b_name {
            None => None,
            Some(name) => match self.floats(name) {
                Some(b) => Some(b),
                None => return Ok(None),
            },
        };
        let out_rank = match kind {
            Kind::Gemm { .. } => 2,
            _ => w.dims.len(),
        };
        let added = match &add {
            None => vec![0.0; c],
            Some((_, k)) => match self.per_channel(k, out_rank, c) {
                Some(a) => a,
                None => return Ok(None),
            },
        };
        let Some(channel) = channel_map(kind, &w.dims, c) else {
            return Ok(None);
        };
        let new_w: Vec<f64> = w_values
            .iter()
            .enumerate()
            .map(|(i, v)| v * scale[channel(i)])
            .collect();
        let (b_dims, new_b) = match kind {
            Kind::Gemm { .. } => {
                let beta_attr = f64::from(attr::float(producer, "beta")?.unwrap_or(1.0));
                match gemm_bias(b.as_ref(), beta_attr, &added, &scale, &shift) {
                    Some(r) => r,
                    None => return Ok(None),
                }
            }
            _ => {
                let old = match &b {
                    Some((_, v)) if v.len() == c => v.clone(),
                    Some(_) => return Ok(None),
                    None => vec![0.0; c],
                };
                let new = (0..c)
                    .map(|i| (old[i] + added[i]) * scale[i] + shift[i])
                    .collect();
                (vec![c as i64], new)
            }
        };
        let weight = float_tensor(
            names.fresh(&format!("{w_name}_bnfolded")),
            w_type,
            w.dims.clone(),
            &new_w,
        )?;
        let b_base = b_name.cloned().unwrap_or_else(|| format!("{w_name}_bias"));
        let bias = float_tensor(
            names.fresh(&format!("{b_base}_bnfolded")),
            w_type,
            b_dims,
            &new_b,
        )?;
        let mut released = vec![w_name.clone()];
        released.extend(b_name.cloned());
        released.extend(bn.input[1..].iter().cloned());
        let mut vanished = vec![producer.output[0].clone()];
        if let Some((a_idx, k)) = &add {
            released.push(k.to_string());
            vanished.push(self.graph.node[*a_idx].output[0].clone());
        }
        Ok(Some(Fold {
            bn: bn_idx,
            producer: p_idx,
            add: add.map(|(a, _)| a),
            weight,
            bias,
            gemm: matches!(kind, Kind::Gemm { .. }),
            released,
            vanished,
        }))
    }

    /// An `Add` of a tensor and a constant: (the tensor's name, the constant's name).
    fn split_add<'n>(&self, add: &'n NodeProto) -> Option<(&'n str, &'n str)> {
        let [a, b] = add.input.as_slice() else {
            return None;
        };
        if add.output.len() != 1 {
            return None;
        }
        match (
            self.index.constant(a).is_some(),
            self.index.constant(b).is_some(),
        ) {
            (false, true) => Some((a, b)),
            (true, false) => Some((b, a)),
            _ => None,
        }
    }

    /// The values of a constant added to a rank-`rank` NC… tensor, per channel, when it only
    /// varies along axis 1 (or not at all).
    fn per_channel(&self, name: &str, rank: usize, c: usize) -> Option<Vec<f64>> {
        let (t, values) = self.floats(name)?;
        if t.dims.len() > rank {
            return None;
        }
        let pad = rank - t.dims.len();
        let fits = t
            .dims
            .iter()
            .enumerate()
            .all(|(k, &d)| d == 1 || (k + pad == 1 && usize::try_from(d) == Ok(c)));
        match values.len() {
            _ if !fits => None,
            1 => Some(vec![values[0]; c]),
            n if n == c => Some(values),
            _ => None,
        }
    }
}
