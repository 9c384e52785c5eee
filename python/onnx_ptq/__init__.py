"""onnx-ptq: post-training int8 quantization of ONNX models, calibrated in tract.

Two APIs over the same Rust library as the ``onnx-ptq`` command line, with byte-identical
results for the same data and settings:

- ONNX Runtime's: :func:`quantize_static` and :func:`quantize_dynamic` take the arguments of
  ``onnxruntime.quantization.quantize_static``/``quantize_dynamic`` (names, meanings, enums).
  A setting onnx-ptq cannot honour raises ``ValueError``; nothing is silently ignored.
- the native one, the CLI's commands with its flags as keyword arguments and its defaults:
  :func:`quantize`, :func:`calibrate`, :func:`compare`, :func:`inspect`, :func:`validate`.

Data (``calibration_data_reader``, ``data``) is a path the CLI accepts (a folder of ``.npz``,
``.npy``, images, ONNX test data...), or an ONNX Runtime ``CalibrationDataReader`` (any object
whose ``get_next()`` returns a dict of input name to numpy array, then ``None``), or an iterable
of such dicts. Samples are streamed: each is written as it arrives to a temporary folder of
``.npz`` files (removed afterwards), which the library then reads like the CLI's ``--calib``.

Errors of the library raise :class:`QuantizationError` with its message; wrong arguments raise
``ValueError``. Ctrl-C raises ``KeyboardInterrupt`` promptly and leaves no output file (models are
written atomically, only once everything succeeded).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, Union

import numpy as np

from . import _native
from ._native import QuantizationError

__version__: str = _native.__version__

__all__ = [
    "QuantizationError",
    "calibrate",
    "compare",
    "inspect",
    "quantize",
    "quantize_dynamic",
    "quantize_static",
    "validate",
]

PathLike = Union[str, "os.PathLike[str]"]

# ---------------------------------------------------------------------------------------------
# Data: paths pass through; readers and iterables are spooled to a folder of .npz files.
# ---------------------------------------------------------------------------------------------

_READER = "the calibration data reader"


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _samples(data: Any) -> Iterator[Any]:
    """The samples of an ONNX Runtime reader (``get_next()`` until ``None``) or an iterable."""
    get_next = getattr(data, "get_next", None)
    if callable(get_next):
        return iter(get_next, None)
    if isinstance(data, Mapping):
        raise ValueError(
            "data: a single dict is not a data source; pass a list of dicts (one per sample), "
            "an iterable or a CalibrationDataReader"
        )
    try:
        return iter(data)
    except TypeError:
        raise ValueError(
            f"data: expected a path, a CalibrationDataReader (with get_next()) or an iterable "
            f"of dicts of numpy arrays, got {type(data).__name__}"
        ) from None


def _write_npz(path: str, sample: Mapping[str, Any]) -> None:
    """What ``np.savez(path, **sample)`` writes (stored zip of ``name.npy``), for any key."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, value in sample.items():
            array = np.asarray(value)
            if not array.flags.c_contiguous:
                array = array.copy(order="C")
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)


# Sample file names sort in reader order up to this many samples.
_MAX_SAMPLES = 1_000_000


def _spool(data: Any, folder: str) -> int:
    n = 0
    for i, sample in enumerate(_samples(data)):
        if i >= _MAX_SAMPLES:
            raise ValueError(f"{_READER} gave more than {_MAX_SAMPLES} samples")
        if not isinstance(sample, Mapping):
            raise ValueError(
                f"sample {i} of {_READER} is a {type(sample).__name__}, not a dict of input "
                f"name to numpy array"
            )
        bad = [k for k in sample if not isinstance(k, str)]
        if bad:
            raise ValueError(f"sample {i} of {_READER}: keys must be input names, got {bad[0]!r}")
        try:
            _write_npz(os.path.join(folder, f"sample_{i:06d}.npz"), sample)
        except ValueError as e:  # object arrays, for instance
            raise ValueError(f"sample {i} of {_READER}: {e}") from None
        n += 1
    return n


