//! Lossless reading: decode → encode → decode gives an equal message for every model (and every
//! input/output tensor file) of ONNX's node test suite.

mod common;

use onnx_ptq::onnx::pb::{ModelProto, TensorProto};
use onnx_ptq::onnx::{decode_model, encode_model};
use prost::Message;

#[test]
fn every_node_test_model_round_trips() {
    let models = common::node_models();
    let mut byte_identical = 0;
    let mut tensors = 0;
    for path in &models {
        let bytes = std::fs::read(path).unwrap();
        let first = decode_model(&bytes, path).unwrap_or_else(|e| panic!("{e}"));
        let encoded = encode_model(&first);
        let second = ModelProto::decode(encoded.as_slice())
            .unwrap_or_else(|e| panic!("{}: re-decoding failed: {e}", path.display()));
        // Messages are compared through their encodings: `PartialEq` says NaN != NaN, while equal
        // encodings mean every field, NaN payloads included, survived.
        assert!(
            first == second || encode_model(&second) == encoded,
            "{}: message changed in a round trip",
            path.display()
        );
        if encoded == bytes {
            byte_identical += 1;
        }
        for data_set in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let data_set = data_set.unwrap().path();
            if !data_set.is_dir() {
                continue;
            }
            for pb in std::fs::read_dir(&data_set).unwrap() {
                let pb = pb.unwrap().path();
                let bytes = std::fs::read(&pb).unwrap();
                // Sequence/optional test data is not a TensorProto; only check what decodes as one.
                let Ok(t) = TensorProto::decode(bytes.as_slice()) else {
                    continue;
                };
                let again = TensorProto::decode(t.encode_to_vec().as_slice()).unwrap();
                assert!(
                    t == again || again.encode_to_vec() == t.encode_to_vec(),
                    "{}: tensor changed in a round trip",
                    pb.display()
                );
                tensors += 1;
            }
        }
    }
    eprintln!(
        "{} models round-tripped, {byte_identical} re-encoded byte for byte; {tensors} tensor files",
        models.len()
    );
    // Proto2 with prost keeps field order by number; files written by the reference protobuf do
    // the same, so nearly all re-encode to the same bytes. A drop here means a field is lost.
    assert!(
        byte_identical * 100 >= models.len() * 99,
        "only {byte_identical} byte-identical"
    );
}
