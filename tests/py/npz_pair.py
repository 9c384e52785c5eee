"""The same calibration samples saved twice: with np.savez and with np.savez_compressed.

Usage:
  npz_pair.py MODEL OUT_DIR --samples N [--seed S] [--dtype float16]

For every graph input of MODEL (initializers excluded) makes N samples of its shape (symbolic
dims become 2), keyed by input name, and writes OUT_DIR/plain/sample_XXX.npz (np.savez) and
OUT_DIR/compressed/sample_XXX.npz (np.savez_compressed) from the same arrays. Values mix a
compressible part (multiples of 1/8 in [-2, 2)) with a random-normal part so that the deflate
streams hold both literals and matches. Float inputs get --dtype (default: the model's type).
Prints one JSON line: {"files": N, "methods": [...zip methods of the compressed members...]}.
"""
import argparse
import json
import os
import zipfile

import numpy as np
import onnx
from onnx import helper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype")
    args = ap.parse_args()

    graph = onnx.load(args.model).graph
    constants = {t.name for t in graph.initializer}
    inputs = []
    for i in graph.input:
        if i.name in constants:
            continue
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in t.shape.dim]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        if args.dtype and dtype.kind == "f":
            dtype = np.dtype(args.dtype)
        inputs.append((i.name, shape, dtype))

    rng = np.random.default_rng(args.seed)
    plain = os.path.join(args.out, "plain")
    compressed = os.path.join(args.out, "compressed")
    os.makedirs(plain, exist_ok=True)
    os.makedirs(compressed, exist_ok=True)
    methods = set()
    for s in range(args.samples):
        arrays = {}
        for name, shape, dtype in inputs:
            n = int(np.prod(shape))
            steps = rng.integers(-16, 16, size=n) / 8.0
            noise = rng.standard_normal(n)
            values = np.where(np.arange(n) % 3 == 0, noise, steps)
            arrays[name] = values.reshape(shape).astype(dtype)
        file = f"sample_{s:03d}.npz"
        np.savez(os.path.join(plain, file), **arrays)
        np.savez_compressed(os.path.join(compressed, file), **arrays)
        with zipfile.ZipFile(os.path.join(compressed, file)) as z:
            methods.update(info.compress_type for info in z.infolist())
    print(json.dumps({"files": args.samples, "methods": sorted(methods)}))


if __name__ == "__main__":
    main()
