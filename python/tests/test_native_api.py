"""The native API: the CLI's commands with its flags as keyword arguments."""

import json
import os
import subprocess

import numpy as np
import onnx
import pytest

import onnx_ptq
from onnx_ptq import QuantizationError

from conftest import FIXTURES, REPO, load_samples, run_cli

CNN = FIXTURES / "cnn.onnx"
CNN_CALIB = FIXTURES / "cnn_calib"


@pytest.fixture(scope="module")
def cnn_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "cnn.int8.onnx"
    onnx_ptq.quantize(CNN, out, CNN_CALIB, show_progress=False)
    return out


def test_quantize_returns_the_report_the_cli_writes(cli, tmp_path):
    out = tmp_path / "py.onnx"
    report = onnx_ptq.quantize(CNN, out, CNN_CALIB, method="entropy", show_progress=False)
    by_cli = tmp_path / "cli.onnx"
    run_cli(cli, "quantize", CNN, "--calib", CNN_CALIB, "--method", "entropy", "-o", by_cli,
            "-q", "--report", tmp_path / "report.json")
    assert out.read_bytes() == by_cli.read_bytes()
    expected = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == set(expected)
    for key in ("quantized_ops", "float_nodes", "rewrite", "bytes_after", "calibration_method"):
        assert report[key] == expected[key], key
    assert report["outputs"]["probs"]["sqnr_db"] == pytest.approx(
        expected["outputs"]["probs"]["sqnr_db"]
    )


def test_quantize_reads_a_reader_an_iterable_or_a_path_alike(cnn_int8, tmp_path):
    samples = load_samples(CNN_CALIB)
    from_list = tmp_path / "list.onnx"
    onnx_ptq.quantize(CNN, from_list, samples, show_progress=False)
    from_generator = tmp_path / "generator.onnx"
    onnx_ptq.quantize(CNN, from_generator, (s for s in samples), show_progress=False)
    assert from_list.read_bytes() == cnn_int8.read_bytes()
    assert from_generator.read_bytes() == cnn_int8.read_bytes()


def test_compare_returns_metrics_per_output_and_per_layer(cnn_int8):
    result = onnx_ptq.compare(CNN, cnn_int8, CNN_CALIB, per_layer=True, latency_runs=0)
    report = result["report"]
    assert report["samples"] == 8
    probs = report["outputs"]["probs"]
    for metric in ("sqnr_db", "cosine", "max_abs", "mse"):
        assert metric in probs, sorted(probs)
    assert probs["sqnr_db"] > 10
    assert report["layers"] and all("tensor" in layer for layer in report["layers"])
    assert result["passed"] and result["violations"] == []
    # Bounds: the CLI's exit code 1 is passed == False, with the violation spelled out.
    strict = onnx_ptq.compare(CNN, cnn_int8, load_samples(CNN_CALIB), min_sqnr=200,
                              latency_runs=0)
    assert not strict["passed"]
    assert "sqnr_db" in strict["violation_messages"][0]


def test_compare_writes_the_html_page_of_the_cli(tmp_path, cnn_int8):
    page = tmp_path / "report.html"
    result = onnx_ptq.compare(CNN, cnn_int8, CNN_CALIB, latency_runs=0, html=page)
    text = page.read_text()
    layers = result["report"]["layers"]
    assert layers, "html implies per_layer"
    assert text.count("<title>") - 1 == len(layers), "one bar (with its tooltip) per layer"
    for layer in layers:
        assert layer["tensor"] in text
    assert "default-src 'none'" in text
    # The page is an output: it may not replace an input.
    before = open(cnn_int8, "rb").read()
    with pytest.raises(ValueError, match="html"):
        onnx_ptq.compare(CNN, cnn_int8, CNN_CALIB, latency_runs=0, html=cnn_int8)
    assert open(cnn_int8, "rb").read() == before


def test_calibrate_writes_the_ranges_quantize_reads(tmp_path, cnn_int8):
    ranges = onnx_ptq.calibrate(CNN, CNN_CALIB, tmp_path / "ranges.json", show_progress=False)
    assert ranges["samples"] == 8 and ranges["tensors"]
    assert json.loads((tmp_path / "ranges.json").read_text()) == ranges
    out = tmp_path / "q.onnx"
    report = onnx_ptq.quantize(CNN, out, CNN_CALIB, ranges=tmp_path / "ranges.json",
                               show_progress=False)
    assert report["calibration_seconds"] == 0


def test_dynamic_mode_needs_no_data(tmp_path):
    report = onnx_ptq.quantize(FIXTURES / "mlp.onnx", tmp_path / "q.onnx", mode="dynamic",
                               per_channel=False)
    assert report["mode"] == "dynamic"
    assert onnx.load(str(tmp_path / "q.onnx")).graph.node


