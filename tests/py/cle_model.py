"""A depthwise -> Relu -> pointwise pair whose channels have mismatched ranges, the case
cross-layer equalization exists for.

Usage: cle_model.py OUT_DIR

Writes OUT_DIR/model.onnx and OUT_DIR/calib/, OUT_DIR/held/ (sample_NNN.npz, `x` [1, 8, 16, 16],
seeds 0 and 1):

  x -> Conv "depthwise" (group 8, 3x3, bias) -> Relu -> Conv "pointwise" (1x1, 8 -> 16) -> y

Depthwise filter i is scaled by f_i, from 0.01 to 100, and the pointwise weights reading
channel i by 1/f_i, so the float function is an ordinary one. Quantized as it is, each
pointwise output channel has one scale over input weights spanning four orders of magnitude (the
weights of the loud channels round to zero) and the intermediate tensor, quantized per tensor,
has channels from 0.01 to 100 (the quiet ones round to zero): the output loses most of its
signal. Equalized, every channel has the same range on both sides.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
rng = np.random.default_rng(11)
f = np.array([0.01, 0.04, 0.2, 1.0, 3.0, 10.0, 40.0, 100.0], np.float32)
w1 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * f[:, None, None, None]
b1 = (rng.standard_normal(8).astype(np.float32) * 0.1 * f).astype(np.float32)
w2 = rng.standard_normal((16, 8, 1, 1)).astype(np.float32) / f[None, :, None, None]
b2 = rng.standard_normal(16).astype(np.float32) * 0.1
graph = helper.make_graph(
    [
        helper.make_node("Conv", ["x", "w1", "b1"], ["dw"], name="depthwise", group=8,
                         pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["dw"], ["act"], name="relu"),
        helper.make_node("Conv", ["act", "w2", "b2"], ["y"], name="pointwise",
                         kernel_shape=[1, 1]),
    ],
    "cle",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])],
    [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8  # onnxruntime 1.31 reads IR <= 13
onnx.checker.check_model(model, full_check=True)
os.makedirs(out, exist_ok=True)
onnx.save(model, os.path.join(out, "model.onnx"))
for name, seed in [("calib", 0), ("held", 1)]:
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    r = np.random.default_rng(seed)
    for k in range(16):
        x = r.standard_normal((1, 8, 16, 16)).astype(np.float32)
        np.savez(os.path.join(d, f"sample_{k:03d}.npz"), x=x)
