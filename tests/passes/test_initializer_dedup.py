import numpy as np
import pytest
from onnx import TensorProto, helper

from graphopt.passes.cleanup import InitializerDeduplication
from graphopt.passes.cleanup import initializer_dedup

from .builders import const, model, optimize, value


def adds(*constants, x_shape=(2,)):
    """y = x + c0 + c1 + ..., one Add per constant."""
    nodes, last = [], "x"
    for i, c in enumerate(constants):
        nodes.append(helper.make_node("Add", [last, c.name], [f"s{i}"]))
        last = f"s{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    return model(nodes, [value("x", list(x_shape))], [value("y", list(x_shape))], list(constants))


def kept(result) -> list[str]:
    return sorted(t.name for t in result.model.graph.initializer)


def test_identical_constants_are_merged_into_the_first():
    m = adds(const("a", [1.0, 2.0], np.float32), const("b", [1.0, 2.0], np.float32),
             const("c", [3.0, 4.0], np.float32), const("d", [1.0, 2.0], np.float32))
    result = optimize([InitializerDeduplication()], m)
    assert kept(result) == ["a", "c"]
    assert result.provenance == {"a": ["b", "d"]}
    assert result.reports[0].rewrites == {"duplicate": 2}


def test_scalars_are_merged_too():
    m = adds(const("one", 1.0, np.float32), const("also_one", 1.0, np.float32))
    assert kept(optimize([InitializerDeduplication()], m)) == ["one"]


def test_identical_nans_are_merged():
    m = adds(const("a", [np.nan, 1.0], np.float32), const("b", [np.nan, 1.0], np.float32))
    assert kept(optimize([InitializerDeduplication()], m)) == ["a"]


@pytest.mark.parametrize("first, second", [
    (const("a", [0.0, 0.0], np.float32), const("b", [-0.0, 0.0], np.float32)),  # equal numbers, other bytes
    (const("a", [[1.0, 2.0]], np.float32), const("b", [1.0, 2.0], np.float32)),  # same bytes, other shape
])
def test_constants_with_other_bytes_or_shapes_stay_apart(first, second):
    m = adds(first, second, x_shape=first.dims)
    assert kept(optimize([InitializerDeduplication()], m)) == ["a", "b"]


def test_same_bytes_of_another_dtype_stay_apart():
    nodes = [helper.make_node("Add", ["x", "f"], ["s"]), helper.make_node("Cast", ["s"], ["si"], to=6),
             helper.make_node("Add", ["si", "i"], ["y"])]
    m = model(nodes, [value("x", [2])], [value("y", [2], 6)],
              [const("f", [0.0, 0.0], np.float32), const("i", [0, 0], np.int32)])
    assert kept(optimize([InitializerDeduplication()], m)) == ["f", "i"]


def test_string_tensors_are_not_merged():
    nodes = [helper.make_node("Identity", ["s1"], ["y1"]), helper.make_node("Identity", ["s2"], ["y2"])]
    strings = [helper.make_tensor(name, TensorProto.STRING, [1], [b"same"]) for name in ("s1", "s2")]
    m = model(nodes, [value("x", [1])], [value("y1", [1], TensorProto.STRING), value("y2", [1], TensorProto.STRING)],
              strings)
    assert kept(optimize([InitializerDeduplication()], m)) == ["s1", "s2"]


def test_equal_hashes_are_confirmed_by_the_bytes(monkeypatch):
    class Colliding:
        def __init__(self, data):
            pass

        def hexdigest(self):
            return "same"

    monkeypatch.setattr(initializer_dedup.hashlib, "sha256", Colliding)
    m = adds(const("a", [1.0, 2.0], np.float32), const("b", [3.0, 4.0], np.float32),
             const("c", [1.0, 2.0], np.float32))
    assert kept(optimize([InitializerDeduplication()], m)) == ["a", "b"]


def test_constant_graph_output_keeps_its_name():
    m = model([helper.make_node("Add", ["x", "a"], ["y"])], [value("x", [2])], [value("y", [2]), value("b", [2])],
              [const("a", [1.0, 2.0], np.float32), const("b", [1.0, 2.0], np.float32)])
    result = optimize([InitializerDeduplication()], m)
    assert kept(result) == ["a", "b"]
