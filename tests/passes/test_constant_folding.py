import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphopt.errors import GraphoptError
from graphopt.passes import PassContext
from graphopt.passes.cleanup import ConstantFolding, ShapeInference
from graphopt.passes.cleanup import constant_folding

from .builders import const, model, ops, optimize, run_unverified, value

I64 = np.int64


def initializer_names(m: onnx.ModelProto) -> set[str]:
    return {t.name for t in m.graph.initializer}


@pytest.mark.parametrize("attr, values", [
    ("value", helper.make_tensor("", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])),
    ("value_floats", [1.0, 2.0, 3.0]),
    ("value_float", 2.0),
])
def test_constant_node_becomes_an_initializer(attr, values):
    m = model([helper.make_node("Constant", [], ["c"], **{attr: values}), helper.make_node("Add", ["x", "c"], ["y"])],
              [value("x", [3])], [value("y", [3])])
    result = optimize([ConstantFolding()], m)
    assert ops(result.model) == ["Add"]
    assert initializer_names(result.model) == {"c"}
    assert result.reports[0].rewrites == {"Constant": 1}
    assert result.provenance == {}  # folded tensors keep their names


def test_integer_constant_node_keeps_int64():
    m = model([helper.make_node("Constant", [], ["shape"], value_ints=[3, 1]),
               helper.make_node("Reshape", ["x", "shape"], ["y"])],
              [value("x", [3])], [value("y", [3, 1])])
    result = optimize([ConstantFolding()], m)
    assert result.model.graph.initializer[0].data_type == TensorProto.INT64


def test_nodes_on_constants_are_evaluated_together():
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Sqrt", ["ab"], ["s"]),
             helper.make_node("Transpose", ["w"], ["wt"]), helper.make_node("MatMul", ["x", "wt"], ["xw"]),
             helper.make_node("Mul", ["xw", "s"], ["y"])]
    inits = [const("a", [1.0, 2.0], np.float32), const("b", [3.0, 4.0], np.float32),
             const("w", np.arange(6, dtype=np.float32).reshape(2, 3))]
    result = optimize([ConstantFolding()], model(nodes, [value("x", ["n", 3])], [value("y", ["n", 2])], inits))
    assert ops(result.model) == ["MatMul", "Mul"]
    assert {"s", "wt"} <= initializer_names(result.model)
    assert result.reports[0].rewrites == {"Add": 1, "Sqrt": 1, "Transpose": 1}


def test_shape_and_size_of_fixed_shapes_fold():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Size", ["r"], ["n"]), helper.make_node("Reshape", ["r", "s"], ["y"]),
             helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["y", "nf"], ["z"])]
    result = optimize([ShapeInference(), ConstantFolding()], model(nodes, [value("x", [2, 3])], [value("z", [2, 3])]))
    assert ops(result.model) == ["Relu", "Reshape", "Mul"]
    assert result.reports[1].rewrites == {"Shape": 1, "Size": 1, "Cast": 1}


