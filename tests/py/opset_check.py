"""Oracle for the opset upgrade: checker and onnxruntime verdicts on upgraded models.

Reads one JSON object per line from stdin:
    {"case": <test case folder>, "original": <model path>, "upgraded": [<model path>, ...]}
where the case folder holds test_data_set_0/input_*.pb and output_*.pb (the layout of ONNX's node
tests). Prints one JSON object per line:
    {"case", "original": <run verdict>, "original_checker", "upgraded": [{"path", "checker", "run"}, ...]}
A run verdict is "match", "mismatch: ...", or "error: ...". "match" means the outputs equal the
expected ones within the tolerance of ONNX's backend tests (rtol 1e-3, atol 1e-7); when the
original model runs in onnxruntime but does not reproduce the expected outputs, the upgraded model
is compared with the original's outputs instead and the verdict says so ("match (original)").
Upgraded models are run even when onnxruntime refuses the original (deprecated ops, say).
The checker verdict is "" when onnx.checker.check_model(full_check=True) passes; the original's
is reported as "original_checker".
"""
import glob
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

RTOL, ATOL = 1e-3, 1e-7
ort.set_default_logger_severity(4)


def load_value(path, type_proto):
    with open(path, "rb") as f:
        data = f.read()
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(data)
        return numpy_helper.to_list(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(data)
        return numpy_helper.to_optional(proto)
    proto = onnx.TensorProto()
    proto.ParseFromString(data)
    return numpy_helper.to_array(proto)


def graph_inputs(model):
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def load_case(case, model):
    data = os.path.join(case, "test_data_set_0")
    inputs = graph_inputs(model)
    feeds = {}
    for k, path in enumerate(sorted(glob.glob(os.path.join(data, "input_*.pb")), key=index)):
        feeds[inputs[k].name] = load_value(path, inputs[k].type)
    outputs = model.graph.output
    expected = [
        load_value(path, outputs[k].type)
        for k, path in enumerate(sorted(glob.glob(os.path.join(data, "output_*.pb")), key=index))
    ]
    return feeds, expected


def index(path):
    return int(os.path.basename(path).split("_")[1].split(".")[0])


def close(actual, expected):
    """None when equal within tolerance, else a short reason."""
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return "sequence length differs"
        for a, e in zip(actual, expected):
            why = close(a, e)
            if why:
                return why
        return None
    if expected is None:
        return None if actual is None else "expected an empty optional"
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != {expected.shape}"
    if expected.dtype == object or expected.dtype.kind in "SUb":
        return None if np.array_equal(actual, expected) else "values differ"
    try:
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    except AssertionError as e:
        return " ".join(str(e).split())[:300]
    return None


def run(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def compare(outputs, reference):
    if len(outputs) != len(reference):
        return f"{len(outputs)} outputs, expected {len(reference)}"
    for k, (a, e) in enumerate(zip(outputs, reference)):
        why = close(a, e)
        if why:
            return f"output {k}: {why}"
    return None


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        job = json.loads(line)
        result = {"case": job["case"], "original": "", "original_checker": "", "upgraded": []}
        try:
            onnx.checker.check_model(onnx.load(job["original"]), full_check=True)
        except Exception as e:  # noqa: BLE001
            result["original_checker"] = " ".join(str(e).split())[:300] or type(e).__name__
        try:
            feeds, expected = load_case(job["case"], onnx.load(job["original"]))
        except Exception as e:  # noqa: BLE001
            result["original"] = "error: test data: " + " ".join(str(e).split())[:300]
            feeds = expected = None
        original_outputs = None
        if feeds is not None:
            try:
                original_outputs = run(job["original"], feeds)
                why = compare(original_outputs, expected)
                result["original"] = "match" if why is None else f"mismatch: {why}"
            except Exception as e:  # noqa: BLE001 - every failure is a verdict
                result["original"] = "error: " + " ".join(str(e).split())[:300]
        for path in job["upgraded"]:
            verdict = {"path": path, "checker": "", "run": ""}
            try:
                onnx.checker.check_model(onnx.load(path), full_check=True)
            except Exception as e:  # noqa: BLE001
                verdict["checker"] = " ".join(str(e).split())[:300] or type(e).__name__
            if feeds is not None:
                try:
                    outputs = run(path, feeds)
                    if original_outputs is not None and result["original"] != "match":
                        why = compare(outputs, original_outputs)
                        verdict["run"] = "match (original)" if why is None else f"mismatch: {why}"
                    elif original_outputs is None and not expected:
                        verdict["run"] = "ran (nothing expected)"
                    else:
                        why = compare(outputs, expected)
                        verdict["run"] = "match" if why is None else f"mismatch: {why}"
                except Exception as e:  # noqa: BLE001
                    verdict["run"] = "error: " + " ".join(str(e).split())[:300]
            result["upgraded"].append(verdict)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
