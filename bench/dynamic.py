"""Dynamic-quantization benchmark: `onnx-ptq quantize --mode dynamic` against onnxruntime's
quantize_dynamic, no calibration data on either side.

Per model (MiniLM-L3 padded to 64 tokens, silero VAD, the digits MLP), three int8 models:
  - onnx-ptq:      `onnx-ptq quantize MODEL --mode dynamic -o OUT -q` (its defaults: int8
                   per-channel weights, uint8 embedding tables, DynamicQuantizeLSTM);
  - ORT:           onnxruntime.quantization.quantize_dynamic(model_input, model_output), its defaults
                   (int8 per-tensor weights);
  - ORT per-chan:  the same with per_channel=True.
Each conversion is timed as a whole process (onnx-ptq and `python -c` running quantize_dynamic,
so both include start-up; the JSON also holds ORT's in-process time of the call alone).
Measured on held-out samples (tests/py/model_data.py, seed 1) against the fp32 model (run with
graph optimizations off, the reference): quality of the int8 model in a fully optimized session
(what deploys; the JSON also has it with optimizations off), i.e. mean over samples of the cosine
(MiniLM output "461", VAD `speech_probs`) or accuracy (digits, over the whole held-out split,
not --held-out), and SQNR; file size; onnxruntime CPU latency (fully optimized session, one
intra-op thread, median of interleaved runs in rotating order on one held-out sample, see
quantize.py latencies); and the kernels of onnxruntime's optimized graph of each model:
fused integer kernels (DynamicQuantizeMatMul, MatMulIntegerToFloat, DynamicQuantizeLSTM,
QAttention) against MatMul/Gemm/LSTM left in float with a constant weight, plain integer ops
left unfused (MatMulInteger, ConvInteger) and activation x activation MatMuls (attention scores,
float in every model).

Usage (after `bash .ci/setup` and `cargo build --release`):
  ~/.cache/onnx-ptq/venv/bin/python bench/dynamic.py [--models minilm vad digits]
      [--held-out 32] [--runs 200] [--bin PATH] [--json out.json]
Not a test: it prints a table.
"""
import argparse
import collections
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import quantize as qb  # noqa: E402 - the static benchmark: data, sessions, latency

ROOT, CACHE = qb.ROOT, qb.CACHE
MODELS = ("minilm", "vad", "digits")
# model_data.py arguments beyond kind/samples/seed: MiniLM at a fixed 64 tokens (padding masked).
DATA_ARGS = {"minilm": ["--pad", "64"]}
TOOLS = ("ours", "ort", "ort_pc")
TOOL_NAMES = {"ours": "onnx-ptq", "ort": "ORT", "ort_pc": "ORT per-chan"}
FUSED = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QAttention"}
INTEGER = {"MatMulInteger", "ConvInteger", "QGemm", "QLinearMatMul", "QLinearConv"}
FLOAT_WEIGHTED = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "LSTM", "Attention"}

ORT_SCRIPT = """
import sys, time
from onnxruntime.quantization import quantize_dynamic
t = time.perf_counter()
quantize_dynamic(sys.argv[1], sys.argv[2], per_channel=sys.argv[3] == "1")
print(time.perf_counter() - t)
"""


