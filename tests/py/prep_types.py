"""Checks value_info entries written by onnx-ptq's infer_types against ONNX shape inference.

Reads one JSON job per stdin line: {"model": PATH, "names": [NAME...], "dims": {NAME: INT}}
and prints one JSON line per job: {"checked": N, "compared_dims": N, "mismatches": [...]} or
{"error": "..."}. The entries named in "names" are removed from the model's value_info, graph
input dims named in "dims" are pinned to their values, and onnx.shape_inference runs
on the result. Each removed entry that ONNX infers a type for is compared with it: element
type, rank, and every dimension for which both sides give a dim_value. Entries ONNX cannot infer
are not counted in "checked".
"""
import json
import sys

import onnx
from onnx import shape_inference


def check(job):
    model = onnx.load(job["model"])
    names = set(job["names"])
    dims = job.get("dims", {})
    ours = {v.name: v for v in model.graph.value_info if v.name in names}
    missing = sorted(names - set(ours))
    if missing:
        return {"error": f"entries not in the model: {missing[:5]}"}
    kept = [v for v in model.graph.value_info if v.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    for i in model.graph.input:
        for d in i.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                d.dim_value = int(dims[d.dim_param])
    inferred = shape_inference.infer_shapes(model)
    theirs = {v.name: v for v in inferred.graph.value_info}
    checked = 0
    compared = 0
    mismatches = []
    for name, v in ours.items():
        t = theirs.get(name)
        if t is None or not t.type.HasField("tensor_type"):
            continue
        a, b = v.type.tensor_type, t.type.tensor_type
        if b.elem_type == 0:
            continue
        checked += 1
        if a.elem_type != b.elem_type:
            mismatches.append(f"{name}: elem_type {a.elem_type} vs onnx {b.elem_type}")
            continue
        # An entry without a shape claims only its element type (tract could not settle it).
        if not a.HasField("shape") or not b.HasField("shape"):
            continue
        da, db = list(a.shape.dim), list(b.shape.dim)
        if len(da) != len(db):
            mismatches.append(f"{name}: rank {len(da)} vs onnx {len(db)}")
            continue
        for k, (x, y) in enumerate(zip(da, db)):
            if x.HasField("dim_value") and y.HasField("dim_value"):
                compared += 1
                if x.dim_value != y.dim_value:
                    mismatches.append(f"{name}: dim {k} is {x.dim_value} vs onnx {y.dim_value}")
    return {"checked": checked, "compared_dims": compared, "mismatches": mismatches}


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        result = check(json.loads(line))
    except Exception as e:  # noqa: BLE001 - reported to the Rust test
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
