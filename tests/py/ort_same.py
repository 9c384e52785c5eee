"""Runs two models on the same token ids in onnxruntime and reports how far their outputs differ.

Usage: ort_same.py A.onnx B.onnx [--seq N] [--seed S] [--checker]
Both models take `input_ids` int64 [1, seq] and give one output; the ids are drawn below the
output's last dimension (the vocabulary). The sessions run one after the other (each freed before
the next), so two multi-GB models need the memory of one. --checker also runs onnx's full checker
on B by path (external data included).
Prints JSON: {"shape": [...], "max_abs_diff": float, "max_abs": float, "cosine": float,
"checker": "ok" | error}.
"""
import argparse
import gc
import json

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("a")
ap.add_argument("b")
ap.add_argument("--seq", type=int, default=4)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--checker", action="store_true")
args = ap.parse_args()

checker = None
if args.checker:
    import onnx

    try:
        onnx.checker.check_model(args.b, full_check=True)
        checker = "ok"
    except Exception as e:  # noqa: BLE001
        checker = str(e)[:300]


def run(path, ids=None):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    if ids is None:
        vocab = s.get_outputs()[0].shape[-1]
        ids = np.random.default_rng(args.seed).integers(0, vocab, size=(1, args.seq), dtype=np.int64)
    (out,) = s.run(None, {"input_ids": ids})
    del s
    gc.collect()
    return out, ids


a, ids = run(args.a)
b, _ = run(args.b, ids)
assert a.shape == b.shape, (a.shape, b.shape)
print(json.dumps({
    "shape": list(a.shape),
    "max_abs_diff": float(np.abs(a.astype(np.float64) - b).max()),
    "max_abs": float(np.abs(a).max()),
    "cosine": float(np.dot(a.ravel().astype(np.float64), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)),
    "checker": checker,
}))
