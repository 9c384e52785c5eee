"""Reference values for `onnx-ptq compare`: onnxruntime outputs of two models, and numpy metrics.

Usage: metrics_oracle.py FLOAT.onnx QUANT.onnx DATA_DIR OUT_DIR

Runs every DATA_DIR/*.npz sample through both models in onnxruntime (optimizations off) and
writes OUT_DIR/sample_NNN.npz holding, for each float output NAME, the arrays "ref__NAME" and
"test__NAME". Prints JSON {NAME: metrics} computed with numpy over all samples, float64:
  max_abs, mean_abs, mse          over every value
  relative                        ||ref - test|| / ||ref||
  sqnr_db                         10 log10(||ref||^2 / ||ref - test||^2)
  cosine                          <ref, test> / (||ref|| ||test||), all samples pooled
  mean_cosine, min_cosine         of each sample's own cosine
  top1_agreement, top5_overlap    for 2-D outputs: per row, arg-max equal; |top5 ∩ top5| / 5
"""
import glob
import json
import os
import sys

import numpy as np
import onnxruntime as ort

fp, qp, data, out = sys.argv[1:5]
os.makedirs(out, exist_ok=True)
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
f = ort.InferenceSession(fp, opts, providers=["CPUExecutionProvider"])
q = ort.InferenceSession(qp, opts, providers=["CPUExecutionProvider"])
names = [o.name for o in f.get_outputs()]
pairs = {n: ([], []) for n in names}
for k, path in enumerate(sorted(glob.glob(os.path.join(data, "*.npz")))):
    feeds = dict(np.load(path))
    a, b = f.run(names, feeds), q.run(names, feeds)
    saved = {}
    for n, x, y in zip(names, a, b):
        if np.asarray(x).dtype.kind != "f":
            continue
        saved[f"ref__{n}"], saved[f"test__{n}"] = x, y
        pairs[n][0].append(np.asarray(x, np.float64))
        pairs[n][1].append(np.asarray(y, np.float64))
    np.savez(os.path.join(out, f"sample_{k:03d}.npz"), **saved)


def top5(v):
    # Ties broken by the lower index, as onnx-ptq does.
    return set(np.lexsort((np.arange(v.size), -v))[:5].tolist())


result = {}
for n, (refs, tests) in pairs.items():
    if not refs:
        continue
    r = np.concatenate([x.ravel() for x in refs])
    t = np.concatenate([y.ravel() for y in tests])
    e = r - t
    cos = [float((x.ravel() * y.ravel()).sum() / np.sqrt((x * x).sum() * (y * y).sum())) for x, y in zip(refs, tests)]
    m = {
        "values": int(r.size),
        "max_abs": float(np.abs(e).max()),
        "mean_abs": float(np.abs(e).mean()),
        "mse": float((e * e).mean()),
        "relative": float(np.sqrt((e * e).sum() / (r * r).sum())),
        "sqnr_db": float(10 * np.log10((r * r).sum() / (e * e).sum())),
        "cosine": float((r * t).sum() / np.sqrt((r * r).sum() * (t * t).sum())),
        "mean_cosine": float(np.mean(cos)),
        "min_cosine": float(np.min(cos)),
    }
    if refs[0].ndim == 2 and refs[0].shape[1] >= 2:
        rows = [(x[i], y[i]) for x, y in zip(refs, tests) for i in range(x.shape[0])]
        m["top1_agreement"] = float(np.mean([x.argmax() == y.argmax() for x, y in rows]))
        m["top5_overlap"] = float(np.mean([len(top5(x) & top5(y)) / min(5, x.size) for x, y in rows]))
    result[n] = m
print(json.dumps(result))
