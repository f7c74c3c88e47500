"""Tests of graphopt.inspect on tiny hand-built models with hand-computed MACs, and on light ResNet50."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from graphopt.inspect import inspect_model, render_text

LIGHT_RESNET50 = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_resnet50.onnx")
FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             producer_name="test", producer_version="1.0")


def _input(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _weight(name, shape, dtype=np.float32, values=None):
    array = np.ones(shape, dtype) if values is None else np.asarray(values, dtype).reshape(shape)
    return numpy_helper.from_array(array, name)


def _single_op(op, x_shape, w_shape, out="y", **attrs):
    node = helper.make_node(op, ["x", "w"], [out], name="n", **attrs)
    return _model([node], [_input("x", x_shape)], [_input(out, None)], [_weight("w", w_shape)])


# --- MACs ----------------------------------------------------------------------------------------

def test_conv_macs_with_stride_padding_groups_dilation():
    # X 1x8x10x12, W 16x4x3x3 (group 2), stride 2, pad 1, dilation 2: the effective kernel is 5,
    # Hout = (10 + 2 - 5) // 2 + 1 = 4, Wout = (12 + 2 - 5) // 2 + 1 = 5.
    # MACs = N·Cout·Hout·Wout·(Cin/group)·kH·kW = 1·16·4·5·4·3·3.
    model = _single_op("Conv", [1, 8, 10, 12], [16, 4, 3, 3], group=2, strides=[2, 2],
                       pads=[1, 1, 1, 1], dilations=[2, 2])
    report = inspect_model(model, nodes=True)
    assert report["nodes"][0]["output"] == [[1, 16, 4, 5]]
    assert report["macs"] == 1 * 16 * 4 * 5 * 4 * 3 * 3 == 11520
    assert report["macs_unknown_nodes"] == 0


def test_conv_macs_1d_and_3d():
    # 1-D: X 2x3x20, W 6x3x5 -> Lout 16: 2·6·16·3·5.
    assert inspect_model(_single_op("Conv", [2, 3, 20], [6, 3, 5]))["macs"] == 2 * 6 * 16 * 3 * 5
    # 3-D: X 1x2x4x6x6, W 4x2x3x3x3, pad 1 -> 4x6x6 out: 1·4·(4·6·6)·2·27.
    model = _single_op("Conv", [1, 2, 4, 6, 6], [4, 2, 3, 3, 3], pads=[1] * 6)
    assert inspect_model(model)["macs"] == 4 * 144 * 2 * 27


def test_conv_transpose_macs():
    # N·Cin·Hin·Win·(Cout/group)·kH·kW; W is Cin x Cout/group x kH x kW.
    model = _single_op("ConvTranspose", [1, 4, 5, 5], [4, 3, 3, 3], strides=[2, 2])
    assert inspect_model(model)["macs"] == 1 * 4 * 25 * 3 * 9
    grouped = _single_op("ConvTranspose", [1, 4, 5, 5], [4, 2, 3, 3], group=2)
    assert inspect_model(grouped)["macs"] == 1 * 4 * 25 * 2 * 9


def test_gemm_macs_with_transposes_and_bias():
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)
    model = _model([node], [_input("a", [4, 5])], [_input("y", None)],
                   [_weight("w", [3, 5]), _weight("c", [3])])
    assert inspect_model(model)["macs"] == 4 * 3 * 5  # M·N·K, nothing for C
    node = helper.make_node("Gemm", ["a", "w"], ["y"], transA=1)
    model = _model([node], [_input("a", [5, 4])], [_input("y", None)], [_weight("w", [5, 3])])
    assert inspect_model(model)["macs"] == 4 * 3 * 5


@pytest.mark.parametrize("a, b, macs", [
    ([2, 3, 4, 5], [2, 3, 5, 6], 2 * 3 * 4 * 6 * 5),  # batched
    ([3, 1, 4, 5], [2, 5, 6], 3 * 2 * 4 * 6 * 5),     # broadcast batch (3,1) x (2,) -> (3,2)
    ([5], [2, 5, 6], 2 * 1 * 6 * 5),                  # 1-D left operand: M = 1
    ([2, 4, 5], [5], 2 * 4 * 1 * 5),                  # 1-D right operand: N = 1
    ([4, 5], [5, 6], 4 * 6 * 5),
])
def test_matmul_macs(a, b, macs):
    assert inspect_model(_single_op("MatMul", a, b))["macs"] == macs


def test_unknown_shapes_are_counted_not_guessed():
    relu = helper.make_node("Relu", ["x"], ["r"])
    matmul = helper.make_node("MatMul", ["r", "w"], ["y"])
    unranked = helper.make_tensor_value_info("x", FLOAT, None)
    model = _model([relu, matmul], [unranked], [_input("y", None)], [_weight("w", [4, 4])])
    report = inspect_model(model, nodes=True)
    assert report["macs"] == 0
    assert report["macs_unknown_nodes"] == 1
    assert report["nodes"][1]["macs"] is None
    assert report["nodes"][0]["macs"] == 0  # Relu: not a compute op


def test_large_weights_keep_their_shapes_for_inference():
    # Weights above the skeleton limit reach shape inference as data-less inputs; a Reshape whose
    # shape is an initializer still needs data propagation.
    reshape = helper.make_node("Reshape", ["x", "shape"], ["xr"])
    matmul = helper.make_node("MatMul", ["xr", "w"], ["m"])
    const = helper.make_node("Constant", [], ["w2"], value=_weight("", [64, 32]))
    matmul2 = helper.make_node("MatMul", ["m", "w2"], ["y"])
    shape = numpy_helper.from_array(np.array([8, 64], np.int64), "shape")
    model = _model([reshape, matmul, const, matmul2], [_input("x", [2, 4, 64])], [_input("y", None)],
                   [_weight("w", [64, 64]), shape])
    before = model.SerializeToString()
    report = inspect_model(model)
    assert report["macs"] == 8 * 64 * 64 + 8 * 32 * 64
    assert report["outputs"][0]["resolved_shape"] == [8, 32]
    assert model.SerializeToString() == before  # the input model is left alone


def test_quantized_ops_count_macs_like_float_ones():
    model = _qlinear_conv_model()
    assert inspect_model(model)["macs"] == 1 * 4 * 6 * 6 * 3 * 9


# --- parameters and sparsity ---------------------------------------------------------------------

def test_params_and_bytes_by_dtype():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0, 3.0]),
             helper.make_node("Mul", ["r", "k"], ["y"])]
    inits = [_weight("w", [16, 4, 3, 3]),                                       # 576 float32
             numpy_helper.from_array(np.zeros(10, np.int8), "q8"),              # 10 int8
             numpy_helper.from_array(np.zeros(8, np.float16), "h"),             # 8 float16
             helper.make_tensor("q4", TensorProto.INT4, [5], [1, 2, 3, 4, 5]),  # 5 int4, 3 bytes
             numpy_helper.from_array(np.array([1, -1, 3], np.int64), "shape")]  # shape: not a param
    model = _model(nodes, [_input("x", [1, 4, 8, 8])], [_input("y", None)], inits)
    report = inspect_model(model, nodes=True)
    assert report["params_by_dtype"] == {
        "float32": {"count": 579, "bytes": 579 * 4},
        "float16": {"count": 8, "bytes": 16},
        "int8": {"count": 10, "bytes": 10},
        "int4": {"count": 5, "bytes": 3},
    }
    assert report["num_params"] == 579 + 8 + 10 + 5
    assert report["param_bytes"] == 579 * 4 + 16 + 10 + 3
    assert [n["params"] for n in report["nodes"]] == [576, 0, 0, 3]


def test_sparsity_counts_zeros_of_constant_weights_once():
    w = np.array([0, 1, 0, 2, 3, 0, 4, 5], np.float32)  # 3 zeros of 8
    shared = np.array([[0, 1], [1, 0]], np.float32)     # 2 zeros of 4, used by two MatMuls
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("MatMul", ["f", "s"], ["m1"]),
             helper.make_node("MatMul", ["m1", "s"], ["m2"]),
             helper.make_node("MatMul", ["m2", "dyn"], ["y"])]   # non-constant weight: left out
    model = _model(nodes, [_input("x", [1, 1, 2, 1]), _input("dyn", [2, 2])], [_input("y", None)],
                   [_weight("w", [2, 1, 2, 2], values=w), _weight("s", [2, 2], values=shared)])
    report = inspect_model(model, nodes=True)
    assert report["sparsity"] == {"zero_weights": 5, "total_weights": 12, "fraction": 5 / 12}
    assert [n["sparsity"] for n in report["nodes"]] == [3 / 8, None, 0.5, 0.5, None]


def test_sparsity_sees_through_dequantize_linear_with_per_channel_zero_point():
    q = np.array([[5, 0], [5, 7], [-2, -2]], np.int8)   # zero points per row (axis 0): 5, 7, -2
    nodes = [helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["w"], axis=0),
             helper.make_node("MatMul", ["w", "x"], ["y"])]
    model = _model(nodes, [_input("x", [2, 2])], [_input("y", None)],
                   [numpy_helper.from_array(q, "q"), _weight("scale", [3], values=[0.1, 0.2, 0.3]),
                    numpy_helper.from_array(np.array([5, 7, -2], np.int8), "zp")])
    # Here the constant is the left operand, so the weight input (B) is not constant.
    assert inspect_model(model)["sparsity"]["total_weights"] == 0
    model.graph.node[1].input[:] = ["x", "w"]
    model.graph.input[0].CopyFrom(_input("x", [4, 3]))
    assert inspect_model(model)["sparsity"] == {"zero_weights": 4, "total_weights": 6, "fraction": 4 / 6}


# --- quantized coverage --------------------------------------------------------------------------

def _qdq_model():
    scale = _weight("s", [], values=[0.1])
    zp = numpy_helper.from_array(np.array(0, np.uint8), "zp")
    wq = numpy_helper.from_array(np.array([1, 0, 0, 2] * 9, np.int8).reshape(4, 1, 3, 3), "wq")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "s"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="qconv"),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="fmatmul"),
             helper.make_node("MatMul", ["xd", "xd"], ["y2"], name="act_only")]
    return _model(nodes, [_input("x", [1, 1, 4, 4])], [_input("y", None), _input("y2", None)],
                  [scale, zp, wq, _weight("w", [16, 3])])


def test_quantized_coverage_qdq():
    report = inspect_model(_qdq_model(), nodes=True)
    quantized = report["quantized_nodes"]
    # MatMul(xd, xd): both inputs come from DequantizeLinear, so it counts as int8 too.
    assert quantized == {"int8": ["qconv", "act_only"], "fp32": ["fmatmul"], "coverage": 2 / 3}
    assert [n["int8"] for n in report["nodes"]] == [None, None, None, True, None, False, True]
    # int8 weight zeros (zero point 0) and the float MatMul weight (no zeros).
    assert report["sparsity"] == {"zero_weights": 18, "total_weights": 36 + 48, "fraction": 18 / 84}
    assert report["macs"] == 4 * 2 * 2 * 9 + 16 * 3 + 4 * 4 * 4


def test_quantized_conv_needs_both_activation_and_weight_dequantized():
    model = _qdq_model()
    model.graph.node[3].input[0] = "x"   # float activation, int8 weight: not an int8 conv
    assert inspect_model(model)["quantized_nodes"]["fp32"] == ["qconv", "fmatmul"]


def _qlinear_conv_model():
    inits = [_weight("xs", [], values=[0.1]), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array([0, 3] * 54, np.int8).reshape(4, 3, 3, 3), "w"),
             _weight("ws", [], values=[0.05]), numpy_helper.from_array(np.array(0, np.int8), "wz"),
             _weight("ys", [], values=[0.2]), numpy_helper.from_array(np.array(128, np.uint8), "yz")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                            name="qlc", pads=[1, 1, 1, 1])
    return _model([node], [_input("x", [1, 3, 6, 6], TensorProto.UINT8)],
                  [_input("y", None, TensorProto.UINT8)], inits)


def test_quantized_coverage_qlinear_conv():
    report = inspect_model(_qlinear_conv_model())
    assert report["quantized_nodes"] == {"int8": ["qlc"], "fp32": [], "coverage": 1.0}
    assert report["sparsity"] == {"zero_weights": 54, "total_weights": 108, "fraction": 0.5}
    assert report["params_by_dtype"]["int8"] == {"count": 109, "bytes": 109}


# --- symbolic dims, report shape -----------------------------------------------------------------

def _symbolic_conv_model():
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    return _model([node], [_input("x", ["batch", 3, "h", "w"])], [_input("y", ["batch", 8, "h", "w"])],
                  [_weight("w", [8, 3, 3, 3])])


def test_symbolic_dims_resolved_from_dims():
    model = _symbolic_conv_model()
    report = inspect_model(model, dims={"h": 10, "w": 12})
    assert report["dims"] == {"batch": 1, "h": 10, "w": 12}
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3, "h", "w"],
                                 "resolved_shape": [1, 3, 10, 12]}]
    assert report["outputs"][0]["shape"] == ["batch", 8, "h", "w"]
    assert report["outputs"][0]["resolved_shape"] == [1, 8, 10, 12]
    assert report["macs"] == 1 * 8 * 10 * 12 * 3 * 9
    assert inspect_model(model, dims={"batch": 4, "h": 10, "w": 12})["macs"] == 4 * report["macs"]
    assert inspect_model(model)["macs"] == 8 * 32 * 32 * 27   # defaults: batch 1, others 32


def test_report_is_json_serialisable_and_has_the_promised_keys():
    report = inspect_model(_qdq_model(), nodes=True, top=2)
    assert json.loads(json.dumps(report)) == report
    assert report["producer"] == {"name": "test", "version": "1.0"}
    assert report["opset"] == {"ai.onnx": 17}
    assert report["num_nodes"] == 7
    assert list(report["op_histogram"].items()) == [
        ("DequantizeLinear", 2), ("MatMul", 2), ("Conv", 1), ("Flatten", 1), ("QuantizeLinear", 1)]
    node = report["nodes"][3]
    assert node == {"name": "qconv", "op": "Conv", "inputs": [[1, 1, 4, 4], [4, 1, 3, 3]],
                    "output": [[1, 4, 2, 2]], "params": 0, "macs": 144, "sparsity": 0.5, "int8": True}
    assert report["nodes"][0]["name"] == "QuantizeLinear#0"   # unnamed nodes get op#index


def test_top_lists_heaviest_nodes_first():
    report = inspect_model(_qdq_model(), top=2)
    assert [(n["name"], n["macs"]) for n in report["top"]] == [("qconv", 144), ("act_only", 64)]
    assert report["top"][0]["share"] == pytest.approx(144 / (144 + 64 + 48))
    assert "nodes" not in inspect_model(_qdq_model())
    assert "top" not in inspect_model(_qdq_model())


# --- acceptance and performance ------------------------------------------------------------------

def test_light_resnet50_macs():
    # Weights there are ConstantOfShape outputs: not constant, but their shapes are inferred.
    report = inspect_model(onnx.load(LIGHT_RESNET50))
    assert report["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert report["macs"] == pytest.approx(4.1e9, rel=0.02)
    assert report["macs_unknown_nodes"] == 0
    assert report["op_histogram"]["Conv"] == 53


def test_ten_thousand_node_chain_is_fast():
    nodes = []
    for i in range(5000):
        nodes.append(helper.make_node("MatMul", [f"t{2 * i}", "w"], [f"t{2 * i + 1}"]))
        nodes.append(helper.make_node("Relu", [f"t{2 * i + 1}"], [f"t{2 * i + 2}"]))
    model = _model(nodes, [_input("t0", ["batch", 16])], [_input("t10000", None)], [_weight("w", [16, 16])])
    start = time.perf_counter()
    report = inspect_model(model, nodes=True, top=10)
    assert time.perf_counter() - start < 5.0
    assert report["num_nodes"] == 10000
    assert report["macs"] == 5000 * 16 * 16
    assert report["sparsity"]["total_weights"] == 256   # shared weight counted once


# --- text output ---------------------------------------------------------------------------------

def test_render_text_shows_key_facts():
    console = Console(record=True, width=120)
    render_text(inspect_model(onnx.load(LIGHT_RESNET50), top=3, nodes=True), console)
    text = console.export_text()
    for fact in ("onnx-caffe2", "ai.onnx 9", "gpu_0/data_0", "[1, 3, 224, 224]", "415",
                 "4.09 GMACs", "ConstantOfShape", "Top 3 nodes by MACs", "[1, 64, 112, 112]", "n/a"):
        assert fact in text, fact


def test_render_text_quantized_model():
    console = Console(record=True, width=120)
    render_text(inspect_model(_symbolic_conv_model(), dims={"h": 4, "w": 4}), console)
    render_text(inspect_model(_qdq_model()), console)
    text = console.export_text()
    assert "[batch, 3, h, w]" in text and "batch=1, h=4, w=4" in text
    assert "66.7% (2 of 3 Conv/Gemm/MatMul nodes int8)" in text
    assert "21.4% (18 of 84 weights are zero)" in text
    assert "int8 36 / 36 B" in text
