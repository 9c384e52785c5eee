"""Writes the hand-made models of tests/robustness.rs into OUTDIR.

Usage: make_robustness.py OUTDIR [TILE_REPEATS]

- tile.onnx: x[1, 4] -> Tile(repeats [1, TILE_REPEATS]) -> Relu: a few hundred bytes whose run
  allocates 16 * TILE_REPEATS bytes per Tile output (the issue's 241-byte Tile model).
- tile_calib/sample.npz: one sample for it.
- attention.onnx: x[batch, seq, 8] -> MatMul(x, xT) -> Softmax: memory grows with seq².
- int_div.onnx: a / b on int32 inputs; tract divides zeros by zero (a panic inside it).
- image_model.onnx with images/photo.png; wide_input.onnx, a 100000 x 64 static input.
- empty_batch/sample.npz: a sample of fixtures/cnn.onnx with a batch of 0.
- invalid/*.onnx: models that ONNX Runtime or the ONNX checker refuses, one defect each; the
  listing on stdout is "<file> <keyword our message must contain>".
"""
import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OUT = sys.argv[1]
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    ops = [helper.make_operatorsetid("", opset)]
    ops += [helper.make_operatorsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = 8  # onnxruntime 1.31 refuses the IR version make_model writes
    return m


def save(path, m):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


# The Tile model and a calibration sample for it.
repeats = numpy_helper.from_array(np.array([1, REPEATS], np.int64), "repeats")
save(
    os.path.join(OUT, "tile.onnx"),
    model(
        [
            helper.make_node("Tile", ["x", "repeats"], ["t"], name="huge_tile"),
            helper.make_node("Relu", ["t"], ["y"], name="relu"),
        ],
        [vi("x", [1, 4])],
        [vi("y", None)],
        [repeats],
    ),
)
os.makedirs(os.path.join(OUT, "tile_calib"), exist_ok=True)
np.savez(os.path.join(OUT, "tile_calib", "sample.npz"), x=np.ones((1, 4), np.float32))

# Attention-like scores: [batch, seq, seq].
save(
    os.path.join(OUT, "attention.onnx"),
    model(
        [
            helper.make_node("Transpose", ["x"], ["xt"], name="transpose", perm=[0, 2, 1]),
            helper.make_node("MatMul", ["x", "xt"], ["scores"], name="scores_matmul"),
            helper.make_node("Softmax", ["scores"], ["y"], name="softmax", axis=-1),
        ],
        [vi("x", ["batch", "seq", 8])],
        [vi("y", None)],
    ),
)

# Integer division: the execution check feeds zeros to integer inputs.
I32 = TensorProto.INT32
save(
    os.path.join(OUT, "int_div.onnx"),
    model(
        [helper.make_node("Div", ["a", "b"], ["y"], name="int_div")],
        [vi("a", [1, 4], I32), vi("b", [1, 4], I32)],
        [vi("y", [1, 4], I32)],
    ),
)


def conv_model(domain="", opset=17, strides=(1, 1), x_shape=(1, 3, 8, 8), extra_opsets=()):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], name="conv", domain=domain, strides=list(strides),
        pads=[1, 1, 1, 1],
    )
    return model([node], [vi("x", list(x_shape))], [vi("y", [1, 4, 8, 8])], [w], opset=opset,
                 extra_opsets=extra_opsets)


def relu_model(opset=17, x_shape=(1, 4)):
    return model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x", list(x_shape))],
                 [vi("y", list(x_shape))], opset=opset)


def listed(name, m, keyword):
    save(os.path.join(OUT, "invalid", name + ".onnx"), m)
    print(f"{name}.onnx {keyword}")


listed("conv_custom_domain", conv_model(domain="com.example", extra_opsets=[("com.example", 1)]),
       "com.example")
# Relu-1 has no kernel in ONNX Runtime (the oldest it has is Relu-6).
listed("opset_1", relu_model(opset=1), "opset 1")
listed("opset_99", conv_model(opset=99), "opset 99")
listed(
    "softmax_axis",
    model([helper.make_node("Softmax", ["x"], ["y"], name="softmax", axis=-99)],
          [vi("x", [1, 4])], [vi("y", [1, 4])]),
    "-99",
)
# Neither oracle refuses this one: the checker accepts it and ONNX Runtime reads a negative
# dim as "any size". A size is never negative, though, so validate refuses it (the test
# records the oracles' verdict so that a change in them is seen).
listed("input_dim_negative", relu_model(x_shape=(1, -5)), "-5")
long_w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
long_w.raw_data = np.ones(6, np.float32).tobytes()
listed(
    "raw_data_too_long",
    model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [vi("x", [2, 2])],
          [vi("y", [2, 2])], [long_w]),
    "'w'",
)
listed("conv_strides_0", conv_model(strides=(0, 0)), "strides")
listed(
    "cycle",
    model(
        [
            helper.make_node("Add", ["x", "b"], ["a"], name="first_add"),
            helper.make_node("Relu", ["a"], ["b"], name="loop_relu"),
        ],
        [vi("x", [1, 4])],
        [vi("b", [1, 4])],
    ),
    "cycle",
)
listed(
    "undefined_input",
    model([helper.make_node("Add", ["x", "ghost"], ["y"], name="haunted_add")],
          [vi("x", [1, 4])], [vi("y", [1, 4])]),
    "ghost",
)

# A calibration sample for fixtures/cnn.onnx (x[N, 3, 32, 32]) with an empty batch.
os.makedirs(os.path.join(OUT, "empty_batch"), exist_ok=True)
np.savez(os.path.join(OUT, "empty_batch", "sample.npz"), x=np.zeros((0, 3, 32, 32), np.float32))

# An image-input model with a symbolic size, and one small photo-like image for it.
save(
    os.path.join(OUT, "image_model.onnx"),
    model(
        [helper.make_node("Relu", ["image"], ["y"], name="relu")],
        [vi("image", [1, 3, "height", "width"])],
        [vi("y", None)],
    ),
)
os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
from PIL import Image  # noqa: E402  (only this part needs it)

Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
    os.path.join(OUT, "images", "photo.png")
)

# A static input of 100000 x 64 floats (24.4 MiB) for a MatMul dynamic mode quantizes: without
# data, quantize checks the result on a sample of zeros of that size.
w = numpy_helper.from_array(np.ones((64, 4), np.float32), "w")
save(
    os.path.join(OUT, "wide_input.onnx"),
    model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
        [vi("x", [100000, 64])],
        [vi("y", [100000, 4])],
        [w],
    ),
)
