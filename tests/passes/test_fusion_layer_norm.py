import numpy as np
from onnx import helper

from graphopt.passes import PassContext
from graphopt.passes.cleanup import ShapeInference
from graphopt.passes.fusion import LayerNormFusion

from .builders import const, model, ops, optimize, value

F32 = np.float32
rng = np.random.default_rng(2)


def decomposed(opset=17, axes=(-1,), square="Pow", gamma=(8,), beta=(8,), extra_outputs=(), x_shape=(2, 3, 8)):
    """Paddle/TorchScript's LayerNorm: (x - mean) / sqrt(var + eps) · gamma + beta."""
    def mean(src, dst):
        if opset >= 18:
            return helper.make_node("ReduceMean", [src, "axes"], [dst])
        return helper.make_node("ReduceMean", [src], [dst], axes=list(axes))
    squared = helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "Pow" else \
        helper.make_node("Mul", ["d", "d"], ["sq"])
    nodes = [helper.make_node("Relu", ["in"], ["x"]), mean("x", "m"), helper.make_node("Sub", ["x", "m"], ["d"]),
             squared,
             mean("sq", "v"), helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
             helper.make_node("Div", ["d", "std"], ["n"])]
    inits = [const("two", 2.0, F32), const("eps", 1e-5, F32), const("axes", list(axes), np.int64)]
    last = "n"
    if gamma is not None:
        nodes.append(helper.make_node("Mul", [last, "gamma"], ["g"]))
        inits.append(const("gamma", rng.standard_normal(gamma).astype(F32)))
        last = "g"
    if beta is not None:
        nodes.append(helper.make_node("Add", [last, "beta"], ["b"]))
        inits.append(const("beta", rng.standard_normal(beta).astype(F32)))
        last = "b"
    nodes.append(helper.make_node("Neg", [last], ["y"]))
    outputs = [value("y", list(x_shape))] + [value(n, None) for n in extra_outputs]
    return model(nodes, [value("in", list(x_shape))], outputs, inits, opset=opset)


def fuse(m):
    result = optimize([ShapeInference(), LayerNormFusion()], m)
    return result, ops(result.model)


def test_decomposed_layer_norm_becomes_layer_normalization():
    for kwargs in ({}, {"square": "Mul"}, {"opset": 18}, {"gamma": None}, {"beta": None}, {"gamma": (1, 1, 8)},
                   {"axes": (1, 2), "gamma": (3, 8), "beta": (8,)}):
        result, graph_ops = fuse(decomposed(**kwargs))
        assert graph_ops == ["Relu", "LayerNormalization", "Neg"], kwargs
        assert result.reports[1].rewrites == {"LayerNormalization": 1}


def test_below_opset_17_it_stays_and_is_noted():
    result, graph_ops = fuse(decomposed(opset=16))
    assert "LayerNormalization" not in graph_ops and "opset ≥ 17" in result.reports[1].notes[0]


def test_leading_axes_or_gamma_over_other_axes_stay():
    assert "LayerNormalization" not in fuse(decomposed(axes=(1,), gamma=None, beta=None))[1]
    # gamma varying along axis 1 is not a LayerNorm scale over the last axis (Mul stays outside).
    result, graph_ops = fuse(decomposed(gamma=(3, 1), beta=None))
    assert graph_ops == ["Relu", "LayerNormalization", "Mul", "Neg"]


def test_fan_out_or_graph_output_inside_stays():
    assert "LayerNormalization" not in fuse(decomposed(extra_outputs=["v"]))[1]
    m = decomposed()
    m.graph.node.append(helper.make_node("Neg", ["d"], ["z"]))
    m.graph.output.append(value("z", None))
    assert "LayerNormalization" not in fuse(m)[1]


def test_symbolic_normalized_dims_take_their_shape_from_gamma():
    ctx = PassContext(dims={"a": 2, "b": 3, "c": 8})
    result = optimize([ShapeInference(), LayerNormFusion()], decomposed(x_shape=("a", "b", "c")), ctx)
    assert ops(result.model) == ["Relu", "LayerNormalization", "Neg"]
    ctx = PassContext(dims={"a": 2, "b": 3, "c": 8})
    result = optimize([ShapeInference(), LayerNormFusion()], decomposed(x_shape=("a", "b", "c"), gamma=None,
                                                                         beta=None), ctx)
    assert "LayerNormalization" not in ops(result.model) and "normalized shape" in result.reports[1].notes[0]
