"""The fp32 elementwise / pooling fast paths: the vectorized Sigmoid, the fused SiLU and Add+Relu
steps, the one-pass 2-D MaxPool (float32 and uint8) and elementwise ops split over the session's
threads (bit for bit the single-threaded values) — against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.runtime import Session
from graphopt.runtime.ops import elementwise


def _ort(model, feeds, threads=1):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(o, t, None) for o, t in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


F = TensorProto.FLOAT


def _run(model, feeds, threads=1):
    return Session(model.SerializeToString(), threads=threads).run(None, feeds)


def _step_types(model, threads=1):
    return [s.op_type for s in Session(model.SerializeToString(), threads=threads)._steps]


@pytest.mark.parametrize("threads", [1, 2])
def test_sigmoid_matches_onnxruntime(threads):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 8, 70, 90)) * 6).astype(np.float32)
    x.reshape(-1)[:9] = [0, -0.0, 88, -88, 100, -100, np.inf, -np.inf, 1e-30]
    model = _model([helper.make_node("Sigmoid", ["x"], ["y"])], [("x", F, x.shape)], [("y", F)])
    got, = _run(model, {"x": x}, threads)
    want, = _ort(model, {"x": x})
    # onnxruntime's logistic is a rational approximation, flushed to 0 far below -18
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-7)
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-37)
    small = _model([helper.make_node("Sigmoid", ["x"], ["y"])], [("x", F, [2])], [("y", F)])
    nan, = _run(small, {"x": np.array([np.nan, 1], np.float32)})
    assert np.isnan(nan[0]) and nan[1] == pytest.approx(0.7310586)


def _silu_model(extra_reader: bool, swap: bool, conv: bool):
    inits, nodes = [], []
    x = "x"
    if conv:
        w = np.random.default_rng(1).standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]))
        x = "c"
    nodes.append(helper.make_node("Sigmoid", [x], ["s"]))
    nodes.append(helper.make_node("Mul", ["s", x] if swap else [x, "s"], ["y"]))
    outputs = [("y", F)]
    if extra_reader:
        nodes.append(helper.make_node("Add", ["s", "s"], ["z"]))
        outputs.append(("z", F))
    return _model(nodes, [("x", F, [1, 4, 40, 50])], outputs, inits)


@pytest.mark.parametrize("extra_reader", [False, True])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("conv", [False, True])
def test_silu_pattern(extra_reader, swap, conv):
    x = (np.random.default_rng(2).standard_normal((1, 4, 40, 50)) * 4).astype(np.float32)
    model = _silu_model(extra_reader, swap, conv)
    types = _step_types(model)
    assert ("Sigmoid" in types) == extra_reader
    if not conv:
        assert ("SiLU" in types) != extra_reader
    got = _run(model, {"x": x})
    want = _ort(model, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-5)
    # the fused step gives the values of the two steps it replaces
    sig = 1 / (1 + np.exp(-x.astype(np.float64)))
    if not conv:
        np.testing.assert_allclose(got[0], x * sig, rtol=1e-6, atol=1e-37)


def test_silu_output_of_sigmoid_kept_is_not_fused():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    model = _model(nodes, [("x", F, [3, 5])], [("y", F), ("s", F)])
    assert "SiLU" not in _step_types(model)
    x = np.linspace(-5, 5, 15, dtype=np.float32).reshape(3, 5)
    for g, w in zip(_run(model, {"x": x}), _ort(model, {"x": x})):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=4e-7)


def _pool_model(shape, dtype, **attrs):
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    return _model([node], [("x", dtype, shape)], [("y", dtype)], opset=12)


POOLS = [
    ([1, 64, 56, 56], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ([2, 3, 17, 23], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ([1, 5, 16, 16], dict(kernel_shape=[2, 2], strides=[2, 2])),
    ([1, 4, 15, 13], dict(kernel_shape=[3, 2], strides=[1, 3], pads=[0, 1, 2, 1], ceil_mode=1)),
    ([1, 3, 20, 21], dict(kernel_shape=[3, 3], dilations=[2, 3], pads=[2, 1, 1, 2])),
    ([1, 2, 9, 9], dict(kernel_shape=[5, 5], auto_pad="SAME_UPPER")),
    ([1, 2, 9, 10], dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER")),
    ([1, 6, 12, 12], dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
    ([1, 3, 8, 9], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])),
    ([1, 3, 7, 7], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[2, 2, 2, 2])),
]


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8])
@pytest.mark.parametrize("shape,attrs", POOLS)
def test_max_pool_2d(shape, attrs, dtype):
    rng = np.random.default_rng(3)
    if dtype == TensorProto.FLOAT:
        x = rng.standard_normal(shape).astype(np.float32) - 3  # mostly negative: padding must not win
    elif dtype == TensorProto.INT8:
        x = rng.integers(-128, -100, shape, dtype=np.int8)  # near the lowest value: padding must not win
    else:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    model = _pool_model(shape, dtype, **attrs)
    want, = _ort(model, {"x": x})
    for threads in (1, 2):
        got, = _run(model, {"x": x}, threads)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_max_pool_threaded_large():
    x = np.random.default_rng(4).standard_normal((1, 64, 112, 112)).astype(np.float32)
    model = _pool_model(list(x.shape), TensorProto.FLOAT, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    want, = _ort(model, {"x": x})
    for threads in (1, 2):
        np.testing.assert_array_equal(_run(model, {"x": x}, threads)[0], want)


@pytest.mark.parametrize("b_shape", [[1, 16, 64, 72], [1], []])
@pytest.mark.parametrize("threads", [1, 2])
def test_add_relu_fused(b_shape, threads):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((1, 16, 64, 72)).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    model = _model(nodes, [("a", F, a.shape), ("b", F, b.shape)], [("y", F)])
    assert _step_types(model, threads) == ["AddRelu"]
    got, = _run(model, {"a": a, "b": b}, threads)
    np.testing.assert_array_equal(got, _ort(model, {"a": a, "b": b})[0])
    np.testing.assert_array_equal(got, np.maximum(a + b, 0))


def test_add_relu_not_fused_when_sum_is_read_twice():
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"]),
             helper.make_node("Mul", ["s", "a"], ["z"])]
    model = _model(nodes, [("a", F, [2, 3]), ("b", F, [2, 3])], [("y", F), ("z", F)])
    assert "AddRelu" not in _step_types(model)
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3) - 3, np.ones((2, 3), np.float32)
    for g, w in zip(_run(model, {"a": a, "b": b}), _ort(model, {"a": a, "b": b})):
        np.testing.assert_array_equal(g, w)


ELEMENTWISE = [
    ("Add", [(1, 32, 80, 80), (1, 32, 80, 80)]), ("Add", [(1, 32, 80, 80), (1,)]),
    ("Add", [(), (1, 32, 80, 80)]), ("Mul", [(1, 32, 80, 80), (1, 32, 80, 80)]),
    ("Mul", [(1,), (1, 32, 80, 80)]), ("Mul", [(1, 32, 80, 80), (1, 32, 1, 1)]),
    ("Sub", [(1, 32, 80, 80), (1, 32, 80, 80)]), ("Sub", [(1, 32, 80, 80), ()]),
    ("Sub", [(), (1, 32, 80, 80)]), ("Div", [(1, 32, 80, 80), (1,)]),
    ("Div", [(1, 32, 80, 80), (1, 32, 80, 80)]), ("Add", [(1, 24, 80, 80), (1, 24, 1, 1)]),
]


@pytest.mark.parametrize("op_type,shapes", ELEMENTWISE)
def test_threaded_binary_bit_identical(op_type, shapes):
    rng = np.random.default_rng(6)
    a, b = (np.asarray(rng.standard_normal(s) + (2 if k else 0), np.float32) for k, s in enumerate(shapes))
    model = _model([helper.make_node(op_type, ["a", "b"], ["y"])],
                   [("a", F, list(a.shape)), ("b", F, list(b.shape))], [("y", F)])
    one, = _run(model, {"a": a, "b": b}, 1)
    two, = _run(model, {"a": a, "b": b}, 2)
    assert one.shape == two.shape
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, _ort(model, {"a": a, "b": b})[0])


@pytest.mark.parametrize("op_type,attrs,inputs", [
    ("Relu", {}, ()), ("HardSigmoid", dict(alpha=0.2, beta=0.5), ()), ("HardSwish", {}, ()),
    ("Clip", {}, (0.0, 6.0)), ("Clip", {}, (None, 6.0)), ("Sigmoid", {}, ())])
def test_threaded_unary_bit_identical(op_type, attrs, inputs):
    x = (np.random.default_rng(7).standard_normal((1, 48, 80, 80)) * 5).astype(np.float32)
    inits, names = [], ["x"]
    for k, v in enumerate(inputs):
        if v is None:
            names.append("")
        else:
            inits.append(numpy_helper.from_array(np.array(v, np.float32), f"c{k}"))
            names.append(f"c{k}")
    model = _model([helper.make_node(op_type, names, ["y"], **attrs)], [("x", F, list(x.shape))], [("y", F)], inits)
    one, = _run(model, {"x": x}, 1)
    two, = _run(model, {"x": x}, 2)
    np.testing.assert_array_equal(one, two)
    want, = _ort(model, {"x": x})
    if op_type == "Sigmoid":
        np.testing.assert_allclose(one, want, rtol=1e-6, atol=2e-7)
    else:
        np.testing.assert_allclose(one, want, rtol=1e-6, atol=1e-7)


def test_threaded_binary_below_threshold_uses_numpy():
    kernel = elementwise.parallel_binary("Mul", 2)
    a = np.ones((4, 4), np.float32)
    np.testing.assert_array_equal(kernel(a, a), a)
    assert elementwise.parallel_binary("Mul", 1) is np.multiply


def _chain_model(extra_reader=False, const_shape=(1,), x_shape=(1, 8, 40, 40)):
    """ppocr's ``y = (s*x + b) * clip(s*x + b + 3, 0, 6) / 6 * s2 + b2`` (a scaled hard-swish)."""
    consts = {"s": 1.5, "b": 0.25, "three": 3.0, "lo": 0.0, "hi": 6.0, "six": 6.0, "s2": 0.5, "b2": -1.0}
    inits = [numpy_helper.from_array(np.full(const_shape if k not in ("lo", "hi") else (), v, np.float32), k)
             for k, v in consts.items()]
    nodes = [helper.make_node("Mul", ["s", "x"], ["a"]), helper.make_node("Add", ["a", "b"], ["z"]),
             helper.make_node("Add", ["z", "three"], ["z3"]), helper.make_node("Clip", ["z3", "lo", "hi"], ["g"]),
             helper.make_node("Mul", ["z", "g"], ["m"]), helper.make_node("Div", ["m", "six"], ["d"]),
             helper.make_node("Mul", ["d", "s2"], ["e"]), helper.make_node("Sub", ["e", "b2"], ["f"]),
             helper.make_node("Relu", ["f"], ["y"])]
    outputs = [("y", F)]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["g"], ["n"]))
        outputs.append(("n", F))
    return _model(nodes, [("x", F, list(x_shape))], outputs, inits)


