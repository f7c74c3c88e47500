"""The fast paths of the non-GEMM ops: int8 binary layouts (bias rows, per-channel vectors),
composed lookup tables, fused Quantize/Dequantize edges, and the fp32 Numba kernels — each
against onnxruntime (bit for bit for the integer ops) or numpy's reference arithmetic."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime import Session, int8


def _ort(model, feeds):
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _model(nodes, inputs, inits, opset=17, outputs=(("c", TensorProto.UINT8),)):
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(o, t, None) for o, t in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _const(name, value, dtype):
    return numpy_helper.from_array(np.array(value, dtype), name)


def _binary_model(op_type, a_shape, b_shape, params=(0.021, 97, 0.037, 131, 0.045, 120)):
    sa, za, sb, zb, sc, zc = params
    inits = [_const("sa", sa, np.float32), _const("za", za, np.uint8), _const("sb", sb, np.float32),
             _const("zb", zb, np.uint8), _const("sc", sc, np.float32), _const("zc", zc, np.uint8)]
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"]),
             helper.make_node(op_type, ["af", "bf"], ["cf"]),
             helper.make_node("QuantizeLinear", ["cf", "sc", "zc"], ["c"])]
    return _model(nodes, [helper.make_tensor_value_info("a", TensorProto.UINT8, a_shape),
                          helper.make_tensor_value_info("b", TensorProto.UINT8, b_shape)], inits)


SHAPES = [((1, 24, 40, 40), (1, 24, 1, 1)),   # per-channel vector (b one value per row)
          ((1, 24, 1, 1), (1, 24, 40, 40)),   # the same with a as the vector
          ((2, 32, 64), (64,)),               # a bias row
          ((64,), (2, 32, 64)),
          ((1, 4, 32, 32), (1, 1, 1, 32)),    # an attention mask: a row of 32
          ((1, 32, 256), (32, 256)),
          ((3, 5, 20), (3, 1, 1)),
          ((3, 5, 20), (1,)),                 # a scalar: one row
          ((1,), (3, 5, 20)),
          ((3, 5, 20), ()),
          ((3, 1, 20), (1, 5, 1)),            # mutual broadcast
          ((4, 7), (4, 7)),
          ((0, 7), (7,))]


@pytest.mark.parametrize("op_type", ["Add", "Mul"])
@pytest.mark.parametrize("a_shape, b_shape", SHAPES)
def test_int8_binary_layouts_bit_exact_against_onnxruntime(op_type, a_shape, b_shape):
    rng = np.random.default_rng(7)
    feeds = {"a": rng.integers(0, 256, a_shape).astype(np.uint8),
             "b": rng.integers(0, 256, b_shape).astype(np.uint8)}
    model = _binary_model(op_type, a_shape, b_shape)
    session = Session(model)
    assert [g.spec.op_type for g in session.lowered] == [f"Int8{op_type}"]
    ours = session.run(None, feeds)[0]
    theirs = _ort(model, feeds)[0]
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(session.run(None, feeds)[0], theirs)  # the prepared call again


@pytest.mark.parametrize("seed", range(3))
def test_int8_add_channel_and_rows_cover_every_input_pair(seed):
    """All 65,536 (a, b) pairs through the per-row (channel) and repeated-row kernels."""
    rng = np.random.default_rng(seed)
    params = (*rng.uniform(0.001, 0.1, 3),)
    zps = rng.integers(0, 256, 3)
    args = (params[0], zps[0], params[1], zps[1], params[2], zps[2])
    add = int8.QLinearAdd(*args)
    levels = np.arange(256, dtype=np.uint8)
    a = np.tile(levels, (256, 1)).reshape(1, 256, 256)
    expected = None
    for b in (levels.reshape(1, 256, 1),):
        a_full, b_full = np.broadcast_arrays(a, b)
        expected = add._prepare(a_full.shape, a_full.shape)(np.ascontiguousarray(a_full), np.ascontiguousarray(b_full))
        np.testing.assert_array_equal(add(a, b), expected)  # b per row
        np.testing.assert_array_equal(add(b, a), add._prepare(a_full.shape, a_full.shape)(
            np.ascontiguousarray(b_full), np.ascontiguousarray(a_full)))  # a per row
    row = levels.reshape(1, 1, 256)
    a_col = np.repeat(levels, 256).reshape(1, 256, 256)
    np.testing.assert_array_equal(add(a_col, row), add(a_col, np.broadcast_to(row, a_col.shape).copy()))


def _hardswish_chain_model(shape):
    """Conv-free HardSwish as paddle2onnx spells it, every tensor between Q/DQ pairs:
    x → Q → DQ → Add 3 → Q → DQ → Clip(0, 6) → Q → DQ → Mul(x, ·) → Q → DQ → Div 6 → Q → DQ."""
    inits, nodes = [], []
    scales = {"x": 0.05, "p": 0.04, "c": 0.024, "m": 0.2, "h": 0.035}
    zps = {"x": 128, "p": 40, "c": 0, "m": 60, "h": 20}
    for k in scales:
        inits += [_const(f"s{k}", scales[k], np.float32), _const(f"z{k}", zps[k], np.uint8)]
    inits += [_const("three", [3.0], np.float32), _const("six", 6.0, np.float32), _const("zero", 0.0, np.float32)]

    def qdq(src, k):
        nodes.append(helper.make_node("QuantizeLinear", [src, f"s{k}", f"z{k}"], [f"{k}q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{k}q", f"s{k}", f"z{k}"], [f"{k}d"]))
        return f"{k}d"
    xd = qdq("x", "x")
    nodes.append(helper.make_node("Add", [xd, "three"], ["p"]))
    pd = qdq("p", "p")
    nodes.append(helper.make_node("Clip", [pd, "zero", "six"], ["c"]))
    cd = qdq("c", "c")
    nodes.append(helper.make_node("Mul", [xd, cd], ["m"]))
    md = qdq("m", "m")
    nodes.append(helper.make_node("Div", [md, "six"], ["h"]))
    hd = qdq("h", "h")
    nodes.append(helper.make_node("Identity", [hd], ["y"]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], inits, outputs=(("y", TensorProto.FLOAT),))


@pytest.mark.parametrize("shape", [[1, 8, 30, 30], [5]])
def test_chains_of_int8_tables_compose_into_one_pass_bit_exact(shape):
    model = _hardswish_chain_model(shape)
    x = np.random.default_rng(3).uniform(-8, 8, shape).astype(np.float32)
    x.reshape(-1)[:3] = [np.nan, np.inf, -np.inf] if x.size > 3 else x.reshape(-1)[:3]
    session = Session(model)
    ops = [s.op_type for s in session._steps]
    # x → Q → one table (Add, Clip, Mul, Div composed) → DQ: a single step before the Identity
    assert ops == ["QuantizeLookup", "Identity"], ops
    ours, theirs = session.run(None, {"x": x})[0], _ort(model, {"x": x})[0]
    np.testing.assert_array_equal(ours, theirs)


def test_quantize_then_dequantize_is_one_pass_and_exact():
    inits = [_const("s", 0.013, np.float32), _const("z", 77, np.uint8), _const("s2", 0.013, np.float32),
             _const("z2", 77, np.uint8)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s2", "z2"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 50])], inits, outputs=(("y", TensorProto.FLOAT),))
    x = np.random.default_rng(0).uniform(-3, 3, (3, 50)).astype(np.float32)
    x[0, :4] = [np.nan, np.inf, -np.inf, 0.5 * 0.013]
    session = Session(model)
    assert [s.op_type for s in session._steps] == ["QuantizeDequantize", "Relu"]
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], _ort(model, {"x": x})[0])


def test_a_tensor_with_other_readers_is_not_fused_away():
    inits = [_const("s", 0.013, np.float32), _const("z", 77, np.uint8)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7])], inits, outputs=(("q", TensorProto.UINT8), ("d", TensorProto.FLOAT)))
    x = np.linspace(-1, 1, 7).astype(np.float32)
    ours, theirs = Session(model).run(None, {"x": x}), _ort(model, {"x": x})
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _fp32_model(node, inputs, inits=(), opset=20, outputs=("y",)):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_one_pass_matches_onnxruntime(approximate):
    x = np.concatenate([np.linspace(-12, 12, 4001), np.random.default_rng(0).normal(0, 3, 4000),
                        [0.0, -0.0, 1e-30, -1e-30, 60.0, -60.0]]).astype(np.float32).reshape(1, -1)
    model = _fp32_model(helper.make_node("Gelu", ["x"], ["y"], approximate=approximate), [("x", list(x.shape))])
    ours, theirs = Session(model).run(None, {"x": x})[0], _ort(model, {"x": x})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    special = np.array([[np.nan, np.inf]], np.float32)
    model = _fp32_model(helper.make_node("Gelu", ["x"], ["y"], approximate=approximate), [("x", [1, 2])])
    np.testing.assert_array_equal(Session(model).run(None, {"x": special})[0], [[np.nan, np.inf]])


@pytest.mark.parametrize("shape, axis, with_bias, outputs", [
    ((1, 32, 256), -1, True, ("y",)), ((2, 3, 4, 5), 2, False, ("y", "mean", "inv_std")),
    ((4, 7), 0, True, ("y", "mean", "inv_std")), ((3, 1000), 1, True, ("y", "mean"))])
def test_layer_norm_kernel_matches_onnxruntime_with_its_statistics(shape, axis, with_bias, outputs):
    rng = np.random.default_rng(1)
    x = (rng.normal(0, 2, shape) + 5).astype(np.float32)
    tail = shape[axis:]
    inits = [numpy_helper.from_array(rng.normal(1, 0.2, tail).astype(np.float32), "scale")]
    inputs = ["x", "scale"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.2, tail).astype(np.float32), "bias"))
        inputs.append("bias")
    node = helper.make_node("LayerNormalization", inputs, list(outputs), axis=axis, epsilon=1e-5)
    model = _fp32_model(node, [("x", list(shape))], inits, opset=17, outputs=outputs)
    ours, theirs = Session(model).run(None, {"x": x}), _ort(model, {"x": x})
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, axes, keepdims", [((1, 96, 14, 14), [2, 3], 1), ((1, 16, 56, 56), [-1, -2], 1),
                                                   ((2, 3, 5), [2], 0), ((2, 3, 5), [1, 2], 0),
                                                   ((2, 3, 5), [0, 2], 1), ((4, 0, 3), [2], 1)])
def test_reduce_mean_over_trailing_axes_matches_onnxruntime(shape, axes, keepdims):
    x = np.random.default_rng(2).normal(1, 2, shape).astype(np.float32)
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=axes, keepdims=keepdims)
    model = _fp32_model(node, [("x", list(shape))], opset=13)
    ours, theirs = Session(model).run(None, {"x": x})[0], _ort(model, {"x": x})[0]
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    node18 = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
    model18 = _fp32_model(node18, [("x", list(shape))], [numpy_helper.from_array(np.array(axes, np.int64), "axes")],
                          opset=18)
    np.testing.assert_allclose(Session(model18).run(None, {"x": x})[0], theirs, rtol=1e-5, atol=1e-6)


def test_global_average_pool_matches_onnxruntime():
    x = np.random.default_rng(3).normal(0, 1, (2, 24, 13, 9)).astype(np.float32)
    model = _fp32_model(helper.make_node("GlobalAveragePool", ["x"], ["y"]), [("x", [2, 24, 13, 9])], opset=13)
    np.testing.assert_allclose(Session(model).run(None, {"x": x})[0], _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_reshape_with_a_computed_shape_reparses_when_the_shape_changes():
    nodes = [helper.make_node("Shape", ["s"], ["shape"]), helper.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
                                           helper.make_tensor_value_info("s", TensorProto.FLOAT, ["a", "b"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    session = Session(model)
    for a, b in ((2, 6), (3, 4), (2, 6), (4, 3)):
        x = np.arange(12, dtype=np.float32)
        y = session.run(None, {"x": x, "s": np.zeros((a, b), np.float32)})[0]
        np.testing.assert_array_equal(y, x.reshape(a, b))


@pytest.mark.parametrize("with_bias", [True, False])
def test_dq_layer_norm_q_is_one_uint8_step_equal_to_the_three_steps(with_bias):
    from graphopt.runtime.ops import numba_fp32
    rng = np.random.default_rng(5)
    shape = (2, 16, 96)
    inits = [_const("s", 0.031, np.float32), _const("z", 121, np.uint8), _const("so", 0.027, np.float32),
             _const("zo", 130, np.uint8),
             numpy_helper.from_array(rng.normal(1, 0.3, 96).astype(np.float32), "gamma")]
    inputs = ["xf", "gamma"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, 96).astype(np.float32), "beta"))
        inputs.append("beta")
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             helper.make_node("LayerNormalization", inputs, ["yf"], axis=-1, epsilon=1e-5),
             helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["c"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)], inits)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    session = Session(model)
    assert [s.op_type for s in session._steps] == ["Int8LayerNorm"]
    ours = session.run(None, {"x": x})[0]
    xf = int8.dequantize(x, np.float32(0.031), np.int32(121))
    bias = numpy_helper.to_array(inits[-1]) if with_bias else None
    yf = numba_fp32.layer_norm(xf, numpy_helper.to_array(inits[4]), bias, 2, 1e-5)[0]
    np.testing.assert_array_equal(ours, int8.quantize_uint8(yf, np.float32(0.027), np.int32(130)))
    theirs = _ort(model, {"x": x})[0]
    assert np.abs(ours.astype(int) - theirs).max() <= 1


@pytest.mark.parametrize("coordinate_mode, nearest_mode, scales", [
    ("asymmetric", "floor", [1, 1, 2, 2]), ("half_pixel", "round_prefer_floor", [1, 1, 4, 4]),
    ("half_pixel", "round_prefer_ceil", [1, 1, 2, 3]), ("pytorch_half_pixel", "ceil", [1, 1, 3, 1]),
    ("asymmetric", "floor", [1, 1, 1, 2])])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_nearest_resize_of_the_last_two_axes_matches_onnxruntime(coordinate_mode, nearest_mode, scales, dtype):
    x = np.random.default_rng(6).uniform(0, 255, (2, 3, 5, 7)).astype(dtype)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                            coordinate_transformation_mode=coordinate_mode, nearest_mode=nearest_mode)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, list(x.shape))],
                              [helper.make_tensor_value_info("y", elem, None)],
                              [numpy_helper.from_array(np.array(scales, np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    ours, theirs = Session(model).run(None, {"x": x})[0], _ort(model, {"x": x})[0]
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_dq_softmax_q_is_one_uint8_step_equal_to_the_three_steps():
    from graphopt.runtime.ops import numba_fp32
    rng = np.random.default_rng(8)
    shape = (1, 4, 32, 32)
    inits = [_const("s", 0.11, np.float32), _const("z", 140, np.uint8), _const("so", 1 / 255, np.float32),
             _const("zo", 0, np.uint8)]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
             helper.make_node("Softmax", ["xf"], ["yf"], axis=-1),
             helper.make_node("QuantizeLinear", ["yf", "so", "zo"], ["c"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)], inits)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    session = Session(model)
    assert [s.op_type for s in session._steps] == ["Int8Softmax"]
    ours = session.run(None, {"x": x})[0]
    yf = numba_fp32.softmax_rows(int8.dequantize(x, np.float32(0.11), np.int32(140)), 128)
    np.testing.assert_array_equal(ours, int8.quantize_uint8(yf, np.float32(1 / 255), np.int32(0)))
    assert np.abs(ours.astype(int) - _ort(model, {"x": x})[0]).max() <= 1


def test_softmax_kernel_matches_onnxruntime_with_infinities():
    x = np.random.default_rng(9).normal(0, 4, (3, 5, 33)).astype(np.float32)
    x[0, 0, :5] = -np.inf
    x[1, 1, 3] = np.inf
    for axis, opset in ((-1, 13), (2, 13), (1, 11)):
        model = _fp32_model(helper.make_node("Softmax", ["x"], ["y"], axis=axis), [("x", [3, 5, 33])], opset=opset)
        ours, theirs = Session(model).run(None, {"x": x})[0], _ort(model, {"x": x})[0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
