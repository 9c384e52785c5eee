"""Oracle verdicts on each model path read from stdin (one per line).

Prints one JSON object per line: {"path", "ok", "error"}. The verdict is onnx.checker's
(full_check). With --run, a model the checker accepts must also load and run in onnxruntime on
zero inputs (symbolic dims set to 1): that catches what only fails at execution, such as Q/DQ
parameter shapes the checker does not compare.
"""
import json
import sys

import numpy as np
import onnx

RUN = "--run" in sys.argv[1:]


NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


def run_in_onnxruntime(path, model):
    if any(n.domain not in STANDARD_DOMAINS for n in model.graph.node):
        return  # onnxruntime has no kernels for custom domains: the checker's verdict stands
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = np.zeros(shape, dtype=NUMPY_TYPES[i.type])
    session.run(None, feeds)


for line in sys.stdin:
    path = line.strip()
    if not path:
        continue
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        if RUN:
            run_in_onnxruntime(path, model)
        verdict = {"path": path, "ok": True, "error": ""}
    except Exception as e:  # noqa: BLE001 - every failure is a verdict
        verdict = {"path": path, "ok": False, "error": str(e).replace("\n", " ")[:500]}
    print(json.dumps(verdict), flush=True)
