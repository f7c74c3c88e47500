"""uint8 weights with a zero point and float biases (onnxruntime's quantize_static on a model whose
weights are Constant nodes: ``DQ(Q(W_const, s_w, zw_uint8))``, bias a float32 Constant) lowered
to the int8 kernels (:class:`graphopt.runtime.int8.OffsetWeightConv` / ``OffsetWeightProduct``),
compared with onnxruntime within one quantization step of the output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime import Session, int8

X_SCALE, Y_SCALE, W_SCALE = 0.03, 0.05, 0.004


def _const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name + "_v"),
                            name=name + "_const")


def _weight_nodes(w_float, zw, as_constant, prefix="w"):
    """Nodes making ``DQ(weights)``: a Constant float tensor quantized by a Q node (as
    quantize_static writes it for Constant weights), or a uint8 initializer-like Constant."""
    nodes = [_const(f"{prefix}_s", np.array(W_SCALE, np.float32)), _const(f"{prefix}_z", np.array(zw, np.uint8))]
    if as_constant:
        nodes += [_const(f"{prefix}_f", w_float),
                  helper.make_node("QuantizeLinear", [f"{prefix}_f", f"{prefix}_s", f"{prefix}_z"], [f"{prefix}_q"])]
    else:
        q = np.clip(np.rint(w_float / np.float32(W_SCALE)) + zw, 0, 255).astype(np.uint8)
        nodes.append(_const(f"{prefix}_q", q))
    nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_s", f"{prefix}_z"], [f"{prefix}_dq"]))
    return nodes


def _model(op_nodes, x_shape, y_shape, zx, zy, quantize_output=True, opset=17):
    """x → Q/DQ (zx) → op_nodes (reading "x_dq", writing "p") → [Q/DQ (zy)] → y."""
    nodes = [_const("x_s", np.array(X_SCALE, np.float32)), _const("x_z", np.array(zx, np.uint8)),
             helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"])] + op_nodes
    if quantize_output:
        nodes += [_const("y_s", np.array(Y_SCALE, np.float32)), _const("y_z", np.array(zy, np.uint8)),
                  helper.make_node("QuantizeLinear", ["p", "y_s", "y_z"], ["y_q"]),
                  helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_z"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["p"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _conv_model(zx, zw, zy, *, channels=5, out_channels=6, size=9, kernel=3, stride=1, pad=1, group=1,
                bias=True, relu=False, as_constant=True, quantize_output=True, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out_channels, channels // group, kernel, kernel)) * 0.2).astype(np.float32)
    nodes = _weight_nodes(w, zw, as_constant)
    inputs = ["x_dq", "w_dq"]
    if bias:
        nodes.append(_const("b", (rng.standard_normal(out_channels) * 0.3).astype(np.float32)))
        inputs.append("b")
    conv_out = "c" if relu else "p"
    nodes.append(helper.make_node("Conv", inputs, [conv_out], name="conv", kernel_shape=[kernel, kernel],
                                  strides=[stride, stride], pads=[pad] * 4, group=group))
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["p"]))
    out = (size + 2 * pad - kernel) // stride + 1
    return _model(nodes, (2, channels, size, size), (2, out_channels, out, out), zx, zy, quantize_output)


def _matmul_model(zx, zw, zy, *, k=23, n=7, gemm=False, trans_b=False, seed=0, batch=(3, 4)):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k) if trans_b else (k, n)) * 0.2).astype(np.float32)
    nodes = _weight_nodes(w, zw, True)
    if gemm:
        nodes.append(_const("b", (rng.standard_normal(n) * 0.3).astype(np.float32)))
        nodes.append(helper.make_node("Gemm", ["x_dq", "w_dq", "b"], ["p"], name="gemm", transB=int(trans_b)))
        x_shape, y_shape = (batch[0], k), (batch[0], n)
    else:
        nodes.append(helper.make_node("MatMul", ["x_dq", "w_dq"], ["p"], name="matmul"))
        x_shape, y_shape = batch + (k,), batch + (n,)
    return _model(nodes, x_shape, y_shape, zx, zy)


def _inputs(model, seed=1):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": (np.random.default_rng(seed).standard_normal(shape) * 2).astype(np.float32)}


def _onnxruntime(model, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _check(model, step, kernel_type, feeds=None):
    feeds = feeds or _inputs(model)
    session = Session(model)
    kinds = [type(group.kernel) for group in session.lowered]
    assert kernel_type in kinds, kinds
    ours, theirs = session.run(None, feeds)[0], _onnxruntime(model, feeds)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=step * 1.0001)
    return ours, theirs


@pytest.mark.parametrize("zx, zw, zy", [(0, 0, 0), (37, 37, 128), (128, 128, 37), (255, 255, 255),
                                        (128, 0, 128), (37, 255, 0)])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_uint8_weights_within_one_step(zx, zw, zy, stride):
    model = _conv_model(zx, zw, zy, stride=stride)
    ours, theirs = _check(model, Y_SCALE, int8.OffsetWeightConv)
    # the arithmetic is onnxruntime's QLinearConv (after its WeightBiasQuantization): bit-exact
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("zw", [0, 37, 128, 255])
def test_depthwise_conv_uint8_weights(zw):
    model = _conv_model(37, zw, 128, channels=6, out_channels=6, group=6, kernel=5, pad=2, stride=2)
    _check(model, Y_SCALE, int8.OffsetWeightConv)


@pytest.mark.parametrize("as_constant", [True, False])
def test_conv_relu_no_bias_and_uint8_weight_initializer(as_constant):
    model = _conv_model(37, 200, 0, bias=False, relu=True, as_constant=as_constant, pad=0, kernel=1)
    _check(model, Y_SCALE, int8.OffsetWeightConv)


def test_conv_uint8_weights_float_output():
    """No QuantizeLinear after the Conv: float32 output, float-close to onnxruntime's float Conv."""
    model = _conv_model(37, 37, 0, quantize_output=False, stride=2)
    feeds = _inputs(model)
    session = Session(model)
    assert any(isinstance(g.kernel, int8.OffsetWeightConv) for g in session.lowered)
    ours, theirs = session.run(None, feeds)[0], _onnxruntime(model, feeds)
    # the float bias is rounded to a multiple of s_x * s_w as onnxruntime rounds it (half a unit)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=X_SCALE * W_SCALE)


