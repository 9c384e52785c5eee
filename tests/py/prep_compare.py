"""Compares a model before and after a preparation pass in onnxruntime.

Reads one JSON job per stdin line: {"before": PATH, "after": PATH, "dims": {NAME: INT}, "seed": INT}
and prints one JSON line per job, in order:
  {"outputs": [{"name": str, "max_abs": float, "scale": float}, ...]}  or  {"error": "..."}
Both models run with all graph optimizations off on the same random inputs: normal(0, 1) for
float inputs, zeros for integer ones; symbolic dims take their value from "dims" (default 1, also for unknown dims).
Per output, max_abs is max |before - after| and scale is max |before|.
Output names, shapes and element types must match, or the job reports an error.
"""
import json
import sys

import numpy as np
import onnxruntime as ort

TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def session(path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def compare(job):
    before, after = session(job["before"]), session(job["after"])
    dims = job.get("dims", {})
    rng = np.random.default_rng(job.get("seed", 0))
    feeds = {}
    for i in before.get_inputs():
        shape = [
            d if isinstance(d, int) and d >= 0 else int(dims.get(d, 1)) if isinstance(d, str) else 1
            for d in i.shape
        ]
        dtype = TYPES[i.type]
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[i.name] = np.zeros(shape, dtype=dtype)
    names = [o.name for o in before.get_outputs()]
    after_names = [o.name for o in after.get_outputs()]
    if names != after_names:
        return {"error": f"outputs differ: {names} vs {after_names}"}
    ra = before.run(None, feeds)
    rb = after.run(None, feeds)
    results = []
    for name, a, b in zip(names, ra, rb):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return {"error": f"output {name}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"}
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
        scale = float(np.max(np.abs(a64))) if a.size else 0.0
        results.append({"name": name, "max_abs": diff, "scale": scale})
    return {"outputs": results}


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        result = compare(json.loads(line))
    except Exception as e:  # noqa: BLE001 - reported to the Rust test
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
