import numpy as np
from onnx import helper

from graphopt.passes.cleanup import ShapeInference
from graphopt.passes.fusion import AttentionFusion

from .builders import const, model, ops, optimize, value

SEQ = 4


def attention(mask_shape=(1, 1, SEQ, SEQ), scale_op="Div", extra_outputs=(), softmax_axis=-1, opset=17,
              k_transposed_by=(0, 1, 3, 2)):
    """q, k, v: [1, 2, SEQ, 8]; k's transpose comes from a Transpose with ``k_transposed_by``."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=list(k_transposed_by)),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node(scale_op, ["s", "scale"], ["ss"])]
    last = "ss"
    if mask_shape is not None:
        nodes.append(helper.make_node("Add", ["ss", "mask"], ["sm"]))
        last = "sm"
    axis = {} if softmax_axis is None else {"axis": softmax_axis}
    nodes += [helper.make_node("Softmax", [last], ["p"], **axis), helper.make_node("MatMul", ["p", "v"], ["y"])]
    shape = [1, 2, SEQ, 8]
    k_shape = [0] * 4
    for i, axis in enumerate(k_transposed_by):  # kt = [1, 2, 8, SEQ]
        k_shape[axis] = [1, 2, 8, SEQ][i]
    inputs = [value("q", shape), value("k", k_shape), value("v", shape)]
    if mask_shape is not None:
        inputs.append(value("mask", list(mask_shape)))
    return model(nodes, inputs, [value("y", shape)] + [value(n, None) for n in extra_outputs],
                 [const("scale", np.float32(8 ** 0.5))], opset=opset)


def fuse(m):
    result = optimize([ShapeInference(), AttentionFusion()], m)
    return ops(result.model), result.reports[1]


def test_attention_below_opset_23_is_recognised_and_kept():
    for kwargs in ({}, {"mask_shape": None}, {"scale_op": "Mul"}):
        graph_ops, report = fuse(attention(**kwargs))
        assert "Softmax" in graph_ops and not report.rewrites, kwargs
        assert report.notes[0].startswith("scaled dot-product attention ×1 recognised"), kwargs


def test_attention_at_opset_23_becomes_the_attention_op():
    for kwargs in ({}, {"mask_shape": None}, {"scale_op": "Mul"}, {"mask_shape": (SEQ, SEQ)}):
        graph_ops, report = fuse(attention(opset=23, **kwargs))
        assert graph_ops == ["Transpose", "Attention"] and report.rewrites == {"Attention": 1}, kwargs


def test_exporter_style_transpose_of_k_from_bshd_is_reordered():
    graph_ops, report = fuse(attention(opset=23, k_transposed_by=(0, 2, 3, 1), mask_shape=None))
    assert graph_ops == ["Transpose", "Attention"]


def test_mask_broadcast_over_queries_stays_at_opset_23():
    graph_ops, report = fuse(attention(opset=23, mask_shape=(1, 1, 1, SEQ)))
    assert "Softmax" in graph_ops and report.notes


def test_softmax_over_another_axis_or_shared_scores_is_not_attention():
    for kwargs in ({"softmax_axis": 2}, {"extra_outputs": ["ss"]}):
        graph_ops, report = fuse(attention(opset=23, **kwargs))
        assert "Attention" not in graph_ops and report.notes == [], kwargs


def test_before_opset_13_softmax_defaults_to_axis_1():
    assert fuse(attention(opset=12, softmax_axis=3))[1].notes
    assert fuse(attention(opset=12, softmax_axis=None))[1].notes == []


def test_mask_computed_by_a_mul_and_added_first_is_told_apart_from_the_scores():
    m = attention(opset=23)
    add = next(n for n in m.graph.node if n.op_type == "Add")
    add.input[:] = ["mm", "ss"]  # BERT: (1 - m)·-10000 + scores
    m.graph.node.insert(0, helper.make_node("Mul", ["mask", "big"], ["mm"]))
    m.graph.initializer.append(const("big", np.float32(-100.0)))
    graph_ops, report = fuse(m)
    assert sorted(graph_ops) == ["Attention", "Mul", "Transpose"] and report.rewrites == {"Attention": 1}
