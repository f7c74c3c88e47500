"""fp32 convolution paths of the runtime against a float64 sum over every tap."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from graphopt.runtime.ops import NodeSpec, numba_fp32
from graphopt.runtime.ops.nn import build_conv
from graphopt.runtime.ops.tensor import build_resize


def _reference_conv(x, w, strides, pads, dilations, group):
    """float64 ``y[n, o, y, x] = sum w[o, c, i, j] * xpad[n, g*C/G + c, y*s + i*d, x*s + j*d]``."""
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    out_channels, group_channels, kh, kw = w.shape
    oh = (x.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (x.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((x.shape[0], out_channels, oh, ow))
    per_group = out_channels // group
    for o, i, j in itertools.product(range(out_channels), range(kh), range(kw)):
        first = (o // per_group) * group_channels
        top, left = i * dilations[0], j * dilations[1]
        window = x[:, first:first + group_channels, top:top + (oh - 1) * strides[0] + 1:strides[0],
                   left:left + (ow - 1) * strides[1] + 1:strides[1]]
        y[:, o] += np.tensordot(window, w[o, :, i, j].astype(np.float64), axes=([1], [0]))
    return y


@pytest.mark.parametrize("channels, out_channels, group, kernel, strides, pads, dilations", [
    (32, 8, 1, 3, 1, 1, 1),      # shifted views: OC <= C / 2
    (32, 8, 1, 3, 1, 2, 2),      # shifted views, dilated
    (16, 16, 1, 3, 1, 1, 1),     # im2col
    (12, 12, 12, 3, 1, 1, 1),    # depthwise, stride 1
    (12, 12, 12, 5, 2, 2, 1),    # depthwise, stride 2: stride phases
    (6, 6, 6, 3, 3, 0, 2),       # depthwise, stride 3, dilated
])
def test_conv_paths_match_the_float64_sums(channels, out_channels, group, kernel, strides, pads, dilations):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, channels, 19, 23)).astype(np.float32)
    w = rng.standard_normal((out_channels, channels // group, kernel, kernel)).astype(np.float32)
    attrs = {"kernel_shape": [kernel, kernel], "group": group, "strides": [strides] * 2, "pads": [pads] * 4,
             "dilations": [dilations] * 2}
    conv = build_conv(NodeSpec("conv", "Conv", ["x", "w"], ["y"], attrs, [None, w], 17))
    expected = _reference_conv(x, w, [strides] * 2, [pads] * 4, [dilations] * 2, group)
    np.testing.assert_allclose(conv(x, w), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_depthwise_kernel_takes_float64():
    rng = np.random.default_rng(8)
    xp = rng.standard_normal((1, 3, 9, 9))
    w = rng.standard_normal((3, 3, 3))
    y = numba_fp32.depthwise_conv2d(xp, w, (2, 2), (1, 1), (4, 4))
    np.testing.assert_allclose(y, _reference_conv(xp, w[:, None], (2, 2), (0,) * 4, (1, 1), 3), rtol=1e-12)


def test_nearest_resize_keeps_uint8_values():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    resize = build_resize(NodeSpec("r", "Resize", ["x", "", "s"], ["y"], attrs, [None, None, None], 13))
    y = resize(x, None, np.array([1, 1, 2, 2], np.float32))
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))


def test_depthwise_with_many_channels_on_small_planes_runs_channels_last():
    rng = np.random.default_rng(9)
    xp = rng.standard_normal((2, 64, 6, 7)).astype(np.float32)
    w = rng.standard_normal((64, 3, 3)).astype(np.float32)
    y = numba_fp32.depthwise_conv2d(xp, w, (1, 2), (1, 1), (4, 3))
    expected = _reference_conv(xp, w[:, None], (1, 2), (0,) * 4, (1, 1), 64)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hard_swish_loop_rounds_like_the_numpy_expression(dtype):
    x = (np.random.default_rng(10).standard_normal((3, 1001)) * 5).astype(dtype)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    t = np.dtype(dtype).type
    with np.errstate(invalid="ignore"):
        expected = x * np.clip(x * t(1 / 6) + t(0.5), t(0), t(1))
        np.testing.assert_array_equal(numba_fp32.hard_swish(x), expected)
