"""OBS (SparseGPT-style) pruning: the reconstruction beats magnitude and Wanda on the layer's own output."""
import numpy as np
from onnx import helper, numpy_helper

from graphopt.passes import PassContext, PassManager
from graphopt.passes.prune import MagnitudePruning, OBSPruning, WandaPruning

from .builders import const, model, value

rng = np.random.default_rng(3)


def gemm_model(w):
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    return model([node], [value("x", [None, w.shape[1]])], [value("y", [None, w.shape[0]])], [const("w", w)])


def correlated_inputs(samples=400, features=48):
    """Inputs with very different scales and correlated features: where magnitude is a poor guide."""
    mix = rng.standard_normal((features, features)) * 0.3 + np.eye(features)
    scale = np.exp(rng.uniform(-2, 2, features))
    return (rng.standard_normal((samples, features)) @ mix) * scale


def pruned_weight(pass_, w):
    m = PassManager([pass_], PassContext()).apply(gemm_model(w)).model
    return numpy_helper.to_array(m.graph.initializer[0])


def output_error(w, pruned, x):
    return np.linalg.norm(x @ w.T - x @ pruned.T) / np.linalg.norm(x @ w.T)


def test_obs_reconstruction_has_the_smallest_output_error():
    w = rng.standard_normal((16, 48)).astype(np.float32)
    x = correlated_inputs()
    h = x.T @ x
    targets = {"w": 0.6}
    errors = {
        "magnitude": output_error(w, pruned_weight(MagnitudePruning(targets), w), x),
        "wanda": output_error(w, pruned_weight(WandaPruning(targets, {"w": np.sqrt(np.diag(h))[None]}), w), x),
        "obs": output_error(w, pruned_weight(OBSPruning(targets, {"w": h[None]}), w), x),
    }
    assert errors["obs"] < errors["wanda"] < errors["magnitude"], errors
    assert abs((pruned_weight(OBSPruning(targets, {"w": h[None]}), w) == 0).sum() - 0.6 * w.size) <= 1


def test_obs_updates_the_kept_weights_and_zeroes_dead_columns():
    w = rng.standard_normal((4, 8)).astype(np.float32)
    x = rng.standard_normal((100, 8))
    x[:, 5] = 0.0  # an input that is always 0
    after = pruned_weight(OBSPruning({"w": 0.25}, {"w": (x.T @ x)[None]}), w)
    assert (after[:, 5] == 0).all()
    kept = after != 0
    assert not np.allclose(after[kept], w[kept])  # reconstruction moved the survivors


def test_obs_without_statistics_or_target_leaves_the_layer():
    w = rng.standard_normal((4, 8)).astype(np.float32)
    m = gemm_model(w)
    result = PassManager([OBSPruning({"w": 0.5}, {})], PassContext()).apply(m)
    assert np.array_equal(numpy_helper.to_array(result.model.graph.initializer[0]), w)
    assert result.reports[-1].notes == ["w: no calibration statistics, left dense"]
    result = PassManager([OBSPruning({}, {"w": np.eye(8)[None]})], PassContext()).apply(m)
    assert not result.reports[-1].changed


def test_wanda_keeps_weights_on_loud_inputs_and_prunes_per_row():
    w = np.ones((3, 8), np.float32)
    norms = np.array([[1, 1, 1, 100, 1, 1, 1, 1]], np.float64)
    after = pruned_weight(WandaPruning({"w": 0.75}, {"w": norms}), w)
    assert (after[:, 3] == 1).all()
    assert ((after == 0).sum(axis=1) == 6).all()
