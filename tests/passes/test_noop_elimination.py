import numpy as np
import pytest
from onnx import TensorProto, helper

from graphopt.passes.cleanup import NoOpElimination, ShapeInference

from .builders import const, model, ops, optimize, run_unverified, value

I64 = np.int64


def between_relus(node, inits=(), x_shape=(2, 3, 4), y_shape=None, opset=17):
    """Relu(x) → node → Relu → y, so that the candidate is neither fed by an input nor an output."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), node, helper.make_node("Relu", [node.output[0]], ["y"])]
    return model(nodes, [value("x", list(x_shape))], [value("y", list(y_shape or x_shape))], list(inits), opset=opset)


def removed(node, inits=(), **kwargs) -> bool:
    """Whether NoOpElimination (after shape inference) removes ``node``; the result is verified."""
    result = optimize([ShapeInference(), NoOpElimination()], between_relus(node, inits, **kwargs))
    gone = node.op_type not in ops(result.model)
    assert gone == bool(result.reports[1].rewrites)
    return gone


def test_identity_is_removed_and_its_input_stands_for_it():
    result = optimize([NoOpElimination()], between_relus(helper.make_node("Identity", ["a"], ["b"])))
    assert ops(result.model) == ["Relu", "Relu"]
    assert result.reports[0].rewrites == {"Identity": 1}
    assert result.provenance == {"a": ["b"]}


def test_identity_into_a_graph_output_keeps_the_output_name():
    m = model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"]),
               helper.make_node("Neg", ["y"], ["z"])], [value("x", [3])], [value("y", [3]), value("z", [3])])
    result = optimize([NoOpElimination()], m)
    assert ops(result.model) == ["Relu", "Neg"]
    assert [o.name for o in result.model.graph.output] == ["y", "z"]
    assert result.model.graph.node[0].output == ["y"]
    assert result.provenance == {"y": ["a"]}


def test_ops_of_other_domains_stay():
    node = helper.make_node("Identity", ["a"], ["b"], domain="acme")
    m = model([helper.make_node("Relu", ["x"], ["a"]), node, helper.make_node("Relu", ["b"], ["y"])],
              [value("x", [3])], [value("y", [3])], domains={"acme": 1})
    graph, report = run_unverified(NoOpElimination(), m)
    assert [n.op for n in graph.nodes] == ["Relu", "Identity", "Relu"] and not report.rewrites


def test_identity_from_graph_input_to_graph_output_stays():
    m = model([helper.make_node("Identity", ["x"], ["y"])], [value("x", [3])], [value("y", [3])])
    assert ops(optimize([NoOpElimination()], m).model) == ["Identity"]


def test_identity_from_constant_to_graph_output_stays():
    m = model([helper.make_node("Identity", ["c"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
              [value("x", [2])], [value("y", [2]), value("z", [2])], [const("c", [1.0, 2.0], np.float32)])
    assert ops(optimize([NoOpElimination()], m).model) == ["Identity", "Relu"]


def test_identity_between_two_graph_outputs_stays():
    m = model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])],
              [value("x", [3])], [value("a", [3]), value("y", [3])])
    assert ops(optimize([NoOpElimination()], m).model) == ["Relu", "Identity"]


def test_identity_of_a_constant_feeding_a_node_is_removed():
    m = model([helper.make_node("Identity", ["c"], ["b"]), helper.make_node("Add", ["x", "b"], ["y"])],
              [value("x", [2])], [value("y", [2])], [const("c", [1.0, 2.0], np.float32)])
    assert ops(optimize([NoOpElimination()], m).model) == ["Add"]


def test_identity_inside_a_subgraph_is_removed():
    then_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Identity", ["n"], ["t"])],
                                    "then", [], [value("t", [2])])
    else_branch = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [], [value("e", [2])])
    m = model([helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
              [value("cond", [], TensorProto.BOOL), value("x", [2])], [value("y", [2])])
    result = optimize([NoOpElimination()], m)
    branch = next(a.g for a in result.model.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["Neg"] and branch.output[0].name == "t"


@pytest.mark.parametrize("outputs, training_mode, gone", [
    (["b"], None, True),
    (["b", "mask"], None, True),           # mask produced but not read
    (["b"], False, True),
    (["b"], True, False),                  # training mode: not a no-op
    (["b"], "graph input", False),         # unknown before run time
])
def test_dropout_in_inference_is_removed(outputs, training_mode, gone):
    inputs = ["a", "ratio"] + (["mode"] if training_mode is not None else [])
    inits = [const("ratio", 0.0, np.float32)]  # ratio 0 keeps training mode deterministic for verification
    graph_inputs = [value("x", [2, 3])]
    if training_mode == "graph input":
        graph_inputs.append(value("mode", [], TensorProto.BOOL))
    elif training_mode is not None:
        inits.append(const("mode", training_mode))
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Dropout", inputs, outputs),
             helper.make_node("Relu", ["b"], ["y"])]
    result = optimize([NoOpElimination()], model(nodes, graph_inputs, [value("y", [2, 3])], inits))
    assert ("Dropout" not in ops(result.model)) is gone


def test_dropout_whose_mask_is_read_stays():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Dropout", ["a"], ["b", "mask"]),
             helper.make_node("Relu", ["b"], ["y"])]
    m = model(nodes, [value("x", [2])], [value("y", [2]), value("mask", [2], TensorProto.BOOL)])
    assert "Dropout" in ops(optimize([NoOpElimination()], m).model)


def test_dropout_of_opset_9_is_removed():
    node = helper.make_node("Dropout", ["a"], ["b"], ratio=0.5)
    result = optimize([NoOpElimination()], between_relus(node, opset=9))
    assert ops(result.model) == ["Relu", "Relu"]


@pytest.mark.parametrize("target, x_shape, gone", [
    ([2, 3, 4], [2, 3, 4], True),
    ([0, -1, 4], ["n", 3, 4], True),      # symbolic dims are fine when copied or inferred
    ([0, 3, -1], ["n", 3, 4], True),
    ([2, 12], [2, 3, 4], False),
    ([-1, 3, 4], ["n", 3, 4], True),
    ([0, 0, 0], ["n", 3, "m"], True),
    ([4, 3, 2], [2, 3, 4], False),
])
def test_reshape_to_the_same_shape_is_removed(target, x_shape, gone):
    node = helper.make_node("Reshape", ["a", "shape"], ["b"])
    y_shape = [d for d in x_shape] if gone else ["p", "q"] if len(target) == 2 else list(target)
    assert removed(node, [const("shape", target, I64)], x_shape=x_shape, y_shape=y_shape) is gone


def test_reshape_with_allowzero_copies_no_dim():
    node = helper.make_node("Reshape", ["a", "shape"], ["b"], allowzero=1)
    m = model([helper.make_node("Relu", ["x"], ["a"]), node, helper.make_node("Relu", ["b"], ["y"])],
              [value("x", [0, 3])], [value("y", [0, 3])], [const("shape", [0, 3], I64)])
    assert "Reshape" not in ops(optimize([ShapeInference(), NoOpElimination()], m).model)  # 0 == the 0-sized dim
    m = model([helper.make_node("Relu", ["x"], ["a"]), node, helper.make_node("Relu", ["b"], ["y"])],
              [value("x", [2, 0])], [value("y", [0, 0])], [const("shape", [0, 0], I64)])
    assert "Reshape" in ops(optimize([ShapeInference(), NoOpElimination()], m).model)


def test_reshape_with_a_computed_shape_stays_when_shapes_are_unknown():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Shape", ["z"], ["s"]),
             helper.make_node("Reshape", ["a", "s"], ["b"]), helper.make_node("Relu", ["b"], ["y"])]
    m = model(nodes, [value("x", ["n", 4]), value("z", ["n", 4])], [value("y", ["n", 4])])
    assert "Reshape" in ops(optimize([ShapeInference(), NoOpElimination()], m).model)


@pytest.mark.parametrize("perm, gone", [([0, 1, 2], True), ([0, 2, 1], False)])
def test_transpose_with_identity_perm_is_removed(perm, gone):
    node = helper.make_node("Transpose", ["a"], ["b"], perm=perm)
    y_shape = [2, 3, 4] if gone else [2, 4, 3]
    assert removed(node, y_shape=y_shape) is gone


@pytest.mark.parametrize("to, gone", [(TensorProto.FLOAT, True), (TensorProto.DOUBLE, False)])
def test_cast_to_the_same_dtype_is_removed(to, gone):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Cast", ["a"], ["b"], to=to),
             helper.make_node("Neg", ["b"], ["y"])]
    m = model(nodes, [value("x", [2])], [value("y", [2], to)])
    assert ("Cast" not in ops(optimize([ShapeInference(), NoOpElimination()], m).model)) is gone


def test_cast_of_unknown_dtype_stays():
    # Without shape inference the Relu's output has no dtype: the pass cannot tell.
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Cast", ["a"], ["b"], to=TensorProto.FLOAT),
             helper.make_node("Neg", ["b"], ["y"])]
    m = model(nodes, [value("x", [2])], [value("y", [2])])
    assert "Cast" in ops(optimize([NoOpElimination()], m).model)


@pytest.mark.parametrize("like_dtype, gone", [(np.float32, True), (np.float16, False)])
def test_castlike_to_the_same_dtype_is_removed(like_dtype, gone):
    node = helper.make_node("CastLike", ["a", "like"], ["b"])
    m = model([helper.make_node("Relu", ["x"], ["a"]), node, helper.make_node("Neg", ["b"], ["y"])],
              [value("x", [2])], [value("y", [2], TensorProto.FLOAT if gone else TensorProto.FLOAT16)],
              [const("like", [0], like_dtype)])
    assert ("CastLike" not in ops(optimize([ShapeInference(), NoOpElimination()], m).model)) is gone


@pytest.mark.parametrize("shape, gone", [([1, 3, 4], True), ([4], True), ([2, 3, 4], True), ([2, 2, 3, 4], False)])
def test_expand_to_its_own_shape_is_removed(shape, gone):
    node = helper.make_node("Expand", ["a", "shape"], ["b"])
    y_shape = [2, 3, 4] if gone else [2, 2, 3, 4]
    assert removed(node, [const("shape", shape, I64)], y_shape=y_shape) is gone


@pytest.mark.parametrize("axis, gone", [(1, True), (-1, True), (0, False)])
def test_flatten_of_a_matrix_at_axis_1_is_removed(axis, gone):
    node = helper.make_node("Flatten", ["a"], ["b"], axis=axis)
    assert removed(node, x_shape=[2, 3], y_shape=[2, 3] if gone else [1, 6]) is gone