def test_shape_with_start_and_end_folds_the_fixed_part():
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1),
             helper.make_node("Concat", ["minus_one", "s"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    m = model(nodes, [value("x", ["n", 3, 4])], [value("y", ["n", 12])], [const("minus_one", [-1], I64)])
    result = optimize([ConstantFolding()], m)
    assert ops(result.model) == ["Reshape"]


SHAPE_CHAIN = [
    helper.make_node("Shape", ["x"], ["s"]),
    helper.make_node("Gather", ["s", "i"], ["d1"], axis=0),
    helper.make_node("Gather", ["s", "j"], ["d2"], axis=0),
    helper.make_node("Mul", ["d1", "d2"], ["d"]),
    helper.make_node("Unsqueeze", ["d", "zero"], ["u"]),
    helper.make_node("Concat", ["minus_one", "u"], ["target"], axis=0),
    helper.make_node("Reshape", ["x", "target"], ["y"]),
]


def shape_chain(i: int, j: int) -> onnx.ModelProto:
    inits = [const("i", i, I64), const("j", j, I64), const("zero", [0], I64), const("minus_one", [-1], I64)]
    return model(SHAPE_CHAIN, [value("x", ["batch", 3, 4])], [value("y", ["rows", "cols"])], inits)


def test_shape_gather_chain_folds_when_the_picked_dims_are_fixed():
    result = optimize([ShapeInference(), ConstantFolding()], shape_chain(1, -1))
    assert ops(result.model) == ["Reshape"]
    assert result.reports[1].rewrites["Gather(Shape)"] == 2


def test_shape_gather_of_a_symbolic_dim_does_not_fold():
    result = optimize([ShapeInference(), ConstantFolding()], shape_chain(0, 1))
    assert ops(result.model) == ["Shape", "Gather", "Mul", "Unsqueeze", "Concat", "Reshape"]
    assert result.reports[1].rewrites == {"Gather(Shape)": 1}


@pytest.mark.parametrize("starts, ends, steps, folds", [
    ([1], [3], None, True),
    ([-2], [2**62], None, True),
    ([2], [0], [-1], True),
    ([0], [2], None, False),  # picks the symbolic batch dim
])
def test_shape_slice_folds_only_fixed_dims(starts, ends, steps, folds):
    names = ["s", "starts", "ends", "axes"] + (["steps"] if steps else [])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Slice", names, ["dims"]),
             helper.make_node("ReduceProd", ["dims"], ["p"], keepdims=1),
             helper.make_node("Concat", ["minus_one", "p"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    inits = [const("starts", starts, I64), const("ends", ends, I64), const("axes", [0], I64),
             const("minus_one", [-1], I64)] + ([const("steps", steps, I64)] if steps else [])
    m = model(nodes, [value("x", ["batch", 3, 4])], [value("y", ["rows", "cols"])], inits)
    result = optimize([ConstantFolding()], m)
    assert (ops(result.model) == ["Reshape"]) is folds


@pytest.mark.parametrize("op, inputs, attrs", [
    ("RandomNormal", [], {"shape": [3]}),
    ("RandomUniform", [], {"shape": [3]}),
    ("RandomNormalLike", ["c"], {}),
    ("RandomUniformLike", ["c"], {}),
    ("Bernoulli", ["p"], {}),
    ("Multinomial", ["logits"], {"sample_size": 3}),
])
def test_nondeterministic_ops_are_not_folded(op, inputs, attrs):
    nodes = [helper.make_node(op, inputs, ["r"], **attrs),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["rf", "zero"], ["zeroed"]), helper.make_node("Add", ["x", "zeroed"], ["y"])]
    inits = [const("c", [1.0, 2.0, 3.0], np.float32), const("p", [0.5, 0.5, 0.5], np.float32),
             const("logits", [[0.1, 0.2, 0.3]], np.float32), const("zero", 0.0, np.float32)]
    m = model(nodes, [value("x", [3])], [value("y", [3])], inits)
    result = optimize([ConstantFolding()], m)
    assert op in ops(result.model)
    assert result.reports[0].rewrites == {}


def test_ops_of_other_domains_are_not_folded():
    # com.microsoft Gelu runs on onnxruntime, so the unchanged result can still be verified.
    m = model([helper.make_node("Gelu", ["c"], ["g"], domain="com.microsoft"),
               helper.make_node("Add", ["x", "g"], ["y"])],
              [value("x", [2])], [value("y", [2])], [const("c", [0.5, -1.0], np.float32)], domains={"com.microsoft": 1})
    result = optimize([ConstantFolding()], m)
    assert ops(result.model) == ["Gelu", "Add"]


def test_unknown_custom_op_is_left_alone():
    m = model([helper.make_node("Mystery", ["c"], ["g"], domain="acme"), helper.make_node("Add", ["x", "g"], ["y"])],
              [value("x", [2])], [value("y", None)], [const("c", [0.5, -1.0], np.float32)], domains={"acme": 1})
    graph, report = run_unverified(ConstantFolding(), m)
    assert [n.op for n in graph.nodes] == ["Mystery", "Add"]
    assert not report.rewrites and not report.notes


def test_nodes_with_subgraphs_are_not_folded():
    then_branch = helper.make_graph([helper.make_node("Neg", ["c"], ["t"])], "then", [], [value("t", [2])])
    else_branch = helper.make_graph([helper.make_node("Abs", ["c"], ["e"])], "else", [], [value("e", [2])])
    nodes = [helper.make_node("If", ["cond"], ["branch"], then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Add", ["x", "branch"], ["y"])]
    inits = [const("cond", True), const("c", [1.0, -2.0], np.float32)]
    result = optimize([ConstantFolding()], model(nodes, [value("x", [2])], [value("y", [2])], inits))
    assert ops(result.model) == ["If", "Add"]


def test_dequantize_of_quantized_weights_is_not_folded():
    nodes = [helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    inits = [const("wq", np.arange(6, dtype=np.int8).reshape(3, 2)), const("scale", 0.5, np.float32),
             const("zp", 0, np.int8)]
    result = optimize([ConstantFolding()], model(nodes, [value("x", [1, 3])], [value("y", [1, 2])], inits))
    assert ops(result.model) == ["DequantizeLinear", "MatMul"]


def test_tensor_over_the_fold_limit_is_left_to_run_time_when_its_size_is_known():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=const("", [2.0], np.float32)),
             helper.make_node("Add", ["x", "big"], ["y"])]
    m = model(nodes, [value("x", [64, 64])], [value("y", [64, 64])], [const("shape", [64, 64], I64)])
    result = optimize([ConstantFolding()], m, PassContext(fold_limit_bytes=4096))
    assert ops(result.model) == ["ConstantOfShape", "Add"]
    assert "over the fold limit" in result.reports[0].notes[0]
    assert ops(optimize([ConstantFolding()], m).model) == ["Add"]  # the default limit is 64 MiB


@pytest.mark.parametrize("op", ["Expand", "Tile"])
def test_tensor_over_the_fold_limit_is_dropped_after_evaluation_when_its_size_was_unknown(op):
    second = "shape" if op == "Expand" else "repeats"
    nodes = [helper.make_node(op, ["small", second], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])]
    inits = [const("small", [[1.0]], np.float32), const("shape", [64, 64], I64), const("repeats", [64, 64], I64)]
    m = model(nodes, [value("x", [64, 64])], [value("y", [64, 64])], inits)
    result = optimize([ConstantFolding()], m, PassContext(fold_limit_bytes=4096))
    assert ops(result.model) == [op, "Add"]
    assert "over the fold limit" in result.reports[0].notes[0]


def test_string_tensors_are_not_folded():
    m = model([helper.make_node("Identity", ["words"], ["y"])], [value("x", [1])],
              [value("y", [2], TensorProto.STRING)],
              [helper.make_tensor("words", TensorProto.STRING, [2], [b"a", b"b"])])
    result = optimize([ConstantFolding()], m)
    assert ops(result.model) == ["Identity"]


def test_constant_graph_output_is_produced_by_a_constant_node():
    nodes = [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Mul", ["y", "sum"], ["z"])]
    inits = [const("a", [1.0, 2.0], np.float32), const("b", [3.0, 4.0], np.float32)]
    outputs = [value("sum", [2]), value("shape", [1], TensorProto.INT64), value("z", [2])]
    result = optimize([ConstantFolding()], model(nodes, [value("x", [2])], outputs, inits))
    assert sorted(ops(result.model)) == ["Constant", "Constant", "Mul", "Relu"]
    assert [o.name for o in result.model.graph.output] == ["sum", "shape", "z"]
    assert not {"sum", "shape"} & initializer_names(result.model)
    again = optimize([ConstantFolding()], result.model)  # rule 12: nothing more to do
    assert again.reports[0].rewrites == {}


def test_multi_output_node_keeps_its_output_slots_when_it_stays():
    # Split's second output turns out to be over the limit once computed: Split stays, and its
    # first output, folded, is replaced in place so that "large" is still its second output.
    nodes = [helper.make_node("Split", ["c", "sizes"], ["small", "large"], axis=0),
             helper.make_node("Add", ["x", "small"], ["y"]), helper.make_node("Add", ["x2", "large"], ["z"])]
    inits = [const("c", np.arange(2001, dtype=np.float32)), const("sizes", [1, 2000], I64)]
    m = model(nodes, [value("x", [1]), value("x2", [2000])], [value("y", [1]), value("z", [2000])], inits)
    result = optimize([ConstantFolding()], m, PassContext(fold_limit_bytes=4096))
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    assert len(split.output) == 2 and split.output[0] != "small" and split.output[1] == "large"
    assert "small" in initializer_names(result.model)


def test_failed_batch_falls_back_to_one_tensor_at_a_time(monkeypatch):
    real = constant_folding._evaluate_on_onnxruntime

    def batch_fails(graph, tensors):
        if len(tensors) > 1 or tensors[0].name == "b2":
            raise GraphoptError("simulated onnxruntime failure")
        return real(graph, tensors)

    monkeypatch.setattr(constant_folding, "_evaluate_on_onnxruntime", batch_fails)
    nodes = [helper.make_node("Neg", ["a"], ["a2"]), helper.make_node("Abs", ["b"], ["b2"]),
             helper.make_node("Add", ["x", "a2"], ["xa"]), helper.make_node("Add", ["xa", "b2"], ["y"])]
    inits = [const("a", [1.0], np.float32), const("b", [-2.0], np.float32)]
    result = optimize([ConstantFolding()], model(nodes, [value("x", [1])], [value("y", [1])], inits))
    assert ops(result.model) == ["Abs", "Add", "Add"]
    notes = result.reports[0].notes
    assert "one by one" in notes[0] and "'b2' not folded" in notes[1]
