"""Numba glue kernels against numpy (and onnxruntime, for quantization rounding)."""
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from graphopt.kernels import glue
from graphopt.kernels.reference import dequantize_linear_reference, quantize_linear_reference


def test_quantize_matches_reference_and_rounds_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0, 0.49999997], np.float32)
    np.testing.assert_array_equal(glue.quantize_linear(x, 1.0, 0), [0, 2, 2, 0, 0, 255, 0, 0])
    np.testing.assert_array_equal(glue.quantize_linear(x, 1.0, 128),
                                  quantize_linear_reference(x, 1.0, 128))


def test_quantize_matches_onnxruntime():
    x = np.random.default_rng(0).normal(0, 3, (4, 257)).astype(np.float32)
    x[0, :8] = [0.5, 1.5, 2.5, -0.5, 0.125 * 3, 6.375, -6.375, 0.0]
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, list(x.shape))],
        [numpy_helper.from_array(np.array(0.125, np.float32), "s"),
         numpy_helper.from_array(np.array(131, np.uint8), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(glue.quantize_linear(x, 0.125, 131),
                                  session.run(None, {"x": x})[0])


def test_per_channel_quantize_dequantize():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (2, 3, 5)).astype(np.float32)
    scale = np.array([0.01, 0.02, 0.05], np.float32)
    zp = np.array([0, 100, 255], np.int32)
    q = glue.quantize_linear(x, scale, zp, axis=1)
    np.testing.assert_array_equal(q, quantize_linear_reference(x, scale[:, None], zp[:, None]))
    np.testing.assert_array_equal(glue.dequantize_linear(q, scale, zp, axis=1),
                                  dequantize_linear_reference(q, scale[:, None], zp[:, None]))
    w = rng.integers(-128, 128, (4, 3), dtype=np.int8)
    np.testing.assert_array_equal(glue.dequantize_linear(w, scale, 0, axis=-1),
                                  dequantize_linear_reference(w, scale, 0))
    with pytest.raises(ValueError, match="expected 1 or 3"):
        glue.quantize_linear(x, scale[:2], 0, axis=1)


def test_requantize_matches_numpy():
    q = np.arange(256, dtype=np.uint8)
    multiplier = np.float32(0.1) / np.float32(0.3)
    expected = np.clip(np.rint((q.astype(np.int32) - 7).astype(np.float32) * multiplier) + 200,
                       0, 255).astype(np.uint8)
    np.testing.assert_array_equal(glue.requantize(q, 0.1, 7, 0.3, 200), expected)


def im2col_reference(x, pad_value, kernel, stride, pads, dilation):
    """One row per output pixel, columns (kh, kw, c)."""
    padded = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=pad_value)
    oh = (padded.shape[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (padded.shape[2] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    taps = []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            y0, x0 = i * dilation[0], j * dilation[1]
            tap = padded[:, y0:y0 + stride[0] * (oh - 1) + 1:stride[0],
                         x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
            taps.append(tap.reshape(x.shape[0], -1).T)  # [pixels, C]
    return np.concatenate(taps, axis=1)


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 4), h=st.integers(3, 10), w=st.integers(3, 10), kh=st.integers(1, 3),
       kw=st.integers(1, 3), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pads=st.tuples(*[st.integers(0, 2)] * 4), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       seed=st.integers(0, 2**31 - 1))
def test_im2col_property(c, h, w, kh, kw, stride, pads, dilation, seed):
    x = np.random.default_rng(seed).integers(0, 256, (c, h, w), dtype=np.uint8)
    if h + pads[0] + pads[2] < dilation[0] * (kh - 1) + 1 or \
            w + pads[1] + pads[3] < dilation[1] * (kw - 1) + 1:
        return
    np.testing.assert_array_equal(glue.im2col(x, 9, (kh, kw), stride, pads, dilation),
                                  im2col_reference(x, 9, (kh, kw), stride, pads, dilation))


def pool_reference(x, kernel, stride, pads, dilation, average):
    fill = np.nan
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                    constant_values=fill)
    oh = (padded.shape[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (padded.shape[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    windows = np.stack([padded[:, :, i * dilation[0]:i * dilation[0] + stride[0] * (oh - 1) + 1:stride[0],
                               j * dilation[1]:j * dilation[1] + stride[1] * (ow - 1) + 1:stride[1]]
                        for i in range(kernel[0]) for j in range(kernel[1])])
    return np.nanmean(windows, axis=0) if average else np.nanmax(windows, axis=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_max_pool(dtype):
    x = np.random.default_rng(2).integers(0, 256, (2, 3, 9, 8)).astype(dtype)
    for kernel, stride, pads, dilation in [((3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
                                           ((2, 3), (1, 2), (0, 1, 1, 0), (2, 1))]:
        got = glue.max_pool2d(x, kernel, stride, pads, dilation)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, pool_reference(x, kernel, stride, pads, dilation, False))


def test_average_pool_excludes_padding():
    x = np.random.default_rng(3).normal(size=(1, 2, 7, 6)).astype(np.float32)
    got = glue.average_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1))
    np.testing.assert_allclose(got, pool_reference(x, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        glue.average_pool2d(x.astype(np.uint8), (3, 3))
