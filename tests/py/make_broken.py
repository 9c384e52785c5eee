"""Writes small models, each broken in one deliberate way (plus valid controls), into OUTDIR.

Usage: make_broken.py OUTDIR. Prints one line per model: "<name>.onnx <expected: valid|invalid>".
The expectation is ours; the test compares both onnx-ptq's validator and onnx.checker against it.
"""
import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=17, ir=8, extra_opsets=(), vi=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits), value_info=list(vi))
    ops = [helper.make_operatorsetid("", opset)] + [helper.make_operatorsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = ir
    return m


def vi(name, elem=F, shape=(1, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def save(name, m, expected):
    with open(os.path.join(OUT, name + ".onnx"), "wb") as f:
        f.write(m.SerializeToString())
    print(f"{name}.onnx {expected}")


def dq(w_dtype, scale_shape, axis=None, opset=13, zp_dtype=None, block_size=None, ir=8, w_shape=(4, 3)):
    w = np.zeros(w_shape, dtype=np.int8)
    inits = [numpy_helper.from_array(np.ones(scale_shape, np.float32), "s")]
    wt = helper.make_tensor("w", w_dtype, list(w_shape), w.flatten().tolist())
    inits.append(wt)
    ins = ["w", "s"]
    if zp_dtype is not None:
        n = int(np.prod(scale_shape)) if scale_shape else 1
        inits.append(helper.make_tensor("zp", zp_dtype, list(scale_shape), [0] * n))
        ins.append("zp")
    attrs = {}
    if axis is not None:
        attrs["axis"] = axis
    if block_size is not None:
        attrs["block_size"] = block_size
    node = helper.make_node("DequantizeLinear", ins, ["y"], **attrs)
    return model([node], [], [vi("y", F, w_shape)], inits, opset=opset, ir=ir)


x, b = vi("x"), numpy_helper.from_array(np.ones((1, 4), np.float32), "b")

# --- broken ---
save("missing_input", model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add0")], [x], [vi("y")]), "invalid")
save("cycle", model([
    helper.make_node("Add", ["x", "c"], ["a"], name="add0"),
    helper.make_node("Relu", ["a"], ["c"], name="relu0"),
    helper.make_node("Identity", ["c"], ["y"], name="id0"),
], [x], [vi("y")]), "invalid")
save("duplicate_output", model([
    helper.make_node("Relu", ["x"], ["y"], name="relu0"),
    helper.make_node("Sigmoid", ["x"], ["y"], name="sig0"),
], [x], [vi("y")]), "invalid")
save("unsorted_nodes", model([
    helper.make_node("Relu", ["a"], ["y"], name="relu0"),
    helper.make_node("Add", ["x", "b"], ["a"], name="add0"),
], [x], [vi("y")], [b]), "invalid")
save("output_never_produced", model([helper.make_node("Relu", ["x"], ["y"])], [x], [vi("y"), vi("z")]), "invalid")
save("duplicate_initializer", model([helper.make_node("Add", ["x", "b"], ["y"])], [x], [vi("y")], [b, b]), "invalid")
save("domain_not_imported", model([helper.make_node("Foo", ["x"], ["y"], domain="com.example")], [x], [vi("y")]), "invalid")
save("no_ir_version", model([helper.make_node("Relu", ["x"], ["y"])], [x], [vi("y")], ir=0), "invalid")
save("per_channel_dq_opset12", dq(TensorProto.INT8, (4,), axis=0, opset=12, zp_dtype=TensorProto.INT8), "invalid")
# DequantizeLinear-10 specifies a scalar scale, yet the checker and onnxruntime accept a 1-D one
# when no `axis` attribute is given: valid for the oracle, a warning for onnx-ptq.
save("warn_1d_scale_dq_opset12", dq(TensorProto.INT8, (3,), opset=12), "valid")
save("wrong_zero_point_type", dq(TensorProto.INT8, (), opset=13, zp_dtype=TensorProto.UINT8), "invalid")
save("int4_dq_opset19", dq(TensorProto.INT4, (), opset=19, ir=9), "invalid")
save("int16_dq_opset19", dq(TensorProto.INT16, (), opset=19, ir=9), "invalid")
save("block_size_opset19", dq(TensorProto.INT8, (2, 3), axis=0, block_size=2, opset=19, ir=9), "invalid")
save("zero_point_shape_differs", dq(TensorProto.INT8, (4,), axis=0, opset=13, zp_dtype=TensorProto.INT8)
     if False else model([helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["y"], axis=0)], [], [vi("y", F, (4, 3))], [
         helper.make_tensor("w", TensorProto.INT8, [4, 3], [0] * 12),
         numpy_helper.from_array(np.ones((4,), np.float32), "s"),
         helper.make_tensor("zp", TensorProto.INT8, [2], [0, 0])], opset=13), "invalid")
save("scale_2d_without_block_size", dq(TensorProto.INT8, (4, 3), axis=0, opset=21, ir=10), "invalid")
sub = helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["t"])], "then", [], [vi("t")])
els = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e")])
save("subgraph_missing_input", model([
    helper.make_node("If", ["cond"], ["y"], then_branch=sub, else_branch=els)],
    [vi("cond", TensorProto.BOOL, ()), x], [vi("y")]), "invalid")

# --- valid controls ---
save("valid_add", model([helper.make_node("Add", ["x", "b"], ["y"])], [x], [vi("y")], [b]), "valid")
save("valid_per_channel_dq_opset13", dq(TensorProto.INT8, (4,), axis=0, opset=13, zp_dtype=TensorProto.INT8), "valid")
save("valid_per_tensor_dq_opset10", dq(TensorProto.UINT8, (), opset=10, zp_dtype=TensorProto.UINT8), "valid")
save("valid_int4_blocked_dq_opset21", dq(TensorProto.INT4, (2, 3), axis=0, block_size=2, opset=21, ir=10), "valid")
save("valid_int16_dq_opset21", dq(TensorProto.INT16, (4,), axis=0, opset=21, ir=10, zp_dtype=TensorProto.INT16), "valid")
then_ok = helper.make_graph([helper.make_node("Add", ["x", "b"], ["t"])], "then", [], [vi("t")])
save("valid_if_outer_scope", model([
    helper.make_node("If", ["cond"], ["y"], then_branch=then_ok, else_branch=els)],
    [vi("cond", TensorProto.BOOL, ()), x], [vi("y")], [b]), "valid")
save("valid_custom_domain", model([helper.make_node("Foo", ["x"], ["y"], domain="com.example")], [x], [vi("y")],
                                  extra_opsets=[("com.example", 1)]), "valid")
q = helper.make_node("QuantizeLinear", ["x", "qs", "qz"], ["xq"])
d = helper.make_node("DequantizeLinear", ["xq", "qs", "qz"], ["y"])
save("valid_qdq_pair", model([q, d], [x], [vi("y")], [
    numpy_helper.from_array(np.float32(0.1), "qs"), numpy_helper.from_array(np.uint8(128), "qz")], opset=13), "valid")
