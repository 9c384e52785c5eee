"""ONNX Runtime's own weight-only quantizer, the baseline the weight-only tests compare with.

Usage: ort_nbits.py FLOAT.onnx OUT.onnx [--bits 4] [--block 32] [--asymmetric]

MatMulNBitsQuantizer with its default algorithm (round to nearest), symmetric unless
--asymmetric, MatMulNBits output (QOperator), MatMul only (its defaults leave Gather tables
float).
"""
import argparse
import os
import tempfile

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

ap = argparse.ArgumentParser()
ap.add_argument("float_model")
ap.add_argument("out")
ap.add_argument("--bits", type=int, default=4)
ap.add_argument("--block", type=int, default=32)
ap.add_argument("--asymmetric", action="store_true")
args = ap.parse_args()
src, out = os.path.abspath(args.float_model), os.path.abspath(args.out)
with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)
    q = MatMulNBitsQuantizer(onnx.load(src), bits=args.bits, block_size=args.block,
                             is_symmetric=not args.asymmetric)
    q.process()
    onnx.save_model(q.model.model, out)
