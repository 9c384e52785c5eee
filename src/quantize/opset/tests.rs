//! Small models through one rewrite each; the oracle-checked sweeps live in
//! `tests/opset_upgrade.rs`.

use super::*;
use crate::onnx::attr;
use crate::onnx::pb::attribute_proto::AttributeType;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::pb::{
    type_proto, AttributeProto, FunctionProto, TensorProto, TypeProto, ValueInfoProto,
};
use crate::onnx::tensor;

fn value(name: &str, rank: Option<usize>) -> ValueInfoProto {
    let shape = rank.map(|r| crate::onnx::pb::TensorShapeProto {
        dim: vec![Default::default(); r],
    });
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn with(mut node: NodeProto, a: AttributeProto) -> NodeProto {
    node.attribute.push(a);
    node
}

fn floats(name: &str, values: &[f32]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Floats as i32),
        floats: values.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

fn graph(nodes: Vec<NodeProto>, rank: Option<usize>, output: &str) -> GraphProto {
    GraphProto {
        name: Some("g".into()),
        node: nodes,
        input: vec![value("x", rank)],
        output: vec![value(output, None)],
        ..Default::default()
    }
}

fn model(opset: i64, g: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(min_ir_version(opset)),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(g),
        ..Default::default()
    }
}

fn int64s(t: &TensorProto) -> Vec<i64> {
    t.raw_data
        .as_deref()
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn nodes(m: &ModelProto) -> &[NodeProto] {
    &m.graph.as_ref().unwrap().node
}

#[test]
fn split_attribute_becomes_an_initializer_input() {
    let split = with(
        node("Split", "s", &["x"], &["a", "b"]),
        site::ints_attribute("split", &[2, 4]),
    );
    let mut m = model(11, graph(vec![split], Some(2), "a"));
    // The natural name is taken: the new one must not collide.
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(tensor::from_f32("s_split", &[1], &[0.0]));
    let upgrade = upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!((upgrade.from, upgrade.to), (11, 13));
    assert_eq!(
        upgrade.rewritten,
        ["node 's' (Split): split attribute -> input"]
    );
    let s = &nodes(&m)[0];
    assert_eq!(s.input, ["x", "s_split_1"]);
    assert!(s.attribute.is_empty());
    let init = &m.graph.as_ref().unwrap().initializer[1];
    assert_eq!((init.name(), int64s(init)), ("s_split_1", vec![2, 4]));
    assert_eq!(m.ir_version(), 7);
    assert_eq!(Opsets::new(&m.opset_import).default_domain(), Some(13));
    // At 18 the split input is still there, so no num_outputs is needed.
    let mut m21 = model(11, graph(vec![nodes(&m)[0].clone()], Some(2), "a"));
    m21.graph.as_mut().unwrap().node[0].input.truncate(1);
    upgrade_default_opset(&mut m21, 21).unwrap();
    assert_eq!(attr::int(&nodes(&m21)[0], "num_outputs"), Ok(Some(2)));
    assert_eq!(m21.ir_version(), 10);
}

#[test]
fn a_model_at_the_target_is_left_alone() {
    let original = model(
        13,
        graph(vec![node("Relu", "r", &["x"], &["y"])], None, "y"),
    );
    let mut m = original.clone();
    let upgrade = upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!((upgrade.from, upgrade.to), (13, 13));
    assert!(upgrade.rewritten.is_empty());
    assert_eq!(m, original);
}

#[test]
fn a_refused_node_in_a_subgraph_is_named_and_nothing_changes() {
    let bn = with(
        node(
            "BatchNormalization",
            "bn",
            &["x", "s", "b", "m", "v"],
            &["t"],
        ),
        site::int_attribute("spatial", 0),
    );
    let mut branch = graph(vec![bn], None, "t");
    branch.input.clear();
    let mut then_branch = AttributeProto {
        name: Some("then_branch".into()),
        r#type: Some(AttributeType::Graph as i32),
        g: Some(branch.clone()),
        ..Default::default()
    };
    let else_branch = AttributeProto {
        name: Some("else_branch".into()),
        ..then_branch.clone()
    };
    then_branch.g.as_mut().unwrap().name = Some("then".into());
    let unsqueeze = with(
        node("Unsqueeze", "u", &["x"], &["c"]),
        site::ints_attribute("axes", &[0]),
    );
    let iff = with(
        with(node("If", "if", &["c"], &["y"]), then_branch),
        else_branch,
    );
    let original = model(8, graph(vec![unsqueeze, iff], None, "y"));
    let mut m = original.clone();
    let err = upgrade_default_opset(&mut m, 13).unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot upgrade the default-domain opset from 8 to 13: node 'if' (If) attribute \
         'then_branch' > node 'bn' (BatchNormalization): spatial = 0 (per-activation statistics) \
         has no equivalent from opset 9"
    );
    assert_eq!(m, original);
    assert_eq!(can_upgrade(&original, 13), Err(err));
    // Below 9 the attribute is still valid.
    assert_eq!(can_upgrade(&original, 8), Ok(()));
    assert_eq!(can_upgrade(&original, 7), Ok(()));
}

