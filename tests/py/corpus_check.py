"""Checks every model of the corpus manifest in ONNX Runtime on its own generated data.

Usage: corpus_check.py MANIFEST [NAME ...] [--samples N]

For each entry (or only the NAMEs given): the model file exists under $ONNX_PTQ_CACHE/models,
its opset, float16 use and control-flow ops match the manifest, its non-initializer inputs are
exactly the manifest's (names and dtypes), whether the float file passes
onnx.checker.check_model(full_check=True) (printed, not fatal), corpus_data.py writes N (default 2) samples into a
temporary folder, and the float model runs in ONNX Runtime on each of them with finite outputs.
Prints one line per model (name, opset, inputs, mean run ms, output shapes and ranges) and exits
non-zero if any model fails.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus_data  # noqa: E402


def subgraph_ops(graph, acc):
    import onnx

    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                acc.add(n.op_type)
                subgraph_ops(a.g, acc)
            elif a.type == onnx.AttributeProto.GRAPHS:
                acc.add(n.op_type)
                for g in a.graphs:
                    subgraph_ops(g, acc)
    return acc


def uses_fp16(graph):
    import onnx

    f16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == f16 for t in graph.initializer):
        return True
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f16:
                return True
            if a.type == onnx.AttributeProto.GRAPH and uses_fp16(a.g):
                return True
    return False


def check(entry, samples):
    import onnx
    import onnxruntime as ort

    path = os.path.join(corpus_data.MODELS, entry["path"])
    if not os.path.isfile(path):
        raise RuntimeError(f"missing {path} (run .ci/setup)")
    model = onnx.load(path)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    problems = []
    if opset != entry["opset"]:
        problems.append(f"opset {opset}, manifest {entry['opset']}")
    if uses_fp16(model.graph) != entry["fp16"]:
        problems.append(f"fp16 {not entry['fp16']}, manifest {entry['fp16']}")
    subs = sorted(subgraph_ops(model.graph, set()))
    if subs != sorted(entry["subgraphs"]):
        problems.append(f"subgraphs {subs}, manifest {entry['subgraphs']}")
    inits = {t.name for t in model.graph.initializer}
    inputs = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
              for i in model.graph.input if i.name not in inits}
    want = {k: v["dtype"] for k, v in entry["inputs"].items()}
    if inputs != want:
        problems.append(f"inputs {inputs}, manifest {want}")
    if problems:
        raise RuntimeError("; ".join(problems))
    try:  # informational: a shipped model may fail it and still run (slanet_plus)
        onnx.checker.check_model(model, full_check=True)
        checker = "checker ok"
    except Exception:  # noqa: BLE001
        checker = "checker FAILS on the float file"
    del model

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    stats = []
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = corpus_data.write_samples(entry, tmp, samples, seed=0)
        gen_s = time.perf_counter() - t0
        for f in files:
            with np.load(f) as z:
                feed = {k: z[k] for k in z.files}
            t0 = time.perf_counter()
            outs = sess.run(None, feed)
            times.append((time.perf_counter() - t0) * 1000)
            for o, v in zip(sess.get_outputs(), outs):
                v = np.asarray(v)
                if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                    raise RuntimeError(f"output {o.name} has non-finite values on {os.path.basename(f)}")
            stats = [(o.name, np.asarray(v)) for o, v in zip(sess.get_outputs(), outs)]
    out_text = ", ".join(
        f"{n[:24]}{list(v.shape)}[{float(v.min()):.3g},{float(v.max()):.3g}]" if v.size and v.dtype.kind in "fiu"
        else f"{n[:24]}{list(v.shape)}" for n, v in stats[:4])
    in_text = " ".join(f"{k}:{v['dtype']}{v['shape']}" for k, v in entry["inputs"].items())
    return (f"opset {opset:2d}  {in_text}  run {np.mean(times):.1f} ms  data {gen_s:.2f} s  {checker}"
            f"  -> {out_text}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("names", nargs="*")
    ap.add_argument("--samples", type=int, default=2)
    args = ap.parse_args()
    with open(args.manifest) as f:
        entries = json.load(f)
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate names in the manifest")
    unknown = set(args.names) - set(names)
    if unknown:
        raise SystemExit(f"not in the manifest: {sorted(unknown)}")
    failed = []
    for e in entries:
        if args.names and e["name"] not in args.names:
            continue
        try:
            line = check(e, args.samples)
            print(f"ok    {e['name']:<26} {line}", flush=True)
        except Exception as ex:  # noqa: BLE001 - every model is reported, then the exit code says
            failed.append(e["name"])
            print(f"FAIL  {e['name']:<26} {type(ex).__name__}: {ex}", flush=True)
            if os.environ.get("CORPUS_CHECK_TRACEBACK"):
                traceback.print_exc()
    checked = len(args.names) if args.names else len(entries)
    print(f"{checked - len(failed)} passed, {len(failed)} failed")
    if failed:
        print("failed: " + " ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
