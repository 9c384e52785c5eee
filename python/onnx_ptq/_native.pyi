"""Type stubs of onnx_ptq._native, the Rust module under the onnx_ptq package.

Each function takes its settings as a JSON object (see python/src/lib.rs for the keys, the CLI's
flags) and returns its result as JSON text; use the functions of ``onnx_ptq`` instead.
"""

from typing import Optional, Union

__version__: str
DEFAULT_BINS: int

class QuantizationError(Exception):
    """An error reported by the onnx-ptq library, with the library's message."""

_Model = Union[str, bytes]

def quantize(model: _Model, output: str, data: Optional[str], options: str) -> str: ...
def calibrate(model: _Model, data: str, output: Optional[str], options: str) -> str: ...
def compare(
    float_model: _Model, int8_model: _Model, data: str, html: Optional[str], options: str
) -> str: ...
def inspect(model: _Model) -> str: ...
def validate(model: _Model, options: str) -> str: ...
