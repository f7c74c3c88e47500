"""The fp32 GEMM / implicit-GEMM convolution (graphopt.kernels._sgemm) against float64 numpy.

Every ISA path the CPU supports runs; odd shapes cover the micro-kernel's ragged edges (M not a
multiple of its rows, N of 16 / 32), K blocking (K past 512), strided operands, batches, both
thread counts and the fused epilogue. The runtime's fp32 Conv / Gemm / MatMul builders that use the
kernels are checked through single-node sessions with constant weights.
"""
import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.kernels import _sgemm as sg

ISAS = sg.supported_isas()
RTOL = 1e-5


def rel_err(got, ref, scale=None):
    """Largest error relative to the largest reference value (or to ``scale``: a clamped result
    is compared at the scale of the product before the clamp)."""
    ref = np.asarray(ref, np.float64)
    scale = np.abs(ref).max() if scale is None else scale
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / (scale + 1e-30))


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def ref_epilogue(y, bias=None, axis=1, relu=False, clip=None):
    y = np.array(y, np.float64)
    if bias is not None:
        y = y + (bias[:, None] if axis == 0 else bias[None, :])
    if relu:
        y = np.maximum(y, 0)
    if clip is not None:
        y = np.clip(y, clip[0], clip[1])
    return y


GEMM_SHAPES = [(1, 1, 1), (1, 300, 17), (2, 1, 40), (5, 17, 33), (14, 64, 16), (15, 31, 48),
               (32, 256, 1024), (13, 700, 70), (37, 1100, 65), (100, 3, 200), (3, 530, 31)]


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_sgemm_shapes(isa_name, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = rand(rng, m, k), rand(rng, k, n)
    ref = a.astype(np.float64) @ b
    packed = sg.PackedB(b)
    for threads in (1, 2):
        assert rel_err(sg.sgemm(a, b, threads=threads, isa_name=isa_name), ref) < RTOL
        assert rel_err(sg.Gemm(packed, threads=threads, isa_name=isa_name)(a), ref) < RTOL
        # B with non-unit column stride: packed per tile
        assert rel_err(sg.sgemm(a, np.asfortranarray(b), threads=threads, isa_name=isa_name), ref) < RTOL


@pytest.mark.parametrize("isa_name", ISAS)
def test_sgemm_strided_and_transposed(isa_name):
    rng = np.random.default_rng(1)
    big_a, big_b = rand(rng, 40, 90), rand(rng, 130, 77)
    a = big_a[3:30:2, 5:85]          # rows at stride 2, columns offset
    b = big_b[10:90, ::2]            # columns at stride 2
    ref = a.astype(np.float64) @ b
    assert rel_err(sg.sgemm(a, b, isa_name=isa_name), ref) < RTOL
    assert rel_err(sg.sgemm(np.asfortranarray(a), b, isa_name=isa_name), ref) < RTOL
    bt = rand(rng, 39, 80)
    assert rel_err(sg.Gemm(sg.PackedB(bt, trans=True), isa_name=isa_name)(a),
                   a.astype(np.float64) @ bt.T) < RTOL
    # out: a strided view with a unit column stride
    out = np.full((a.shape[0], 200), 7, np.float32)
    sg.sgemm(a, b, out=out[:, 50:50 + b.shape[1]], isa_name=isa_name)
    assert rel_err(out[:, 50:50 + b.shape[1]], ref) < RTOL
    assert (out[:, :50] == 7).all() and (out[:, 50 + b.shape[1]:] == 7).all()


@pytest.mark.parametrize("isa_name", ISAS)
def test_sgemm_batched(isa_name):
    rng = np.random.default_rng(2)
    q, kt = rand(rng, 4, 32, 32), rand(rng, 4, 64, 32)
    k = kt.transpose(0, 2, 1)        # a transposed view, as attention's Kᵀ
    ref = q.astype(np.float64) @ k
    for threads in (1, 2):
        assert rel_err(sg.sgemm(q, k, threads=threads, isa_name=isa_name), ref) < RTOL
        v = rand(rng, 4, 32, 48)
        assert rel_err(sg.sgemm(q, v, threads=threads, isa_name=isa_name), q.astype(np.float64) @ v) < RTOL


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("relu,clip", [(False, None), (True, None), (False, (-0.5, 0.7)), (False, (None, 1.0))])
def test_sgemm_epilogue(isa_name, relu, clip):
    rng = np.random.default_rng(3)
    a, b = rand(rng, 19, 600), rand(rng, 600, 45)  # two K blocks: the bias lands once
    bias_n, bias_m = rand(rng, 45), rand(rng, 19)
    ref = a.astype(np.float64) @ b
    for threads in (1, 2):
        got = sg.Gemm(sg.PackedB(b), bias_n, relu=relu, clip=clip, threads=threads, isa_name=isa_name)(a)
        lo_hi = None if clip is None else (-np.inf if clip[0] is None else clip[0], clip[1])
        scale = np.abs(ref).max()
        assert rel_err(got, ref_epilogue(ref, bias_n, 1, relu, lo_hi), scale) < RTOL
        got = sg.sgemm(a, b, bias_m, bias_axis=0, relu=relu, clip=clip, threads=threads, isa_name=isa_name)
        assert rel_err(got, ref_epilogue(ref, bias_m, 0, relu, lo_hi), scale) < RTOL


def test_sgemm_nan_passes_clamp():
    a = np.ones((2, 3), np.float32)
    a[0, 1] = np.nan
    y = sg.sgemm(a, np.ones((3, 20), np.float32), relu=True)
    assert np.isnan(y[0]).all() and (y[1] == 3).all()


def test_sgemm_empty_k():
    y = sg.sgemm(np.zeros((3, 0), np.float32), np.zeros((0, 5), np.float32), bias=np.arange(5, dtype=np.float32))
    assert (y == np.arange(5)[None, :]).all()


def ref_conv(x, w, strides, pads, dilations):
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((n, oc, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return y


CONV_CASES = [  # x shape, w shape, strides, pads (top, left, bottom, right), dilations
    ((1, 3, 30, 31), (16, 3, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((2, 5, 13, 11), (7, 5, 3, 3), (1, 1), (0, 1, 2, 0), (1, 1)),
    ((1, 4, 20, 20), (9, 4, 5, 5), (2, 1), (2, 2, 2, 2), (2, 1)),
    ((2, 16, 9, 9), (20, 16, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((1, 16, 9, 9), (33, 16, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    ((1, 3, 17, 17), (8, 3, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),
    ((1, 1, 8, 8), (16, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 64, 12, 12), (40, 64, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),   # K = 576: two K blocks
    ((1, 8, 5, 40), (12, 8, 3, 3), (3, 3), (1, 0, 1, 4), (1, 2)),
    ((1, 2, 3, 3), (4, 2, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),          # taps mostly in padding
    ((2, 96, 20, 21), (24, 96, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # K = 864: three K blocks
    ((1, 5, 9, 300), (6, 5, 3, 5), (1, 1), (0, 2, 1, 3), (1, 1)),        # rows wider than a tile
    ((1, 3, 6, 7), (5, 3, 1, 1), (1, 1), (1, 0, 2, 1), (1, 1)),          # 1x1 with padding
]


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("xs,ws,strides,pads,dilations", CONV_CASES)
def test_conv2d(isa_name, xs, ws, strides, pads, dilations):
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, bias = rand(rng, *xs), rand(rng, *ws), rand(rng, ws[0])
    ref = ref_conv(x, w, strides, pads, dilations)
    packed = sg.PackedConv(w)
    # stride 1 runs both the shifted convolution and im2col; other strides only im2col
    methods = [None, "im2col", "shifted"] if strides == (1, 1) else [None]
    for threads, method in itertools.product((1, 2), methods):
        got = sg.Conv2d(packed, None, strides, pads, dilations, threads=threads, isa_name=isa_name,
                        method=method)(x)
        assert got.shape == ref.shape and rel_err(got, ref) < RTOL
        got = sg.conv2d(x, w, bias, strides, pads, dilations, relu=True, threads=threads, isa_name=isa_name,
                        method=method)
        assert rel_err(got, np.maximum(ref + bias[None, :, None, None], 0)) < RTOL


@pytest.mark.parametrize("isa_name", ISAS)
def test_conv2d_large_threads(isa_name):
    """Big enough to split over both threads, rows and columns of tiles."""
    rng = np.random.default_rng(5)
    x, w = rand(rng, 2, 24, 40, 40), rand(rng, 50, 24, 3, 3)
    ref = ref_conv(x, w, (1, 1), (1, 1, 1, 1), (1, 1))
    for method in ("im2col", "shifted"):
        got = sg.conv2d(x, w, None, (1, 1), (1, 1, 1, 1), clip=(-1.0, 6.0), threads=2, isa_name=isa_name,
                        method=method)
        assert rel_err(got, np.clip(ref, -1, 6), np.abs(ref).max()) < RTOL


def test_bad_arguments():
    with pytest.raises(ValueError):
        sg.sgemm(np.zeros((2, 3), np.float64), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError):
        sg.sgemm(np.zeros((2, 3), np.float32), np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        sg.Conv2d(sg.PackedConv(np.zeros((2, 3, 3, 3), np.float32)))(np.zeros((1, 4, 5, 5), np.float32))


# ---- the runtime builders ------------------------------------------------------------------

def _session(op, inputs, inits, threads, **attrs):
    from graphopt.runtime import Session
    node = helper.make_node(op, [n for n, _ in inputs] + [n for n, _ in inits], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Session(model.SerializeToString(), threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_runtime_conv_gemm_matmul(threads):
    rng = np.random.default_rng(6)
    x, w, bias = rand(rng, 2, 6, 15, 14), rand(rng, 10, 6, 3, 3), rand(rng, 10)
    s = _session("Conv", [("x", x)], [("w", w), ("b", bias)], threads, strides=[2, 1], pads=[1, 0, 0, 2],
                 kernel_shape=[3, 3])
    ref = ref_conv(x, w, (2, 1), (1, 0, 0, 2), (1, 1)) + bias[None, :, None, None]
    assert rel_err(s.run(None, {"x": x})[0], ref) < RTOL
    s = _session("Conv", [("x", x)], [("w", w)], threads, auto_pad="SAME_UPPER", kernel_shape=[3, 3])
    assert rel_err(s.run(None, {"x": x})[0], ref_conv(x, w, (1, 1), (1, 1, 1, 1), (1, 1))) < RTOL

    a, b, c = rand(rng, 7, 40), rand(rng, 33, 40), rand(rng, 33)
    for trans_b, bb in ((1, b), (0, np.ascontiguousarray(b.T))):
        s = _session("Gemm", [("a", a)], [("b", bb), ("c", c)], threads, transB=trans_b, beta=0.5)
        assert rel_err(s.run(None, {"a": a})[0], a.astype(np.float64) @ b.T + 0.5 * c) < RTOL
    c2 = rand(rng, 7, 1)  # a C that is not per column: added after the product
    s = _session("Gemm", [("a", a)], [("b", b), ("c", c2)], threads, transB=1)
    assert rel_err(s.run(None, {"a": a})[0], a.astype(np.float64) @ b.T + c2) < RTOL

    a3, bk = rand(rng, 2, 5, 40), rand(rng, 40, 19)
    s = _session("MatMul", [("a", a3)], [("b", bk)], threads)
    assert rel_err(s.run(None, {"a": a3})[0], a3.astype(np.float64) @ bk) < RTOL
    q, k = rand(rng, 1, 4, 32, 16), rand(rng, 1, 4, 16, 24)
    s = _session("MatMul", [("q", q), ("k", k)], [], threads)
    assert rel_err(s.run(None, {"q": q, "k": k})[0], q.astype(np.float64) @ k) < RTOL
