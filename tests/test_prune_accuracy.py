"""Pruning measured by the task: top-1 of digits-cnn on its labelled test split, calibrated on its
calibration split (both shipped in models/), and channel pruning on the zoo's residual and
depthwise CNNs."""
import numpy as np
import onnx
import pytest

from graphopt import model_io
from graphopt.errors import InputSpecError, PassError
from graphopt.models import DIGITS_CALIB, DIGITS_ONNX, DIGITS_TEST
from graphopt.oracle import ort_session
from graphopt.passes.prune import is_n_m_sparse, prunable_layers
from graphopt.prune import prune


@pytest.fixture(scope="module")
def digits():
    return model_io.load_model(DIGITS_ONNX)


def top1(m) -> float:
    with np.load(DIGITS_TEST) as data:
        images, labels = data["image"], data["label"]
    logits = ort_session(m).run(None, {"image": images})[0]
    return float((logits.argmax(axis=1) == labels).mean() * 100)


def test_calibrated_methods_lose_at_most_one_point_at_50_percent(digits):
    baseline = top1(digits)
    # Every layer pruned (no default exclusions): the hardest 50% setting for this model.
    magnitude = prune(digits, 0.5, exclude=())
    assert magnitude.sparsity == pytest.approx(0.5, abs=0.01)
    for method in ("wanda", "obs"):
        result = prune(digits, 0.5, method=method, calibration=DIGITS_CALIB, exclude=())
        assert result.sparsity == pytest.approx(0.5, abs=0.01)
        assert baseline - top1(result.model) <= 1.0, method
        assert result.calibration_samples == 200
    # With the default exclusions (first, last, tiny layers dense) all three stay within a point.
    for method in ("magnitude", "wanda", "obs"):
        result = prune(digits, 0.5, method=method, calibration=DIGITS_CALIB)
        assert [layer.name for layer in result.layers] == ["features.2.weight", "classifier.1.weight"]
        assert baseline - top1(result.model) <= 1.0, method


def test_calibrated_methods_beat_magnitude_where_magnitude_breaks(digits):
    baseline = top1(digits)
    magnitude = top1(prune(digits, 0.7, exclude=()).model)
    obs = top1(prune(digits, 0.7, method="obs", calibration=DIGITS_CALIB, exclude=()).model)
    assert baseline - magnitude > 10  # magnitude alone: ~21 points at 70% of every layer
    assert baseline - obs <= 1.0


def test_2_4_on_digits_is_exact_and_keeps_accuracy(digits):
    result = prune(digits, 0.5, pattern="2:4", method="wanda", calibration=DIGITS_CALIB)
    graph = model_io.to_graph(result.model)
    pruned = [layer for layer in prunable_layers(graph) if layer.name in {x.name for x in result.layers}]
    assert len(pruned) == 2 and all(is_n_m_sparse(layer.matrix(), 2, 4) for layer in pruned)
    assert top1(digits) - top1(result.model) <= 1.0


def test_global_scope_and_recommended_ratios(digits):
    for method in ("magnitude", "obs"):  # global: one magnitude budget, then each layer by the method
        result = prune(digits, 0.7, scope="global", normalize=True, exclude=(), method=method,
                       calibration=DIGITS_CALIB)
        assert result.sparsity == pytest.approx(0.7, abs=0.01)
    per_layer = prune(digits, {"classifier.1.weight": 0.9})
    assert [(layer.name, round(layer.sparsity_after, 2)) for layer in per_layer.layers] == [("classifier.1.weight", 0.9)]


def test_the_input_model_is_not_modified_and_options_are_checked(digits):
    before = digits.SerializeToString()
    prune(digits, 0.5, pattern="channel")
    assert digits.SerializeToString() == before
    with pytest.raises(InputSpecError):
        prune(digits, 0.5, method="obs")
    with pytest.raises(PassError):
        prune(digits, 0.5, pattern="channel", method="wanda", calibration=DIGITS_CALIB)
    with pytest.raises(PassError):
        prune(digits, 1.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3"])
def test_channel_pruning_on_zoo_models_runs_on_onnxruntime(name, tmp_path):
    pytest.importorskip("torch")
    from graphopt.export import export_model
    from graphopt.inspect import inspect_model

    original = model_io.load_model(export_model(name, tmp_path / f"{name}.onnx").path)
    result = prune(original, 0.5, pattern="channel")
    onnx.checker.check_model(result.model, full_check=True)
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (logits,) = ort_session(result.model).run(None, {"image": image})
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()
    macs_before, macs_after = inspect_model(original)["macs"], inspect_model(result.model)["macs"]
    assert macs_after < 0.6 * macs_before
    runtime = pytest.importorskip("graphopt.runtime")
    (ours,) = runtime.Session(result.model).run(None, {"image": image})
    assert np.allclose(ours, logits, rtol=1e-4, atol=1e-5 * np.abs(logits).max())
    if name == "resnet18":  # residual ties: a downsample conv and the stage's conv2s lose the same channels
        assert any("downsample" in note and "conv2" in note and "->" in note for note in result.notes)
    else:  # depthwise convs followed their input channels: group = channels, and fewer of them
        groups = {n.input[1]: _group(n) for n in original.graph.node if n.op_type == "Conv" and _group(n) > 1}
        weights = {t.name: t.dims[0] for t in result.model.graph.initializer}
        after = {n.input[1]: _group(n) for n in result.model.graph.node if len(n.input) > 1 and n.input[1] in groups}
        assert all(after[name] == weights[name] for name in after)
        assert sum(after.values()) < 0.6 * sum(groups.values())


def _group(node: onnx.NodeProto) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)


def test_prune_then_quantize_keeps_the_zeros_and_the_accuracy(digits):
    from graphopt.inspect import inspect_model
    from graphopt.quantize import quantize

    pruned = prune(digits, 0.5, method="obs", calibration=DIGITS_CALIB)
    quantized = quantize(pruned.model, DIGITS_CALIB, cleanup=False)
    sparsity = inspect_model(quantized.model)["sparsity"]
    assert sparsity["zero_weights"] >= sum(layer.zeros_after for layer in pruned.layers)
    assert top1(digits) - top1(quantized.model) <= 1.5