#[test]
fn opsets_outside_the_table_are_refused() {
    let relu = || graph(vec![node("Relu", "r", &["x"], &["y"])], None, "y");
    let err = can_upgrade(&model(6, relu()), 13).unwrap_err();
    assert!(err.contains("from 6: models older than opset 7"), "{err}");
    let err = can_upgrade(&model(11, relu()), 22).unwrap_err();
    assert!(err.contains("only known up to opset 21"), "{err}");
}

#[test]
fn a_model_without_the_default_domain_gets_it() {
    let mut m = model(13, graph(vec![], None, "x"));
    m.opset_import[0].domain = Some("custom".into());
    let upgrade = upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!((upgrade.from, upgrade.to), (0, 13));
    assert_eq!(Opsets::new(&m.opset_import).default_domain(), Some(13));
}

#[test]
fn softmax_keeps_a_last_axis_and_wraps_any_other() {
    let softmax = || node("Softmax", "sm", &["x"], &["y"]);
    // Rank 2: the default axis 1 is the last one.
    let mut m = model(11, graph(vec![softmax()], Some(2), "y"));
    upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!(nodes(&m).len(), 1);
    assert_eq!(attr::int(&nodes(&m)[0], "axis"), Ok(Some(1)));
    // Rank 4: Shape, Flatten, Softmax, Reshape back to the original output name.
    let mut m = model(11, graph(vec![softmax()], Some(4), "y"));
    upgrade_default_opset(&mut m, 13).unwrap();
    let ops: Vec<&str> = nodes(&m).iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Shape", "Flatten", "Softmax", "Reshape"]);
    assert_eq!(attr::int(&nodes(&m)[1], "axis"), Ok(Some(1)));
    assert_eq!(nodes(&m)[3].output, ["y"]);
    assert_eq!(nodes(&m)[3].input[0], nodes(&m)[2].output[0]);
}

#[test]
fn resize_10_nearest_rounding_follows_the_scales() {
    let resize = |scales: &[f32]| {
        let mut g = graph(vec![node("Resize", "r", &["x", "s"], &["y"])], Some(4), "y");
        g.initializer.push(tensor::from_f32("s", &[4], scales));
        model(10, g)
    };
    let rounding = |m: &ModelProto| attr::string(&nodes(m)[0], "nearest_mode").unwrap();
    let mut m = resize(&[1.0, 1.0, 2.0, 3.0]);
    upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!(rounding(&m).as_deref(), Some("floor"));
    assert_eq!(nodes(&m)[0].input, ["x", "", "s"]);
    let mut m = resize(&[1.0, 1.0, 0.5, 0.6]);
    upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!(rounding(&m).as_deref(), Some("ceil"));
    let err = can_upgrade(&resize(&[1.0, 1.0, 2.0, 0.5]), 13).unwrap_err();
    assert!(err.contains("no single nearest_mode"), "{err}");
    // Below 13 the roi input is required: an empty tensor.
    let mut m = resize(&[1.0, 1.0, 2.0, 3.0]);
    upgrade_default_opset(&mut m, 12).unwrap();
    let roi = &nodes(&m)[0].input[1];
    let g = m.graph.as_ref().unwrap();
    assert!(g
        .initializer
        .iter()
        .any(|t| t.name() == roi && t.dims == [0]));
    // Computed scales: fine for Upsample (scales >= 1), refused for Resize-10.
    let computed = |op: &str| {
        let nodes = vec![
            node("Relu", "scales", &["x"], &["s"]),
            node(op, "r", &["x", "s"], &["y"]),
        ];
        model(10, graph(nodes, Some(4), "y"))
    };
    assert_eq!(can_upgrade(&computed("Upsample"), 13), Ok(()));
    let err = can_upgrade(&computed("Resize"), 13).unwrap_err();
    assert!(err.contains("computed scales 's'"), "{err}");
}

