//! Loading and saving: external data in both directions, atomic writes that never replace the
//! input, Constant-node weights reachable like initializers, and the graph index.

use std::path::Path;

use onnx_ptq::graph::{GraphIndex, Names, Producer};
use onnx_ptq::onnx::pb::attribute_proto::AttributeType;
use onnx_ptq::onnx::pb::tensor_proto::DataType;
use onnx_ptq::onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};
use onnx_ptq::onnx::{Model, SaveOptions};
use onnx_ptq::Error;

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn constant_node(name: &str, output: &str, value: TensorProto) -> NodeProto {
    NodeProto {
        attribute: vec![AttributeProto {
            name: Some("value".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(value),
            ..Default::default()
        }],
        ..node("Constant", name, &[], &[output])
    }
}

/// x → Add(big initializer) → Mul(Constant-node weight) → y, with a small initializer too.
fn model_with_weights() -> ModelProto {
    let big: Vec<f32> = (0..4096).map(|i| i as f32 * 0.5).collect();
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![
                constant_node("c0", "w_const", float_tensor("", &[4096], &big)),
                node("Add", "add0", &["x", "big"], &["a"]),
                node("Mul", "mul0", &["a", "w_const"], &["b"]),
                node("Add", "add1", &["b", "small"], &["y"]),
            ],
            initializer: vec![
                float_tensor("big", &[4096], &big),
                float_tensor("small", &[1], &[1.0]),
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn write(path: &Path, model: &ModelProto) {
    std::fs::write(path, onnx_ptq::onnx::encode_model(model)).unwrap();
}

#[test]
fn external_data_round_trips_through_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.onnx");
    write(&src, &model_with_weights());
    let model = Model::load(&src).unwrap();
    let out = dir.path().join("out.onnx");
    let options = SaveOptions {
        external_threshold: Some(1024),
        ..Default::default()
    };
    let report = model.save(&out, &options).unwrap();
    // The initializer and the Constant-node tensor go out; the 4-byte one stays inline.
    assert_eq!(report.n_external_tensors, 2);
    let side = report.external_file.clone().unwrap();
    assert_eq!(side, dir.path().join("out.onnx.data"));
    assert!(std::fs::metadata(&out).unwrap().len() < 1024);
    let reloaded = Model::load(&out).unwrap();
    assert_eq!(reloaded.n_external_tensors, 2);
    assert_eq!(reloaded.external_files, vec![side.canonicalize().unwrap()]);
    assert_eq!(
        reloaded.proto, model.proto,
        "values changed through external data"
    );
}

#[test]
fn models_above_the_size_limit_get_external_data_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::from_proto(model_with_weights(), &dir.path().join("m.onnx")).unwrap();
    let options = SaveOptions {
        external_threshold: None,
        size_limit: 10_000, // stands in for the 2 GiB protobuf limit
    };
    let out = dir.path().join("auto.onnx");
    let report = model.save(&out, &options).unwrap();
    assert!(report.external_file.is_some());
    assert_eq!(Model::load(&out).unwrap().proto, model.proto);
    // Below the limit everything stays in one file.
    let inline = model
        .save(dir.path().join("inline.onnx"), &SaveOptions::default())
        .unwrap();
    assert_eq!(inline.external_file, None);
}

#[test]
fn saving_over_the_input_or_its_data_is_refused_and_leaves_it_intact() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.onnx");
    write(&src, &model_with_weights());
    let ext = dir.path().join("ext.onnx");
    Model::load(&src)
        .unwrap()
        .save(
            &ext,
            &SaveOptions {
                external_threshold: Some(1024),
                ..Default::default()
            },
        )
        .unwrap();
    let before = std::fs::read(&ext).unwrap();
    let data_before = std::fs::read(dir.path().join("ext.onnx.data")).unwrap();
    let model = Model::load(&ext).unwrap();
    // The same file by another spelling, a hard link to it, and its external data file.
    std::fs::hard_link(&ext, dir.path().join("link.onnx")).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    for target in [
        ext.clone(),
        sub.join("../ext.onnx"),
        dir.path().join("link.onnx"),
        dir.path().join("ext.onnx.data"),
    ] {
        let err = model.save(&target, &SaveOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::WouldOverwriteInput(_)),
            "{target:?}: {err}"
        );
    }
    // Writing to a new name whose side file would be the input's data file is refused too.
    let err = model
        .save(
            dir.path().join("ext.onnx"),
            &SaveOptions {
                external_threshold: Some(1),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::WouldOverwriteInput(_)));
    assert_eq!(std::fs::read(&ext).unwrap(), before);
    assert_eq!(
        std::fs::read(dir.path().join("ext.onnx.data")).unwrap(),
        data_before
    );
}

