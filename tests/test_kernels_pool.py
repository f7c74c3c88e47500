"""The C max-pooling kernel (kernels/pool.c) against a plain numpy reference, bit for bit."""
import numpy as np
import pytest

from graphopt.kernels import _pool

ISAS = ["portable"] + (["avx512"] if _pool.isa() == "avx512" else [])
DTYPES = [np.float32, np.uint8, np.int8]


def _lowest(dtype):
    return -np.inf if np.dtype(dtype).kind == "f" else np.iinfo(dtype).min


def reference(x, kernel, stride, begin, dilation, out_hw):
    """Strided-window max over ``x`` padded with the lowest value (enough on every side for the
    windows of ``out_hw``); a window holding a NaN gives NaN (np.max)."""
    (kh, kw), (sh, sw), (pt, pl), (dh, dw), (oh, ow) = kernel, stride, begin, dilation, out_hw
    n, c, h, w = x.shape
    bottom = max((oh - 1) * sh + (kh - 1) * dh + 1 - pt - h, 0)
    right = max((ow - 1) * sw + (kw - 1) * dw + 1 - pl - w, 0)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, bottom), (pl, right)), constant_values=_lowest(x.dtype))
    taps = [xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            for i in range(kh) for j in range(kw)]
    return np.max(np.stack(taps), axis=0)


def _onnx_out(size, k, s, b, e, d, ceil):
    """ONNX's output size, with ceil_mode's rule that the last window starts inside the input
    or the begin padding."""
    span = size + b + e - (k - 1) * d - 1
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= size + b:
        o -= 1
    return o


def _data(rng, shape, dtype):
    if dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32) - 3  # mostly negative
    if dtype == np.int8:
        return rng.integers(-128, -100, shape, dtype=np.int8)  # near the lowest value
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _cases():
    rng = np.random.default_rng(7)
    cases = [((1, 64, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),
             ((1, 32, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False),
             ((2, 3, 17, 23), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),
             ((1, 2, 9, 300), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),  # several blocks a row
             ((1, 2, 5, 130), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True),
             ((1, 2, 6, 200), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False),
             ((1, 2, 40, 260), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False),  # tiles of rows
             ((1, 2, 20, 250), (4, 5), (3, 3), (2, 1, 0, 2), (2, 2), True),
             ((1, 2, 7, 7), (3, 3), (2, 2), (2, 2, 2, 2), (1, 1), False),
             ((1, 2, 5, 6), (2, 2), (1, 1), (3, 3, 3, 3), (1, 1), False),  # windows all padding
             ((1, 1, 4, 40), (3, 40), (1, 1), (0, 0, 0, 0), (1, 1), False),  # wide: portable path
             ((1, 1, 4, 150), (2, 70), (1, 2), (0, 0, 0, 0), (1, 2), False)]
    for _ in range(60):
        kh, kw = rng.integers(1, 6, 2)
        sh, sw = rng.integers(1, 4, 2)
        dh, dw = rng.integers(1, 3, 2)
        pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        h, w = rng.integers(1, 40, 2)
        cases.append(((int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(h), int(w)),
                      (int(kh), int(kw)), (int(sh), int(sw)), pads, (int(dh), int(dw)),
                      bool(rng.integers(0, 2))))
    return cases


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel,stride,pads,dilation,ceil", _cases())
def test_max_pool_matches_reference(shape, kernel, stride, pads, dilation, ceil, dtype, isa):
    out_hw = tuple(_onnx_out(shape[2 + a], kernel[a], stride[a], pads[a], pads[2 + a], dilation[a], ceil)
                   for a in range(2))
    if min(out_hw) < 1:
        pytest.skip("the window does not fit")
    x = _data(np.random.default_rng(sum(shape)), shape, dtype)
    want = reference(x, kernel, stride, pads[:2], dilation, out_hw)
    for threads in (1, 2):
        got = _pool.max_pool2d(x, kernel, stride, pads[:2], dilation, out_hw, threads, isa)
        assert got.dtype == x.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", ISAS)
def test_threads_split_a_large_input(isa):
    x = _data(np.random.default_rng(1), (2, 64, 112, 112), np.float32)
    want = reference(x, (3, 3), (2, 2), (1, 1), (1, 1), (56, 56))
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(
            _pool.max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), (56, 56), threads, isa), want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kernel,stride", [((3, 3), (2, 2)), ((2, 2), (2, 2)), ((3, 2), (1, 3))])
def test_nan_in_a_window_gives_nan(isa, kernel, stride):
    x = _data(np.random.default_rng(2), (1, 3, 19, 37), np.float32)
    x[0, 0, 4, 5] = np.nan
    x[0, 1, 0, 0] = -np.nan
    x[0, 2, 18, 36] = np.nan
    x[0, 2, 7, :] = np.inf
    out_hw = (_onnx_out(19, kernel[0], stride[0], 1, 1, 1, True), _onnx_out(37, kernel[1], stride[1], 1, 1, 1, True))
    got = _pool.max_pool2d(x, kernel, stride, (1, 1), (1, 1), out_hw, 1, isa)
    want = reference(x, kernel, stride, (1, 1), (1, 1), out_hw)
    assert np.isnan(want).any()
    np.testing.assert_array_equal(got, want)  # NaNs in the same places


def test_non_contiguous_or_byte_swapped_input_and_empty_output():
    x = _data(np.random.default_rng(3), (1, 4, 12, 10), np.uint8)
    view = x[:, :, :, ::2]
    np.testing.assert_array_equal(_pool.max_pool2d(view, (2, 2), (2, 2), (0, 0), (1, 1), (6, 2)),
                                  reference(np.ascontiguousarray(view), (2, 2), (2, 2), (0, 0), (1, 1), (6, 2)))
    f = _data(np.random.default_rng(4), (1, 4, 12, 10), np.float32)
    np.testing.assert_array_equal(_pool.max_pool2d(f.astype(">f4"), (3, 3), (2, 2), (1, 1), (1, 1), (6, 5)),
                                  reference(f, (3, 3), (2, 2), (1, 1), (1, 1), (6, 5)))
    assert _pool.max_pool2d(x[:0], (2, 2), (2, 2), (0, 0), (1, 1), (6, 5)).shape == (0, 4, 6, 5)


def test_rejects_bad_arguments():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="float32, uint8 or int8"):
        _pool.max_pool2d(x.astype(np.float64), (2, 2), (2, 2), (0, 0), (1, 1), (2, 2))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        _pool.max_pool2d(x[0], (2, 2), (2, 2), (0, 0), (1, 1), (2, 2))
    with pytest.raises(ValueError, match=">= 1"):
        _pool.max_pool2d(x, (2, 2), (0, 2), (0, 0), (1, 1), (2, 2))
    with pytest.raises(ValueError, match="threads"):
        _pool.max_pool2d(x, (2, 2), (2, 2), (0, 0), (1, 1), (2, 2), 0)