@pytest.mark.parametrize("extra_reader", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_elementwise_chain_fused(extra_reader, threads):
    x = (np.random.default_rng(8).standard_normal((1, 8, 40, 40)) * 4).astype(np.float32)
    model = _chain_model(extra_reader)
    types = _step_types(model, threads)
    assert "ElementwiseChain" in types
    # g read outside: chains stop at it (Mul+Add, Add+Clip, Mul alone, Div+Mul+Sub+Relu)
    assert len(types) == (5 if extra_reader else 1)
    got = _run(model, {"x": x}, threads)
    want = _ort(model, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    # bit for bit the unfused steps' values
    t = np.float32
    z = t(1.5) * x + t(0.25)
    ref = np.maximum(z * np.clip(z + t(3), t(0), t(6)) / t(6) * t(0.5) - t(-1), t(0))
    np.testing.assert_array_equal(got[0], ref)


def test_elementwise_chain_large_threaded_and_fallbacks():
    x = (np.random.default_rng(9).standard_normal((1, 16, 160, 160)) * 4).astype(np.float32)
    model = _chain_model(x_shape=x.shape)
    one, = _run(model, {"x": x}, 1)
    two, = _run(model, {"x": x}, 2)
    np.testing.assert_array_equal(one, two)
    # a constant of higher rank than x: the steps run one by one (numpy broadcasting)
    model = _chain_model(const_shape=(1, 1, 1), x_shape=(40, 40))
    small = x[0, 0, :40, :40].copy()
    got, = _run(model, {"x": small})
    assert got.shape == (1, 40, 40)
    np.testing.assert_allclose(got, _ort(model, {"x": small})[0], rtol=1e-6, atol=1e-6)


def test_run_chunks_covers_the_range_once_and_raises_worker_errors():
    from graphopt.kernels import glue
    seen = []
    glue.run_chunks(lambda first, last: seen.append((first, last)), 1000, 2, 16)
    assert sorted(seen) == [(0, 512), (512, 1000)]
    seen.clear()
    glue.run_chunks(lambda first, last: seen.append((first, last)), 5, 2, 16)
    assert seen == [(0, 5)]  # too small to split at this alignment

    def fail(first, last):
        if first:
            raise ValueError("worker chunk")
    with pytest.raises(ValueError, match="worker chunk"):
        glue.run_chunks(fail, 100, 2)


def test_run_chunks_does_not_wait_for_a_worker_that_never_starts(monkeypatch):
    """A worker whose core is taken (here: one that never reads its queue): the caller runs
    every chunk itself instead of waiting."""
    import queue
    import types
    from graphopt.kernels import glue
    monkeypatch.setattr(glue, "_workers", lambda count, pid: types.SimpleNamespace(
        queues=[queue.SimpleQueue() for _ in range(count)]))
    seen = []
    glue.run_chunks(lambda first, last: seen.append((first, last)), 300, 3)
    assert seen == [(0, 100), (100, 200), (200, 300)]
