"""ONNX Runtime's own dynamic quantizer, the baseline the dynamic-mode tests compare against.

Usage: ort_dynamic.py FLOAT.onnx OUT.onnx [--per-channel]

Runs onnxruntime.quantization.quantize_dynamic with its defaults (int8 weights, per tensor
unless --per-channel) in a temporary working folder (it writes temporary files there).
"""
import argparse
import os
import tempfile

from onnxruntime.quantization import quantize_dynamic

ap = argparse.ArgumentParser()
ap.add_argument("float_model")
ap.add_argument("out")
ap.add_argument("--per-channel", action="store_true")
args = ap.parse_args()
src, out = os.path.abspath(args.float_model), os.path.abspath(args.out)
with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)
    quantize_dynamic(src, out, per_channel=args.per_channel)
