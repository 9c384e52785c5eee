"""ONNX Runtime's static quantizer with the recipe bench/quantize.py compares against.

Usage: ort_static.py FLOAT.onnx CALIB OUT.onnx
CALIB is a .npy (the model's single input, fed as one batch) or a folder of .npz samples (one
calibration batch each). The model goes through quant_pre_process first (as the bench does;
without it when that fails), then quantize_static with QDQ, per-channel weights, MinMax,
uint8 activations and int8 weights. Prints nothing; fails on error.
"""
import glob
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

src, calib, out = (os.path.abspath(p) for p in sys.argv[1:4])
if calib.endswith(".npy"):
    name = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    batches = [{name: np.load(calib)}]
else:
    batches = [dict(np.load(f)) for f in sorted(glob.glob(os.path.join(calib, "*.npz")))]
if not batches:
    raise SystemExit(f"no calibration data in {calib}")


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(batches)

    def get_next(self):
        return next(self.it, None)


def run(model):
    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


with tempfile.TemporaryDirectory() as tmp:
    # Both steps write temporary files into the working directory.
    os.chdir(tmp)
    pre = os.path.join(tmp, "pre.onnx")
    try:
        quant_pre_process(src, pre)
        run(pre)
    except Exception as e:  # noqa: BLE001 - the quantizer still runs without pre-processing
        print(f"ort_static.py: without pre-processing ({str(e)[:120]})", file=sys.stderr)
        run(src)
