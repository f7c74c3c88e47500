"""Integer arithmetic of the runtime: kernel paths against exact references, QLinearAdd rounding."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime import Session, int8


def _qlinear_add_reference(a, sa, za, b, sb, zb, sc, zc):
    """onnxruntime's AVX2 QLinearAdd, element by element, with a true float32 FMA via float64."""
    ra, rb = np.float32(sa) / np.float32(sc), np.float32(sb) / np.float32(sc)
    fixed = np.float32(zc) - (np.float32(ra * np.float32(za)) + np.float32(rb * np.float32(zb)))
    a, b = np.broadcast_arrays(a, b)
    partial = (b.astype(np.float64) * rb + fixed).astype(np.float32)
    value = (a.astype(np.float64) * ra + partial).astype(np.float32)
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("a_shape, b_shape", [((2, 3, 5), (5,)), ((5,), (2, 3, 5)), ((2, 3, 5), (2, 1, 5)),
                                              ((4, 7), (4, 7)), ((), (3,))])
def test_qlinear_add_broadcasts_and_rounds_like_onnxruntime(a_shape, b_shape):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, a_shape).astype(np.uint8)
    b = rng.integers(0, 256, b_shape).astype(np.uint8)
    ours = int8.QLinearAdd(0.021, 97, 0.037, 131, 0.045, 120)(a, b)
    np.testing.assert_array_equal(ours, _qlinear_add_reference(a, 0.021, 97, b, 0.037, 131, 0.045, 120))


@pytest.mark.parametrize("scales", [(0.021, 97, 0.037, 131, 0.045, 120), (0.5, 0, 0.5, 255, 1.0, 0),
                                    (0.0123, 128, 0.0991, 3, 0.0457, 250), (1e-3, 200, 2e-3, 10, 7e-4, 77)])
def test_qlinear_add_c_loop_on_every_input_pair(scales):
    """kernels/bytewise.c (flat and row-broadcast calls, with a non-contiguous operand) against the
    reference on all 65,536 pairs of uint8 values."""
    a = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    b = np.tile(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    add = int8.QLinearAdd(*scales)
    assert add.c_exact  # else the C loop is not used
    sa, za, sb, zb, sc, zc = scales
    np.testing.assert_array_equal(add(a, b), _qlinear_add_reference(a, sa, za, b, sb, zb, sc, zc))
    np.testing.assert_array_equal(add(a.T, b.T), _qlinear_add_reference(a.T, sa, za, b.T, sb, zb, sc, zc))
    row = np.arange(256, dtype=np.uint8)[::-1]
    np.testing.assert_array_equal(add(a, row), _qlinear_add_reference(a, sa, za, row, sb, zb, sc, zc))
    np.testing.assert_array_equal(add(row, b), _qlinear_add_reference(row, sa, za, b, sb, zb, sc, zc))


@pytest.mark.parametrize("shape", [(1, 32, 1024), (3, 5, 7), (64,), (65,), (1,), (0, 4)])
def test_uint8_table_lookup_in_c(shape):
    """kernels/bytewise.c's lookup (64 values a step, a masked tail) against numpy's indexing,
    on every table entry, contiguous and strided inputs."""
    rng = np.random.default_rng(5)
    table = rng.integers(0, 256, 256, dtype=np.uint8)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    if x.size >= 256:
        x.reshape(-1)[:256] = np.arange(256)
    np.testing.assert_array_equal(int8.lookup(x, table), table[x])
    np.testing.assert_array_equal(int8.TableLookup(table)(x.T), table[x.T])
    if x.ndim == 3:
        np.testing.assert_array_equal(int8.lookup(x[:, :, ::3], table), table[x[:, :, ::3]])


@pytest.mark.parametrize("scale, zero_point", [(0.05, 128), (0.3, 10), (1e-3, 255), (0.0734, 0)])
def test_quantized_softmax_exp_table_gives_the_computed_values(scale, zero_point):
    """The 256 x 256 exp table against the row-by-row computation it replaces (itself the three
    unfused kernels' arithmetic): attention-shaped rows, odd widths, constant rows."""
    rng = np.random.default_rng(int(scale * 1000) + zero_point)
    softmax = int8.QuantizedSoftmax(scale, zero_point, 1 / 256, 0, fallback=None)
    assert softmax.table is not None
    for q in (rng.integers(0, 256, (1, 4, 32, 32)).astype(np.uint8), rng.integers(100, 140, (3, 7, 77)).astype(np.uint8),
              np.full((2, 5), 7, np.uint8)):
        rows = q.reshape(-1, q.shape[-1])
        expected = np.empty_like(rows)
        int8._softmax_uint8(rows, *softmax.args_in, *softmax.args_out, expected)
        np.testing.assert_array_equal(softmax(q), expected.reshape(q.shape))


def _qlinear_matmul_model(a_dtype, w, w_zp, y_dtype):
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.02, np.float32), "sa"),
             numpy_helper.from_array(np.array(3, a_dtype), "za"),
             numpy_helper.from_array(np.array(0.005, np.float32), "sw"),
             numpy_helper.from_array(np.array(w_zp, w.dtype), "zw"),
             numpy_helper.from_array(np.array(0.07, np.float32), "sy"),
             numpy_helper.from_array(np.array(9, y_dtype), "zy")]
    node = helper.make_node("QLinearMatMul", ["a", "sa", "za", "w", "sw", "zw", "sy", "zy"], ["y"], name="qmm")
    a_type = helper.np_dtype_to_tensor_dtype(np.dtype(a_dtype))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", a_type, [5, 19])],
                              [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(y_dtype)),
                                                             [5, 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
def test_qlinear_matmul_kernel_path_equals_the_exact_fallback(a_dtype):
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (19, 7)).astype(np.int8)
    info = np.iinfo(a_dtype)
    a = rng.integers(info.min, info.max + 1, (5, 19)).astype(a_dtype)
    # int8 weights with zero point 0: the compiled kernel; the reference is the exact fallback
    kernel = Session(_qlinear_matmul_model(a_dtype, w, 0, np.uint8)).run(None, {"a": a})[0]
    acc = int8.exact_matmul(a, np.array(3), w, None)
    expected = int8.requantize(acc, int8.multiplier(0.02, 0.005, 0.07), 9, np.dtype(np.uint8))
    np.testing.assert_array_equal(kernel, expected)


