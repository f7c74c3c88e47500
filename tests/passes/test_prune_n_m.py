"""2:4 sparsity: exact pattern along the reduction dimension, for every method."""
import numpy as np
import pytest
from onnx import helper, numpy_helper

from graphopt import model_io
from graphopt.passes import PassContext, PassManager
from graphopt.passes.prune import MagnitudePruning, OBSPruning, WandaPruning, is_n_m_sparse, prunable_layers
from graphopt.passes.prune.n_m import n_m_mask, parse_pattern

from .builders import const, model, value

rng = np.random.default_rng(1)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def layers_model(cin=8):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    inits = [const("w1", rand(12, cin, 3, 3)), const("w2", rand(10, 12 * 16))]
    return model(nodes, [value("x", [2, cin, 4, 4])], [value("y", [2, 10])], inits)


def pruned(pass_, m):
    return PassManager([pass_], PassContext()).apply(m)


def check_2_4(m):
    """Every group of 4 consecutive reduction weights (Conv: input channels at one kernel
    position; Gemm transB: a row's consecutive columns) has at least 2 zeros, checked on the file."""
    w = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    conv = w["w1"].transpose(0, 2, 3, 1)  # [Cout, kh, kw, Cin]
    assert ((conv.reshape(-1, 4) == 0).sum(axis=1) >= 2).all()
    assert ((w["w2"].reshape(-1, 4) == 0).sum(axis=1) >= 2).all()
    return w


@pytest.mark.parametrize("method", ["magnitude", "wanda", "obs"])
def test_2_4_is_exact_for_every_method(method):
    m = layers_model()
    targets = {"w1": 0.5, "w2": 0.5}
    if method == "magnitude":
        pass_ = MagnitudePruning(targets, (2, 4))
    elif method == "wanda":
        pass_ = WandaPruning(targets, {"w1": np.abs(rand(1, 72)), "w2": np.abs(rand(1, 192))}, (2, 4))
    else:
        x1, x2 = rand(200, 72).astype(np.float64), rand(200, 192).astype(np.float64)
        pass_ = OBSPruning(targets, {"w1": (x1.T @ x1)[None], "w2": (x2.T @ x2)[None]}, (2, 4))
    w = check_2_4(pruned(pass_, m).model)
    assert (w["w1"] == 0).mean() == 0.5 and (w["w2"] == 0).mean() == 0.5  # random weights: exactly 2 of 4
    graph = model_io.to_graph(pruned(pass_, m).model)
    assert all(is_n_m_sparse(layer.matrix(), 2, 4) for layer in prunable_layers(graph))


def test_magnitude_2_4_keeps_the_two_largest_of_each_group():
    scores = np.array([[4.0, 1.0, 3.0, 2.0, 0.5, 0.6, 0.7, 0.8]])
    assert n_m_mask(scores, 2, 4).tolist() == [[False, True, False, True, True, True, False, False]]


def test_layers_whose_input_channels_do_not_fill_a_group_stay_dense():
    m = layers_model(cin=3)  # 3 input channels: a group of 4 would straddle kernel positions
    result = pruned(MagnitudePruning({"w1": 0.5, "w2": 0.5}, (2, 4)), m)
    w = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert (w["w1"] == 0).sum() == 0 and (w["w2"] == 0).mean() == 0.5
    assert any("w1" in note and "multiple of 4" in note for note in result.reports[-1].notes)


def test_pattern_names():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern("unstructured") is None
    with pytest.raises(ValueError):
        parse_pattern("4:2")
