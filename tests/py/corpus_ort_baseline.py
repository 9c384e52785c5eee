"""What ONNX Runtime's own static quantizer makes of each corpus model: a reference for the corpus test.

Usage: corpus_ort_baseline.py MANIFEST [NAME ...] [--calib N] [--held-out M] [--per-tensor]

For each entry: N calibration samples (seed 0) and M held-out samples (seed 1) from
corpus_data.py; onnxruntime.quantization.quantize_static (QDQ, int8 activations and weights,
per-channel unless --per-tensor, MinMax); onnx.checker.check_model(full_check=True) on the result;
the result run in ONNX Runtime on the held-out samples; SQNR in dB of every float output against
the float model (10 log10(sum ref^2 / sum (ref - q)^2), over all held-out samples; the lowest
output is printed). One line per model; a model ONNX Runtime's quantizer refuses or breaks is
reported, not fatal. Exits 0.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus_data  # noqa: E402


def run_entry(entry, n_calib, n_held, per_channel):
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    path = os.path.join(corpus_data.MODELS, entry["path"])
    calib = [corpus_data.make_sample(entry, 0, i) for i in range(n_calib)]
    held = [corpus_data.make_sample(entry, 1, i) for i in range(n_held)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref_sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "q.onnx")
        t0 = time.perf_counter()
        cwd = os.getcwd()
        os.chdir(tmp)  # the quantizer leaves augmented models in the working folder
        try:
            quantize_static(path, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"CalibTensorRangeSymmetric": False})
        finally:
            os.chdir(cwd)
        q_s = time.perf_counter() - t0
        qm = onnx.load(out)
        n_q = sum(1 for n in qm.graph.node if n.op_type == "QuantizeLinear")
        try:
            onnx.checker.check_model(qm, full_check=True)
            checker = "ok"
        except Exception as e:  # noqa: BLE001
            checker = "FAIL " + str(e).splitlines()[0][:80]
        q_sess = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
        num, den = {}, {}
        for s in held:
            ref = ref_sess.run(None, s)
            got = q_sess.run(None, s)
            for o, r, g in zip(ref_sess.get_outputs(), ref, got):
                r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
                if r.dtype.kind != "f" or r.shape != g.shape:
                    continue
                num[o.name] = num.get(o.name, 0) + float((r ** 2).sum())
                den[o.name] = den.get(o.name, 0) + float(((r - g) ** 2).sum())
        sqnr = {k: 10 * np.log10(num[k] / den[k]) if den[k] > 0 else float("inf") for k in num}
        worst = min(sqnr.values()) if sqnr else float("nan")
        size = os.path.getsize(out)
    return (f"{os.path.getsize(path) / 1e6:6.1f} -> {size / 1e6:6.1f} MB  {n_q:4d} Q  checker {checker}  "
            f"quantize {q_s:5.1f} s  SQNR min {worst:6.1f} dB  "
            + " ".join(f"{k[:16]}={v:.1f}" for k, v in list(sqnr.items())[:3]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("names", nargs="*")
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--per-tensor", action="store_true")
    args = ap.parse_args()
    with open(args.manifest) as f:
        entries = json.load(f)
    for e in entries:
        if args.names and e["name"] not in args.names:
            continue
        try:
            line = run_entry(e, args.calib, args.held_out, not args.per_tensor)
            print(f"ok    {e['name']:<26} {line}", flush=True)
        except Exception as ex:  # noqa: BLE001 - a reference run: every model gets its line
            print(f"FAIL  {e['name']:<26} {type(ex).__name__}: {str(ex).splitlines()[0][:200] if str(ex) else ''}",
                  flush=True)


if __name__ == "__main__":
    main()
