"""Verdicts of the ONNX checker (full_check) and ONNX Runtime on each model path read from stdin.

Prints one JSON object per line: {"path", "checker", "ort"}, each "ok" or the error message.
ONNX Runtime must build a session and run it on zeros (symbolic or negative dims set to 1).
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

TYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def checker(path):
    try:
        onnx.checker.check_model(onnx.load(path), full_check=True)
        return "ok"
    except Exception as e:  # the verdict is the message
        return f"{type(e).__name__}: {e}"


def runtime(path):
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feeds = {
            i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape],
                             TYPES[i.type])
            for i in session.get_inputs()
        }
        session.run(None, feeds)
        return "ok"
    except Exception as e:
        return f"{type(e).__name__}: {e}"


ort.set_default_logger_severity(4)
for line in sys.stdin:
    path = line.strip()
    if path:
        print(json.dumps({"path": path, "checker": checker(path), "ort": runtime(path)}))
