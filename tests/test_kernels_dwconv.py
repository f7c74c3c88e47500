"""fp32 depthwise convolution kernel (graphopt.kernels._dwconv) against a float64 numpy reference."""
import itertools

import numpy as np
import pytest

dw = pytest.importorskip("graphopt.kernels._dwconv")

ISAS = ["portable"] + (["avx512"] if dw.isa("auto") == "avx512" else [])


def reference(x, w, bias, strides, pads, dilations, activation=None, clip=(0.0, 6.0)):
    x = x.astype(np.float64)
    w = w.reshape(w.shape[0], w.shape[-2], w.shape[-1]).astype(np.float64)
    n, c, h, width = x.shape
    kh, kw = w.shape[1:]
    (sh, sw), (pt, pl, pb, pr), (dh, dwl) = strides, pads, dilations
    xp = np.zeros((n, c, h + pt + pb, width + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + width] = x
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (width + pl + pr - dwl * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dwl:j * dwl + (ow - 1) * sw + 1:sw]
            y += window * w[None, :, i, j, None, None]
    if bias is not None:
        y += bias.astype(np.float64)[None, :, None, None]
    if activation == "relu":
        y = np.maximum(y, 0.0)
    elif activation == "clip":
        y = np.clip(y, *clip)
    return y


@pytest.fixture(autouse=True)
def split_every_layer(monkeypatch):
    """threads=2 cases split even these small layers, so that the threaded path is what runs."""
    monkeypatch.setattr(dw, "PARALLEL_MIN_MACS", 0)


def check(x, w, bias, strides, pads, dilations, activation=None, clip=(0.0, 6.0), threads=1, isa="auto"):
    y = dw.depthwise_conv2d_f32(x, w, bias, strides, pads, dilations, activation, clip,
                                threads=threads, isa_name=isa)
    ref = reference(x, w, bias, strides, pads, dilations, activation, clip)
    assert y.dtype == np.float32 and y.shape == ref.shape
    # FMA order differs from the reference's: relative to the sum of magnitudes
    scale = reference(np.abs(x), np.abs(w), None if bias is None else np.abs(bias), strides, pads, dilations)
    err = np.abs(y - ref) / (scale + 1e-6)
    assert err.max() < 1e-5, (err.max(), np.unravel_index(err.argmax(), err.shape))
    return y


def data(rng, n, c, h, width, kh, kw, bias=True):
    x = rng.standard_normal((n, c, h, width)).astype(np.float32)
    w = rng.standard_normal((c, 1, kh, kw)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32) if bias else None
    return x, w, b


def fits(h, width, k, s, p, d):
    return (h + p[0] + p[2] - d[0] * (k[0] - 1) - 1) // s[0] + 1 >= 1 and \
        (width + p[1] + p[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1 >= 1


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (5, 5), (7, 7), (3, 5)])
def test_grid(isa, kernel):
    rng = np.random.default_rng(sum(kernel))
    for (h, width), s, p, d in itertools.product(
            [(1, 1), (6, 7), (9, 17), (13, 40), (21, 33)],
            [(1, 1), (2, 2), (3, 3), (1, 2), (2, 1)],
            [(0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (2, 1, 0, 3)],
            [(1, 1), (2, 2)]):
        if not fits(h, width, kernel, s, p, d):
            continue
        x, w, b = data(rng, 1, 3, h, width, *kernel)
        check(x, w, b, s, p, d, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape,k,s,p", [
    ((1, 16, 112, 112), 3, 2, 1), ((1, 8, 56, 56), 3, 2, 1), ((1, 24, 14, 14), 5, 1, 2),
    ((1, 32, 7, 7), 5, 1, 2), ((1, 16, 28, 28), 5, 2, 2), ((1, 8, 28, 28), 3, 1, 1),
    ((1, 16, 14, 14), 5, 2, 2), ((1, 4, 160, 160), 3, 1, 1), ((1, 4, 160, 160), 3, 2, 1),
    ((1, 8, 80, 80), 5, 2, 2), ((1, 8, 40, 40), 5, 1, 2), ((1, 8, 20, 20), 5, 1, 2),
    ((2, 5, 23, 45), 3, 1, 1), ((2, 5, 23, 45), 5, 2, 2), ((1, 3, 19, 56), 3, 1, 1),
    ((1, 3, 11, 24), 5, 1, 2), ((1, 3, 35, 49), 5, 2, 2),
])
def test_model_shapes(isa, shape, k, s, p):
    rng = np.random.default_rng(shape[1] * k)
    x, w, b = data(rng, *shape, k, k)
    for activation, threads in [(None, 1), ("relu", 2), ("clip", 1)]:
        check(x, w, b, (s, s), (p,) * 4, (1, 1), activation, (-0.5, 0.75), threads, isa)


@pytest.mark.parametrize("isa", ISAS)
def test_odd_cases(isa):
    rng = np.random.default_rng(7)
    cases = [
        # kernel larger than the input (the padding makes room)
        ((1, 2, 3, 2), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
        ((1, 2, 2, 3), (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),
        # output width 1
        ((1, 3, 9, 5), (3, 5), (1, 1), (1, 0, 1, 0), (1, 1)),
        ((1, 3, 9, 3), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1)),
        # asymmetric pads, dilation
        ((2, 4, 12, 19), (3, 3), (1, 1), (0, 2, 1, 0), (2, 2)),
        ((2, 4, 12, 19), (3, 3), (2, 2), (1, 0, 2, 3), (2, 1)),
        ((1, 4, 30, 70), (5, 5), (2, 2), (0, 3, 4, 1), (1, 1)),
        ((1, 4, 30, 70), (3, 3), (1, 1), (0, 2, 2, 0), (1, 1)),
        ((1, 4, 17, 33), (3, 3), (3, 3), (1, 1, 1, 1), (1, 1)),
        ((1, 4, 17, 33), (3, 5), (3, 2), (2, 1, 0, 2), (1, 3)),
    ]
    for shape, k, s, p, d in cases:
        x, w, b = data(rng, *shape, *k)
        for bias in (b, None):
            check(x, w, bias, s, p, d, isa=isa)
            check(x, w[:, 0], bias, s, p, d, "relu", threads=2, isa=isa)


def test_isas_agree_and_threads():
    rng = np.random.default_rng(3)
    x, w, b = data(rng, 2, 40, 30, 30, 3, 3)
    ys = [dw.depthwise_conv2d_f32(x, w, b, (1, 1), (1,) * 4, (1, 1), threads=t, isa_name=isa)
          for isa in ISAS for t in (1, 2)]
    for y in ys[1:]:
        np.testing.assert_allclose(y, ys[0], rtol=1e-5, atol=1e-5)
    # threads give the same bits
    assert np.array_equal(ys[0], ys[1])


def test_prepared_and_out():
    rng = np.random.default_rng(4)
    x, w, b = data(rng, 1, 24, 14, 14, 5, 5)
    prep = dw.PreparedDepthwise(w, b, (1, 1), (2, 2, 2, 2), (1, 1), "clip", (0.0, 6.0))
    out = np.empty((1, 24, 14, 14), np.float32)
    y = prep(x, 2, out=out)
    assert y is out
    np.testing.assert_allclose(y, np.clip(reference(x, w, b, (1, 1), (2,) * 4, (1, 1)), 0, 6),
                               rtol=1e-5, atol=1e-5)


def test_nan_propagates_through_relu():
    x = np.zeros((1, 1, 4, 20), np.float32)
    x[0, 0, 1, 3] = np.nan
    w = np.ones((1, 1, 3, 3), np.float32)
    for isa in ISAS:
        y = dw.depthwise_conv2d_f32(x, w, None, (1, 1), (1,) * 4, (1, 1), "relu", isa_name=isa)
        assert np.isnan(y[0, 0, 0:3, 2:5]).all() and not np.isnan(y[0, 0, 3]).any()


def test_validation():
    x = np.zeros((1, 4, 8, 8), np.float32)
    w = np.zeros((4, 1, 3, 3), np.float32)
    f = dw.depthwise_conv2d_f32
    with pytest.raises(ValueError, match="float32"):
        f(x.astype(np.float64), w, None, (1, 1), (0,) * 4, (1, 1))
    with pytest.raises(ValueError, match="C-contiguous"):
        f(x[:, :, :, ::2], w, None, (1, 1), (0,) * 4, (1, 1))
    with pytest.raises(ValueError, match="channels"):
        f(x[:, :3].copy(), w, None, (1, 1), (0,) * 4, (1, 1))
    with pytest.raises(ValueError, match=r"\[C, 1, KH, KW\]"):
        f(x, np.zeros((4, 2, 3, 3), np.float32), None, (1, 1), (0,) * 4, (1, 1))
    with pytest.raises(ValueError, match="bias"):
        f(x, w, np.zeros(3, np.float32), (1, 1), (0,) * 4, (1, 1))
    with pytest.raises(ValueError, match="pads"):
        f(x, w, None, (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="strides"):
        f(x, w, None, (0, 1), (0,) * 4, (1, 1))
    with pytest.raises(ValueError, match="activation"):
        f(x, w, None, (1, 1), (0,) * 4, (1, 1), "gelu")
    with pytest.raises(ValueError, match="does not fit"):
        f(x, np.zeros((4, 1, 11, 3), np.float32), None, (1, 1), (0,) * 4, (1, 1))
    with pytest.raises(ValueError, match="out"):
        f(x, w, None, (1, 1), (0,) * 4, (1, 1), out=np.empty((1, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="isa"):
        f(x, w, None, (1, 1), (0,) * 4, (1, 1), isa_name="sse9")


def test_isa_from_environment(monkeypatch):
    monkeypatch.setenv("GRAPHOPT_DWCONV_ISA", "portable")
    assert dw.isa() == "portable"
    monkeypatch.setenv("GRAPHOPT_DWCONV_ISA", "auto")
    assert dw.isa() in ("avx512", "portable")
