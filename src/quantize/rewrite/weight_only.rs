//! Weight-only mode's part of the rewrite: each planned weight is block-quantized
//! ([`crate::quantize::blockwise`]) and the op reads it in the chosen form:
//! - ONNX Runtime's: `com.microsoft.MatMulNBits` (B packed `[N, k_blocks, block·bits/8]`,
//!   scales `[N, k_blocks]`, zero points packed per column) and `GatherBlockQuantized`;
//! - standard ONNX: INT4/UINT4 or INT8/UINT8 initializers behind a blocked
//!   `DequantizeLinear` feeding a plain MatMul; an 8-bit table is gathered first, with its
//!   scales, and only the gathered rows are dequantized.

use std::collections::{HashMap, HashSet};

use super::attr_int;
use super::dynamic::{WeightError, MS_DOMAIN};
use crate::error::{Error, Result};
use crate::graph::{GraphIndex, Names};
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{NodeProto, TensorProto};
use crate::onnx::tensor;
use crate::quantize::blockwise::{
    gptq, pack, quantize_laid_out, Algorithm, BlockQuantized, GptqFactor, Layout,
};
use crate::quantize::plan::{Plan, WeightForm, WeightOnlyKind, WeightOnlyUse};

/// What weight-only mode adds to the graph.
#[derive(Default)]
pub(super) struct WeightOnlyRewrite {
    /// The nodes that take the place of node `n`.
    pub replaced: HashMap<usize, Vec<NodeProto>>,
    /// New initializers.
    pub initializers: Vec<TensorProto>,
    /// Whether a `com.microsoft` op was written.
    pub uses_ms_domain: bool,
    /// Every weight written, with its error.
    pub weights: Vec<WeightError>,
}

fn node(op: &str, name: String, inputs: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input: inputs,
        output: vec![output],
        ..Default::default()
    }
}

fn ms_node(op: &str, name: String, inputs: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        domain: Some(MS_DOMAIN.into()),
        ..node(op, name, inputs, output)
    }
}

/// A blocked `DequantizeLinear` of `(levels, scales[, zero points])` along `axis`.
fn blocked_dq(
    name: String,
    (q, s, z): Written,
    output: String,
    axis: i64,
    block: usize,
) -> NodeProto {
    let mut inputs = vec![q, s];
    inputs.extend(z);
    let mut dq = node("DequantizeLinear", name, inputs, output);
    dq.attribute = vec![attr_int("axis", axis), attr_int("block_size", block as i64)];
    dq
}

/// The integer element type of `bits`-bit levels, signed when symmetric.
fn level_type(bits: u8, signed: bool) -> DataType {
    match (bits, signed) {
        (4, true) => DataType::Int4,
        (4, false) => DataType::Uint4,
        (_, true) => DataType::Int8,
        (_, false) => DataType::Uint8,
    }
}

/// The quantized weight's initializers, by form, shared by every use that needs the same
/// layout (a tied embedding/LM-head table is quantized once per layout).
type Written = (String, String, Option<String>);

/// Builds everything weight-only mode writes for `plan`.
pub(super) fn rewrite(
    index: &GraphIndex,
    plan: &Plan,
    names: &mut Names,
    weights: super::WeightReader,
    store: Option<super::WeightStore>,
) -> Result<WeightOnlyRewrite> {
    // The float weights in the order the units below first need them, read by a second
    // thread one weight ahead: reading the next weight (from disk, for a model larger than
    // memory) overlaps quantizing this one, and at most two are in memory.
    let mut seen = HashSet::new();
    let order = plan
        .weight_only
        .iter()
        .filter(|u| seen.insert(cache_key(u)))
        .map(|u| {
            index
                .constant(&u.weight)
                .ok_or_else(|| Error::Model(format!("weight '{}' is not a constant", u.weight)))
        })
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        // Buffers the units are done with, back to the reader for the next weights.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<f32>>();
        scope.spawn(move || {
            for t in &order {
                let mut values = done_rx.try_recv().unwrap_or_default();
                let read = weights(t, &mut values).map(|()| values);
                if tx.send(read).is_err() {
                    return;
                }
            }
        });
        let mut next = || {
            rx.recv()
                .unwrap_or_else(|_| Err(Error::Model("the weight reader stopped".into())))
        };
        let mut done = |values: Vec<f32>| drop(done_tx.send(values));
        rewrite_units(
            scope, index, plan, names, weights, store, &mut next, &mut done,
        )
    })
}

