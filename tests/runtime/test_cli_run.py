"""``run_command``: the body of ``graphopt run MODEL --input feeds.npz -o outputs.npz``."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt.errors import InputSpecError, OutputPathError
from graphopt.runtime.cli_run import run_command


@pytest.fixture
def model_and_feeds(tmp_path, linear_model):
    model_path = tmp_path / "linear.onnx"
    onnx.save(linear_model, model_path)
    feeds_path = tmp_path / "feeds.npz"
    np.savez(feeds_path, x=np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32))
    return model_path, feeds_path


def test_both_backends_write_the_same_outputs(tmp_path, model_and_feeds):
    model_path, feeds_path = model_and_feeds
    results = {}
    for backend in ("graphopt", "onnxruntime"):
        out = tmp_path / f"{backend}.npz"
        summary = run_command(model_path, feeds_path, out, backend=backend, threads=2)
        assert summary["outputs"] == {"y": {"shape": [2, 3], "dtype": "float32"}}
        with np.load(out) as data:
            results[backend] = data["y"]
    np.testing.assert_allclose(results["graphopt"], results["onnxruntime"], rtol=1e-5)


def test_refuses_to_overwrite_the_inputs(model_and_feeds):
    model_path, feeds_path = model_and_feeds
    with pytest.raises(OutputPathError):
        run_command(model_path, feeds_path, feeds_path)


def test_missing_feeds_file_and_wrong_feeds_are_input_errors(tmp_path, model_and_feeds):
    model_path, _ = model_and_feeds
    with pytest.raises(InputSpecError, match="no such file"):
        run_command(model_path, tmp_path / "nope.npz", tmp_path / "out.npz")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, z=np.ones((1, 4), np.float32))
    with pytest.raises(InputSpecError, match="unknown input"):
        run_command(model_path, wrong, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()