def _relabel(message: str, folder: str) -> str:
    """Names a spooled sample by its position in the reader instead of its temporary file."""
    prefix = re.escape(os.path.join(folder, ""))
    message = re.sub(
        prefix + r"sample_(\d+)\.npz",
        lambda m: f"sample {int(m.group(1))} of {_READER}",
        message,
    )
    return message.replace(folder, _READER)


@contextlib.contextmanager
def _data_path(data: Any) -> Iterator[Optional[str]]:
    """A path the library can read ``data`` from, for the duration of the block."""
    if data is None or _is_path(data):
        yield None if data is None else os.fspath(data)
        return
    folder = tempfile.mkdtemp(prefix="onnx-ptq-samples-")
    try:
        if _spool(data, folder) == 0:
            raise ValueError(f"{_READER} gave no sample")
        try:
            yield folder
        except QuantizationError as e:
            raise QuantizationError(_relabel(str(e), folder)) from None
        except ValueError as e:
            raise ValueError(_relabel(str(e), folder)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _model_arg(model: Any, what: str) -> Union[str, bytes]:
    """A path as a string, or an ``onnx.ModelProto`` (anything with ``SerializeToString``)."""
    if _is_path(model):
        return os.fspath(model)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    serialize = getattr(model, "SerializeToString", None)
    if callable(serialize):
        return serialize()
    raise ValueError(f"{what}: expected a path or an onnx.ModelProto, got {type(model).__name__}")


def _loads(text: str) -> dict[str, Any]:
    return json.loads(text)


# ---------------------------------------------------------------------------------------------
# The native API: the CLI's commands, flags as keyword arguments, same defaults.
# ---------------------------------------------------------------------------------------------

_DATA_OPTIONS = (
    "data_kind",
    "samples",
    "preset",
    "size",
    "resize",
    "channels",
    "scale",
    "mean",
    "std",
    "layout",
)


def _data_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_DATA_OPTIONS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r} (data options: {', '.join(_DATA_OPTIONS)})"
        )
    out = {k: v for k, v in options.items() if v is not None}
    if isinstance(out.get("size"), str):
        w, _, h = out["size"].lower().partition("x")
        try:
            out["size"] = [int(w), int(h)]
        except ValueError:
            raise ValueError(f"size: {options['size']!r} is not WIDTHxHEIGHT") from None
    for key in ("mean", "std"):
        if key in out:
            out[key] = [float(v) for v in out[key]]
    return out


def _calibration_options(
    method: str, percentile: float, bins: Optional[int], activations: str,
    threads: Optional[int], show_progress: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": method,
        "percentile": float(percentile),
        "activations": activations,
        "threads": threads,
        "progress": bool(show_progress),
    }
    if bins is not None:
        out["bins"] = int(bins)
    return out


def _bounds(
    min_sqnr: Optional[float], min_cosine: Optional[float], max_top1_drop: Optional[float],
    bound_outputs: Iterable[str],
) -> dict[str, Any]:
    return {
        "min_sqnr": min_sqnr,
        "min_cosine": min_cosine,
        "max_top1_drop": max_top1_drop,
        "bound_outputs": _names(bound_outputs, "bound_outputs"),
    }