@pytest.mark.parametrize(
    "kwargs, flags",
    [
        ({}, []),
        ({"bits": 8, "block": "per-channel", "form": "standard", "algorithm": "rtn"},
         ["--bits", "8", "--block", "per-channel", "--form", "standard", "--algorithm", "rtn"]),
    ],
)
def test_weight_only_mode_matches_the_cli(kwargs, flags, cli, tmp_path):
    model = FIXTURES / "transformer_block.onnx"
    by_cli = tmp_path / "cli.onnx"
    run_cli(cli, "quantize", model, "--mode", "weight-only", *flags, "-o", by_cli, "-q")
    by_python = tmp_path / "python.onnx"
    report = onnx_ptq.quantize(model, by_python, mode="weight-only", show_progress=False,
                               **kwargs)
    assert report["mode"] == "weight_only"  # the report's spelling
    assert by_python.read_bytes() == by_cli.read_bytes()


def test_weight_only_streams_a_model_with_external_data_like_the_cli(cli, tmp_path):
    """A model whose weights are in a side file is read weight by weight and written as it
    goes (lazy load, streamed side file), as by the CLI: the same bytes, model and side file."""
    src = tmp_path / "decoder"
    subprocess.run([os.environ["ONNX_PTQ_PYTHON"], str(REPO / "bench/make_decoder.py"),
                    "--out", str(src), "--hidden", "256", "--layers", "2", "--vocab", "1000"],
                   check=True, capture_output=True)
    model = src / "model.onnx"
    by_cli, by_python = tmp_path / "cli" / "q.onnx", tmp_path / "python" / "q.onnx"
    by_cli.parent.mkdir()
    by_python.parent.mkdir()
    run_cli(cli, "quantize", model, "--mode", "weight-only", "-o", by_cli, "-q")
    report = onnx_ptq.quantize(model, by_python, mode="weight-only", show_progress=False)
    assert report["quantized_ops"].get("MatMul", 0) > 0
    for a, b in [(by_cli, by_python), (by_cli.with_name("q.onnx.data"), by_python.with_name("q.onnx.data"))]:
        assert a.read_bytes() == b.read_bytes(), b
    assert sorted(p.name for p in by_python.parent.iterdir()) == ["q.onnx", "q.onnx.data"]


def test_inspect_and_validate(cnn_int8):
    summary = onnx_ptq.inspect(CNN)
    assert summary["inputs"][0]["name"] == "x"
    checked = onnx_ptq.validate(cnn_int8, dims={"N": 2})
    assert checked["valid"], checked


def test_library_errors_are_quantization_errors(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(QuantizationError, match="broken.onnx"):
        onnx_ptq.quantize(broken, tmp_path / "q.onnx", CNN_CALIB)
    with pytest.raises(QuantizationError, match="no_such_folder"):
        onnx_ptq.quantize(CNN, tmp_path / "q.onnx", tmp_path / "no_such_folder")
    assert issubclass(QuantizationError, Exception)
    assert not (tmp_path / "q.onnx").exists()


def test_argument_errors_are_value_errors(tmp_path):
    out = tmp_path / "q.onnx"
    with pytest.raises(ValueError, match="needs calibration data"):
        onnx_ptq.quantize(CNN, out)
    with pytest.raises(ValueError, match="reduce_range"):
        onnx_ptq.quantize(CNN, out, CNN_CALIB, reduce_range=True)
    with pytest.raises(ValueError, match="unknown range method"):
        onnx_ptq.quantize(CNN, out, CNN_CALIB, method="median")
    with pytest.raises(ValueError, match="min_cosine"):
        onnx_ptq.quantize(CNN, out, CNN_CALIB, min_cosine=2)
    with pytest.raises(ValueError, match="is the input model"):
        onnx_ptq.quantize(CNN, CNN, CNN_CALIB)
    with pytest.raises(ValueError, match="weight-only"):
        onnx_ptq.quantize(CNN, out, CNN_CALIB, bits=8)
    with pytest.raises(ValueError, match="no sample"):
        onnx_ptq.quantize(CNN, out, [])
    with pytest.raises(ValueError, match="not a dict"):
        onnx_ptq.quantize(CNN, out, [np.zeros((1, 3, 32, 32), np.float32)])
    with pytest.raises(TypeError, match="colour"):
        onnx_ptq.quantize(CNN, out, CNN_CALIB, colour="rgb")
    assert not out.exists()


def test_type_stubs_and_marker_are_installed():
    from importlib import resources

    files = resources.files("onnx_ptq")
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("_native.pyi").is_file()
    assert onnx_ptq.__version__
