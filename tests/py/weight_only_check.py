"""Checks weight-only packing against ONNX Runtime: for one quantized weight of a model, the
float matrix ONNX Runtime computes from it equals the one given.

Usage: weight_only_check.py MODEL.onnx NODE_OUTPUT EXPECTED.npy

MODEL holds a MatMulNBits (or a blocked DequantizeLinear feeding MatMul) producing
NODE_OUTPUT from an input A of shape [.., K]. The check feeds A = the K x K identity, so the
output is the dequantized weight [K, N] itself, and compares it with EXPECTED.npy (what
onnx-ptq computed) bit for bit. Prints JSON {"max_abs_diff": d, "equal": bool}.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

model_path, out_name, expected_path = sys.argv[1:4]
m = onnx.load(model_path)
expected = np.load(expected_path)
k = expected.shape[0]
# Keep only the node producing out_name (and a DQ feeding it): A becomes a graph input.
producer = next(n for n in m.graph.node if out_name in n.output)
nodes = [producer]
feeders = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
if producer.op_type == "MatMul" and producer.input[1] in feeders:
    nodes.insert(0, feeders[producer.input[1]])
a = producer.input[0]
used = {i for n in nodes for i in n.input}
inits = [t for t in m.graph.initializer if t.name in used]
g = helper.make_graph(
    nodes,
    "weight",
    [helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, [k, k])],
    [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)],
    inits,
)
sub = helper.make_model(g, opset_imports=list(m.opset_import), ir_version=m.ir_version)
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
got = s.run([out_name], {a: np.eye(k, dtype=np.float32)})[0]
diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
print(json.dumps({"max_abs_diff": diff, "equal": bool(got.shape == expected.shape and np.array_equal(got, expected)), "shape": list(got.shape)}))
