import numpy as np
from onnx import TensorProto, helper

from graphopt.passes.cleanup import DeadCodeElimination

from .builders import const, model, ops, optimize, value


def test_nodes_no_output_depends_on_are_removed_with_their_constants():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Mul", ["x", "w"], ["unused"]),
             helper.make_node("Sigmoid", ["unused"], ["also_unused"])]
    m = model(nodes, [value("x", [2])], [value("y", [2])], [const("w", [1.0, 2.0], np.float32)])
    result = optimize([DeadCodeElimination()], m)
    assert ops(result.model) == ["Relu"]
    assert not result.model.graph.initializer
    assert result.reports[0].rewrites == {"dead node": 2, "unused constant": 1}


def test_unused_graph_inputs_stay():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [value("x", [2]), value("unused", [3])], [value("y", [2])])
    result = optimize([DeadCodeElimination()], m)
    assert [i.name for i in result.model.graph.input] == ["x", "unused"]
    assert result.reports[0].rewrites == {}


def test_a_value_read_only_inside_a_subgraph_is_live():
    then_branch = helper.make_graph([helper.make_node("Neg", ["outer"], ["t"])], "then", [], [value("t", [2])])
    else_branch = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [], [value("e", [2])])
    nodes = [helper.make_node("Relu", ["x"], ["outer"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    m = model(nodes, [value("cond", [], TensorProto.BOOL), value("x", [2])], [value("y", [2])])
    assert ops(optimize([DeadCodeElimination()], m).model) == ["Relu", "If"]


def test_dead_nodes_inside_a_subgraph_are_removed():
    then_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["t"]), helper.make_node("Exp", ["x"], ["dead"])],
                                    "then", [], [value("t", [2])])
    else_branch = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [], [value("e", [2])])
    m = model([helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
              [value("cond", [], TensorProto.BOOL), value("x", [2])], [value("y", [2])])
    result = optimize([DeadCodeElimination()], m)
    branch = next(a.g for a in result.model.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["Neg"]
    assert result.reports[0].rewrites == {"dead node": 1}


def test_unused_outputs_of_a_live_node_stay():
    nodes = [helper.make_node("Split", ["x"], ["first", "second", "third"], axis=0, num_outputs=3),
             helper.make_node("Relu", ["third"], ["y"])]
    m = model(nodes, [value("x", [6])], [value("y", [2])], opset=18)
    result = optimize([DeadCodeElimination()], m)
    assert list(result.model.graph.node[0].output) == ["first", "second", "third"]


def test_constant_graph_output_and_its_producer_stay():
    nodes = [helper.make_node("Constant", [], ["c"], value_floats=[1.0]), helper.make_node("Relu", ["x"], ["y"])]
    m = model(nodes, [value("x", [1])], [value("c", [1]), value("y", [1])])
    assert ops(optimize([DeadCodeElimination()], m).model) == ["Constant", "Relu"]
