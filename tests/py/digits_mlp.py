"""Trains the digits MLP of ../shared/MODELS.md and writes it with its data.

Usage: digits_mlp.py OUT_DIR

Writes, deterministically (fixed seeds, pinned scikit-learn and skl2onnx):
  OUT_DIR/mlp.onnx          MLPClassifier(128, 64) on load_digits() pixels / 16, exported by
                            skl2onnx at opset 17 without ZipMap: `input` f32 [N,64] ->
                            `label` int64 [N], `probabilities` f32 [N,10]
  OUT_DIR/calib.npy         the first 128 rows of the 70 % training split, stacked [128,64]
  OUT_DIR/test/X.npy, y.npy the held-out 30 % split and its labels
  OUT_DIR/accuracy.json     {"sklearn": accuracy of the classifier on the held-out split}
"""
import json
import os
import sys
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

out = sys.argv[1]
os.makedirs(os.path.join(out, "test"), exist_ok=True)
digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=400, random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf.fit(x_train, y_train)
onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, 64]))], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
# onnxruntime 1.31 reads IR <= 13 only; keep the exporter's if it is lower.
onx.ir_version = min(onx.ir_version, 9)
with open(os.path.join(out, "mlp.onnx"), "wb") as f:
    f.write(onx.SerializeToString())
np.save(os.path.join(out, "calib.npy"), x_train[:128])
np.save(os.path.join(out, "test", "X.npy"), x_test)
np.save(os.path.join(out, "test", "y.npy"), y_test)
with open(os.path.join(out, "accuracy.json"), "w") as f:
    json.dump({"sklearn": float(clf.score(x_test, y_test))}, f)