#[test]
fn clip_bounds_take_the_input_type_or_are_refused() {
    let clip = with(
        with(node("Clip", "c", &["x"], &["y"]), float("min", 0.0)),
        float("max", 6.0),
    );
    let mut m = model(9, graph(vec![clip.clone()], None, "y"));
    upgrade_default_opset(&mut m, 13).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert_eq!(nodes(&m)[0].input, ["x", "c_min", "c_max"]);
    let max = g.initializer.iter().find(|t| t.name() == "c_max").unwrap();
    assert!(max.dims.is_empty());
    assert_eq!(tensor::to_f32(max), Ok(vec![6.0]));
    // Through an op whose output type is unknown, the bounds cannot be typed.
    let custom = NodeProto {
        domain: Some("custom".into()),
        ..node("Custom", "k", &["x"], &["z"])
    };
    let mut clip_z = clip;
    clip_z.input = vec!["z".into()];
    let err = can_upgrade(&model(9, graph(vec![custom, clip_z], None, "y")), 13).unwrap_err();
    assert!(
        err.contains("element type of input 'z' is unknown"),
        "{err}"
    );
}

#[test]
fn function_bodies_get_constant_nodes() {
    let unsqueeze = with(
        node("Unsqueeze", "u", &["a"], &["b"]),
        site::ints_attribute("axes", &[0]),
    );
    let mut m = model(11, graph(vec![], None, "x"));
    m.ir_version = Some(8);
    m.functions.push(FunctionProto {
        name: Some("f".into()),
        domain: Some("local".into()),
        input: vec!["a".into()],
        output: vec!["b".into()],
        node: vec![unsqueeze],
        opset_import: m.opset_import.clone(),
        ..Default::default()
    });
    let upgrade = upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!(
        upgrade.rewritten,
        ["function 'f' > node 'u' (Unsqueeze): axes attribute -> input"]
    );
    let f = &m.functions[0];
    assert_eq!(Opsets::new(&f.opset_import).default_domain(), Some(13));
    let ops: Vec<&str> = f.node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Constant", "Unsqueeze"]);
    assert_eq!(f.node[1].input[1], f.node[0].output[0]);
    assert!(m.graph.as_ref().unwrap().initializer.is_empty());
}

#[test]
fn upsample_7_becomes_resize_in_one_pass() {
    let upsample = with(
        node("Upsample", "up", &["x"], &["y"]),
        floats("scales", &[1.0, 1.0, 2.0, 2.0]),
    );
    let mut m = model(7, graph(vec![upsample], Some(4), "y"));
    let upgrade = upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!(
        upgrade.rewritten,
        ["node 'up' (Upsample): scales attribute -> input; Upsample -> Resize; roi input added, \
          coordinate_transformation_mode 'asymmetric', nearest_mode 'floor'"]
    );
    let r = &nodes(&m)[0];
    assert_eq!(r.op_type(), "Resize");
    assert_eq!(r.input, ["x", "", "up_scales"]);
    // Same input, same bytes.
    let mut a = m.clone();
    let mut b = m.clone();
    upgrade_default_opset(&mut a, 21).unwrap();
    upgrade_default_opset(&mut b, 21).unwrap();
    assert_eq!(crate::onnx::encode_model(&a), crate::onnx::encode_model(&b));
}

#[test]
fn deprecated_ops_are_replaced_even_at_their_own_opset() {
    let mut g = graph(
        vec![node("Upsample", "up", &["x", "s"], &["y"])],
        Some(4),
        "y",
    );
    g.initializer
        .push(tensor::from_f32("s", &[4], &[1.0, 1.0, 2.0, 2.0]));
    let mut m = model(12, g);
    upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!(nodes(&m)[0].op_type(), "Resize");
    assert_eq!(nodes(&m)[0].input, ["x", "", "s"]);
    let mut m = model(
        11,
        graph(
            vec![node("Scatter", "s", &["x", "i", "u"], &["y"])],
            None,
            "y",
        ),
    );
    upgrade_default_opset(&mut m, 13).unwrap();
    assert_eq!(nodes(&m)[0].op_type(), "ScatterElements");
}

#[test]
fn the_change_table_is_sorted_by_op_then_opset() {
    let keys: Vec<(&str, i64)> = covered_changes().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted);
}

#[test]
fn malformed_nodes_are_refused_or_kept_never_a_panic() {
    let wrong_type = AttributeProto {
        name: Some("axes".into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(1.0),
        ..Default::default()
    };
    for (op, _) in covered_changes() {
        let bare = NodeProto {
            op_type: Some(op.into()),
            ..Default::default()
        };
        let one_in_one_out = node(op, "n", &["x"], &["y"]);
        let typo = with(node(op, "n", &["x"], &["y"]), wrong_type.clone());
        for n in [bare, one_in_one_out, typo] {
            for target in [8, 13, 21] {
                let _ = can_upgrade(&model(7, graph(vec![n.clone()], None, "y")), target);
            }
        }
    }
    let typo = with(node("Squeeze", "n", &["x"], &["y"]), wrong_type);
    let err = can_upgrade(&model(11, graph(vec![typo], None, "y")), 13).unwrap_err();
    assert!(
        err.contains("attribute 'axes' should be INTS but is FLOAT"),
        "{err}"
    );
}
