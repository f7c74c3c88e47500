"""graphopt.runtime.Session: API, errors, plans, and whole models against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import InputSpecError, UnsupportedModelError
from graphopt.runtime import Session


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_api_has_onnxruntime_shape(linear_model):
    session = Session(linear_model, threads=2)
    (x,), (y,) = session.get_inputs(), session.get_outputs()
    assert (x.name, x.shape, x.type) == ("x", ["batch", 4], "tensor(float)")
    assert (y.name, y.shape, y.type) == ("y", ["batch", 3], "tensor(float)")
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)}
    (ours,) = session.run(None, feeds)
    np.testing.assert_allclose(ours, _ort(linear_model, feeds)[0], rtol=1e-5)
    assert session.run(["y"], feeds)[0].shape == (5, 3)


def test_symbolic_dims_get_one_plan_per_shape_signature(linear_model):
    session = Session(linear_model)
    for batch in (1, 3, 1, 3, 7):
        x = np.ones((batch, 4), np.float32)
        assert session.run(None, {"x": x})[0].shape == (batch, 3)
    assert len(session._plans) == 3


def test_shape_subgraph_is_frozen_per_signature():
    # y = Reshape(x, Concat(Shape(x)[0], -1)): the shape chain runs once per signature
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather"),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0, name="concat"),
             helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "zero1"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    session = Session(model)
    for n in (2, 5):
        x = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], x.reshape(n, 6))
    plan = session._plans[((5, 2, 3),)]
    assert plan.names == ["reshape"]


def test_unsupported_ops_are_listed_all_at_once_with_node_names():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Celu", ["a"], ["b"], name="celu_1"),
             helper.make_node("Resize", ["b", "", "scales"], ["c"], mode="cubic", name="resize_cubic"),
             helper.make_node("Det", ["c"], ["y"], name="det_2")]
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    with pytest.raises(UnsupportedModelError) as info:
        Session(model)
    text = str(info.value)
    assert "3 node(s)" in text
    for name in ("celu_1 (Celu", "resize_cubic (Resize: Resize mode='cubic')", "det_2 (Det"):
        assert name in text


def test_custom_domain_op_is_refused():
    nodes = [helper.make_node("Foo", ["x"], ["y"], name="foo", domain="com.example")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedModelError, match="foo"):
        Session(model)


@pytest.mark.parametrize("feeds, message", [
    ({"z": np.ones((1, 4), np.float32)}, "unknown input.*z.*missing input.*x"),
    ({"x": np.ones((1, 4), np.float64)}, "input x: expected float32, got float64"),
    ({"x": np.ones((1, 5), np.float32)}, r"input x: expected shape \[batch, 4\], got \[1, 5\]"),
    ({"x": np.ones(4, np.float32)}, "input x: expected rank 2"),
])
def test_wrong_feeds_get_a_clear_error(linear_model, feeds, message):
    with pytest.raises(InputSpecError, match=message):
        Session(linear_model).run(None, feeds)


def test_unknown_output_name_is_an_error(linear_model):
    with pytest.raises(InputSpecError, match="unknown output name.*nope"):
        Session(linear_model).run(["nope"], {"x": np.ones((1, 4), np.float32)})


def test_outputs_never_alias_weights():
    nodes = [helper.make_node("Identity", ["w"], ["y"], name="id")]
    model = _model(nodes, [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                   [numpy_helper.from_array(np.array([1, 2], np.float32), "w")])
    session = Session(model)
    session.run(None, {})[0][0] = 99
    assert session.run(None, {})[0][0] == 1


def test_bad_file_is_a_load_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(Exception, match="not an ONNX model"):
        Session(path)


def test_shipped_digits_cnn_matches_onnxruntime():
    model = onnx.load("models/digits_cnn.onnx")
    data = np.load("models/digits_test.npz")
    feeds = {"image": data[data.files[0]][:16].astype(np.float32)}
    (ours,) = Session(model).run(None, feeds)
    np.testing.assert_allclose(ours, _ort(model, feeds)[0], rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_relu_and_clip_after_a_product_run_in_place_in_one_step():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"], name="matmul"),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["q"], name="matmul2"),
             helper.make_node("Clip", ["q", "lo", "hi"], ["y"], name="clip")]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
             numpy_helper.from_array(np.array(0.5, np.float32), "hi")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    feeds = {"x": rng.standard_normal((2, 4)).astype(np.float32)}
    session = Session(model)
    np.testing.assert_allclose(session.run(None, feeds)[0], _ort(model, feeds)[0], rtol=1e-6)
    assert [step.name for step in session._steps] == ["matmul", "matmul2"]
