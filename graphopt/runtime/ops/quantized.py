"""Quantization ops: Quantize/DequantizeLinear, DynamicQuantizeLinear and the integer products.

QLinearConv, QLinearMatMul, ConvInteger and MatMulInteger run on the compiled kernels when their
weights are constant int8 with zero point 0 (the U8S8 format); other combinations take the exact
float64 fallback of :mod:`graphopt.runtime.int8`.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphopt.kernels import glue
from graphopt.runtime import int8
from graphopt.runtime.ops import NodeSpec, refuse, register
from graphopt.runtime.ops.nn import Window
from graphopt.runtime.ops.tensor import numpy_dtype

_QUANTIZED_TYPES = (np.uint8, np.int8, np.uint16, np.int16)


def _axis_shape(scale: np.ndarray, x: np.ndarray, axis: int):
    """Shape that broadcasts a per-axis ``scale`` against ``x``; a scalar stays a scalar."""
    if scale.size == 1 and scale.ndim <= 1:
        return scale.reshape(())
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return scale.reshape(shape)


def _constant_per_tensor(node: NodeSpec):
    """(scale, zero point) as 0-d arrays when both are constant scalars, else None."""
    if not node.has_input(2):
        return None
    scale, zero_point = node.const(1), node.const(2)
    if scale is None or zero_point is None or scale.size != 1 or zero_point.size != 1:
        return None
    return scale.reshape(()), zero_point.reshape(())


@register("QuantizeLinear")
def build_quantize_linear(node: NodeSpec):
    refuse(node.attr("block_size", 0) != 0, "QuantizeLinear block_size (blocked quantization)")
    output_dtype = node.attr("output_dtype", 0)
    forced = numpy_dtype(output_dtype, "QuantizeLinear output type") if output_dtype else None
    refuse(forced is not None and forced.type not in _QUANTIZED_TYPES,
           f"QuantizeLinear output type {forced}")
    axis = node.attr("axis", 1)

    def quantize_linear(x, scale, zero_point=None):
        dtype = forced or (zero_point.dtype if zero_point is not None else np.dtype(np.uint8))
        if dtype == np.uint8 and x.dtype == np.float32 and x.ndim and np.ndim(scale) <= 1:
            # one Numba pass, same float32 division and rounding as below
            return glue.quantize_linear(x, scale, 0 if zero_point is None else zero_point,
                                        None if np.size(scale) == 1 else axis % x.ndim)
        info = np.iinfo(dtype)
        scale = _axis_shape(np.asarray(scale), x, axis)
        # x / scale in the input's precision, rounded half to even, as onnxruntime does
        q = np.rint(x / scale.astype(x.dtype))
        if zero_point is not None:
            q = q + _axis_shape(np.asarray(zero_point), x, axis).astype(np.float32)
        return np.clip(q, info.min, info.max).astype(dtype)

    per_tensor = _constant_per_tensor(node)
    if forced is None and per_tensor is not None and per_tensor[1].dtype == np.uint8:
        scale32, zero_point32 = np.float32(per_tensor[0]), np.int32(per_tensor[1])

        def quantize_per_tensor(x, *_):
            if x.dtype != np.float32 or not x.ndim:
                return quantize_linear(x, *per_tensor)
            return int8.quantize_uint8(x, scale32, zero_point32)
        return quantize_per_tensor
    return quantize_linear


@register("DequantizeLinear")
def build_dequantize_linear(node: NodeSpec):
    refuse(node.attr("block_size", 0) != 0, "DequantizeLinear block_size (blocked quantization)")
    axis = node.attr("axis", 1)
    refuse(node.attr("output_dtype", 0) not in (0, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16),
           "DequantizeLinear output_dtype")

    def dequantize_linear(x, scale, zero_point=None):
        if x.dtype in (np.uint8, np.int8) and np.asarray(scale).dtype == np.float32 and x.ndim and np.ndim(scale) <= 1:
            return glue.dequantize_linear(x, scale, 0 if zero_point is None else zero_point,
                                          None if np.size(scale) == 1 else axis % x.ndim)
        centered = x.astype(np.int32)
        if zero_point is not None:
            centered = centered - _axis_shape(np.asarray(zero_point), x, axis).astype(np.int32)
        scale = np.asarray(scale)
        return centered.astype(scale.dtype) * _axis_shape(scale, x, axis)

    per_tensor = _constant_per_tensor(node)
    if per_tensor is not None and per_tensor[0].dtype == np.float32 and per_tensor[1].dtype in (np.uint8, np.int8):
        scale32, zero_point32 = np.float32(per_tensor[0]), np.int32(per_tensor[1])

        def dequantize_per_tensor(x, *_):
            if x.dtype != per_tensor[1].dtype:
                return dequantize_linear(x, *per_tensor)
            return int8.dequantize(x, scale32, zero_point32)
        return dequantize_per_tensor
    return dequantize_linear


@register("DynamicQuantizeLinear", multi_output=True)
def build_dynamic_quantize_linear(node: NodeSpec):
    def dynamic_quantize_linear(x):
        low, high = min(np.float32(0), x.min()), max(np.float32(0), x.max())
        scale = np.float32((high - low) / np.float32(255))
        zero_point = np.uint8(np.clip(np.rint(np.float32(0) - low / scale), 0, 255))
        q = np.clip(np.rint(x / scale) + np.float32(zero_point), 0, 255).astype(np.uint8)
        return q, np.array(scale, np.float32), np.array(zero_point, np.uint8)
    return dynamic_quantize_linear


def _gemm_weights(node: NodeSpec, w_index: int, zp_index: int) -> int8.GemmWeights | None:
    w, zp = node.const(w_index), node.const(zp_index)
    if w is None or w.ndim != 2 or not int8.kernel_weights_ok(w, zp if node.has_input(zp_index) else None):
        return None
    if node.has_input(zp_index) and zp is None:
        return None
    return int8.GemmWeights(w)


@register("MatMulInteger")
def build_matmul_integer(node: NodeSpec):
    packed = _gemm_weights(node, 1, 3)

    def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
        za = a_zero_point
        if packed is not None and a.dtype in (np.uint8, np.int8) and (za is None or np.size(za) == 1):
            return int8.qgemm_nd(a, int8.scalar(za), packed, node.threads)
        return int8.exact_matmul(a, za, b, b_zero_point)
    return matmul_integer


@register("QLinearMatMul")
def build_qlinear_matmul(node: NodeSpec):
    packed = _gemm_weights(node, 3, 5)

    def qlinear_matmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        mult = int8.multiplier(a_scale, b_scale, y_scale)
        out_dtype = y_zp.dtype if y_zp is not None else a.dtype
        zy = int8.scalar(y_zp)
        if packed is not None and out_dtype == np.uint8 and a.ndim >= 2:
            return int8.qgemm_nd(a, int8.scalar(a_zp), packed, node.threads, bias=None,
                                 scale=np.asarray(a_scale, np.float32) * np.asarray(b_scale, np.float32),
                                 output="uint8", out_scale=np.float32(np.asarray(y_scale).reshape(-1)[0]),
                                 out_zero_point=zy)
        acc = int8.exact_matmul(a, a_zp, b, b_zp)
        return int8.requantize(acc, mult, zy, out_dtype, channel_axis=-1)
    return qlinear_matmul


def _conv_weights(node: NodeSpec, w_index: int, zp_index: int, group: int) -> int8.ConvWeights | None:
    w, zp = node.const(w_index), node.const(zp_index)
    if w is None or w.ndim != 4 or not int8.kernel_weights_ok(w, zp):
        return None
    if node.has_input(zp_index) and zp is None:
        return None
    return int8.ConvWeights(w, group)


@register("ConvInteger")
def build_conv_integer(node: NodeSpec):
    window, group = Window(node, node.attr("kernel_shape")), node.attr("group", 1)
    packed = _conv_weights(node, 1, 3, group)

    def conv_integer(x, w, x_zero_point=None, w_zero_point=None):
        if packed is not None and x.dtype in (np.uint8, np.int8):
            return int8.qconv2d(x, int8.scalar(x_zero_point), packed, window, node.threads)
        return int8.exact_conv(x, x_zero_point, w, w_zero_point, window, group)
    return conv_integer


@register("QLinearConv")
def build_qlinear_conv(node: NodeSpec):
    window, group = Window(node, node.attr("kernel_shape")), node.attr("group", 1)
    packed = _conv_weights(node, 3, 5, group)

    def qlinear_conv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias=None):
        out_dtype = y_zp.dtype if y_zp is not None else x.dtype
        zy = int8.scalar(y_zp)
        if packed is not None and out_dtype == np.uint8:
            return int8.qconv2d(x, int8.scalar(x_zp), packed, window, node.threads, bias=bias,
                                scale=np.asarray(x_scale, np.float32) * np.asarray(w_scale, np.float32),
                                output="uint8", out_scale=np.float32(np.asarray(y_scale).reshape(-1)[0]),
                                out_zero_point=zy)
        acc = int8.exact_conv(x, x_zp, w, w_zp, window, group)
        if bias is not None:
            acc += bias.reshape((1, -1) + (1,) * (acc.ndim - 2))
        return int8.requantize(acc, int8.multiplier(x_scale, w_scale, y_scale), zy, out_dtype, 1)
    return qlinear_conv
