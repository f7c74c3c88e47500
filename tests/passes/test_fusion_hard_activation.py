import numpy as np
from onnx import helper

from graphopt.passes.fusion import HardActivationFusion

from .builders import const, model, ops, optimize, value

F32 = np.float32


def hard_chain(kind="hardswish", opset=14, sixth="Div", extra_outputs=()):
    """Relu(in) = x, then x + 3 → Clip(0, 6) → [·x] → /6 (or ·1/6)."""
    nodes = [helper.make_node("Relu", ["in"], ["x"]), helper.make_node("Add", ["x", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["h"])]
    last = "h"
    if kind == "hardswish":
        nodes.append(helper.make_node("Mul", ["x", "h"], ["xh"]))
        last = "xh"
    if sixth == "Div":
        nodes.append(helper.make_node("Div", [last, "six"], ["y"]))
    else:
        nodes.append(helper.make_node("Mul", [last, "inv6"], ["y"]))
    inits = [const("three", 3.0, F32), const("zero", 0.0, F32), const("six", 6.0, F32), const("inv6", 1 / 6, F32)]
    outputs = [value("y", [2, 8])] + [value(n, [2, 8]) for n in extra_outputs]
    return model(nodes, [value("in", [2, 8])], outputs, inits, opset=opset)


def fuse(m):
    result = optimize([HardActivationFusion()], m)
    return result, ops(result.model)


def test_clip_over_six_becomes_hard_sigmoid():
    for sixth in ("Div", "Mul"):
        result, graph_ops = fuse(hard_chain("hardsigmoid", sixth=sixth))
        assert graph_ops == ["Relu", "HardSigmoid"] and result.reports[0].rewrites == {"HardSigmoid": 1}


def test_x_times_clip_over_six_becomes_hard_swish():
    result, graph_ops = fuse(hard_chain())
    assert graph_ops == ["Relu", "HardSwish"] and result.reports[0].rewrites == {"HardSwish": 1}


def test_below_opset_14_hard_swish_becomes_mul_of_hard_sigmoid():
    result, graph_ops = fuse(hard_chain(opset=13))
    assert sorted(graph_ops) == ["HardSigmoid", "Mul", "Relu"]
    assert result.reports[0].rewrites == {"x·HardSigmoid(x)": 1}


def test_x_times_hard_sigmoid_becomes_hard_swish_only_with_its_constants():
    def gated(alpha):
        nodes = [helper.make_node("Relu", ["in"], ["x"]), helper.make_node("HardSigmoid", ["x"], ["g"], alpha=alpha),
                 helper.make_node("Mul", ["g", "x"], ["y"])]
        return model(nodes, [value("in", [2, 8])], [value("y", [2, 8])], opset=14)
    assert fuse(gated(1 / 6))[1] == ["Relu", "HardSwish"]
    assert fuse(gated(0.2))[1] == ["Relu", "HardSigmoid", "Mul"]


def test_graph_output_inside_the_chain_or_other_operand_stays():
    assert "Clip" in fuse(hard_chain(extra_outputs=["h"]))[1]
    m = hard_chain()
    m.graph.node[3].input[0] = "in"  # in·clip(x+3): not the same x
    assert "Clip" in fuse(m)[1]


def test_silu_is_kept_and_noted():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    result, graph_ops = fuse(model(nodes, [value("x", [2, 8])], [value("y", [2, 8])]))
    assert graph_ops == ["Sigmoid", "Mul"]
    assert result.reports[0].notes == ["SiLU x·Sigmoid(x) ×1 kept (no standard ONNX op)"]
