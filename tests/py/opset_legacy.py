"""Writes hand-made legacy models, one per rewrite of the opset upgrade, as node-test-style cases.

Usage: opset_legacy.py <output folder>

Each case is a folder with model.onnx and test_data_set_0/{input,output}_*.pb. The expected
outputs are what onnxruntime computes for the model at its own (old) opset, so an upgraded model
must reproduce the old behaviour (for deprecated ops, which onnxruntime refuses, one opset
earlier). Prints the case names, one per line.
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

RNG = np.random.default_rng(7)


def vi(name, shape, elem=T.FLOAT):
    return h.make_tensor_value_info(name, elem, shape)


def init(name, values, elem=T.FLOAT):
    values = np.asarray(values)
    return h.make_tensor(name, elem, list(values.shape), values.flatten().tolist())


def model(nodes, inputs, outputs, opset, initializers=(), ir=None, value_info=(), functions=()):
    graph = h.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info))
    imports = [h.make_opsetid("", opset)]
    if functions:
        imports.append(h.make_opsetid("local", 1))
    if ir is None:
        ir = {7: 3, 8: 3, 9: 4, 10: 5, 11: 6, 12: 7}.get(opset, 8)
    return h.make_model(graph, opset_imports=imports, ir_version=ir, functions=list(functions))


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def cases():
    x4 = [1, 3, 5, 6]

    # Slice-1, TopK-1, Upsample-7/9 (opsets 7-9)
    yield "slice_1", model(
        [h.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, 100], axes=[0, 2])],
        [vi("x", [4, 3, 5])], [vi("y", None)], 9), [rand(4, 3, 5)]
    yield "slice_1_no_axes", model(
        [h.make_node("Slice", ["x"], ["y"], starts=[1, -3], ends=[-1, 1000])],
        [vi("x", [4, 5])], [vi("y", None)], 9), [rand(4, 5)]
    yield "topk_1", model(
        [h.make_node("TopK", ["x"], ["v", "i"], k=2, axis=1)],
        [vi("x", [3, 5])], [vi("v", None), vi("i", None, T.INT64)], 9), [rand(3, 5)]
    for mode in ["nearest", "linear"]:
        yield f"upsample_7_{mode}", model(
            [h.make_node("Upsample", ["x"], ["y"], mode=mode, scales=[1.0, 1.0, 2.0, 1.5])],
            [vi("x", x4)], [vi("y", None)], 7), [rand(*x4)]
        yield f"upsample_9_{mode}", model(
            [h.make_node("Upsample", ["x", "s"], ["y"], mode=mode)],
            [vi("x", x4)], [vi("y", None)], 9, [init("s", [1, 1, 3, 1.7])]), [rand(*x4)]
    # Scales computed at run time: Upsample still rounds down.
    yield "upsample_9_computed_scales", model(
        [h.make_node("Add", ["a", "b"], ["s"]), h.make_node("Upsample", ["x", "s"], ["y"])],
        [vi("x", x4)], [vi("y", None)], 9, [init("a", [0.5, 0.5, 1, 1]), init("b", [0.5, 0.5, 1.5, 0.7])]
    ), [rand(*x4)]
    # ImageScaler (experimental), BatchNormalization-7 with spatial, Dropout-7 with an unused mask
    yield "image_scaler_8", model(
        [h.make_node("ImageScaler", ["x"], ["y"], scale=0.5, bias=[1.0, -2.0, 3.0])],
        [vi("x", x4)], [vi("y", None)], 8), [rand(*x4)]
    yield "batchnorm_7_spatial", model(
        [h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=1, epsilon=1e-3)],
        [vi("x", x4)], [vi("y", None)], 7,
        [init("s", [1, 2, 3]), init("b", [0, 1, 0]), init("m", [0.1, 0.2, 0.3]), init("v", [1, 2, 0.5])],
        ir=4), [rand(*x4)]
    yield "dropout_7_unused_mask", model(
        [h.make_node("Dropout", ["x"], ["d", "mask"], ratio=0.3), h.make_node("Relu", ["d"], ["y"])],
        [vi("x", x4)], [vi("y", None)], 7, value_info=[vi("mask", x4)]), [rand(*x4)]

    # Resize-10, Pad-2, Clip-6, Dropout-10, Scatter-9 (opset 10)
    for scales in ([1, 1, 2, 1.5], [1, 1, 0.6, 0.4], [1, 1, 1, 0.5]):
        tag = "_".join(str(s).replace(".", "p") for s in scales[2:])
        for mode in ["nearest", "linear"]:
            yield f"resize_10_{mode}_{tag}", model(
                [h.make_node("Resize", ["x", "s"], ["y"], mode=mode)],
                [vi("x", x4)], [vi("y", None)], 10, [init("s", scales)]), [rand(*x4)]
    yield "pad_2_constant", model(
        [h.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 1, 0, 1], value=1.5)],
        [vi("x", x4)], [vi("y", None)], 10), [rand(*x4)]
    yield "pad_2_reflect", model(
        [h.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="reflect")],
        [vi("x", x4)], [vi("y", None)], 10), [rand(*x4)]
    yield "clip_6", model(
        [h.make_node("Relu", ["x"], ["r"]), h.make_node("Clip", ["r"], ["y"], min=0.2, max=0.9)],
        [vi("x", x4)], [vi("y", None)], 10), [rand(*x4)]
    yield "clip_6_max_only", model(
        [h.make_node("Clip", ["x"], ["y"], max=0.5)], [vi("x", x4)], [vi("y", None)], 10), [rand(*x4)]
    yield "dropout_10_ratio", model(
        [h.make_node("Dropout", ["x"], ["y"], ratio=0.2)], [vi("x", x4)], [vi("y", None)], 10), [rand(*x4)]
    yield "roi_align_10", model(
        [h.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], output_height=2, output_width=3,
                     sampling_ratio=2, spatial_scale=0.5)],
        [vi("x", [1, 2, 8, 8]), vi("rois", [2, 4])], [vi("y", None)], 10,
        [init("idx", [0, 0], T.INT64)]), [rand(1, 2, 8, 8), np.array([[0, 0, 9, 9], [2, 1, 12, 10]], np.float32)]

    # Softmax family, Split, Squeeze, Unsqueeze, reductions (opset 11)
    yield "softmax_11_axis1_3d", model(
        [h.make_node("Softmax", ["x"], ["y"], axis=1)], [vi("x", [2, 3, 4])], [vi("y", None)], 11), [rand(2, 3, 4)]
    yield "logsoftmax_11_default_axis_unknown_rank", model(
        [h.make_node("Relu", ["x"], ["r"]), h.make_node("LogSoftmax", ["r"], ["y"])],
        [vi("x", [2, 3, 2, 2])], [vi("y", None)], 11), [rand(2, 3, 2, 2)]
    yield "hardmax_11_last_axis", model(
        [h.make_node("Hardmax", ["x"], ["y"], axis=2)], [vi("x", [2, 3, 4])], [vi("y", None)], 11), [rand(2, 3, 4)]
    yield "softmax_11_default_axis_2d", model(
        [h.make_node("Softmax", ["x"], ["y"])], [vi("x", [3, 5])], [vi("y", None)], 11), [rand(3, 5)]
    yield "split_11_attr", model(
        [h.make_node("Split", ["x"], ["a", "b"], axis=1, split=[2, 4])],
        [vi("x", [2, 6])], [vi("a", None), vi("b", None)], 11), [rand(2, 6)]
    yield "split_11_even", model(
        [h.make_node("Split", ["x"], ["a", "b", "c"], axis=1)],
        [vi("x", [2, 6])], [vi("a", None), vi("b", None), vi("c", None)], 11), [rand(2, 6)]
    yield "squeeze_unsqueeze_11", model(
        [h.make_node("Squeeze", ["x"], ["s"], axes=[1]), h.make_node("Unsqueeze", ["s"], ["u"], axes=[0, 3]),
         h.make_node("Squeeze", ["u"], ["y"])],
        [vi("x", [3, 1, 4])], [vi("y", None)], 11), [rand(3, 1, 4)]
    reductions = [("ReduceSum", dict(axes=[1], keepdims=0)), ("ReduceMean", dict(axes=[0, 2])),
                  ("ReduceMax", dict()), ("ReduceL2", dict(axes=[-1])), ("ReduceLogSumExp", dict(axes=[1])),
                  ("ReduceProd", dict(axes=[2], keepdims=0)), ("ReduceSumSquare", dict(axes=[0]))]
    for op, attrs in reductions:
        yield f"{op.lower()}_11", model(
            [h.make_node(op, ["x"], ["y"], **attrs)], [vi("x", [2, 3, 4])], [vi("y", None)], 11), [rand(2, 3, 4)]

    # Subgraphs and local functions hold old nodes too.
    then_g = h.make_graph([h.make_node("Unsqueeze", ["x"], ["t"], axes=[0])], "then", [], [vi("t", None)])
    else_g = h.make_graph([h.make_node("ReduceSum", ["x"], ["e"], axes=[0])], "else", [], [vi("e", None)])
    yield "if_11_subgraphs", model(
        [h.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
         h.make_node("Greater", ["total", "zero"], ["cond"]),
         h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("x", [3])], [vi("y", None)], 11, [init("zero", 0.0)]), [rand(3)]
    func = h.make_function("local", "AddAxis", ["a"], ["b"],
                           [h.make_node("Unsqueeze", ["a"], ["b"], axes=[0])],
                           [h.make_opsetid("", 11)])
    yield "function_11", model(
        [h.make_node("AddAxis", ["x"], ["y"], domain="local")],
        [vi("x", [2, 3])], [vi("y", None)], 11, ir=8, functions=[func]), [rand(2, 3)]

    # Opsets 16-18: GridSample's renamed modes, GroupNormalization's per-group scale.
    yield "grid_sample_16_bilinear", model(
        [h.make_node("GridSample", ["x", "grid"], ["y"], mode="bilinear")],
        [vi("x", [1, 2, 4, 5]), vi("grid", [1, 3, 3, 2])], [vi("y", None)], 16),  \
        [rand(1, 2, 4, 5), RNG.uniform(-1, 1, (1, 3, 3, 2)).astype(np.float32)]
    yield "group_normalization_18", model(
        [h.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)],
        [vi("x", [2, 4, 3, 3])], [vi("y", None)], 18,
        [init("s", [1.5, -0.5]), init("b", [0.25, 1.0])]), [rand(2, 4, 3, 3)]
    yield "reducemean_17", model(
        [h.make_node("ReduceMean", ["x"], ["y"], axes=[1])], [vi("x", [2, 3, 4])], [vi("y", None)], 17), [rand(2, 3, 4)]

    # Deprecated ops in models at or after their deprecation.
    yield "upsample_10_deprecated", model(
        [h.make_node("Upsample", ["x", "s"], ["y"])],
        [vi("x", x4)], [vi("y", None)], 10, [init("s", [1, 1, 2, 2])]), [rand(*x4)]
    yield "scatter_11_deprecated", model(
        [h.make_node("Scatter", ["x", "i", "u"], ["y"], axis=1)],
        [vi("x", [2, 4])], [vi("y", None)], 11,
        [init("i", [[1, 3], [0, 2]], T.INT64), init("u", [[5.0, 6.0], [7.0, 8.0]])]), [rand(2, 4)]

    # Refused: mixed nearest rounding, per-activation batch norm, a read Dropout-7 mask.
    yield "refused_resize_10_mixed_nearest", model(
        [h.make_node("Resize", ["x", "s"], ["y"], mode="nearest")],
        [vi("x", x4)], [vi("y", None)], 10, [init("s", [1, 1, 2, 0.6])]), [rand(*x4)]
    yield "refused_batchnorm_7_per_activation", model(
        [h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], spatial=0)],
        [vi("x", [2, 3])], [vi("y", None)], 7,
        [init("s", [1, 2, 3]), init("b", [0, 1, 0]), init("m", [0.1, 0.2, 0.3]), init("v", [1, 2, 0.5])],
        ir=4), [rand(2, 3)]
    yield "refused_dropout_7_mask_read", model(
        [h.make_node("Dropout", ["x"], ["d", "mask"]), h.make_node("Add", ["d", "mask"], ["y"])],
        [vi("x", x4)], [vi("y", None)], 7), [rand(*x4)]


# onnxruntime refuses deprecated ops even at their own opset: the expected outputs of these cases
# come from the same graph one opset earlier.
REFERENCE_OPSET = {"upsample_10_deprecated": 9, "scatter_11_deprecated": 10}


def write_case(folder, name, m, inputs):
    case = os.path.join(folder, name)
    data = os.path.join(case, "test_data_set_0")
    os.makedirs(data, exist_ok=True)
    onnx.save(m, os.path.join(case, "model.onnx"))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for k, v in enumerate(inputs):
        onnx.save_tensor(numpy_helper.from_array(v), os.path.join(data, f"input_{k}.pb"))
    reference = onnx.ModelProto()
    reference.CopyFrom(m)
    if name in REFERENCE_OPSET:
        reference.opset_import[0].version = REFERENCE_OPSET[name]
    try:
        session = ort.InferenceSession(
            reference.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feeds = {i.name: v for i, v in zip(session.get_inputs(), inputs)}
        outputs = session.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - the case stays, without expected outputs
        print(f"{name}: onnxruntime cannot run it: {e}", file=sys.stderr)
        return
    for k, v in enumerate(outputs):
        onnx.save_tensor(numpy_helper.from_array(v), os.path.join(data, f"output_{k}.pb"))


def main():
    folder = sys.argv[1]
    for name, m, inputs in cases():
        write_case(folder, name, m, inputs)
        print(name, flush=True)


if __name__ == "__main__":
    main()
