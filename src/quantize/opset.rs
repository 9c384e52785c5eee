//! Default-domain opset upgrades, so that per-channel Q/DQ (opset 13) and int16 Q/DQ (opset 21)
//! are available for models exported at older opsets.
//!
//! [`upgrade_default_opset`] raises the `""`/`ai.onnx` import one version at a time and, at each
//! version, rewrites the nodes whose operator changed its signature or meaning there, in the main
//! graph, in every If/Loop/Scan body and in local functions. Other domains are left alone. New
//! input tensors become initializers (Constant nodes inside functions) named by
//! [`Names::fresh`]. The IR version is raised to the first one that allows the new opset.
//!
//! The table was made by comparing `onnx.defs.get_schema(op, v)` across every version step from 7
//! to 21 (inputs, outputs, attributes and their defaults, type constraints), cross-checked with the
//! ONNX version converter's adapters, and with onnxruntime where the spec leaves behaviour open
//! (Resize-10 rounding). `tests/opset_upgrade.rs` repeats the schema comparison, so a row missing
//! here fails a test.
//!
//! | op | at | what changed | what the pass does |
//! |----|----|--------------|--------------------|
//! | every op | < 7 | `consumed_inputs`, `broadcast`, `is_test`… | the model is refused |
//! | BatchNormalization | 9 | `spatial` removed | `spatial = 1` dropped; `spatial = 0` **refused** |
//! | BatchNormalization | 14 | at most 3 outputs, training only | training outputs **refused**; 15 only widens types |
//! | BatchNormalization, Dropout | any | stray `is_test` / `consumed_inputs` | dropped |
//! | Clip | 11 | `min`/`max` attributes → inputs | scalars of the input's type (**refused** when unknown) |
//! | DFT | 20 | `axis` attribute (default 1) → input (default -2) | int64 scalar input |
//! | Dropout | 10 | the mask turns from the data type to bool | unused mask dropped; a read mask **refused** |
//! | Dropout | 12 | `ratio` attribute → input | float scalar input (nothing for the default 0.5) |
//! | Erf | 13 | integer types removed | **refused** for integer input |
//! | GridSample | 20 | modes `bilinear`/`bicubic` renamed | `linear`/`cubic` |
//! | GroupNormalization | 21 | scale and bias per group → per channel (18 is deprecated) | repeated per channel with Shape/Div/Concat/Reshape/Expand |
//! | Hardmax, LogSoftmax, Softmax | 13 | 2-D coercion at `axis` (default 1) → one axis (default -1) | `axis` made explicit when it is the last axis (by the declared or carried rank); otherwise Flatten → op → Reshape |
//! | ImageScaler (experimental) | 10 | no kernel in onnxruntime | Mul and Add |
//! | Affine, ConstantFill, Crop, DynamicSlice, GRUUnit, GivenTensorFill, ParametricSoftplus, Scale, ScaledTanh (experimental) | 10 | no kernel in onnxruntime | **refused** |
//! | Pad | 11 | `pads`/`value` attributes → inputs | int64 pads; a non-zero value as a scalar of the input's type |
//! | Pad | 18 | optional `axes` input | nothing |
//! | ReduceSum | 13 | `axes` attribute → input | int64 input (absent stays absent: all axes) |
//! | ReduceL1, ReduceL2, ReduceLogSum, ReduceLogSumExp, ReduceMax, ReduceMean, ReduceMin, ReduceProd, ReduceSumSquare | 18 | `axes` attribute → input | int64 input |
//! | Resize | 11 | `roi` input; `coordinate_transformation_mode` (default half_pixel) and `nearest_mode` | roi `""` (an empty tensor below 13), `asymmetric`, nearest_mode `floor`/`ceil` from the scales; mixed or computed nearest scales **refused** |
//! | Resize | 13, 18, 19 | optional inputs; attributes whose defaults keep the old behaviour | nothing |
//! | RoiAlign | 16 | `coordinate_transformation_mode` (default half_pixel) | `output_half_pixel` (RoiAlign-10's behaviour) made explicit |
//! | Scan | 9 | batch axis, `sequence_lens` removed; `directions` renamed | batch of 1 squeezed away; anything else **refused** |
//! | Scatter | 11 | deprecated | ScatterElements (also in models at 11 and later) |
//! | Slice | 10 | `starts`/`ends`/`axes` attributes → inputs | int64 inputs |
//! | Split | 13 | `split` attribute → input | int64 input |
//! | Split | 18 | `num_outputs` (needed without `split`) | `num_outputs` = number of outputs |
//! | Squeeze, Unsqueeze | 13 | `axes` attribute → input | int64 input |
//! | TopK | 10 | `k` attribute → input | int64 `[k]` input; 11 only adds attributes |
//! | Upsample | 9 | `scales` attribute → input | float input |
//! | Upsample | 10 | deprecated | Resize, then as Resize-11 with nearest_mode `floor` (also in models at 10 and later) |
//! | all other ops | | types widened; attributes added whose defaults keep the old behaviour (ArgMax/ArgMin `select_last_index`, pools' `ceil_mode`/`dilations`, Cast `saturate`, GRU/LSTM/RNN `layout`, Reshape `allowzero`, Shape `start`/`end`, scatter `reduction`, DepthToSpace `mode`, GatherND `batch_dims`, Q/DQ `axis`/`block_size`); inputs made optional (Gemm C, Loop M/cond); new ops (ConstantOfShape, Scan-9 onwards…) | nothing |
//!
//! Targets above 21 are refused: the table has not been checked beyond it. Element types (for
//! Clip, Pad and ImageScaler constants) come from declarations, constants and the ops that keep
//! or fix their type; inside functions nothing is declared, so those nodes are refused there.