@pytest.mark.parametrize("zx, zw", [(0, 0), (37, 37), (128, 128), (255, 255), (37, 200)])
def test_matmul_uint8_weights(zx, zw):
    ours, theirs = _check(_matmul_model(zx, zw, 37), Y_SCALE, int8.OffsetWeightProduct)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_uint8_weights_float_bias(trans_b):
    _check(_matmul_model(37, 99, 128, gemm=True, trans_b=trans_b), Y_SCALE, int8.OffsetWeightProduct)


def test_int8_weights_with_float_bias_use_the_offset_path_and_int32_bias_does_not():
    # int8 weights, zero point 0, float bias: offset 0, no extra channel
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    nodes = [_const("w_q", w), _const("w_s", np.array(W_SCALE, np.float32)), _const("w_z", np.array(0, np.int8)),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"]),
             _const("b", (rng.standard_normal(4) * 0.3).astype(np.float32)),
             helper.make_node("Conv", ["x_dq", "w_dq", "b"], ["p"], kernel_shape=[3, 3], pads=[1] * 4)]
    model = _model(nodes, (1, 3, 8, 8), (1, 4, 8, 8), 37, 128)
    ours, theirs = _check(model, Y_SCALE, int8.OffsetWeightConv)
    np.testing.assert_array_equal(ours, theirs)
    # the same with an int32 bias DQ: the existing path (a plain PreparedConv), unchanged
    nodes[4:5] = [_const("b_q", rng.integers(-500, 500, 4).astype(np.int32)),
                  _const("b_s", np.array(X_SCALE * W_SCALE, np.float32)),
                  helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"])]
    model = _model(nodes, (1, 3, 8, 8), (1, 4, 8, 8), 37, 128)
    kinds = [type(g.kernel) for g in Session(model).lowered]
    assert int8.PreparedConv in kinds and int8.OffsetWeightConv not in kinds


def test_depth_beyond_exact_int32_stays_float():
    k = int8.MAX_OFFSET_WEIGHT_K + 1
    model = _matmul_model(37, 99, 128, k=k, n=1, batch=(1,))
    session = Session(model)
    assert not any(isinstance(g.kernel, int8.OffsetWeightProduct) for g in session.lowered)
    feeds = _inputs(model)
    np.testing.assert_allclose(session.run(None, feeds)[0], _onnxruntime(model, feeds), rtol=0,
                               atol=Y_SCALE * 1.0001)


def test_offset_correction_is_exact_at_the_extremes():
    """x - zx and w - zw at ±255 everywhere, padding included: the int32 sums are exact."""
    rng = np.random.default_rng(4)
    for zx, zw in ((0, 255), (255, 0), (255, 255), (0, 0)):
        x = rng.choice(np.array([0, 255], np.uint8), (1, 4, 6, 6))
        w = rng.choice(np.array([0, 255], np.uint8), (3, 4, 3, 3))
        shifted, offset = int8.offset_weights(w, zw, 0)
        conv = int8.OffsetWeightConv(zx, shifted, offset, 1, _window(), 1, np.ones(3, np.float32), None, None)
        expected = int8.exact_conv(x, zx, w, np.array(zw), _window(), 1).astype(np.float32)
        np.testing.assert_array_equal(conv(x), expected)


def _window():
    from graphopt.runtime.ops import NodeSpec
    from graphopt.runtime.ops.nn import Window
    node = NodeSpec(name="c", op_type="Conv", inputs=["x", "w"], outputs=["y"],
                    attrs={"pads": [1, 1, 1, 1], "strides": [2, 2]}, consts=[None, None], opset=17, threads=1)
    return Window(node, [3, 3])


PPOCR_DIMS = {"ch_PP-OCRv4_det_infer.onnx": {"p2o.DynamicDimension.0": 1, "p2o.DynamicDimension.1": 96,
                                              "p2o.DynamicDimension.2": 96},
              "ch_PP-OCRv4_rec_infer.onnx": {"p2o.DynamicDimension.0": 1, "?": 48, "p2o.DynamicDimension.1": 96}}


@pytest.mark.parametrize("file_name, convs", [("ch_PP-OCRv4_det_infer.onnx", 62), ("ch_PP-OCRv4_rec_infer.onnx", 38)])
def test_ppocr_int8_convs_lowered_within_one_step(tmp_path, file_name, convs):
    """quantize_static U8S8 of PP-OCRv4 (Constant weights: uint8 weights with zero points, float
    biases): every Conv lowered, every output within one step of onnxruntime's (in fact equal)."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime", reason="PP-OCRv4 ships with rapidocr_onnxruntime")
    quantization = pytest.importorskip("onnxruntime.quantization")
    from graphopt.feeds import make_feeds
    source = Path(rapidocr.__file__).parent / "models" / file_name
    if not source.exists():
        pytest.skip(f"{file_name} not in rapidocr_onnxruntime")
    dims = PPOCR_DIMS[file_name]
    fp32 = onnx.load(source)
    calibration = iter([make_feeds(fp32, dims, seed=9)])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self):
            return next(calibration, None)

    path = tmp_path / "model.qdq.onnx"
    quantization.quantize_static(str(source), str(path), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8, per_channel=True)
    model = onnx.load(path)
    session = Session(path)
    lowered = [g for g in session.lowered if isinstance(g.kernel, int8.OffsetWeightConv)]
    assert len(lowered) == sum(n.op_type == "Conv" for n in model.graph.node) == convs
    assert not any(step.op_type == "Conv" for step in session._steps)
    # the output is DequantizeLinear(uint8): one step is its scale
    producer = {o: n for n in model.graph.node for o in n.output}
    last = producer[model.graph.output[0].name]
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    consts.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    assert last.op_type == "DequantizeLinear"
    step = float(consts[last.input[1]])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    theirs = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for seed in range(2):
        feeds = make_feeds(model, dims, seed=seed)
        ours, expected = session.run(None, feeds)[0], theirs.run(None, feeds)[0]
        np.testing.assert_allclose(ours, expected, rtol=0, atol=step * 1.0001)


def _uint8_model(nodes, inputs, output_shape, inits):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.UINT8, s) for n, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, output_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_qlinear_mul_adds_the_zero_point_before_rounding_like_onnxruntime():
    """ppocr-det's HardSwish: (196 - 178) * (255 - 0) * ratio = 58.5000076, + 6 rounds (in
    float32) to the tie 64.5 and onnxruntime's QLinearMul writes 64, not rint(58.50..) + 6 = 65."""
    scales = dict(sa=np.float32(0.2034403), za=np.uint8(178), sb=np.float32(0.023529412), zb=np.uint8(0),
                  sy=np.float32(0.37558204), zy=np.uint8(6))
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"]),
             helper.make_node("Mul", ["af", "bf"], ["yf"]), helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"])]
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (4, 96)).astype(np.uint8)
    b = rng.integers(0, 256, (4, 96)).astype(np.uint8)
    a[0, :3], b[0, :3] = 196, 255
    model = _uint8_model(nodes, [("a", [4, 96]), ("b", [4, 96])], [4, 96], scales)
    session = Session(model)
    assert any(isinstance(g.kernel, int8.QLinearMul) for g in session.lowered)
    ours = session.run(None, {"a": a, "b": b})[0]
    assert ours[0, 0] == 64
    np.testing.assert_array_equal(ours, _onnxruntime(model, {"a": a, "b": b}))


