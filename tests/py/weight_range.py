"""Prints, as JSON, the smallest and largest value of every int8 initializer of a model.

Usage: weight_range.py MODEL.onnx
"""
import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper

m = onnx.load(sys.argv[1])
out = {}
for t in m.graph.initializer:
    if t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) > 1:
        a = numpy_helper.to_array(t)
        out[t.name] = [int(a.min()), int(a.max())]
print(json.dumps(out))