mod attrs;
mod changes;
mod facts;
mod ranks;
mod resize;
mod rewire;
mod site;
#[cfg(test)]
mod tests;

use crate::error::{Error, Result};
use crate::graph::{Names, Opsets};
use crate::onnx::pb::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use crate::onnx::walk::node_label;
use facts::Facts;
use site::Site;

/// The oldest default-domain opset the pass upgrades from.
pub const MIN_SOURCE_OPSET: i64 = 7;
/// The newest opset the change table covers.
pub const MAX_TARGET_OPSET: i64 = 21;

/// What [`upgrade_default_opset`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsetUpgrade {
    /// The default-domain opset before (0 when the model did not import the default domain).
    pub from: i64,
    /// The default-domain opset after.
    pub to: i64,
    /// One line per rewritten node, such as `node 'x' (Split): split attribute -> input`.
    pub rewritten: Vec<String>,
}

/// Raises the default-domain opset to `target` (no-op when already ≥ target), rewriting every node
/// whose signature changed in between. `Err(Error::Model(..))` names the first node that cannot be
/// upgraded; the model is then left untouched.
pub fn upgrade_default_opset(model: &mut ModelProto, target: i64) -> Result<OpsetUpgrade> {
    let mut work = model.clone();
    let upgrade = upgrade_in_place(&mut work, target).map_err(Error::Model)?;
    if upgrade.from != upgrade.to {
        *model = work;
    }
    Ok(upgrade)
}

/// Whether `upgrade_default_opset(model, target)` would succeed, and why not.
pub fn can_upgrade(model: &ModelProto, target: i64) -> Result<(), String> {
    let mut work = model.clone();
    upgrade_in_place(&mut work, target).map(|_| ())
}

/// Every `(op, opset)` whose change the pass rewrites or refuses: the rows of the table above, for
/// audits against the ONNX schemas.
pub fn covered_changes() -> impl Iterator<Item = (&'static str, i64)> {
    changes::CHANGES.iter().map(|c| (c.op, c.since))
}

/// The first IR version whose ONNX release includes `opset` (onnx.helper.VERSION_TABLE).
pub fn min_ir_version(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn upgrade_in_place(model: &mut ModelProto, target: i64) -> Result<OpsetUpgrade, String> {
    let prefix = || "cannot upgrade the default-domain opset".to_string();
    let from = match Opsets::new(&model.opset_import).default_domain() {
        Some(v) => v,
        None if model.ir_version() < 3 => 1,
        None => {
            if model.graph.as_ref().is_some_and(uses_default_domain) {
                return Err(format!(
                    "{}: nodes use the default domain but the model does not import it",
                    prefix()
                ));
            }
            0
        }
    };
    if from >= target {
        return Ok(OpsetUpgrade {
            from,
            to: from,
            rewritten: Vec::new(),
        });
    }
    if target > MAX_TARGET_OPSET {
        return Err(format!(
            "{} to {target}: the operator changes are only known up to opset {MAX_TARGET_OPSET}",
            prefix()
        ));
    }
    if from != 0 && from < MIN_SOURCE_OPSET {
        return Err(format!(
            "{} from {from}: models older than opset {MIN_SOURCE_OPSET} use attributes (consumed_inputs, \
             broadcast, is_test) that later opsets removed; convert them with a newer exporter",
            prefix()
        ));
    }
    let mut ctx = Upgrader {
        names: Names::of_model(model),
        target,
        rewritten: Vec::new(),
    };
    if let Some(g) = model.graph.as_mut() {
        ctx.graph(g, from, None, false, "")
            .map_err(|e| format!("{} from {from} to {target}: {e}", prefix()))?;
    }
    for f in &mut model.functions {
        let Some(version) = Opsets::new(&f.opset_import).default_domain() else {
            continue;
        };
        if version >= target {
            continue;
        }
        let where_ = format!("function '{}' > ", f.name());
        if version < MIN_SOURCE_OPSET {
            return Err(format!(
                "{}: {where_}imports opset {version}, older than {MIN_SOURCE_OPSET}",
                prefix()
            ));
        }
        let facts = Facts::default();
        let nodes = std::mem::take(&mut f.node);
        let (nodes, _, _) = ctx
            .nodes(nodes, version, &facts, true, &where_)
            .map_err(|e| format!("{} from {version} to {target}: {e}", prefix()))?;
        f.node = nodes;
        set_default_version(&mut f.opset_import, target);
    }
    set_default_version(&mut model.opset_import, target);
    model.ir_version = Some(model.ir_version().max(min_ir_version(target)));
    Ok(OpsetUpgrade {
        from,
        to: target,
        rewritten: ctx.rewritten,
    })
}

/// Sets every default-domain import to `version`, adding one when there is none.
fn set_default_version(imports: &mut Vec<OperatorSetIdProto>, version: i64) {
    let mut found = false;
    for o in imports.iter_mut() {
        if matches!(o.domain(), "" | "ai.onnx") {
            o.version = Some(version);
            found = true;
        }
    }
    if !found {
        imports.push(OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(version),
        });
    }
}

