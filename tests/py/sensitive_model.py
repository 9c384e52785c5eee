"""A small model with one deliberately sensitive layer, for `compare --per-layer` tests.

Usage: sensitive_model.py OUT_DIR

Writes OUT_DIR/model.onnx and OUT_DIR/data/sample_NNN.npz (16 samples of `x` [1, 16]):

  x -> Gemm "clean" (output ~100x larger) ----------\\
  x -> Gemm "sensitive" (weight with outliers) -> Add "sum" -> y

The sensitive Gemm's weight has one row of huge values (1000, against ~0.25 elsewhere) on an
input feature that is always 0 in the data: its own output is unaffected in float, but the
per-channel int8 scales, set by the outliers, round every other weight of that layer to 0, so
its quantized output loses its whole signal. The clean branch dominates `y`, so the error stays
local: the sensitive Gemm's output is the worst tensor by far.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
os.makedirs(os.path.join(out, "data"), exist_ok=True)
rng = np.random.default_rng(3)
w_clean = (rng.standard_normal((16, 8)) * 25.0).astype(np.float32)
w_sens = (rng.standard_normal((16, 8)) * 0.25).astype(np.float32)
w_sens[3, :] = 1000.0
b = np.zeros(8, np.float32)
graph = helper.make_graph(
    [
        helper.make_node("Gemm", ["x", "w_clean", "b"], ["clean"], name="clean"),
        helper.make_node("Gemm", ["x", "w_sens", "b"], ["sensitive"], name="sensitive"),
        helper.make_node("Add", ["clean", "sensitive"], ["y"], name="sum"),
    ],
    "sensitive",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    [numpy_helper.from_array(w_clean, "w_clean"), numpy_helper.from_array(w_sens, "w_sens"),
     numpy_helper.from_array(b, "b")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8  # onnxruntime 1.31 reads IR <= 13
onnx.checker.check_model(model, full_check=True)
onnx.save(model, os.path.join(out, "model.onnx"))
for k in range(16):
    x = rng.standard_normal((1, 16)).astype(np.float32)
    x[0, 3] = 0.0
    np.savez(os.path.join(out, "data", f"sample_{k:03d}.npz"), x=x)
