"""Writes a model whose activations are NaN/Inf on its calibration data, into OUTDIR.

Usage: make_non_finite.py OUTDIR

- log_mlp.onnx: x[1, 8] -> Log -> "logx" -> MatMul(W) -> "y": Log(0) is -inf, and the MatMul
  turns -inf times weights of both signs into NaN.
- calib/sample_00K.npz: four samples, each with two exact zeros in x.
"""
import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
rs = np.random.RandomState(0)
w = numpy_helper.from_array(rs.randn(8, 4).astype(np.float32), "W")
g = helper.make_graph(
    [
        helper.make_node("Log", ["x"], ["logx"], name="log"),
        helper.make_node("MatMul", ["logx", "W"], ["y"], name="matmul"),
    ],
    "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    initializer=[w],
)
m = helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 17)])
m.ir_version = 8
os.makedirs(os.path.join(out, "calib"), exist_ok=True)
with open(os.path.join(out, "log_mlp.onnx"), "wb") as f:
    f.write(m.SerializeToString())
for i in range(4):
    x = rs.uniform(0.5, 2.0, (1, 8)).astype(np.float32)
    x[0, i] = 0.0
    x[0, i + 4] = 0.0
    np.savez(os.path.join(out, "calib", f"sample_{i:03}.npz"), x=x)