#[test]
fn a_failed_save_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::from_proto(model_with_weights(), &dir.path().join("m.onnx")).unwrap();
    let err = model
        .save(dir.path().join("missing/out.onnx"), &SaveOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn saving_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::from_proto(model_with_weights(), &dir.path().join("m.onnx")).unwrap();
    let options = SaveOptions {
        external_threshold: Some(1024),
        ..Default::default()
    };
    model.save(dir.path().join("a.onnx"), &options).unwrap();
    model.save(dir.path().join("b.onnx"), &options).unwrap();
    let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
    assert_eq!(read("a.onnx.data"), read("b.onnx.data"));
    // The model files differ only in the side file's name.
    assert_eq!(read("a.onnx").len(), read("b.onnx").len());
}

#[test]
fn constant_node_weights_are_found_like_initializers() {
    let proto = model_with_weights();
    let g = proto.graph.as_ref().unwrap();
    let index = GraphIndex::new(g);
    let from_init = index.constant("big").unwrap();
    let from_node = index.constant("w_const").unwrap();
    assert_eq!(from_init.dims, vec![4096]);
    assert_eq!(from_node.dims, vec![4096]);
    assert_eq!(from_init.raw_data, from_node.raw_data);
    assert!(index.constant("x").is_none());
    assert!(index.constant("a").is_none());
    assert_eq!(
        index.producer("w_const"),
        Some(Producer::Node { node: 0, output: 0 })
    );
    assert_eq!(index.consumers("a"), &[2]);
    let tt = index.tensor_type("w_const").unwrap();
    assert_eq!(tt.elem_type, DataType::Float);
}

#[test]
fn topological_order_sorts_and_detects_cycles() {
    let mut proto = model_with_weights();
    let g = proto.graph.as_mut().unwrap();
    g.node.reverse();
    let order = GraphIndex::new(g).topological_order().unwrap();
    let names: Vec<&str> = order.iter().map(|&i| g.node[i].name()).collect();
    // Ready nodes come out in file order: add0 (index 2) before c0 (index 3).
    assert_eq!(names, ["add0", "c0", "mul0", "add1"]);
    // add0 now reads add1's output, which depends on add0: a cycle.
    let add0 = g.node.iter_mut().find(|n| n.name() == "add0").unwrap();
    add0.input[0] = "y".into();
    let on_cycle = GraphIndex::new(g).topological_order().unwrap_err();
    let mut cyc: Vec<&str> = on_cycle.iter().map(|&i| g.node[i].name()).collect();
    cyc.sort();
    assert_eq!(cyc, ["add0", "add1", "mul0"]);
}

#[test]
fn subgraph_outer_references_count_as_inputs_of_their_node() {
    let body = GraphProto {
        name: Some("then".into()),
        node: vec![node("Add", "inner", &["a", "small"], &["t"])],
        ..Default::default()
    };
    let if_node = NodeProto {
        attribute: vec![AttributeProto {
            name: Some("then_branch".into()),
            r#type: Some(AttributeType::Graph as i32),
            g: Some(body),
            ..Default::default()
        }],
        ..node("If", "if0", &["cond"], &["z"])
    };
    let mut proto = model_with_weights();
    let g = proto.graph.as_mut().unwrap();
    g.node.insert(0, if_node); // before the producer of `a`: topological order must move it
    let index = GraphIndex::new(g);
    assert_eq!(index.node_uses(0), ["cond", "a", "small"]);
    assert!(index.consumers("a").contains(&0));
    let order = index.topological_order().unwrap();
    let pos = |name: &str| {
        order
            .iter()
            .position(|&i| g.node[i].name() == name)
            .unwrap()
    };
    assert!(pos("add0") < pos("if0"));
    let mut names = Names::of_model(&proto);
    assert_eq!(
        names.fresh("t"),
        "t_1",
        "names inside subgraphs are taken too"
    );
}