def ort_quantize(model, out, per_channel):
    """(whole-process seconds, in-process seconds of quantize_dynamic) in a `python -c`."""
    # Its temporary files (<uuid>.data, shape inference) go to the working directory: a temp one.
    work = tempfile.mkdtemp(dir=os.path.dirname(out))
    try:
        t = time.perf_counter()
        r = qb.run([sys.executable, "-c", ORT_SCRIPT, model, out, "1" if per_channel else "0"], cwd=work)
        return time.perf_counter() - t, float(r.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def references(fp, files, output):
    """fp32 outputs of every held-out sample, graph optimizations off (the reference values)."""
    s = qb.session(fp, False)
    return [s.run([output], dict(np.load(p)))[0] for p in files]


def quality(q, files, output, refs, labels, optimize):
    s = qb.session(q, optimize)
    sig = err = dot = qq = cos_sum = 0.0
    correct = total = 0
    for k, path in enumerate(files):
        (y,) = s.run([output], dict(np.load(path)))
        x = refs[k]
        xd, yd = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        a, b, c = (xd * xd).sum(), (yd * yd).sum(), (xd * yd).sum()
        sig += a; qq += b; dot += c; err += ((xd - yd) ** 2).sum()
        cos_sum += c / np.sqrt(a * b) if a * b > 0 else float(a == b)
        if labels is not None:
            want = np.atleast_1d(np.array(labels[k]))
            correct += int((y.argmax(1) == want).sum()); total += want.size
    out = {"sqnr_db": float(10 * np.log10(sig / err)) if err > 0 else float("inf"),
           "cosine": float(dot / np.sqrt(sig * qq)) if sig * qq > 0 else 1.0,
           "mean_cosine": cos_sum / len(files)}
    if total:
        out["accuracy"] = correct / total
    return out


def kernels(path, tmp):
    """Op histogram of onnxruntime's fully optimized graph and the weighted-op classification."""
    opt = os.path.join(tmp, "optimized.onnx")
    so = qb.ort.SessionOptions()
    so.graph_optimization_level = qb.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.optimized_model_filepath = opt
    qb.ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    g = onnx.load(opt).graph
    const = {i.name for i in g.initializer}
    hist, counts = collections.Counter(), collections.Counter()
    for n in g.node:  # topologically sorted: constant-ness propagates forward
        hist[n.op_type] += 1
        if n.op_type == "Constant" or (n.input and all(not i or i in const for i in n.input)):
            const.update(n.output)
        if n.op_type in FUSED:
            counts["fused"] += 1
        elif n.op_type in INTEGER:
            counts["int_unfused"] += 1
        elif n.op_type in FLOAT_WEIGHTED:
            w = n.input[1] if len(n.input) > 1 else ""
            counts["float_weight" if w in const else "float_act"] += 1
    for f in glob.glob(os.path.join(tmp, "*")):
        os.remove(f)
    return {"ops": dict(sorted(hist.items())), **{k: counts[k] for k in ("fused", "int_unfused", "float_weight", "float_act")}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--held-out", type=int, default=32, help="held-out samples (minilm, vad; digits uses its whole split)")
    ap.add_argument("--runs", type=int, default=200, help="at least this many timed runs per model")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for latency")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target")), "release/onnx-ptq"))
    ap.add_argument("--json")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.json = args.json and os.path.abspath(args.json)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ktmp = os.path.join(tmp, "kernels")
        os.makedirs(ktmp)
        for name in args.models:
            model, kind, output, _classifier = qb.MODELS[name]
            source, n = None, args.held_out
            if kind == "digits":
                digits = os.path.join(tmp, "digits")
                qb.run([sys.executable, os.path.join(ROOT, "tests/py/digits_mlp.py"), digits])
                model, source = os.path.join(digits, "mlp.onnx"), digits
                n = len(np.load(os.path.join(digits, "test", "X.npy")))
            print(f"== {name}", file=sys.stderr)
            work = os.path.join(tmp, name)
            held_dir = os.path.join(work, "held")
            held = qb.make_data(kind, held_dir, n, 1, source, DATA_ARGS.get(name, ()))
            labels_path = os.path.join(held_dir, "labels.json")
            labels = json.load(open(labels_path)) if os.path.exists(labels_path) else None
            refs = references(model, held, output)
            r = {"output": output, "held_out": len(held), "fp32_bytes": os.path.getsize(model),
                 "fp32_kernels": kernels(model, ktmp)}
            if labels is not None:
                r["fp32_accuracy"] = qb.float_accuracy(model, held, output, labels)
            paths = {"ours": os.path.join(work, "ours.onnx"), "ort": os.path.join(work, "ort.onnx"),
                     "ort_pc": os.path.join(work, "ort_pc.onnx")}
            for tool, out in paths.items():
                t = {}
                try:
                    if tool == "ours":
                        start = time.perf_counter()
                        qb.run([args.bin, "quantize", model, "--mode", "dynamic", "-o", out, "-q"])
                        t["convert_s"] = time.perf_counter() - start
                    else:
                        t["convert_s"], t["convert_in_process_s"] = ort_quantize(model, out, tool == "ort_pc")
                    t["quality"] = quality(out, held, output, refs, labels, True)
                    t["quality_opt_off"] = quality(out, held, output, refs, labels, False)
                    t["bytes"] = os.path.getsize(out)
                    t["kernels"] = kernels(out, ktmp)
                except Exception as e:  # noqa: BLE001 - a failed or unloadable model is a result
                    lines = [l for l in str(e).splitlines() if l.strip()]
                    t = {"error": " / ".join(lines[1:3] if len(lines) > 1 else lines)[:200]}
                r[tool] = t
            ok = [tool for tool in TOOLS if "error" not in r[tool]]
            lat = qb.latencies([model] + [paths[tool] for tool in ok], dict(np.load(held[0])), args.runs, args.threads)
            r["fp32_ms"] = lat[0] * 1e3
            for tool, s in zip(ok, lat[1:]):
                r[tool]["ms"] = s * 1e3
            results[name] = r
            shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def kernel_cell(k):
    cell = f"{k['fused']} fused, {k['float_weight']} float-W"
    if k["int_unfused"]:
        cell += f", {k['int_unfused']} int unfused"
    return cell + f" (+{k['float_act']} act x act)" if k["float_act"] else cell


def print_table(results):
    head = ("model", "tool", "quality", "SQNR dB", "MB (x fp32)", "ms (x fp32)", "convert s", "kernels")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        acc = r.get("fp32_accuracy")
        print(f"| {name} | fp32 | {f'acc {acc:.4f}' if acc is not None else ''} | | {r['fp32_bytes'] / 1e6:.2f} (1) "
              f"| {r['fp32_ms']:.3f} (1) | | {kernel_cell(r['fp32_kernels'])} |")
        for tool in TOOLS:
            t = r[tool]
            if "error" in t:
                print(f"| {name} | {TOOL_NAMES[tool]} | failed: {t['error']} |" + " |" * 5)
                continue
            q = t["quality"]
            qual = f"acc {q['accuracy']:.4f}" if "accuracy" in q else f"cos {q['mean_cosine']:.5f}"
            conv = f"{t['convert_s']:.3f}"
            if "convert_in_process_s" in t:
                conv += f" ({t['convert_in_process_s']:.3f} in-proc)"
            print("| " + " | ".join([
                name, TOOL_NAMES[tool], qual, f"{q['sqnr_db']:.2f}",
                f"{t['bytes'] / 1e6:.2f} ({t['bytes'] / r['fp32_bytes']:.2f})",
                f"{t['ms']:.3f} ({t['ms'] / r['fp32_ms']:.2f})", conv, kernel_cell(t["kernels"]),
            ]) + " |")


if __name__ == "__main__":
    main()