/// Units that quantize the same weight the same way share its initializers.
fn cache_key(u: &WeightOnlyUse) -> String {
    let (transposed, alpha) = layout_of(u);
    format!(
        "{}|{}|{}|{:?}|{:?}|{}|{}",
        u.weight,
        u.activation,
        transposed,
        u.spec,
        u.form,
        matches!(u.kind, WeightOnlyKind::Table),
        alpha.to_bits()
    )
}

/// [`rewrite`] of every unit, the float values of each weight first needed taken from
/// `next_values`, each weight packed and stored on a thread of `scope`.
#[allow(clippy::too_many_arguments)]
fn rewrite_units<'scope, 'env, 's: 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    index: &GraphIndex,
    plan: &'scope Plan,
    names: &mut Names,
    weights: super::WeightReader,
    mut store: Option<super::WeightStore<'s>>,
    next_values: &mut dyn FnMut() -> Result<Vec<f32>>,
    done_with: &mut dyn FnMut(Vec<f32>),
) -> Result<WeightOnlyRewrite> {
    let graph = index.graph();
    let mut out = WeightOnlyRewrite::default();
    let mut cache: HashMap<String, (Written, usize)> = HashMap::new();
    // GPTQ's factor of an input, computed once for every weight that reads it.
    let mut factors: HashMap<String, Option<GptqFactor>> = HashMap::new();
    // The last weight's packing and storing, on a thread of its own while the next weight is
    // quantized (on a 2-core machine it otherwise left a core idle for a sixth of the run).
    // Joined before the next one starts, so initializers are stored in the plan's order.
    let mut packing: Option<Packing> = None;
    for u in &plan.weight_only {
        let original = &graph.node[u.node];
        let base = if original.name().is_empty() {
            original.output.first().cloned().unwrap_or_default()
        } else {
            original.name().to_string()
        };
        let key = cache_key(u);
        let (written, block) = match cache.get(&key) {
            Some(w) => w.clone(),
            None => {
                let factor = match (u.spec.algorithm, factors.get(&u.activation)) {
                    (Algorithm::Gptq, None) => {
                        let f = plan
                            .weight_only_hessians
                            .0
                            .get(&u.activation)
                            .and_then(GptqFactor::new);
                        factors.entry(u.activation.clone()).or_insert(f)
                    }
                    (_, Some(f)) => f,
                    _ => &None,
                };
                let values = next_values()?;
                let (q, error) = quantize_weight(u, &values, factor.as_ref());
                done_with(values);
                out.weights.push(error);
                let written = weight_names(u, q.spec.bits, names);
                join_packing(&mut packing, &mut store, &mut out)?;
                let (w, mut back) = ((written.clone(), q.spec.block), store.take());
                packing = Some(scope.spawn(move || {
                    let mut made = initializers(u, q, &written);
                    let stored = match back.as_mut() {
                        Some(store) => made.iter_mut().try_for_each(&mut **store),
                        None => Ok(()),
                    };
                    (stored.map(|()| made), back)
                }));
                cache.insert(key, w.clone());
                w
            }
        };
        let y = original.output[0].clone();
        let mut nodes = Vec::new();
        match &u.kind {
            WeightOnlyKind::MatMul { bias, .. } => {
                let unbiased = if bias.is_some() {
                    names.fresh(&format!("{y}_unbiased"))
                } else {
                    y.clone()
                };
                let a = original.input[0].clone();
                let (q, s, z) = written;
                match u.form {
                    WeightForm::OnnxRuntime => {
                        let mut inputs = vec![a, q, s];
                        inputs.extend(z);
                        let mut mm = ms_node(
                            "MatMulNBits",
                            names.fresh(&format!("{base}_MatMulNBits")),
                            inputs,
                            unbiased.clone(),
                        );
                        mm.attribute = vec![
                            attr_int("K", u.k as i64),
                            attr_int("N", u.n as i64),
                            attr_int("bits", i64::from(u.spec.bits)),
                            attr_int("block_size", block as i64),
                            attr_int("accuracy_level", i64::from(u.accuracy_level)),
                        ];
                        nodes.push(mm);
                        out.uses_ms_domain = true;
                    }
                    WeightForm::Standard => {
                        let dq_out = names.fresh(&format!("{}_dequantized", u.weight));
                        nodes.push(blocked_dq(
                            names.fresh(&format!("{base}_DequantizeWeight")),
                            (q, s, z),
                            dq_out.clone(),
                            0,
                            block,
                        ));
                        nodes.push(node(
                            "MatMul",
                            names.fresh(&format!("{base}_MatMul")),
                            vec![a, dq_out],
                            unbiased.clone(),
                        ));
                    }
                }
                if let Some((c, beta)) = bias {
                    let c_name = if *beta == 1.0 {
                        c.clone()
                    } else {
                        let t = index
                            .constant(c)
                            .ok_or_else(|| Error::Model(format!("bias '{c}' is not a constant")))?;
                        let mut v = Vec::new();
                        weights(&t, &mut v)?;
                        let scaled: Vec<f32> = v.iter().map(|x| x * beta).collect();
                        let name = names.fresh(&format!("{c}_beta"));
                        out.initializers
                            .push(tensor::from_f32(&name, &t.dims, &scaled));
                        name
                    };
                    nodes.push(node(
                        "Add",
                        names.fresh(&format!("{base}_Bias")),
                        vec![unbiased, c_name],
                        y,
                    ));
                }
            }
            WeightOnlyKind::Table => {
                let ids = original.input[1].clone();
                let (q, s, z) = written;
                match (u.form, u.spec.bits) {
                    (WeightForm::OnnxRuntime, _) => {
                        let mut inputs = vec![q, ids, s];
                        inputs.extend(z);
                        let mut g = ms_node(
                            "GatherBlockQuantized",
                            names.fresh(&format!("{base}_GatherBlockQuantized")),
                            inputs,
                            y,
                        );
                        g.attribute = vec![
                            attr_int("gather_axis", 0),
                            attr_int("quantize_axis", 1),
                            attr_int("block_size", block as i64),
                            attr_int("bits", i64::from(u.spec.bits)),
                        ];
                        nodes.push(g);
                        out.uses_ms_domain = true;
                    }
                    (WeightForm::Standard, 8) => {
                        // Gather the 8-bit rows and their scales, dequantize only those.
                        let mut dq_inputs = Vec::new();
                        for (t, what) in std::iter::once((q, "rows"))
                            .chain(std::iter::once((s, "scales")))
                            .chain(z.map(|z| (z, "zero_points")))
                        {
                            let g_out = names.fresh(&format!("{y}_{what}"));
                            nodes.push(node(
                                "Gather",
                                names.fresh(&format!("{base}_Gather_{what}")),
                                vec![t, ids.clone()],
                                g_out.clone(),
                            ));
                            dq_inputs.push(g_out);
                        }
                        let mut dq = node(
                            "DequantizeLinear",
                            names.fresh(&format!("{base}_DequantizeRows")),
                            dq_inputs,
                            y,
                        );
                        dq.attribute =
                            vec![attr_int("axis", -1), attr_int("block_size", block as i64)];
                        nodes.push(dq);
                    }
                    (WeightForm::Standard, _) => {
                        // Gather cannot read 4-bit data: the table is dequantized, then
                        // gathered.
                        let dq_out = names.fresh(&format!("{}_dequantized", u.weight));
                        nodes.push(blocked_dq(
                            names.fresh(&format!("{base}_DequantizeTable")),
                            (q, s, z),
                            dq_out.clone(),
                            1,
                            block,
                        ));
                        nodes.push(NodeProto {
                            input: vec![dq_out, ids],
                            ..original.clone()
                        });
                    }
                }
            }
        }
        out.replaced.insert(u.node, nodes);
    }
    join_packing(&mut packing, &mut store, &mut out)?;
    Ok(out)
}

