"""Checks a quantized model against its float original in onnx (checker) and onnxruntime.

Usage: ort_check.py FLOAT.onnx QUANT.onnx DATA_DIR
Prints JSON: {"checker": "ok" | error, "outputs": {name: {"sqnr_db", "cosine"}}} computed over the
.npz samples of DATA_DIR (onnxruntime, all optimizations off).
"""
import glob
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

fp, qp, data = sys.argv[1:4]
try:
    onnx.checker.check_model(onnx.load(qp), full_check=True)
    checker = "ok"
except Exception as e:  # noqa: BLE001
    checker = str(e)[:300]
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
f = ort.InferenceSession(fp, opts, providers=["CPUExecutionProvider"])
q = ort.InferenceSession(qp, opts, providers=["CPUExecutionProvider"])
names = [o.name for o in f.get_outputs()]
sig = {n: 0.0 for n in names}
err = {n: 0.0 for n in names}
dot = {n: 0.0 for n in names}
qq = {n: 0.0 for n in names}
for path in sorted(glob.glob(data + "/*.npz")):
    feeds = dict(np.load(path))
    a = f.run(names, feeds)
    b = q.run(names, feeds)
    for n, x, y in zip(names, a, b):
        x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        sig[n] += (x * x).sum(); err[n] += ((x - y) ** 2).sum(); dot[n] += (x * y).sum(); qq[n] += (y * y).sum()
out = {n: {"sqnr_db": float(10 * np.log10(sig[n] / max(err[n], 1e-300))),
           "cosine": float(dot[n] / max(np.sqrt(sig[n] * qq[n]), 1e-300))} for n in names}
print(json.dumps({"checker": checker, "outputs": out}))
