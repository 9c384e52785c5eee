"""Writes a one-MatMul model Y = A · W with random weights W [K, N] (and, with --gemm, the
same as a Gemm with transB=1 on W stored [N, K], plus a bias).

Usage: make_matmul.py OUT.onnx K N [--gemm] [--seed S]
"""
import argparse

import numpy as np
import onnx
from onnx import helper, numpy_helper

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("k", type=int)
ap.add_argument("n", type=int)
ap.add_argument("--gemm", action="store_true")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
rng = np.random.default_rng(args.seed)
w = (rng.standard_normal((args.k, args.n)) * 0.05).astype(np.float32)
w[rng.integers(0, args.k), rng.integers(0, args.n)] = 0.9  # an outlier, as trained weights have
a = helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, ["M", args.k])
y = helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["M", args.n])
if args.gemm:
    b = (rng.standard_normal(args.n) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "W"), numpy_helper.from_array(b, "bias")]
    node = helper.make_node("Gemm", ["A", "W", "bias"], ["Y"], name="gemm", transB=1, alpha=1.0, beta=1.0)
else:
    inits = [numpy_helper.from_array(w, "W")]
    node = helper.make_node("MatMul", ["A", "W"], ["Y"], name="matmul")
g = helper.make_graph([node], "one", [a], [y], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
onnx.checker.check_model(m, full_check=True)
onnx.save_model(m, args.out)
