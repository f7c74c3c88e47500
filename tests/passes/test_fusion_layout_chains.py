import numpy as np
from onnx import helper

from graphopt.passes.cleanup import ShapeInference
from graphopt.passes.fusion import LayoutChainCollapse

from .builders import const, model, ops, optimize, value


def fuse(m):
    result = optimize([ShapeInference(), LayoutChainCollapse()], m)
    return result, ops(result.model)


def transposes(p1, p2, extra_outputs=()):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["t1"], perm=p1),
             helper.make_node("Transpose", ["t1"], ["t2"], perm=p2), helper.make_node("Neg", ["t2"], ["y"])]
    shape = [2, 3, 4]
    out = [shape[p1[i]] for i in p2]
    return model(nodes, [value("x", shape)], [value("y", out)] + [value(n, None) for n in extra_outputs])


def test_cancelling_transpose_pair_is_removed():
    result, graph_ops = fuse(transposes([1, 2, 0], [2, 0, 1]))
    assert graph_ops == ["Relu", "Neg"] and result.reports[1].rewrites == {"Transpose pair cancelled": 1}
    assert result.provenance == {"r": ["t2"]}


def test_two_transposes_compose_into_one():
    result, graph_ops = fuse(transposes([1, 0, 2], [0, 2, 1]))
    assert graph_ops == ["Relu", "Transpose", "Neg"]


def test_transpose_pair_with_the_middle_read_elsewhere_stays():
    assert fuse(transposes([1, 2, 0], [2, 0, 1], extra_outputs=["t1"]))[1].count("Transpose") == 2


def reshapes(nodes, x_shape, y_shape, inits=(), opset=17, extra_outputs=()):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), *nodes, helper.make_node("Neg", ["b"], ["y"])]
    return model(nodes, [value("x", x_shape)], [value("y", y_shape)] + [value(n, None) for n in extra_outputs],
                 list(inits), opset=opset)


def test_unsqueeze_squeeze_that_cancel_are_removed():
    nodes = [helper.make_node("Unsqueeze", ["a", "ax"], ["u"]), helper.make_node("Squeeze", ["u", "ax"], ["b"])]
    result, graph_ops = fuse(reshapes(nodes, ["n", 3], ["n", 3], [const("ax", [1], np.int64)]))
    assert graph_ops == ["Relu", "Neg"]


def test_reshape_then_unsqueeze_becomes_one_reshape_with_symbolic_batch():
    nodes = [helper.make_node("Reshape", ["a", "shape"], ["r"]), helper.make_node("Unsqueeze", ["r", "ax"], ["b"])]
    m = reshapes(nodes, ["n", 3, 4], ["n", 12, 1], [const("shape", [0, 12], np.int64), const("ax", [2], np.int64)])
    result, graph_ops = fuse(m)
    assert graph_ops == ["Relu", "Reshape", "Neg"] and result.reports[1].rewrites == {"Reshape+Unsqueeze": 1}


def test_three_link_chain_collapses():
    nodes = [helper.make_node("Flatten", ["a"], ["f"]), helper.make_node("Unsqueeze", ["f", "ax"], ["u"]),
             helper.make_node("Reshape", ["u", "shape"], ["b"])]
    m = reshapes(nodes, [2, 3, 4], [4, 6], [const("ax", [0], np.int64), const("shape", [4, 6], np.int64)])
    assert fuse(m)[1] == ["Relu", "Reshape", "Neg"]


def test_chain_with_two_unknown_dims_or_shared_middle_stays():
    # [n, m, k] → Flatten → [n, m·k] → Unsqueeze(0) → [1, n, m·k]: n moved, m·k unknown.
    nodes = [helper.make_node("Flatten", ["a"], ["f"]), helper.make_node("Unsqueeze", ["f", "ax"], ["b"])]
    m = reshapes(nodes, ["n", "m", "k"], None, [const("ax", [0], np.int64)])
    assert fuse(m)[1] == ["Relu", "Flatten", "Unsqueeze", "Neg"]
    nodes = [helper.make_node("Unsqueeze", ["a", "ax"], ["u"]), helper.make_node("Squeeze", ["u", "ax"], ["b"])]
    m = reshapes(nodes, [2, 3], [2, 3], [const("ax", [1], np.int64)], extra_outputs=["u"])
    assert fuse(m)[1] == ["Relu", "Unsqueeze", "Squeeze", "Neg"]
