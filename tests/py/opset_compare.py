"""Compares an upgraded model with its original in onnxruntime on a random input.

Reads one JSON object per line from stdin: {"original", "upgraded", "shape"}, where shape is the
concrete shape of the model's single float input (null: its declared shape, symbolic dims 1). Prints one JSON object per line:
{"upgraded", "checker": "" or the ONNX checker's (full_check) error, "max_abs_diff": float or
null, "error": "" or what failed}.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

ort.set_default_logger_severity(4)


def session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(path, x):
    s = session(path)
    (name,) = [i.name for i in s.get_inputs()]
    return s.run(None, {name: x})


def declared_shape(path):
    (i,) = session(path).get_inputs()
    return [d if isinstance(d, int) else 1 for d in i.shape]


for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    verdict = {"upgraded": job["upgraded"], "checker": "", "max_abs_diff": None, "error": ""}
    try:
        onnx.checker.check_model(onnx.load(job["upgraded"]), full_check=True)
    except Exception as e:  # noqa: BLE001 - every failure is a verdict
        verdict["checker"] = " ".join(str(e).split())[:300] or type(e).__name__
    try:
        shape = job.get("shape") or declared_shape(job["original"])
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        original = run(job["original"], x)
        upgraded = run(job["upgraded"], x)
        if len(original) != len(upgraded):
            raise ValueError(f"{len(upgraded)} outputs instead of {len(original)}")
        diff = 0.0
        for a, b in zip(original, upgraded):
            if a.shape != b.shape:
                raise ValueError(f"output shape {b.shape} instead of {a.shape}")
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
        verdict["max_abs_diff"] = diff
    except Exception as e:  # noqa: BLE001
        verdict["error"] = " ".join(str(e).split())[:300]
    print(json.dumps(verdict), flush=True)
