"""The fp32 ops on the compiled kernels (depthwise, implicit-GEMM conv, packed Gemm/MatMul) with
their bias and a following Relu/Clip fused into the kernel's epilogue, against onnxruntime."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime import Session

RNG = np.random.default_rng(7)


def _model(nodes, inputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _check(model, feeds, fused_steps):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    for threads in (1, 2):
        session = Session(model, threads=threads)
        got = session.run(None, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert len(session._steps) == fused_steps  # the activation went into the product's step


def _tail(kind):
    if kind == "relu":
        return [helper.make_node("Relu", ["p"], ["y"])], {}
    return [helper.make_node("Clip", ["p", "lo", "hi"], ["y"])], {"lo": np.array(-0.5, np.float32),
                                                                  "hi": np.array(0.75, np.float32)}


@pytest.mark.parametrize("kind", ["relu", "clip"])
@pytest.mark.parametrize("stride,pads,kernel", [(1, [1, 1, 1, 1], 3), (2, [2, 2, 2, 2], 5), (2, [0, 1, 1, 0], 3)])
def test_depthwise_with_bias_and_activation(kind, stride, pads, kernel):
    c = 24
    tail, extra = _tail(kind)
    inits = {"w": RNG.standard_normal((c, 1, kernel, kernel)).astype(np.float32),
             "b": RNG.standard_normal(c).astype(np.float32), **extra}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["p"], group=c, strides=[stride, stride], pads=pads)] + tail
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 19, 21])], inits)
    _check(model, {"x": RNG.standard_normal((2, c, 19, 21)).astype(np.float32)}, 1)


@pytest.mark.parametrize("kind", ["relu", "clip"])
def test_conv_with_activation_in_the_epilogue(kind):
    tail, extra = _tail(kind)
    inits = {"w": RNG.standard_normal((20, 6, 3, 3)).astype(np.float32),
             "b": RNG.standard_normal(20).astype(np.float32), **extra}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["p"], pads=[1, 1, 1, 1], strides=[2, 1])] + tail
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 15, 17])], inits)
    _check(model, {"x": RNG.standard_normal((1, 6, 15, 17)).astype(np.float32)}, 1)


def test_conv_with_a_run_time_bias_is_not_fused_before_its_bias():
    inits = {"w": RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["p"], pads=[1, 1, 1, 1], group=1), helper.make_node("Relu", ["p"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [8])], inits)
    _check(model, {"x": RNG.standard_normal((1, 4, 9, 9)).astype(np.float32),
                   "b": RNG.standard_normal(8).astype(np.float32) * 3}, 1)


@pytest.mark.parametrize("c_shape", [(16,), (1, 16), (5, 16), None])
def test_gemm_bias_and_relu(c_shape):
    inits = {"w": RNG.standard_normal((16, 12)).astype(np.float32)}
    inputs = ["a", "w"]
    if c_shape is not None:
        inits["c"] = RNG.standard_normal(c_shape).astype(np.float32)
        inputs.append("c")
    nodes = [helper.make_node("Gemm", inputs, ["p"], transB=1, beta=0.5), helper.make_node("Relu", ["p"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [5, 12])], inits)
    _check(model, {"a": RNG.standard_normal((5, 12)).astype(np.float32)}, 1)


def test_gemm_with_a_run_time_c_applies_relu_after_c():
    inits = {"w": RNG.standard_normal((12, 16)).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["a", "w", "c"], ["p"]), helper.make_node("Relu", ["p"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [5, 12]),
                           helper.make_tensor_value_info("c", TensorProto.FLOAT, [16])], inits)
    _check(model, {"a": RNG.standard_normal((5, 12)).astype(np.float32),
                   "c": RNG.standard_normal(16).astype(np.float32) * 4}, 1)


def test_matmul_then_clip_with_one_bound():
    inits = {"w": RNG.standard_normal((12, 40)).astype(np.float32), "hi": np.array(0.3, np.float32)}
    nodes = [helper.make_node("MatMul", ["a", "w"], ["p"]), helper.make_node("Clip", ["p", "", "hi"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 12])], inits)
    _check(model, {"a": RNG.standard_normal((2, 3, 12)).astype(np.float32)}, 1)
