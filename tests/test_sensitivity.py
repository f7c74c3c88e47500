"""Sensitivity: per-layer accuracy at several sparsity levels, and ratios within the budget."""
import importlib.util
import io

import numpy as np
import pytest
from rich.console import Console

from graphopt.errors import InputSpecError
from graphopt.models import DIGITS_ONNX, DIGITS_TEST
from graphopt.prune import prune
from graphopt.sensitivity import render_sensitivity, run_sensitivity, top1


@pytest.fixture(scope="module")
def magnitude():
    return run_sensitivity(DIGITS_ONNX, DIGITS_TEST, "label", levels=(0.5, 0.9), max_drop=1.0)


def test_every_layer_is_measured_at_every_level(magnitude):
    assert magnitude.baseline == pytest.approx(98.61, abs=0.01) and magnitude.samples == 360
    assert [layer.name for layer in magnitude.layers] == ["features.0.weight", "features.2.weight",
                                                          "classifier.1.weight", "classifier.4.weight"]
    assert all(set(layer.accuracy) == {0.5, 0.9} for layer in magnitude.layers)
    # 90% of any one layer costs more than a point on this model
    assert all(magnitude.baseline - layer.accuracy[0.9] > 1.0 for layer in magnitude.layers)


def test_the_recommendation_holds_all_layers_together(magnitude):
    assert magnitude.recommended and all(ratio == 0.5 for ratio in magnitude.recommended.values())
    assert magnitude.baseline - magnitude.combined_accuracy <= magnitude.max_drop
    with np.load(DIGITS_TEST) as data:
        feeds, labels = {"image": data["image"]}, data["label"]
    pruned = prune(DIGITS_ONNX, magnitude.recommended).model
    assert top1(pruned, [feeds], labels) == pytest.approx(magnitude.combined_accuracy)


def test_render_and_json(magnitude):
    out = io.StringIO()
    render_sensitivity(magnitude, Console(file=out, width=160))
    text = out.getvalue()
    assert "classifier.1.weight" in text and "90%" in text and "all recommended ratios together" in text
    assert magnitude.to_json()["recommended"] == magnitude.recommended


def test_labels_from_a_file_and_bad_labels(tmp_path):
    with np.load(DIGITS_TEST) as data:
        images, labels = data["image"][:64], data["label"][:64]
    np.save(tmp_path / "labels.npy", labels)
    result = run_sensitivity(DIGITS_ONNX, {"image": images}, tmp_path / "labels.npy", levels=(0.5,), max_drop=5)
    assert result.samples == 64
    with pytest.raises(InputSpecError):
        run_sensitivity(DIGITS_ONNX, {"image": images}, labels[:10])
    with pytest.raises(InputSpecError):
        run_sensitivity(DIGITS_ONNX, DIGITS_TEST, "no_such_labels")


def test_plot_only_when_matplotlib_is_there(tmp_path):
    result = run_sensitivity(DIGITS_ONNX, DIGITS_TEST, "label", levels=(0.5,), plot=tmp_path / "s.png")
    if importlib.util.find_spec("matplotlib") is None:
        assert result.plot is None
    else:
        assert result.plot is not None and result.plot.stat().st_size > 0


def test_missing_or_mismatched_data_is_a_user_error(tmp_path, cli):
    proc = cli("sensitivity", DIGITS_ONNX, "--data", tmp_path / "nothere.npz", "--labels", "label")
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((4, 1, 8, 8), np.float32), label=np.zeros(4, np.int64))
    proc = cli("sensitivity", DIGITS_ONNX, "--data", tmp_path / "bad.npz", "--labels", "label")
    assert proc.returncode == 2 and "--data has no array for input(s) image" in proc.stderr