def test_matmul_integer_with_int8_activations_uses_the_shift_exactly():
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (4, 33)).astype(np.int8)
    w = rng.integers(-128, 128, (33, 6)).astype(np.int8)
    node = helper.make_node("MatMulInteger", ["a", "w", "za"], ["y"], name="mmi")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.INT8, [4, 33])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 6])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(-5, np.int8), "za")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (ours,) = Session(model).run(None, {"a": a})
    np.testing.assert_array_equal(ours, (a.astype(np.int32) + 5) @ w.astype(np.int32))


def _qdq_binary_model(op_type: str, b_shape):
    def const(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), name)
    inits = [const("sa", 0.021, np.float32), const("za", 97, np.uint8), const("sb", 0.037, np.float32),
             const("zb", 131, np.uint8), const("sc", 0.045, np.float32), const("zc", 120, np.uint8)]
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"], name="dqa"),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"], name="dqb"),
             helper.make_node(op_type, ["af", "bf"], ["cf"], name="op"),
             helper.make_node("QuantizeLinear", ["cf", "sc", "zc"], ["c"], name="q")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 40, 8]),
                                           helper.make_tensor_value_info("b", TensorProto.UINT8, b_shape)],
                              [helper.make_tensor_value_info("c", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op_type", ["Add", "Mul"])
@pytest.mark.parametrize("b_shape", [[3, 40, 8], [8], [3, 1, 8], [1], [3, 40, 1], [3, 1, 1]])
def test_qdq_add_and_mul_are_lowered_and_bit_exact_against_onnxruntime(op_type, b_shape):
    import onnxruntime as ort
    model = _qdq_binary_model(op_type, b_shape)
    rng = np.random.default_rng(4)
    feeds = {"a": rng.integers(0, 256, (3, 40, 8)).astype(np.uint8),
             "b": rng.integers(0, 256, b_shape).astype(np.uint8)}
    session = Session(model)
    assert [g.spec.op_type for g in session.lowered] == [f"Int8{op_type}"]
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(session.run(None, feeds)[0], theirs[0])


@pytest.mark.parametrize("seed", range(4))
def test_qdq_add_matches_onnxruntime_on_every_input_pair(seed):
    """All 65,536 (a, b) pairs, once elementwise and once with b one value per row (broadcast)."""
    import onnxruntime as ort
    rng = np.random.default_rng(seed)
    scales, zero_points = rng.uniform(0.001, 0.1, 3), rng.integers(0, 256, 3)
    a = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    for b in (np.arange(256, dtype=np.uint8).reshape(256, 1), a.T.copy()):
        def const(name, value, dtype):
            return numpy_helper.from_array(np.array(value, dtype), name)
        inits = [const("sa", scales[0], np.float32), const("za", zero_points[0], np.uint8),
                 const("sb", scales[1], np.float32), const("zb", zero_points[1], np.uint8),
                 const("sc", scales[2], np.float32), const("zc", zero_points[2], np.uint8)]
        nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["af"], name="dqa"),
                 helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bf"], name="dqb"),
                 helper.make_node("Add", ["af", "bf"], ["cf"], name="add"),
                 helper.make_node("QuantizeLinear", ["cf", "sc", "zc"], ["c"], name="q")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape),
                                               helper.make_tensor_value_info("b", TensorProto.UINT8, b.shape)],
                                  [helper.make_tensor_value_info("c", TensorProto.UINT8, None)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        feeds = {"a": a, "b": b}
        theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        np.testing.assert_array_equal(Session(model).run(None, feeds)[0], theirs[0])


@pytest.mark.parametrize("op_type", ["Add", "Mul"])
@pytest.mark.parametrize("b_shape, constant_first", [([1], False), ([], False), ([1], True)])
def test_qdq_binary_with_a_constant_scalar_is_a_lookup_table_bit_exact(op_type, b_shape, constant_first):
    import onnxruntime as ort
    model = _qdq_binary_model(op_type, b_shape)
    b = numpy_helper.from_array(np.array(201, np.uint8).reshape(b_shape), "b")
    model.graph.initializer.append(b)
    del model.graph.input[1]
    if constant_first:
        op = next(n for n in model.graph.node if n.op_type == op_type)
        op.input[0], op.input[1] = op.input[1], op.input[0]
    feeds = {"a": np.tile(np.arange(256, dtype=np.uint8), 4)[:960].reshape(3, 40, 8)}
    session = Session(model)
    assert [(g.spec.op_type, g.spec.inputs) for g in session.lowered] == [(f"Int8{op_type}", ["a"])]
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(session.run(None, feeds)[0], theirs[0])


@pytest.mark.parametrize("quantize", [None, (np.float32(0.37), 11)])
def test_activation_product_equals_the_exact_float_sums(quantize):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (2, 3, 5, 67)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 3, 7, 67)).astype(np.uint8).transpose(0, 1, 3, 2)  # a strided Kᵀ
    product = int8.ActivationProduct(131, 97, np.float32(0.02 * 0.03), quantize, (20, 250))
    np.testing.assert_array_equal(product(a, b), product._exact(a, b))
    acc = (a.astype(np.int64) - 131) @ (b.astype(np.int64) - 97)
    np.testing.assert_array_equal(int8.exact_matmul(a, 131, b, 97), acc)


def test_constant_per_tensor_quantize_and_dequantize_use_onnx_arithmetic():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((2, 3, 50)) * 4).astype(np.float32)
    x[0, 0, :4] = [0.25, 0.75, -0.25, 1e9]  # halves round to even; saturation
    scale, zero_points = np.float32(0.5), {np.uint8: 7, np.int8: -3}
    for dtype, zero_point in zero_points.items():
        inits = [numpy_helper.from_array(np.array(scale), "s"),
                 numpy_helper.from_array(np.array(zero_point, dtype), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                                  [helper.make_tensor_value_info("q", elem, x.shape),
                                   helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        q, y = Session(model).run(None, {"x": x})
        info = np.iinfo(dtype)
        expected_q = np.clip(np.rint(x / scale) + zero_point, info.min, info.max).astype(dtype)
        np.testing.assert_array_equal(q, expected_q)
        np.testing.assert_array_equal(y, (expected_q.astype(np.int32) - zero_point).astype(np.float32) * scale)
