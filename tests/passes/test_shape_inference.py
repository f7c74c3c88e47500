import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from graphopt.passes.cleanup import ShapeInference

from .builders import const, dims, model, optimize, run_unverified, value


def test_symbolic_dims_keep_their_names():
    m = model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0])],
              [value("x", ["batch", 3])], [value("y", None)])
    result = optimize([ShapeInference()], m)
    assert dims(result.model, "r") == ["batch", 3]
    assert dims(result.model, "y") == [3, "batch"]
    assert result.reports[0].rewrites == {"dtype": 1, "shape": 2}  # y was declared float already


def test_data_propagation_gives_fixed_dims_through_shape_arithmetic():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
        helper.make_node("Unsqueeze", ["d", "zero"], ["u"]),
        helper.make_node("Concat", ["minus_one", "u"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [const("one", 1, np.int64), const("zero", [0], np.int64), const("minus_one", [-1], np.int64)]
    result = optimize([ShapeInference()], model(nodes, [value("x", ["n", 6])], [value("y", None)], inits))
    first, second = dims(result.model, "y")
    assert first.startswith("unk__") and second == 6  # -1 over a symbolic dim: a new symbol
    m = model(nodes, [value("x", [4, 6])], [value("y", None)], inits)
    assert dims(optimize([ShapeInference()], m).model, "y") == [4, 6]


def test_a_named_symbolic_dim_is_not_replaced_by_an_unknown_one():
    m = model([helper.make_node("NonZero", ["x"], ["y"])], [value("x", [2, 3])],
              [value("y", [2, "nonzero"], TensorProto.INT64)])
    result = optimize([ShapeInference()], m)
    assert dims(result.model, "y") == [2, "nonzero"]


def test_graph_inputs_are_left_as_declared():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [value("x", [None, 3])], [value("y", None)])
    graph, _ = run_unverified(ShapeInference(), m)
    assert graph.inputs[0].shape == [None, 3]
    assert graph.outputs[0].shape[1] == 3


def test_unknown_custom_op_leaves_its_outputs_unknown_and_the_rest_inferred():
    m = model([helper.make_node("Mystery", ["x"], ["c"], domain="acme"), helper.make_node("Relu", ["c"], ["y"]),
               helper.make_node("Sigmoid", ["x"], ["z"])],
              [value("x", ["n", 3])], [value("y", None), value("z", None)], domains={"acme": 1})
    graph, report = run_unverified(ShapeInference(), m)
    tensors = graph.tensors()
    assert tensors["c"].dtype is None and tensors["c"].shape is None
    assert tensors["z"].dtype == np.float32 and tensors["z"].shape == ["n", 3]
    assert not report.notes


def test_subgraph_tensors_get_shapes():
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["inner"]), helper.make_node("Neg", ["inner"], ["b"])],
                               "then", [], [value("b", None)])
    other = helper.make_graph([helper.make_node("Abs", ["x"], ["c"])], "else", [], [value("c", None)])
    m = model([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
              [value("cond", [], TensorProto.BOOL), value("x", ["n", 3])], [value("y", None)])
    graph, _ = run_unverified(ShapeInference(), m)
    then_graph = graph.nodes[0].attrs["then_branch"]
    inner = next(t for t in then_graph.tensors().values() if t.name == "inner")
    assert isinstance(inner, gs.Variable) and inner.shape == ["n", 3]
    optimize([ShapeInference()], m)


def test_large_constants_do_not_stop_inference():
    weight = const("w", np.ones((64, 64), np.float32))  # above the value limit: passed as a typed input
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [value("x", ["n", 64])], [value("y", None)], [weight])
    result = optimize([ShapeInference()], m)
    assert dims(result.model, "y") == ["n", 64]
    assert [i.name for i in result.model.graph.input] == ["x"]
