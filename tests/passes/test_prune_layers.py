"""Layer inputs as columns: im2col matches the Conv that onnxruntime computes, for every attribute."""
import numpy as np
import pytest
from onnx import helper

from graphopt import model_io
from graphopt.oracle import run_oracle
from graphopt.passes.prune import prunable_layers

from .builders import const, model, value

rng = np.random.default_rng(2)


@pytest.mark.parametrize("attrs, cin, group", [
    ({"pads": [1, 1, 1, 1]}, 4, 1),
    ({"strides": [2, 2], "pads": [0, 1, 2, 1]}, 4, 1),
    ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, 3, 1),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 4, 1),
    ({"auto_pad": "VALID"}, 6, 3),
    ({"pads": [1, 1, 1, 1]}, 4, 4),  # depthwise
])
def test_conv_columns_times_the_weight_matrix_is_the_conv(attrs, cin, group):
    cout = 12
    w = rng.standard_normal((cout, cin // group, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, cin, 7, 6)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group, **attrs)
    m = model([node], [value("x", list(x.shape))], [value("y", None)], [const("w", w)])
    expected = run_oracle(m, {"x": x})["y"]  # [N, Cout, OH, OW]
    layer = prunable_layers(model_io.to_graph(m))[0]
    columns = layer.columns(x)  # [N·OH·OW, group, K]
    matrix = layer.matrix()
    rows = cout // group
    got = np.concatenate([columns[:, g] @ matrix[g * rows:(g + 1) * rows].T for g in range(group)], axis=1)
    n, _, oh, ow = expected.shape
    assert np.allclose(got.reshape(n, oh, ow, cout).transpose(0, 3, 1, 2), expected, atol=1e-4)


def test_gemm_columns_with_trans_a():
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, transB=1)
    m = model([node], [value("x", [5, 3])], [value("y", [3, 4])], [const("w", rng.standard_normal((4, 5)).astype(np.float32))])
    x = rng.standard_normal((5, 3)).astype(np.float32)
    layer = prunable_layers(model_io.to_graph(m))[0]
    assert np.allclose(layer.columns(x)[:, 0] @ layer.matrix().T, run_oracle(m, {"x": x})["y"], atol=1e-5)
