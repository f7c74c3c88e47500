"""Reductions: ReduceMean/Sum/Max/Min, ArgMax, TopK."""
from __future__ import annotations

import numpy as np

from graphopt.runtime.ops import NodeSpec, numba_fp32, refuse, register

# The opset from which each reduction takes its axes as an input instead of an attribute.
_AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18}


def _identity_value(op_type: str, dtype: np.dtype):
    """What a reduction over an empty set returns (ReduceMax of nothing is -inf)."""
    if dtype.kind == "b":
        return op_type == "ReduceMin"
    if op_type == "ReduceMax":
        return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min
    if op_type == "ReduceMin":
        return np.inf if dtype.kind == "f" else np.iinfo(dtype).max
    return None


def _trailing_axes(axes, ndim: int):
    """The first axis when ``axes`` are exactly the trailing axes ``first..ndim-1``, else None."""
    normalized = sorted(a + ndim if a < 0 else a for a in axes)
    if normalized and normalized == list(range(normalized[0], ndim)) and normalized[0] >= 0:
        return normalized[0]
    return None


def _reduce_function(op_type: str):
    def reduce_max(x, axis, keepdims):
        return np.max(x, axis=axis, keepdims=keepdims, initial=_identity_value("ReduceMax", x.dtype))

    def reduce_min(x, axis, keepdims):
        return np.min(x, axis=axis, keepdims=keepdims, initial=_identity_value("ReduceMin", x.dtype))

    def reduce_mean(x, axis, keepdims):
        if axis is not None and x.dtype in (np.float32, np.float64) and x.ndim:
            first = _trailing_axes(axis, x.ndim)
            if first is not None:  # over H, W (an SE block): one pass over the rows
                return numba_fp32.mean_trailing(x, first, keepdims)
        return np.mean(x, axis=axis, keepdims=keepdims).astype(x.dtype, copy=False)

    def reduce_sum(x, axis, keepdims):
        return np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype)

    return {"ReduceMax": reduce_max, "ReduceMin": reduce_min, "ReduceMean": reduce_mean,
            "ReduceSum": reduce_sum}[op_type]


@register(*_AXES_INPUT_SINCE)
def build_reduce(node: NodeSpec):
    keepdims = bool(node.attr("keepdims", 1))
    noop_empty = bool(node.attr("noop_with_empty_axes", 0))
    function = _reduce_function(node.op_type)
    axes_from_input = node.opset >= _AXES_INPUT_SINCE[node.op_type]

    attr_axes = node.attr("axes")
    fixed_axis = tuple(int(a) for a in attr_axes) if attr_axes else None
    constant_axes = node.const(1) if axes_from_input else None
    if constant_axes is not None and constant_axes.size:
        fixed_axis = tuple(int(a) for a in constant_axes.reshape(-1))

    def reduce(x, axes=None):
        if fixed_axis is not None and (not axes_from_input or constant_axes is not None):
            return np.asarray(function(x, fixed_axis, keepdims))
        if not axes_from_input:
            axes = attr_axes
        if axes is None or len(axes) == 0:
            if noop_empty:
                return x
            axis = None
        else:
            axis = tuple(int(a) for a in np.asarray(axes).reshape(-1))
        return np.asarray(function(x, axis, keepdims))
    return reduce


@register("ArgMax")
def build_arg_max(node: NodeSpec):
    axis, keepdims = node.attr("axis", 0), bool(node.attr("keepdims", 1))
    last = bool(node.attr("select_last_index", 0))

    def arg_max(x):
        if last:
            flipped = np.flip(x, axis)
            result = x.shape[axis] - 1 - np.argmax(flipped, axis=axis)
        else:
            result = np.argmax(x, axis=axis)
        if keepdims:
            result = np.expand_dims(result, axis)
        return result.astype(np.int64)
    return arg_max


@register("TopK", multi_output=True)
def build_top_k(node: NodeSpec):
    axis = node.attr("axis", -1)
    largest, ordered = bool(node.attr("largest", 1)), bool(node.attr("sorted", 1))
    refuse(node.opset < 10, "TopK with k as an attribute (opset < 10)")
    refuse(not ordered, "TopK sorted=0")

    def top_k(x, k):
        k = int(np.asarray(k).reshape(-1)[0])
        # a stable sort keeps ties in index order, as ONNX requires (the lower index first)
        keys = -x if largest else x
        if x.dtype.kind == "u" and largest:
            keys = -(x.astype(np.int64))
        order = np.argsort(keys, axis=axis, kind="stable")
        indices = np.take(order, np.arange(k), axis=axis)
        return np.take_along_axis(x, indices, axis=axis), indices.astype(np.int64)
    return top_k