@pytest.mark.parametrize("kernel, strides, pads, include_pad", [([3, 2], [3, 2], [0, 0, 0, 0], 0),
                                                                ([3, 3], [2, 2], [1, 1, 1, 1], 0),
                                                                ([3, 3], [1, 1], [1, 1, 1, 1], 1),
                                                                ([6, 8], [1, 1], [0, 0, 0, 0], 0)])
def test_average_pool_is_onnxruntime_qlinear_average_pool(kernel, strides, pads, include_pad):
    """DQ → AveragePool → Q as onnxruntime's QLinearAveragePool (the float steps round ties
    differently: ppocr-rec's 3x2 pool differed from onnxruntime by one step in 2.5% of values).
    A window over the whole image (last case) is onnxruntime's global pool: the float steps run."""
    inits = dict(s=np.float32(0.05), z=np.uint8(131), so=np.float32(0.05), zo=np.uint8(128))
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             helper.make_node("AveragePool", ["xf"], ["pf"], kernel_shape=kernel, strides=strides, pads=pads,
                              count_include_pad=include_pad),
             helper.make_node("QuantizeLinear", ["pf", "so", "zo"], ["y"])]
    shape = [2, 5, 6, 8]
    out = [(n + pads[i] + pads[i + 2] - k) // s + 1 for i, (n, k, s) in enumerate(zip(shape[2:], kernel, strides))]
    model = _uint8_model(nodes, [("x", shape)], shape[:2] + out, inits)
    x = np.random.default_rng(6).integers(0, 256, shape).astype(np.uint8)
    session = Session(model)
    assert [s.op_type for s in session._steps] == ["Int8AveragePool"]
    ours, theirs = session.run(None, {"x": x})[0], _onnxruntime(model, {"x": x})
    if kernel == shape[2:]:
        assert np.abs(ours.astype(int) - theirs).max() <= 1
    else:
        np.testing.assert_array_equal(ours, theirs)


def test_qlinear_add_fixed_part_uses_onnxruntime_fma():
    """ppocr-rec's LayerNorm bias Add: a=146, b=40 gives exactly 138.5000074; onnxruntime's fixed
    part zc - fma(ra, za, rb*zb) = -15.70829 makes it the tie 138.5 (written 138), two roundings
    -15.708282 would give 139."""
    scales = dict(sa=np.float32(0.01751188), za=np.uint8(75), sb=np.float32(0.0031290413), zb=np.uint8(140),
                  sy=np.float32(0.017391387), zy=np.uint8(85))
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"]),
             helper.make_node("Add", ["af", "bf"], ["yf"]), helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"])]
    a = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    b = np.tile(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    model = _uint8_model(nodes, [("a", [256, 256]), ("b", [256, 256])], [256, 256], scales)
    ours = Session(model).run(None, {"a": a, "b": b})[0]
    assert ours[146, 40] == 138
    np.testing.assert_array_equal(ours, _onnxruntime(model, {"a": a, "b": b}))


@pytest.mark.parametrize("axis, shape", [(3, [1, 2, 40, 40]), (2, [1, 40, 6625]), (1, [2, 3, 4, 5])])
def test_softmax_before_opset_13_is_onnxruntime_qlinear_softmax(axis, shape):
    """``DQ → Softmax → Q`` at opset 12 (ppocr-rec's attention and head): onnxruntime's
    QLinearSoftmax table arithmetic, bit for bit, also with the Q → DQ after it."""
    inits = dict(s=np.float32(0.100082085), z=np.uint8(146), so=np.float32(1 / 255), zo=np.uint8(0))
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             helper.make_node("Softmax", ["xf"], ["pf"], axis=axis),
             helper.make_node("QuantizeLinear", ["pf", "so", "zo"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "so", "zo"], ["yf"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
                              [helper.make_tensor_value_info("yf", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    x = np.random.default_rng(7).integers(100, 256, shape).astype(np.uint8)
    session = Session(model)
    assert any(isinstance(g.kernel, int8.QLinearSoftmax) for g in session.lowered)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], _onnxruntime(model, {"x": x}))
