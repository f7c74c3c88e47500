"""Elementwise ops with numpy broadcasting: arithmetic, comparisons, logic, activations."""
from __future__ import annotations

import math

import numpy as np

from graphopt.runtime.ops import NodeSpec, numba_fp32, refuse, register


def _float_loop(loop):
    """A float32/float64 Numba loop applied to any float dtype (float16 goes through float32)."""
    def apply(x):
        if x.dtype in (np.float32, np.float64):
            return loop(x)
        return loop(x.astype(np.float32)).astype(x.dtype)
    return apply


erf = _float_loop(numba_fp32.erf)


def _int_divide(x, y):
    # ONNX integer Div truncates toward zero (C semantics); numpy's // floors.
    q = np.floor_divide(x, y)
    adjust = (np.remainder(x, y) != 0) & ((x < 0) ^ (y < 0))
    return q + adjust.astype(q.dtype)


def _divide(x, y):
    if x.dtype.kind in "iu":
        return _int_divide(x, y)
    return np.divide(x, y)


def _power(x, y):
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        return np.power(x, y.astype(x.dtype))
    if x.dtype.kind == "f" and y.dtype != x.dtype:
        y = y.astype(x.dtype)
    return np.power(x, y).astype(x.dtype, copy=False)


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _divide, "Pow": _power,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "And": np.logical_and,
}


@register(*_BINARY)
def build_binary(node: NodeSpec):
    refuse(node.attr("broadcast") is not None and node.opset < 7,
           "legacy broadcast attribute (opset < 7)")
    return _BINARY[node.op_type]


_VARIADIC = {"Sum": np.add, "Max": np.maximum, "Min": np.minimum, "Mean": np.add}


@register(*_VARIADIC)
def build_variadic(node: NodeSpec):
    """Sum / Max / Min / Mean of any number of inputs, with broadcasting."""
    refuse(node.opset < 8, f"{node.op_type} before opset 8 (no broadcasting)")
    combine = _VARIADIC[node.op_type]

    def variadic(*xs):
        y = xs[0]
        for x in xs[1:]:
            y = combine(y, x)
        if node.op_type == "Mean":
            y = (y / y.dtype.type(len(xs))).astype(y.dtype, copy=False)
        return y

    return variadic


def _sigmoid(x):
    # in place on one temporary; exp(-x) overflowing to inf gives the right limit, 0
    with np.errstate(over="ignore"):
        y = np.negative(x)
        np.exp(y, out=y)
        y += 1
        return np.reciprocal(y, out=y)


def _relu(x):
    return np.maximum(x, x.dtype.type(0))


_UNARY = {
    "Relu": _relu, "Sigmoid": _sigmoid, "Tanh": np.tanh, "Erf": erf, "Sqrt": np.sqrt,
    "Exp": np.exp, "Log": np.log, "Neg": np.negative, "Abs": np.abs, "Not": np.logical_not,
    "Identity": lambda x: x,
}


@register(*_UNARY)
def build_unary(node: NodeSpec):
    return _UNARY[node.op_type]


@register("Reciprocal")
def build_reciprocal(node: NodeSpec):
    return lambda x: np.reciprocal(x) if x.dtype.kind == "f" else (1 / x).astype(x.dtype)


@register("LeakyRelu")
def build_leaky_relu(node: NodeSpec):
    alpha = node.attr("alpha", 0.01)
    return lambda x: np.where(x >= 0, x, x * x.dtype.type(alpha))


@register("HardSigmoid")
def build_hard_sigmoid(node: NodeSpec):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)

    def hard_sigmoid(x):
        if x.dtype in (np.float32, np.float64):
            return numba_fp32.hard_sigmoid(x, alpha, beta)
        return np.clip(x * x.dtype.type(alpha) + x.dtype.type(beta), 0, 1).astype(x.dtype, copy=False)
    return hard_sigmoid


@register("HardSwish")
def build_hard_swish(node: NodeSpec):
    def hard_swish(x):
        if x.dtype in (np.float32, np.float64):
            return numba_fp32.hard_swish(x)
        t = x.dtype.type
        y = x * t(1 / 6)
        y += t(0.5)
        np.clip(y, t(0), t(1), out=y)
        y *= x
        return y
    return hard_swish


@register("Gelu")
def build_gelu(node: NodeSpec):
    approximate = node.attr("approximate", "none")
    refuse(approximate not in ("none", "tanh"), f"Gelu approximate={approximate!r}")
    if approximate == "tanh":
        def gelu_tanh(x):
            if x.dtype in (np.float32, np.float64):
                return numba_fp32.gelu(x, approximate=True)
            t = x.dtype.type
            inner = t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x * x * x)
            return t(0.5) * x * (t(1) + np.tanh(inner))
        return gelu_tanh

    def gelu(x):
        if x.dtype in (np.float32, np.float64):
            return numba_fp32.gelu(x)
        t = x.dtype.type
        return t(0.5) * x * (t(1) + erf(x * t(1 / math.sqrt(2))))
    return gelu


@register("Clip")
def build_clip(node: NodeSpec):
    if node.opset < 11:
        lo, hi = node.attr("min", -np.inf), node.attr("max", np.inf)
        return lambda x: np.clip(x, x.dtype.type(lo) if x.dtype.kind == "f" else lo, hi).astype(x.dtype, copy=False)

    def clip(x, lo=None, hi=None):
        if lo is None and hi is None:
            return x
        return np.clip(x, lo, hi).astype(x.dtype, copy=False)
    return clip


@register("Where")
def build_where(node: NodeSpec):
    return np.where


@register("Softmax")
def build_softmax(node: NodeSpec):
    axis = node.attr("axis", -1 if node.opset >= 13 else 1)

    def softmax(x):
        if x.dtype in (np.float32, np.float64) and x.ndim and axis in (-1, x.ndim - 1):
            return numba_fp32.softmax_rows(x, x.size // x.shape[-1] if x.shape[-1] else 0)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    if node.opset >= 13:
        return softmax

    def softmax_2d(x):
        # before opset 13 the input is seen as a matrix [prod(dims < axis), prod(dims >= axis)]
        a = axis + x.ndim if axis < 0 else axis
        rows = int(np.prod(x.shape[:a], dtype=np.int64))
        if x.dtype in (np.float32, np.float64) and x.size:
            return numba_fp32.softmax_rows(x, rows)
        flat = x.reshape(rows, -1)
        e = np.exp(flat - flat.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)
    return softmax_2d
