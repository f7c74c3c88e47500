"""Shared fixtures: small hand-built models and a runner for the real command line."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_linear_model(opset: int = 17, ir_version: int = 8) -> onnx.ModelProto:
    """y = relu(x @ W + b) with x: [batch, 4]; small, valid, and onnxruntime runs it."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul"),
             helper.make_node("Add", ["xw", "b"], ["xwb"], name="add"),
             helper.make_node("Relu", ["xwb"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def make_cluttered_cnn(seed: int = 0) -> onnx.ModelProto:
    """A 32×32 RGB classifier (10 classes, symbolic batch) written the way exporters often write one:
    Identity and Dropout nodes, a Cast to the type the tensor already has, constant arithmetic left
    unevaluated, a flatten spelled as Shape→Gather→Concat→Reshape, duplicated and unused weights."""
    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    head_w = weight("head.weight", 16 * 16 * 16, 10)
    head_w_copy = numpy_helper.from_array(numpy_helper.to_array(head_w), "head.weight.copy")
    initializers = [
        weight("conv.weight", 16, 3, 3, 3), weight("conv.bias", 16),
        weight("bn.scale", 16), weight("bn.bias", 16), weight("bn.mean", 16),
        numpy_helper.from_array(np.abs(rng.standard_normal(16)).astype(np.float32) + 0.5, "bn.var"),
        head_w, head_w_copy, weight("head.bias", 10), weight("unused.weight", 64, 64),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(0.25, np.float32), "quarter"),
    ]
    nodes = [
        helper.make_node("Identity", ["image"], ["x0"], name="input_identity"),
        helper.make_node("Conv", ["x0", "conv.weight", "conv.bias"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu"),
        helper.make_node("Dropout", ["r1"], ["d1"], name="dropout"),
        helper.make_node("MaxPool", ["d1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p1"], ["p1_shape"], name="flatten_shape"),
        helper.make_node("Gather", ["p1_shape", "zero"], ["batch"], name="flatten_batch", axis=0),
        helper.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], name="flatten_concat", axis=0),
        helper.make_node("Reshape", ["p1", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "head.weight"], ["h1"], name="head_matmul"),
        helper.make_node("MatMul", ["flat", "head.weight.copy"], ["h1b"], name="head_matmul_copy"),
        helper.make_node("Add", ["h1", "h1b"], ["h2"], name="head_sum"),
        helper.make_node("Add", ["h2", "head.bias"], ["h3"], name="head_bias"),
        helper.make_node("Mul", ["two", "quarter"], ["half"], name="const_scale"),
        helper.make_node("Mul", ["h3", "half"], ["h4"], name="halve"),
        helper.make_node("Cast", ["h4"], ["h5"], name="cast_noop", to=TensorProto.FLOAT),
        helper.make_node("Identity", ["h5"], ["logits"], name="output_identity"),
    ]
    graph = helper.make_graph(
        nodes, "graphopt_demo_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="graphopt-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def linear_model():
    return make_linear_model()


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m graphopt ARGS`` as a user would, capturing its output."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "graphopt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture
def cli():
    return run_cli