def _names(values: Optional[Iterable[str]], what: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        raise ValueError(f"{what}: expected a list of names, got the string {values!r}")
    out = list(values)
    for v in out:
        if not isinstance(v, str):
            raise ValueError(f"{what}: expected names (strings), got {v!r}")
    return out


def quantize(
    model: Any,
    output: PathLike,
    data: Any = None,
    *,
    mode: str = "static",
    method: str = "minmax",
    percentile: float = 99.999,
    bins: Optional[int] = None,
    activations: str = "u8",
    per_channel: bool = True,
    equalize: Optional[bool] = None,
    exclude_nodes: Iterable[str] = (),
    exclude_op_types: Iterable[str] = (),
    ranges: Optional[PathLike] = None,
    overrides: Union[None, PathLike, Mapping[str, Mapping[str, Any]]] = None,
    compare_samples: int = 8,
    min_sqnr: Optional[float] = None,
    min_cosine: Optional[float] = None,
    max_top1_drop: Optional[float] = None,
    bound_outputs: Iterable[str] = (),
    held_out: Optional[int] = None,
    allow_int16: bool = False,
    reduce_range: bool = False,
    bits: int = 4,
    table_bits: int = 8,
    block: Union[int, str] = 32,
    asymmetric: bool = False,
    algorithm: Optional[str] = None,
    form: str = "onnxruntime",
    external_data: bool = False,
    threads: Optional[int] = None,
    show_progress: bool = True,
    **data_options: Any,
) -> dict[str, Any]:
    """``onnx-ptq quantize MODEL --calib DATA -o OUTPUT``: quantizes, validates, writes ``output``
    atomically, and returns the summary as a dict (the JSON of ``--report``).

    Keyword arguments are the CLI's flags (``per_channel=False`` is ``--per-tensor``,
    ``equalize=True``/``False`` is ``--equalize``/``--no-equalize`` (``None``, the default,
    equalizes exactly when weights are per tensor), ``bound_outputs`` is ``--bound-output``,
    ``overrides`` the overrides file's dict or path);
    ``data_options`` are ``data_kind``, ``samples``, ``preset``, ``size`` ("WxH" or (w, h)),
    ``resize``, ``channels``, ``scale``, ``mean``, ``std``, ``layout``. ``mode="dynamic"`` and
    ``mode="weight-only"`` need no data; ``bits``, ``table_bits``, ``block`` (or
    "per-channel"), ``asymmetric``, ``algorithm`` ("gptq", "clip", "rtn") and ``form``
    ("onnxruntime", "standard") are weight-only mode's. ``external_data=True`` moves tensors of 1 KiB and more to ``OUTPUT.data`` (ONNX
    Runtime's ``use_external_data_format``). With a bound that cannot be met, the best model is still written and
    ``report["accuracy"]["met"]`` is False (the CLI's exit code 1).
    """
    if overrides is not None and _is_path(overrides):
        with open(overrides, encoding="utf-8") as f:
            overrides = json.load(f)
    options: dict[str, Any] = {
        "mode": mode,
        "weight_only": {
            "bits": int(bits),
            "table_bits": int(table_bits),
            "block": block,
            "asymmetric": bool(asymmetric),
            "algorithm": algorithm,
            "form": form,
        },
        "reduce_range": bool(reduce_range),
        "calibration": _calibration_options(
            method, percentile, bins, activations, threads, show_progress
        ),
        "data": _data_options(data_options),
        "ranges": None if ranges is None else os.fspath(ranges),
        "per_channel": bool(per_channel),
        "equalize": None if equalize is None else bool(equalize),
        "exclude_nodes": _names(exclude_nodes, "exclude_nodes"),
        "exclude_op_types": _names(exclude_op_types, "exclude_op_types"),
        "overrides": dict(overrides or {}),
        "compare_samples": int(compare_samples),
        "bounds": _bounds(min_sqnr, min_cosine, max_top1_drop, bound_outputs),
        "held_out": held_out,
        "allow_int16": bool(allow_int16),
        "external_data": bool(external_data),
    }
    return _quantize(model, output, data, options)


def _quantize(model: Any, output: PathLike, data: Any, options: dict[str, Any]) -> dict[str, Any]:
    model_arg = _model_arg(model, "model")
    with _data_path(data) as path:
        report = _native.quantize(model_arg, os.fspath(output), path, json.dumps(options))
    return _loads(report)


def calibrate(
    model: Any,
    data: Any,
    output: Optional[PathLike] = None,
    *,
    method: str = "minmax",
    percentile: float = 99.999,
    bins: Optional[int] = None,
    activations: str = "u8",
    threads: Optional[int] = None,
    show_progress: bool = True,
    **data_options: Any,
) -> dict[str, Any]:
    """``onnx-ptq calibrate MODEL --calib DATA -o OUTPUT``: each float tensor's range. Writes the
    ranges JSON to ``output`` when given (``quantize(..., ranges=output)`` reads it back) and
    returns it as a dict."""
    options = {
        "calibration": _calibration_options(
            method, percentile, bins, activations, threads, show_progress
        ),
        "data": _data_options(data_options),
    }
    model_arg = _model_arg(model, "model")
    out = None if output is None else os.fspath(output)
    with _data_path(data) as path:
        if path is None:
            raise ValueError("calibrate needs data")
        ranges = _native.calibrate(model_arg, path, out, json.dumps(options))
    return _loads(ranges)


def compare(
    float_model: Any,
    int8_model: Any,
    data: Any,
    *,
    per_layer: bool = False,
    latency_runs: int = 5,
    min_sqnr: Optional[float] = None,
    min_cosine: Optional[float] = None,
    max_top1_drop: Optional[float] = None,
    bound_outputs: Iterable[str] = (),
    html: Optional[Union[str, os.PathLike]] = None,
    **data_options: Any,
) -> dict[str, Any]:
    """``onnx-ptq compare FLOAT INT8 --data DATA``: runs both models in tract on every sample.

    With ``html``, also writes the self-contained page of ``--html`` there (per-layer SQNR
    chart in graph order, histograms of the worst layers; implies ``per_layer``).

    Returns the JSON of ``--json``: ``report["outputs"]`` has the metrics of every output (max
    and mean absolute error, relative error, MSE, SQNR, cosine, top-1/top-5 for class scores),
    ``report["layers"]`` (with ``per_layer=True``) every quantized tensor's, worst first; with
    bounds, ``violations`` and ``passed`` (the CLI's exit code 1 is ``passed == False``).
    """
    options = {
        "data": _data_options(data_options),
        "per_layer": bool(per_layer),
        "latency_runs": int(latency_runs),
        "bounds": _bounds(min_sqnr, min_cosine, max_top1_drop, bound_outputs),
    }
    a = _model_arg(float_model, "float_model")
    b = _model_arg(int8_model, "int8_model")
    with _data_path(data) as path:
        if path is None:
            raise ValueError("compare needs data")
        result = _native.compare(
            a, b, path, None if html is None else os.fspath(html), json.dumps(options)
        )
    return _loads(result)


def inspect(model: Any) -> dict[str, Any]:
    """``onnx-ptq inspect MODEL --json``: metadata, inputs/outputs, ops and parameters."""
    return _loads(_native.inspect(_model_arg(model, "model")))


def validate(
    model: Any,
    *,
    dims: Optional[Mapping[str, int]] = None,
    default_dim: int = 1,
    execute: bool = True,
) -> dict[str, Any]:
    """``onnx-ptq validate MODEL --json``: structural checks, then one run in tract (unless
    ``execute=False``, the CLI's ``--no-exec``) with symbolic dims from ``dims``."""
    options = {"dims": dict(dims or {}), "default_dim": int(default_dim), "execute": bool(execute)}
    return _loads(_native.validate(_model_arg(model, "model"), json.dumps(options)))


# ---------------------------------------------------------------------------------------------
# ONNX Runtime's API. Enums are compared by name, so onnxruntime need not be imported.
# ---------------------------------------------------------------------------------------------


def _enum_name(value: Any, what: str, choices: Iterable[str]) -> str:
    """The canonical spelling (from ``choices``) of an enum member or a string, any case."""
    name = value if isinstance(value, str) else getattr(value, "name", None)
    choices = list(choices)
    if isinstance(name, str):
        for choice in choices:
            if choice.lower() == name.lower():
                return choice
    raise ValueError(f"{what}: unknown value {value!r} (expected one of: {', '.join(choices)})")


_QUANT_TYPES = ("QInt8", "QUInt8", "QInt16", "QUInt16", "QInt4", "QUInt4", "QFLOAT8E4M3FN")
_CALIB_METHODS = {
    "MinMax": "minmax",
    "Entropy": "entropy",
    "Percentile": "percentile",
    "Distribution": None,
    # Not an ONNX Runtime method: onnx-ptq's MSE-optimal range, as a string.
    "MSE": "mse",
}

# ONNX Runtime's extra_options that onnx-ptq has no equivalent for, with the value that asks for
# nothing (ONNX Runtime's default): passing that value is accepted, any other raises.
_EXTRA_OPTION_DEFAULTS: dict[str, Any] = {
    "EnableSubgraph": False,
    "ForceQuantizeNoInputCheck": False,
    "AddQDQPairToWeight": False,
    "OpTypesToExcludeOutputQuantization": [],
    "DedicatedQDQPair": False,
    "QDQOpTypePerChannelSupportToAxis": {},
    "CalibTensorRangeSymmetric": False,
    "CalibMovingAverage": False,
    "CalibStridedMinMax": None,
    "SmoothQuant": False,
    "UseQDQContribOps": False,
    "MinimumRealRange": None,
    "QDQKeepRemovableActivations": False,
    "QDQDisableWeightAdjustForInt32Bias": False,
    "ActivationRestrictedAsymmetric": False,
    "extra.Sigmoid.nnapi": False,
}
# Accepted with any value: they only bound ONNX Runtime's memory use, not the result.
_MEMORY_ONLY_OPTIONS = ("CalibMaxIntermediateOutputs",)


def _check_extra_options(extra: Mapping[str, Any], handled: Iterable[str]) -> None:
    handled = set(handled)
    for key, value in extra.items():
        if key in handled or key in _MEMORY_ONLY_OPTIONS:
            continue
        if key in _EXTRA_OPTION_DEFAULTS:
            default = _EXTRA_OPTION_DEFAULTS[key]
            if value == default or (default in ([], {}) and not value):
                continue
            raise ValueError(
                f"extra_options[{key!r}] = {value!r}: not supported by onnx-ptq (only "
                f"ONNX Runtime's default, {default!r})"
            )
        supported = sorted(handled | set(_EXTRA_OPTION_DEFAULTS) | set(_MEMORY_ONLY_OPTIONS))
        raise ValueError(
            f"extra_options: unknown or unsupported key {key!r} (accepted: {', '.join(supported)})"
        )


def _weight_type(weight_type: Any, extra: Mapping[str, Any]) -> None:
    if _enum_name(weight_type, "weight_type", _QUANT_TYPES) != "QInt8":
        raise ValueError(
            f"weight_type={weight_type}: onnx-ptq writes symmetric int8 weights only (QInt8)"
        )
    if extra.get("WeightSymmetric", True) is not True:
        raise ValueError(
            "extra_options['WeightSymmetric'] = False: onnx-ptq's int8 weights are symmetric"
        )


def _only(values: Optional[Iterable[str]], what: str) -> Optional[list[str]]:
    """ONNX Runtime's 'quantize only these' lists: None or empty means everything."""
    names = _names(values, what)
    return names or None


def _tensor_overrides(value: Any) -> dict[str, dict[str, Any]]:
    """ONNX Runtime's TensorQuantOverrides as onnx-ptq overrides (range, type, symmetric)."""
    types = {"QUInt8": "u8", "QInt8": "s8", "QUInt16": "u16", "QInt16": "s16"}
    out: dict[str, dict[str, Any]] = {}
    for tensor, entries in dict(value or {}).items():
        what = f"extra_options['TensorQuantOverrides'][{tensor!r}]"
        if isinstance(entries, Mapping):
            entries = [entries]
        entries = list(entries)
        if len(entries) != 1:
            raise ValueError(f"{what}: per-channel overrides (one dict per channel) are not supported")
        entry = dict(entries[0])
        o: dict[str, Any] = {}
        if "quant_type" in entry:
            name = _enum_name(entry.pop("quant_type"), f"{what}['quant_type']", _QUANT_TYPES)
            if name not in types:
                raise ValueError(f"{what}: quant_type {name} is not supported (QUInt8, QInt8, QUInt16, QInt16)")
            o["type"] = types[name]
        if "rmin" in entry or "rmax" in entry:
            if "rmin" not in entry or "rmax" not in entry:
                raise ValueError(f"{what}: give both rmin and rmax (onnx-ptq overrides a whole range)")
            o["range"] = [float(entry.pop("rmin")), float(entry.pop("rmax"))]
        if "symmetric" in entry:
            o["symmetric"] = bool(entry.pop("symmetric"))
        if entry:
            raise ValueError(
                f"{what}: unsupported keys {sorted(entry)} (supported: quant_type, rmin, rmax, symmetric)"
            )
        out[tensor] = o
    return out


def quantize_static(
    model_input: Any,
    model_output: PathLike,
    calibration_data_reader: Any = None,
    quant_format: Any = "QDQ",
    op_types_to_quantize: Optional[Iterable[str]] = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    activation_type: Any = "QUInt8",
    weight_type: Any = "QInt8",
    nodes_to_quantize: Optional[Iterable[str]] = None,
    nodes_to_exclude: Optional[Iterable[str]] = None,
    use_external_data_format: bool = False,
    calibrate_method: Any = "MinMax",
    calibration_providers: Optional[Iterable[str]] = None,
    extra_options: Optional[Mapping[str, Any]] = None,
    calibration_cache_path: Optional[PathLike] = None,
    *,
    show_progress: bool = True,
) -> dict[str, Any]:
    """``onnxruntime.quantization.quantize_static`` with onnx-ptq: a QDQ model calibrated on the
    reader's samples in tract, written to ``model_output``. Returns the summary as a dict.

    Arguments have ONNX Runtime's names and meanings (``per_channel=False`` is per-tensor
    weights, as there). Differences, each raising ``ValueError`` when asked for:

    - ``quant_format``: QDQ only. ``weight_type``: QInt8 (symmetric) only. ``reduce_range``:
      dynamic mode only (:func:`quantize_dynamic`).
    - ``activation_type``: the default is QUInt8 (asymmetric), not ONNX Runtime's QInt8:
      onnx-ptq's int8 activations are symmetric, so QInt8 needs
      ``extra_options={"ActivationSymmetric": True}``; 16-bit types only per tensor
      (``TensorQuantOverrides``) or through :func:`quantize`'s ``allow_int16``.
    - ``calibrate_method``: MinMax, Entropy, Percentile (``CalibPercentile``), or the string
      "MSE"; not Distribution.
    - ``calibration_providers``: calibration runs in tract on the CPU (None or
      ["CPUExecutionProvider"]).
    - ``extra_options``: ActivationSymmetric, WeightSymmetric (True), CalibPercentile,
      TensorQuantOverrides (quant_type, rmin+rmax, symmetric; per tensor), and ONNX Runtime's
      other keys at their default values only.
    - ``calibration_cache_path``: onnx-ptq's ranges JSON (``onnx-ptq calibrate``'s output, not
      ONNX Runtime's cache): read when the file exists, else written by calibrating first. The
      reader is still needed: the result is validated and measured on its samples.
    """
    extra = dict(extra_options or {})
    _check_extra_options(
        extra,
        ("ActivationSymmetric", "WeightSymmetric", "CalibPercentile", "TensorQuantOverrides",
         "MatMulConstBOnly"),
    )
    if extra.get("MatMulConstBOnly", False):
        raise ValueError(
            "extra_options['MatMulConstBOnly'] = True: not supported in static mode (use "
            "op_types_to_quantize or nodes_to_exclude to keep MatMuls float)"
        )
    if _enum_name(quant_format, "quant_format", ("QDQ", "QOperator")) != "QDQ":
        raise ValueError("quant_format=QOperator: onnx-ptq writes QDQ models only")
    if reduce_range:
        raise ValueError(
            "reduce_range=True: onnx-ptq's static int8 weights use the full [-127, 127] range "
            "(reduce_range applies to quantize_dynamic)"
        )
    _weight_type(weight_type, extra)
    act = _enum_name(activation_type, "activation_type", _QUANT_TYPES)
    symmetric = extra.get("ActivationSymmetric", False)
    if act == "QUInt8" and not symmetric:
        activations = "u8"
    elif act == "QInt8" and symmetric:
        activations = "s8"
    elif act == "QInt8":
        raise ValueError(
            "activation_type=QInt8 without extra_options['ActivationSymmetric']=True: onnx-ptq's "
            "int8 activations are symmetric; use QUInt8 for asymmetric activations (the same "
            "grid as asymmetric int8) or set ActivationSymmetric"
        )
    elif act == "QUInt8":
        raise ValueError(
            "activation_type=QUInt8 with ActivationSymmetric=True: not supported (use QInt8, "
            "symmetric int8)"
        )
    else:
        raise ValueError(
            f"activation_type={act}: not supported (QUInt8 or symmetric QInt8; 16-bit types "
            f"per tensor through TensorQuantOverrides)"
        )
    method = _CALIB_METHODS[_enum_name(calibrate_method, "calibrate_method", _CALIB_METHODS)]
    if method is None:
        raise ValueError("calibrate_method=Distribution: not supported (MinMax, Entropy, Percentile)")
    if calibration_providers is not None:
        providers = list(calibration_providers)
        if providers not in ([], ["CPUExecutionProvider"]):
            raise ValueError(
                f"calibration_providers={providers}: onnx-ptq calibrates in tract on the CPU "
                f"(None or ['CPUExecutionProvider'])"
            )
    if calibration_data_reader is None:
        raise ValueError(
            "calibration_data_reader is required: onnx-ptq validates the quantized model and "
            "measures it on the reader's samples, even with a calibration cache"
        )
    calibration = _calibration_options(
        method, extra.get("CalibPercentile", 99.999), None, activations, None, show_progress
    )
    options: dict[str, Any] = {
        "mode": "static",
        "calibration": calibration,
        "per_channel": bool(per_channel),
        "exclude_nodes": _names(nodes_to_exclude, "nodes_to_exclude"),
        "only_nodes": _only(nodes_to_quantize, "nodes_to_quantize"),
        "only_op_types": _only(op_types_to_quantize, "op_types_to_quantize"),
        "overrides": _tensor_overrides(extra.get("TensorQuantOverrides")),
        "external_data": bool(use_external_data_format),
    }
    model_arg = _model_arg(model_input, "model_input")
    with _data_path(calibration_data_reader) as path:
        if calibration_cache_path is not None:
            cache = os.fspath(calibration_cache_path)
            if not os.path.exists(cache):
                _native.calibrate(
                    model_arg, path, cache, json.dumps({"calibration": calibration})
                )
            options["ranges"] = cache
        report = _native.quantize(model_arg, os.fspath(model_output), path, json.dumps(options))
    return _loads(report)


def quantize_dynamic(
    model_input: Any,
    model_output: PathLike,
    op_types_to_quantize: Optional[Iterable[str]] = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    weight_type: Any = "QInt8",
    nodes_to_quantize: Optional[Iterable[str]] = None,
    nodes_to_exclude: Optional[Iterable[str]] = None,
    use_external_data_format: bool = False,
    extra_options: Optional[Mapping[str, Any]] = None,
    *,
    show_progress: bool = True,
) -> dict[str, Any]:
    """``onnxruntime.quantization.quantize_dynamic`` with onnx-ptq (``quantize(...,
    mode="dynamic")``): int8 MatMul/Gemm weights (per tensor unless ``per_channel``, [-63, 63]
    with ``reduce_range``) for ONNX Runtime's fused integer kernels, uint8 embedding tables,
    LSTM as DynamicQuantizeLSTM; Conv stays float. Needs no data. Returns the summary.

    ``weight_type``: QInt8 only (embedding tables are uint8 regardless). ``extra_options``:
    WeightSymmetric (True), MatMulConstBOnly (True: only MatMuls with a constant weight are
    quantized, always the case here), ActivationSymmetric (False: DynamicQuantizeLinear is
    asymmetric uint8), and ONNX Runtime's other keys at their default values only.
    """
    extra = dict(extra_options or {})
    _check_extra_options(extra, ("WeightSymmetric", "MatMulConstBOnly", "ActivationSymmetric"))
    if not extra.get("MatMulConstBOnly", True):
        raise ValueError(
            "extra_options['MatMulConstBOnly'] = False: onnx-ptq's dynamic mode quantizes "
            "MatMuls with a constant weight only"
        )
    if extra.get("ActivationSymmetric", False):
        raise ValueError(
            "extra_options['ActivationSymmetric'] = True: DynamicQuantizeLinear quantizes "
            "activations to asymmetric uint8"
        )
    _weight_type(weight_type, extra)
    options: dict[str, Any] = {
        "mode": "dynamic",
        "reduce_range": bool(reduce_range),
        "calibration": _calibration_options("minmax", 99.999, None, "u8", None, show_progress),
        "per_channel": bool(per_channel),
        "exclude_nodes": _names(nodes_to_exclude, "nodes_to_exclude"),
        "only_nodes": _only(nodes_to_quantize, "nodes_to_quantize"),
        "only_op_types": _only(op_types_to_quantize, "op_types_to_quantize"),
        "external_data": bool(use_external_data_format),
    }
    return _quantize(model_input, model_output, None, options)
