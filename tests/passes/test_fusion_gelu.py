import math

import numpy as np
from onnx import helper

from graphopt.passes.fusion import GeluFusion

from .builders import const, model, ops, optimize, value

F32 = np.float32


def erf_gelu(opset=20, grouping="x*a*0.5", scale_op="Div", extra_outputs=()):
    """TorchScript's erf GELU after a Relu: y = x·(1 + erf(x/√2))·0.5 in the given grouping."""
    scale = const("s", math.sqrt(2.0) if scale_op == "Div" else math.sqrt(0.5), F32)
    nodes = [helper.make_node("Relu", ["in"], ["x"]), helper.make_node(scale_op, ["x", "s"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["a"])]
    nodes += {
        "x*a*0.5": [helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])],
        "x*(a*0.5)": [helper.make_node("Mul", ["a", "half"], ["m"]), helper.make_node("Mul", ["x", "m"], ["y"])],
        "(x*0.5)*a": [helper.make_node("Mul", ["x", "half"], ["m"]), helper.make_node("Mul", ["m", "a"], ["y"])],
    }[grouping]
    outputs = [value("y", [2, 8])] + [value(name, [2, 8]) for name in extra_outputs]
    return model(nodes, [value("in", [2, 8])], outputs,
                 [scale, const("one", 1.0, F32), const("half", 0.5, F32)], opset=opset)


def tanh_gelu(cube="Pow"):
    nodes = [helper.make_node("Relu", ["in"], ["x"])]
    if cube == "Pow":
        nodes.append(helper.make_node("Pow", ["x", "three"], ["x3"]))
    else:
        nodes += [helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x2", "x"], ["x3"])]
    nodes += [helper.make_node("Mul", ["x3", "k"], ["kx3"]), helper.make_node("Add", ["x", "kx3"], ["inner"]),
              helper.make_node("Mul", ["inner", "c"], ["u"]), helper.make_node("Tanh", ["u"], ["t"]),
              helper.make_node("Add", ["one", "t"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
              helper.make_node("Mul", ["m", "half"], ["y"])]
    inits = [const("three", 3.0, F32), const("k", 0.044715, F32), const("c", math.sqrt(2 / math.pi), F32),
             const("one", 1.0, F32), const("half", 0.5, F32)]
    return model(nodes, [value("in", [2, 8])], [value("y", [2, 8])], inits, opset=20)


def fuse(m):
    result = optimize([GeluFusion()], m)
    return result, ops(result.model)


def test_erf_gelu_becomes_gelu_in_every_grouping():
    for grouping in ("x*a*0.5", "x*(a*0.5)", "(x*0.5)*a"):
        result, graph_ops = fuse(erf_gelu(grouping=grouping))
        assert graph_ops == ["Relu", "Gelu"], grouping
        assert result.reports[0].rewrites == {"Gelu": 1}
        assert result.model.graph.node[1].output == ["y"]


def test_erf_gelu_with_multiplied_inverse_sqrt2():
    assert fuse(erf_gelu(scale_op="Mul"))[1] == ["Relu", "Gelu"]


def test_tanh_gelu_becomes_approximate_gelu():
    for cube in ("Pow", "Mul"):
        result, graph_ops = fuse(tanh_gelu(cube))
        assert graph_ops == ["Relu", "Gelu"], cube
        assert result.model.graph.node[1].attribute[0].s == b"tanh"
        assert result.reports[0].rewrites == {"Gelu(tanh)": 1}


def test_below_opset_20_the_pattern_stays_and_is_noted():
    result, graph_ops = fuse(erf_gelu(opset=17))
    assert "Gelu" not in graph_ops and not result.reports[0].rewrites
    assert "opset ≥ 20" in result.reports[0].notes[0]


def test_intermediate_graph_output_or_fan_out_stops_the_fusion():
    assert "Erf" in fuse(erf_gelu(extra_outputs=["a"]))[1]
    m = erf_gelu()
    m.graph.node.append(helper.make_node("Neg", ["e"], ["z"]))
    m.graph.output.append(value("z", [2, 8]))
    assert "Erf" in fuse(m)[1]


def test_other_constants_stay():
    m = erf_gelu()
    m.graph.initializer[2].CopyFrom(const("half", 0.6, F32))
    assert "Erf" in fuse(m)[1]
