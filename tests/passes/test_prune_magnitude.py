"""Magnitude pruning, the [output, reduction] weight view and the layer selection it uses."""
import numpy as np
from onnx import helper, numpy_helper

from graphopt import model_io
from graphopt.passes import PassContext, PassManager
from graphopt.passes.prune import MagnitudePruning, allocate_sparsity, prunable_layers, selected_layers
from graphopt.passes.prune.layers import Layer

from .builders import const, model, value

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def conv_gemm_model(w1=None, w2=None, w3=None):
    """Conv 3->8 (3x3), Conv 8->16, Flatten, Gemm (transB) 16·4·4 -> 10."""
    inits = [const("w1", rand(8, 3, 3, 3) if w1 is None else w1), const("w2", rand(16, 8, 3, 3) if w2 is None else w2),
             const("w3", rand(10, 256) if w3 is None else w3)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c2"], ["f"]),
             helper.make_node("Gemm", ["f", "w3"], ["y"], name="fc", transB=1)]
    return model(nodes, [value("x", [2, 3, 4, 4])], [value("y", [2, 10])], inits)


def weights(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def run(pass_, m):
    return PassManager([pass_], PassContext()).apply(m)


def test_the_reduction_view_round_trips_and_puts_input_channels_innermost():
    graph = model_io.to_graph(conv_gemm_model())
    conv = prunable_layers(graph)[1]
    w = np.asarray(conv.weight.values)
    matrix = conv.matrix()
    assert matrix.shape == (16, 8 * 9)
    assert np.array_equal(matrix[3, :8], w[3, :, 0, 0])  # kernel position (0, 0), all 8 input channels
    conv.set_matrix(matrix * 2)
    assert np.allclose(np.asarray(conv.weight.values), 2 * w)


def test_layer_scope_zeroes_exactly_the_smallest_weights_and_keeps_names():
    m = conv_gemm_model()
    result = run(MagnitudePruning({"w2": 0.5, "w3": 0.75}), m)
    before, after = weights(m), weights(result.model)
    assert set(after) == set(before)
    for name, ratio in (("w2", 0.5), ("w3", 0.75)):
        zeroed = after[name] == 0
        assert zeroed.sum() == round(ratio * zeroed.size)
        assert np.abs(before[name][zeroed]).max() <= np.abs(before[name][~zeroed]).min()
        assert np.array_equal(after[name][~zeroed], before[name][~zeroed])
    assert np.array_equal(after["w1"], before["w1"])  # rule 4: not in targets
    assert result.reports[-1].rewrites == {"unstructured": 2}


def test_global_scope_follows_one_threshold_and_normalize_evens_it_out():
    small = rand(10, 256) * 0.01  # the fc's weights are 100x smaller than the convs'
    graph = model_io.to_graph(conv_gemm_model(w3=small))
    layers = prunable_layers(graph)
    plain = allocate_sparsity(layers, 0.5, "global")
    assert plain["w3"] > 0.75 and plain["w1"] < 0.05 and plain["w2"] < 0.05  # the tiny weights go first
    total = sum(np.asarray(layer.weight.values).size for layer in layers)
    assert round(sum(plain[layer.name] * np.asarray(layer.weight.values).size for layer in layers)) == round(0.5 * total)
    normalized = allocate_sparsity(layers, 0.5, "global", normalize=True)
    assert all(0.3 < ratio < 0.7 for ratio in normalized.values())
    assert allocate_sparsity(layers, 0.5, "layer") == {"w1": 0.5, "w2": 0.5, "w3": 0.5}


def test_default_exclusion_leaves_first_last_and_tiny_layers_dense():
    graph = model_io.to_graph(conv_gemm_model())
    assert [layer.name for layer in selected_layers(graph)] == ["w2"]  # w1 first (and tiny), w3 last
    assert [layer.name for layer in selected_layers(graph, exclude=())] == ["w1", "w2", "w3"]
    assert [layer.name for layer in selected_layers(graph, exclude=("Conv",))] == ["w3"]
    assert [layer.name for layer in selected_layers(graph, exclude=("fc", "first"))] == ["w2"]


def test_gemm_without_trans_b_and_matmul_prune_along_the_same_view():
    w = rand(16, 6)  # [K, N]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gemm", ["h", "v"], ["y"])]
    m = model(nodes, [value("x", [3, 16])], [value("y", [3, 5])], [const("w", w), const("v", rand(6, 5))])
    layers = prunable_layers(model_io.to_graph(m))
    assert [layer.matrix().shape for layer in layers] == [(6, 16), (5, 6)]
    after = weights(run(MagnitudePruning({"w": 0.25}), m).model)["w"]
    assert after.shape == (16, 6) and (after == 0).sum() == 24


def test_non_float_or_non_constant_weights_are_not_layers():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    m = model(nodes, [value("x", [2, 3]), value("w", [3, 4])], [value("y", [2, 4])])
    assert prunable_layers(model_io.to_graph(m)) == []
    assert isinstance(prunable_layers(model_io.to_graph(conv_gemm_model()))[0], Layer)