/// Waits for the last weight's packing: its initializers go to `out`, the store back to
/// `store`.
fn join_packing<'s>(
    packing: &mut Option<Packing<'_, 's>>,
    store: &mut Option<super::WeightStore<'s>>,
    out: &mut WeightOnlyRewrite,
) -> Result<()> {
    if let Some(handle) = packing.take() {
        let (made, back) = handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        *store = back;
        out.initializers.extend(made?);
    }
    Ok(())
}

/// A weight's initializers being packed and stored: what was made, and the store handed back.
type Packing<'scope, 's> = std::thread::ScopedJoinHandle<
    'scope,
    (Result<Vec<TensorProto>>, Option<super::WeightStore<'s>>),
>;

/// Whether the weight is stored `[N, K]`, and the factor folded into its scales.
fn layout_of(u: &WeightOnlyUse) -> (bool, f32) {
    match &u.kind {
        WeightOnlyKind::MatMul {
            transposed, alpha, ..
        } => (*transposed, *alpha),
        WeightOnlyKind::Table => (true, 1.0),
    }
}

/// Quantizes one weight with its use's settings, returning it and its error for the summary.
fn quantize_weight(
    u: &WeightOnlyUse,
    values: &[f32],
    factor: Option<&GptqFactor>,
) -> (BlockQuantized, WeightError) {
    let (transposed, alpha) = layout_of(u);
    let layout = if transposed { Layout::NK } else { Layout::KN };
    let mut q = match (u.spec.algorithm, factor) {
        (Algorithm::Gptq, Some(f)) => gptq(values, u.k, u.n, layout, u.spec, Some(f)),
        _ => quantize_laid_out(values, u.k, u.n, layout, u.spec),
    };
    let error = WeightError {
        tensor: u.weight.clone(),
        format: format!(
            "{}-bit {} block {} {}",
            u.spec.bits,
            if u.spec.symmetric {
                "symmetric"
            } else {
                "asymmetric"
            },
            q.spec.block,
            u.spec.algorithm.name()
        ),
        sqnr_db: q.weight_sqnr_db(),
    };
    if alpha != 1.0 {
        q.scales.iter_mut().for_each(|s| *s *= alpha);
    }
    (q, error)
}

/// Fresh names for a weight's levels, scales and (when asymmetric) zero points.
fn weight_names(u: &WeightOnlyUse, bits: u8, names: &mut Names) -> Written {
    (
        names.fresh(&format!("{}_q{bits}", u.weight)),
        names.fresh(&format!("{}_scales", u.weight)),
        (!u.spec.symmetric).then(|| names.fresh(&format!("{}_zero_points", u.weight))),
    )
}

/// A quantized weight's initializers in the use's form, named `written`.
fn initializers(u: &WeightOnlyUse, mut q: BlockQuantized, written: &Written) -> Vec<TensorProto> {
    let mut out = Vec::with_capacity(3);
    let (q_name, s_name, z_name) = written;
    let (k, n, kb, block, bits) = (q.k, q.n, q.k_blocks(), q.spec.block, q.spec.bits);
    let table = matches!(u.kind, WeightOnlyKind::Table);
    let (kb_i, n_i, k_i) = (kb as i64, n as i64, k as i64);
    match (u.form, table) {
        (WeightForm::OnnxRuntime, false) => {
            let blob = (block * usize::from(bits)).div_ceil(8) as i64;
            out.push(tensor::from_raw(
                q_name,
                DataType::Uint8,
                &[n_i, kb_i, blob],
                q.take_matmul_nbits_b(),
            ));
            out.push(tensor::from_f32(s_name, &[n_i, kb_i], &q.scales));
            if let Some(z) = &z_name {
                let per_column = (kb * usize::from(bits)).div_ceil(8) as i64;
                out.push(tensor::from_raw(
                    z,
                    DataType::Uint8,
                    &[n_i, per_column],
                    q.matmul_nbits_zero_points(),
                ));
            }
        }
        (WeightForm::OnnxRuntime, true) => {
            // 4-bit tables are INT4 (symmetric, zero point 0) or UINT4; 8-bit ones UINT8,
            // whose implicit zero point is 128.
            let signed = bits == 4 && u.spec.symmetric;
            let dt = if bits == 4 {
                level_type(4, signed)
            } else {
                DataType::Uint8
            };
            out.push(tensor::from_raw(
                q_name,
                dt,
                &[n_i, k_i],
                pack(q.row_levels(signed), bits),
            ));
            out.push(tensor::from_f32(s_name, &[n_i, kb_i], &q.scales));
            if let Some(z) = &z_name {
                out.push(tensor::from_raw(
                    z,
                    dt,
                    &[n_i, kb_i],
                    pack(q.zero_points.iter().copied(), bits),
                ));
            }
        }
        (WeightForm::Standard, false) => {
            let dt = level_type(bits, u.spec.symmetric);
            out.push(tensor::from_raw(
                q_name,
                dt,
                &[k_i, n_i],
                pack(q.standard_levels(), bits),
            ));
            out.push(tensor::from_f32(s_name, &[kb_i, n_i], &q.standard_scales()));
            if let Some(z) = &z_name {
                out.push(tensor::from_raw(
                    z,
                    dt,
                    &[kb_i, n_i],
                    pack(q.standard_zero_points(), bits),
                ));
            }
        }
        (WeightForm::Standard, true) => {
            let dt = level_type(bits, u.spec.symmetric);
            out.push(tensor::from_raw(
                q_name,
                dt,
                &[n_i, k_i],
                pack(q.row_levels(u.spec.symmetric), bits),
            ));
            out.push(tensor::from_f32(s_name, &[n_i, kb_i], &q.scales));
            if let Some(z) = &z_name {
                out.push(tensor::from_raw(
                    z,
                    dt,
                    &[n_i, kb_i],
                    pack(q.zero_points.iter().copied(), bits),
                ));
            }
        }
    }
    out
}
