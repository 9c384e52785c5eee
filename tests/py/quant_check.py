"""Checks a quantized model against its float original with the reference tools.

Usage: quant_check.py FLOAT.onnx QUANT.onnx DATA_DIR [--labels LABELS.json] [--label-output NAME]
                      [--optimized]

Prints one JSON object:
  checker    "ok" or the error of onnx.checker.check_model(full_check=True)
  outputs    per float model output: sqnr_db, cosine (all samples pooled), mean_cosine (mean
             of each sample's cosine), max_abs, and top1_agreement for
             [N, C] outputs with C >= 2, computed over every DATA_DIR/*.npz sample with
             onnxruntime, all graph optimizations off (reference values); with --optimized
             QUANT runs with onnxruntime's default optimizations (its fused int8 kernels)
  accuracy   {"float": a, "quant": b} when --labels is given: fraction of rows whose
             --label-output (default: the first output; an int output is taken as the
             label, a float [N, C] output by arg-max) equals the label; LABELS.json holds one
             entry per sample file, a number or a list (one per row of a batched sample)
  kernels    op histogram of onnxruntime's fully optimized graph of QUANT
             (SessionOptions.optimized_model_filepath)
  unfused    the Conv / MatMul / Gemm nodes of that optimized graph whose weight (input 1) is
             still a DequantizeLinear output, i.e. that run as DQ -> float op instead of an
             int8 kernel (a node left float that merely reads a dequantized activation is not)
             (ConvTranspose is not counted: the CPU provider has no int8 kernel for it)
"""
import argparse
import collections
import glob
import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("float_model")
ap.add_argument("quant_model")
ap.add_argument("data")
ap.add_argument("--labels")
ap.add_argument("--label-output")
ap.add_argument("--optimized", action="store_true")
args = ap.parse_args()

try:
    onnx.checker.check_model(onnx.load(args.quant_model), full_check=True)
    checker = "ok"
except Exception as e:  # noqa: BLE001 - any checker failure is reported, not raised
    checker = str(e)[:500]

plain = ort.SessionOptions()
plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
f = ort.InferenceSession(args.float_model, plain, providers=["CPUExecutionProvider"])
q = ort.InferenceSession(args.quant_model, ort.SessionOptions() if args.optimized else plain,
                         providers=["CPUExecutionProvider"])
names = [o.name for o in f.get_outputs()]
files = sorted(glob.glob(os.path.join(args.data, "*.npz")))
if not files:
    raise SystemExit(f"no .npz samples in {args.data}")
labels = json.load(open(args.labels)) if args.labels else None
label_output = args.label_output or names[0]

acc = {n: collections.defaultdict(float) for n in names}
correct = {"float": 0, "quant": 0, "rows": 0}


def predicted(value):
    v = np.asarray(value)
    if v.dtype.kind in "iu":
        return v.ravel().tolist()
    return v.reshape(v.shape[0], -1).argmax(axis=1).tolist() if v.ndim >= 2 else [int(v.argmax())]


seen = 0
for k, path in enumerate(files):
    feeds = dict(np.load(path))
    a = f.run(names, feeds)
    b = q.run(names, feeds)
    for n, x, y in zip(names, a, b):
        x, y = np.asarray(x), np.asarray(y)
        if labels is not None and n == label_output:
            want = labels[k] if isinstance(labels[k], list) else [labels[k]]
            correct["float"] += sum(int(p == w) for p, w in zip(predicted(x), want))
            correct["quant"] += sum(int(p == w) for p, w in zip(predicted(y), want))
            correct["rows"] += len(want)
        if x.dtype.kind != "f":
            acc[n]["exact"] += float(np.array_equal(x, y))
            continue
        xd, yd = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        s = acc[n]
        s["sig"] += (xd * xd).sum()
        s["err"] += ((xd - yd) ** 2).sum()
        s["dot"] += (xd * yd).sum()
        s["qq"] += (yd * yd).sum()
        s["max_abs"] = max(s["max_abs"], float(np.abs(xd - yd).max(initial=0.0)))
        nx, ny = np.sqrt((xd * xd).sum()), np.sqrt((yd * yd).sum())
        s["cos_sum"] += float((xd * yd).sum() / (nx * ny)) if nx * ny > 0 else float(np.array_equal(xd, yd))
        if x.ndim == 2 and x.shape[1] >= 2:
            s["rows"] += x.shape[0]
            s["top1"] += float((x.argmax(1) == y.argmax(1)).sum())
    seen += 1

outputs = {}
for n in names:
    s = acc[n]
    if "sig" not in s:
        outputs[n] = {"exact_fraction": s["exact"] / seen}
        continue
    m = {
        "sqnr_db": float(10 * np.log10(s["sig"] / s["err"])) if s["err"] > 0 else float("inf"),
        "cosine": float(s["dot"] / np.sqrt(s["sig"] * s["qq"])) if s["sig"] * s["qq"] > 0
        else float(s["err"] == 0),
        "max_abs": s["max_abs"],
        "mean_cosine": s["cos_sum"] / seen,
    }
    if s["rows"]:
        m["top1_agreement"] = s["top1"] / s["rows"]
    outputs[n] = m

with tempfile.TemporaryDirectory() as tmp:
    full = ort.SessionOptions()
    full.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    full.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
    ort.InferenceSession(args.quant_model, full, providers=["CPUExecutionProvider"])
    optimized = onnx.load(full.optimized_model_filepath)
kernels = collections.Counter(n.op_type for n in optimized.graph.node)
dq_outputs = {o for n in optimized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
unfused = [
    f"{n.name} ({n.op_type})"
    for n in optimized.graph.node
    if n.op_type in ("Conv", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul")
    and len(n.input) > 1 and n.input[1] in dq_outputs
]
result = {
    "checker": checker,
    "samples": seen,
    "outputs": outputs,
    "kernels": dict(sorted(kernels.items())),
    "unfused": unfused,
}
if labels is not None:
    rows = max(correct.pop("rows"), 1)
    result["accuracy"] = {k: v / rows for k, v in correct.items()}
print(json.dumps(result))