fn is_default_domain(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx")
}

fn uses_default_domain(g: &GraphProto) -> bool {
    g.node.iter().any(|n| {
        is_default_domain(n) || crate::onnx::attr::subgraphs(n).any(|(_, g)| uses_default_domain(g))
    })
}

/// State shared by every graph of one upgrade.
struct Upgrader {
    names: Names,
    target: i64,
    rewritten: Vec<String>,
}

/// Upgraded nodes, the initializers they need, and the values no longer produced.
type Upgraded = (
    Vec<NodeProto>,
    Vec<crate::onnx::pb::TensorProto>,
    Vec<String>,
);

impl Upgrader {
    /// Upgrades one graph (and its subgraphs) from opset `from`.
    fn graph(
        &mut self,
        g: &mut GraphProto,
        from: i64,
        outer: Option<&Facts>,
        in_function: bool,
        where_: &str,
    ) -> Result<(), String> {
        let facts = Facts::of_graph(g, outer);
        let nodes = std::mem::take(&mut g.node);
        let (nodes, initializers, removed) =
            self.nodes(nodes, from, &facts, in_function, where_)?;
        g.node = nodes;
        g.initializer.extend(initializers);
        g.value_info
            .retain(|v| !removed.iter().any(|r| r == v.name()));
        Ok(())
    }

    fn nodes(
        &mut self,
        nodes: Vec<NodeProto>,
        from: i64,
        facts: &Facts,
        in_function: bool,
        where_: &str,
    ) -> Result<Upgraded, String> {
        let mut out = Vec::with_capacity(nodes.len());
        let mut initializers = Vec::new();
        let mut removed = Vec::new();
        for mut node in nodes {
            let label = node_label(&node);
            let mut site = Site::new(&mut self.names, facts, self.target, in_function);
            let mut what = Vec::new();
            if is_default_domain(&node) {
                what.extend(changes::drop_legacy_attributes(&mut node));
                let start = changes::effective_from(node.op_type(), from);
                for version in start + 1..=self.target {
                    // A rename (Upsample → Resize) hands the node to the new op's changes.
                    let op = node.op_type().to_string();
                    for change in changes::at(&op, version) {
                        let done = (change.adapt)(&mut node, &mut site)
                            .map_err(|e| format!("{where_}{label}: {e}"))?;
                        what.extend(done);
                    }
                }
            }
            let Site {
                before,
                after,
                initializers: new_initializers,
                removed_values,
                ..
            } = site;
            for a in &mut node.attribute {
                let nested = format!("{where_}{label} attribute '{}' > ", a.name());
                if let Some(g) = a.g.as_mut() {
                    self.graph(g, from, Some(facts), in_function, &nested)?;
                }
                for g in &mut a.graphs {
                    self.graph(g, from, Some(facts), in_function, &nested)?;
                }
            }
            if !what.is_empty() {
                self.rewritten
                    .push(format!("{where_}{label}: {}", what.join("; ")));
            }
            out.extend(before);
            out.push(node);
            out.extend(after);
            initializers.extend(new_initializers);
            removed.extend(removed_values);
        }
        Ok((out, initializers, removed))
    }
}
