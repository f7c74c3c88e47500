"""Integer matrix products and convolutions on ``graphopt.kernels``, with an exact fallback.

The kernels take uint8 activations and int8 weights whose zero point is 0 (the U8S8 symmetric
format of DESIGN.md). int8 activations join them exactly by a shift: ``a - za == (a + 128) -
(za + 128)``. uint8 weights with a zero point run on the same kernels as :class:`OffsetWeightConv`
/ :class:`OffsetWeightProduct` (int8 weights plus a per-channel offset times the sums of
``x - zx``, from one more output channel of ones). Everything else (non-zero int8 weight zero
points, convolutions that are not 2-D) takes :func:`exact_matmul` / :func:`exact_conv`: the same
integer sums computed in float64 on BLAS, which is exact while a sum stays below 2**53 (K up to
~10**11 for 8-bit data).

Requantization, everywhere, is onnxruntime's: ``multiplier = float32(s_x * s_w) / float32(s_y)``,
``q = round_half_even(float32(acc) * multiplier) + zp`` saturated to the output type.
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np

from graphopt import kernels
from graphopt.kernels import _bytewise, _qmatmul
from graphopt.runtime.ops import numba_fp32
from graphopt.runtime.ops.nn import Window, conv_forward


def to_uint8(x: np.ndarray, zero_point: int) -> tuple[np.ndarray, int]:
    """uint8 data with its zero point, shifting int8 data by 128 (an exact change of origin)."""
    if x.dtype == np.int8:
        return (x.view(np.uint8) ^ np.uint8(0x80)), zero_point + 128
    return x, zero_point


def scalar(value, default: int = 0) -> int:
    return default if value is None else int(np.asarray(value).reshape(-1)[0])


def kernel_weights_ok(w: np.ndarray | None, w_zero_point) -> bool:
    """Weights the compiled kernels can take: constant int8 with every zero point 0."""
    return (w is not None and w.dtype == np.int8
            and (w_zero_point is None or not np.any(np.asarray(w_zero_point))))


# float32 holds every integer up to 2**24 exactly; a sum of K products of two 8-bit differences
# (each at most 255 * 255 in magnitude) stays below it, in any order of addition, while K <= 258.
_FLOAT32_EXACT_K = 2 ** 24 // (255 * 255)


def exact_matmul(a, a_zero_point, b, b_zero_point) -> np.ndarray:
    """int32 ``(a - za) @ (b - zb)``; ``za`` may be per row of a 2-D ``a``, ``zb`` per column."""
    return exact_matmul_float(a, a_zero_point, b, b_zero_point).astype(np.int32)


def exact_matmul_float(a, a_zero_point, b, b_zero_point) -> np.ndarray:
    """:func:`exact_matmul`'s integer sums as floats: float32 (half the memory and twice BLAS's
    speed of float64) when K is small enough for them to be exact, float64 otherwise."""
    eight_bit = a.dtype.itemsize == 1 and np.asarray(b).dtype.itemsize == 1
    dtype = np.float32 if eight_bit and a.shape[-1] <= _FLOAT32_EXACT_K else np.float64
    a_float = a.astype(dtype)
    if a_zero_point is not None:
        za = np.asarray(a_zero_point, dtype)
        a_float -= za.reshape(-1, 1) if za.ndim == 1 and za.size > 1 else za
    b_float = b.astype(dtype)
    if b_zero_point is not None:
        b_float -= np.asarray(b_zero_point, dtype)
    return np.matmul(a_float, b_float)


def exact_conv(x, x_zero_point, w, w_zero_point, window: Window, group: int) -> np.ndarray:
    """int32 convolution of ``x - zx`` with ``w - zw`` (``zw`` per output channel or per tensor)."""
    x64 = x.astype(np.float64) - float(scalar(x_zero_point))
    w64 = w.astype(np.float64)
    if w_zero_point is not None:
        zw = np.asarray(w_zero_point, np.float64).reshape(-1)
        w64 -= zw.reshape((-1,) + (1,) * (w.ndim - 1)) if zw.size > 1 else zw[0]
    # zero padding of x - zx is padding x with its zero point, as ConvInteger specifies
    return conv_forward(x64, w64, None, window, group).astype(np.int32)


@numba.jit(nopython=True, nogil=True, cache=True)
def _activation_products(a, a_zero_point, b, b_zero_point, acc):
    """``acc[t] = (a[t] - za) @ (b[t] - zb)`` in int32 for 8-bit ``a[T, M, K]``, ``b[T, K, N]``:
    ``b[t] - zb`` made once per t, then row by row, the inner loop running along a row of it
    (unit stride, vectorized)."""
    rows, depth, columns = a.shape[1], a.shape[2], b.shape[2]
    centered = np.empty((depth, columns), np.int32)
    for t in range(a.shape[0]):
        for k in range(depth):
            for j in range(columns):
                centered[k, j] = np.int32(b[t, k, j]) - b_zero_point
        for i in range(rows):
            for j in range(columns):
                acc[t, i, j] = 0
            for k in range(depth):
                factor = np.int32(a[t, i, k]) - a_zero_point
                for j in range(columns):
                    acc[t, i, j] += factor * centered[k, j]


@numba.jit(nopython=True, nogil=True, cache=True)
def _requantize_uint8(acc, mult, zero_point, low, high, out):
    # requantize()'s arithmetic: rint(float32(acc) * mult) + zero point, clamped
    for i in range(acc.shape[0]):
        value = np.rint(np.float32(acc[i]) * mult) + zero_point
        out[i] = np.uint8(min(max(value, low), high))


class ActivationProduct:
    """``DQ(a) @ DQ(b)`` (attention's Q·Kᵀ and P·V) in exact integers, then requantized to uint8
    within ``clamp`` as onnxruntime's QLinearMatMul does, or scaled to float32 when
    ``quantize`` is None. Operands with equal batch dimensions run in one compiled loop; others
    (broadcast batches, vectors) take :func:`exact_matmul_float`."""

    def __init__(self, a_zero_point: int, b_zero_point: int, scale: np.float32,
                 quantize: tuple[np.float32, int] | None, clamp: tuple[int, int]):
        self.zero_points = (np.int32(a_zero_point), np.int32(b_zero_point))
        self.scale, self.quantize, self.clamp = np.float32(scale), quantize, clamp
        self.mult = None if quantize is None else np.float32(self.scale / quantize[0])

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if (a.ndim < 2 or b.ndim < 2 or a.shape[:-2] != b.shape[:-2] or a.dtype != np.uint8
                or b.dtype != np.uint8):
            return self._exact(a, b)
        rows, k, columns = a.shape[-2], a.shape[-1], b.shape[-1]
        if _qmatmul.supported():  # VNNI with the requantization in the epilogue (kernels/qmatmul.c)
            a3, b3 = a.reshape(-1, rows, k), b.reshape(-1, k, columns)
            if a3.strides[2] != 1:
                a3 = np.ascontiguousarray(a3)
            if self.quantize is None:
                out = np.empty(a.shape[:-1] + (columns,), np.float32)
                return _qmatmul.activation_product(a3, self.zero_points[0], b3, self.zero_points[1], out,
                                                   scale=self.scale)
            out = np.empty(a.shape[:-1] + (columns,), np.uint8)
            return _qmatmul.activation_product(a3, self.zero_points[0], b3, self.zero_points[1], out,
                                               mult=self.mult, zero_point=self.quantize[1],
                                               low=self.clamp[0], high=self.clamp[1])
        if k <= _FLOAT32_EXACT_K:
            # the integer sums exact in float32 on BLAS: 2-3x faster than the compiled int32 loop
            # (whose accumulators round-trip through memory) at attention's sizes
            acc = exact_matmul_float(a, self.zero_points[0], b, self.zero_points[1])
            return self._scaled(acc)
        acc = np.empty(a.shape[:-1] + (columns,), np.int32)
        _activation_products(a.reshape(-1, rows, k), self.zero_points[0], b.reshape(-1, k, columns),
                             self.zero_points[1], acc.reshape(-1, rows, columns))
        if self.quantize is None:
            return acc.astype(np.float32) * self.scale
        out = np.empty(acc.shape, np.uint8)
        _requantize_uint8(acc.reshape(-1), self.mult, np.float32(self.quantize[1]), np.float32(self.clamp[0]),
                          np.float32(self.clamp[1]), out.reshape(-1))
        return out

    def _scaled(self, acc):
        """Float32 integer sums to the output: requantized in one compiled pass, or scaled."""
        if self.quantize is None:
            acc *= self.scale
            return acc
        out = np.empty(acc.shape, np.uint8)
        _requantize_uint8(acc.reshape(-1), self.mult, np.float32(self.quantize[1]), np.float32(self.clamp[0]),
                          np.float32(self.clamp[1]), out.reshape(-1))
        return out

    def _exact(self, a, b):
        acc = exact_matmul_float(a, self.zero_points[0], b, self.zero_points[1])
        if self.quantize is None:
            return acc.astype(np.float32, copy=False) * self.scale
        return requantize(acc, self.mult, self.quantize[1], np.dtype(np.uint8), clamp=self.clamp)


def multiplier(x_scale, w_scale, y_scale) -> np.ndarray:
    product = np.asarray(x_scale, np.float32) * np.asarray(w_scale, np.float32)
    return (product / np.float32(np.asarray(y_scale).reshape(-1)[0])).astype(np.float32)


def requantize(acc: np.ndarray, mult: np.ndarray, zero_point: int, dtype: np.dtype,
               channel_axis: int | None = None, clamp: tuple[int, int] | None = None) -> np.ndarray:
    """Integer accumulators (int32, or integral floats) to ``dtype`` with a per-tensor or
    per-channel float32 multiplier; ``clamp``: tighter quantized bounds (a fused ReLU / Clip)."""
    mult = np.asarray(mult, np.float32).reshape(-1)
    if mult.size > 1:
        shape = [1] * acc.ndim
        shape[channel_axis] = -1
        mult = mult.reshape(shape)
    else:
        mult = mult[0]
    info = np.iinfo(dtype)
    low, high = (info.min, info.max) if clamp is None else (max(info.min, clamp[0]), min(info.max, clamp[1]))
    value = acc.astype(np.float32)
    value *= mult
    np.rint(value, out=value)
    value += np.float32(zero_point)
    return np.clip(value, low, high, out=value).astype(dtype)


def bound(value: float, quantize: tuple[np.float32, int]) -> int:
    """A float clamp bound (ReLU's 0, Clip's min/max) in the quantized domain of ``quantize``."""
    if np.isinf(value):
        return 0 if value < 0 else 255
    q = int(np.rint(np.float32(value) / quantize[0])) + quantize[1]
    return min(max(q, 0), 255)


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_add_run(a, ratio_a, b, ratio_b, fixed, out):
    # An FMA rounds x * y + z once: the float64 product of float32 values is exact, so one
    # float64 add and one rounding to float32 give the same result. Indexed from 0 by the loop
    # counter so that LLVM vectorizes it (see kernels/glue.py).
    for i in range(out.shape[0]):
        partial = np.float32(np.float64(b[i]) * ratio_b + fixed)
        value = np.float32(np.float64(a[i]) * ratio_a + np.float64(partial))
        out[i] = np.uint8(min(max(np.rint(value), np.float32(0)), np.float32(255)))


@numba.jit(nopython=True, nogil=True, cache=True, fastmath={"contract"})
def _qlinear_add_run_fma(a, ratio_a, b, ratio_b, fixed, out):
    # float32 throughout; "contract" lets LLVM fuse each multiply-add into one FMA instruction,
    # which vectorizes at full width. QLinearAdd checks that it did (see _fma_matches).
    for i in range(out.shape[0]):
        partial = np.float32(b[i]) * ratio_b + fixed
        value = np.float32(a[i]) * ratio_a + partial
        out[i] = np.uint8(min(max(np.rint(value), np.float32(0)), np.float32(255)))


@numba.jit(nopython=True, nogil=True, cache=True, fastmath={"contract"})
def _qlinear_add_run_fma_args(a, ratio_a, b, ratio_b, fixed, _unused, out):
    # _qlinear_add_run_fma with _qlinear_mul_run's argument layout (one call site for both)
    _qlinear_add_run_fma(a, ratio_a, b, ratio_b, fixed, out)


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_add_run_args(a, ratio_a, b, ratio_b, fixed, _unused, out):
    _qlinear_add_run(a, ratio_a, b, ratio_b, fixed, out)


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_add(a, ratio_a, b, ratio_b, fixed, out):
    # a, b, out: [rows, n]; a or b may have one row, broadcast over the other's (a bias)
    a_rows, b_rows = a.shape[0], b.shape[0]
    for r in range(out.shape[0]):
        _qlinear_add_run(a[r % a_rows], ratio_a, b[r % b_rows], ratio_b, fixed, out[r])


@numba.jit(nopython=True, nogil=True, cache=True, fastmath={"contract"})
def _qlinear_add_fma(a, ratio_a, b, ratio_b, fixed, out):
    # _qlinear_add on the FMA run (checked like it, see QLinearAdd._fma_matches)
    a_rows, b_rows = a.shape[0], b.shape[0]
    for r in range(out.shape[0]):
        _qlinear_add_run_fma(a[r % a_rows], ratio_a, b[r % b_rows], ratio_b, fixed, out[r])


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_add_channel(a, ratio_a, b, ratio_b, fixed, b_per_row, out):
    """out[r, i] from a[r, i] and b[r] (``b_per_row``), or from a[r] and b[r, i]: the operand
    with one value per row (a per-channel vector) is never broadcast in memory. The exact
    float64 form of _qlinear_add_run; the per-row operand's FMA done once per row."""
    for r in range(out.shape[0]):
        row = out[r]
        if b_per_row:
            partial = np.float64(np.float32(np.float64(b[r, 0]) * ratio_b + fixed))
            src = a[r]
            for i in range(row.shape[0]):
                value = np.float32(np.float64(src[i]) * ratio_a + partial)
                row[i] = np.uint8(min(max(np.rint(value), np.float32(0)), np.float32(255)))
        else:
            term = np.float64(a[r, 0]) * ratio_a
            src = b[r]
            for i in range(row.shape[0]):
                partial = np.float32(np.float64(src[i]) * ratio_b + fixed)
                value = np.float32(term + np.float64(partial))
                row[i] = np.uint8(min(max(np.rint(value), np.float32(0)), np.float32(255)))


def _binary_layout(a_shape: tuple, b_shape: tuple):
    """How a binary kernel runs on operands of these shapes (decided once per pair; a plan meets
    the same shapes every run): (output shape, kind, rows, n) with kind

    * "flat": equal shapes, one run over ``n`` values;
    * "rows": one operand is a row of ``n`` values repeated over the other's ``rows`` (a bias
      along the trailing axes, an attention mask);
    * "a_channel" / "b_channel": that operand holds one value per row of ``n`` (a per-channel
      vector ``[1, C, 1, 1]``): never broadcast in memory;
    * "broadcast": anything else; the operands are broadcast to the output shape first.
    """
    shape = tuple(np.broadcast_shapes(a_shape, b_shape))
    size = math.prod(shape)
    if size == 0:
        return shape, "broadcast", 1, size
    if a_shape == b_shape:
        return shape, "flat", 1, size
    if a_shape != shape and b_shape != shape:
        return shape, "broadcast", 1, size
    small = "a" if a_shape != shape else "b"
    padded = (1,) * (len(shape) - len(a_shape if small == "a" else b_shape)) + (a_shape if small == "a" else b_shape)
    # a repeated row: leading 1s, then the output's trailing dimensions
    lead = next((k for k, d in enumerate(padded) if d != 1), len(padded))
    if padded[lead:] == shape[lead:]:
        n = math.prod(shape[lead:])
        if n >= 16 or n == size:
            return shape, "rows", size // max(n, 1), n
    # one value per row: the output's leading dimensions, then 1s
    tail = max((k + 1 for k, d in enumerate(padded) if d != 1), default=0)
    if padded[:tail] == shape[:tail]:
        n = math.prod(shape[tail:])
        if n >= 16:
            return shape, f"{small}_channel", size // n, n
    return shape, "broadcast", 1, size


class _Binary:
    """The shape handling of QLinearAdd / QLinearMul: per pair of input shapes, a prepared call."""

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        run = self._prepared.get((a.shape, b.shape))
        if run is None:
            run = self._prepared[(a.shape, b.shape)] = self._prepare(a.shape, b.shape)
        return run(a, b)

    def _prepare(self, a_shape, b_shape):
        shape, kind, rows, n = _binary_layout(a_shape, b_shape)
        flat, by_rows, channel = self._flat, self._rows, self._channel
        if kind == "flat":
            kernel, (c0, c1, c2, c3) = self._flat_kernel()

            def run(a, b):  # the most frequent case: the compiled loop called directly
                out = np.empty(shape, np.uint8)
                kernel(a.reshape(-1), c0, b.reshape(-1), c1, c2, c3, out.reshape(-1))
                return out
        elif kind == "rows":
            def run(a, b):
                out = np.empty(shape, np.uint8)
                by_rows(np.ascontiguousarray(a).reshape(-1, n), np.ascontiguousarray(b).reshape(-1, n),
                        out.reshape(rows, n))
                return out
        elif kind in ("a_channel", "b_channel"):
            b_per_row = kind == "b_channel"

            def run(a, b):
                out = np.empty(shape, np.uint8)
                a2 = a.reshape(rows, 1) if not b_per_row else np.ascontiguousarray(a).reshape(rows, n)
                b2 = b.reshape(rows, 1) if b_per_row else np.ascontiguousarray(b).reshape(rows, n)
                channel(a2, b2, b_per_row, out.reshape(rows, n))
                return out
        else:
            def run(a, b):
                out = np.empty(shape, np.uint8)
                flat(np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1),
                     np.ascontiguousarray(np.broadcast_to(b, shape)).reshape(-1), out.reshape(-1))
                return out
        return run


class QLinearAdd(_Binary):
    """uint8 ``a + b`` requantized exactly as onnxruntime's QLinearAdd (its AVX2 kernel) does:
    ``rint(fma(a, s_a/s_c, fma(b, s_b/s_c, zc - fma(s_a/s_c, za, s_b/s_c·zb))))`` in float32."""

    def __init__(self, a_scale, a_zero_point, b_scale, b_zero_point, c_scale, c_zero_point):
        ratio_a = np.float32(a_scale) / np.float32(c_scale)
        ratio_b = np.float32(b_scale) / np.float32(c_scale)
        # onnxruntime's C++ ``zc - (ratio_a * za + ratio_b * zb)`` is compiled with the first
        # product fused into an FMA (ppocr-rec: -15.70829 where two roundings give -15.708282)
        fixed = np.float32(np.float32(c_zero_point) - np.float32(
            np.float64(ratio_a) * np.float64(a_zero_point) + np.float64(np.float32(ratio_b * np.float32(b_zero_point)))))
        self.constants = (np.float64(ratio_a), np.float64(ratio_b), np.float64(fixed))
        self.constants32 = (ratio_a, ratio_b, fixed)
        self.fma_exact, self.c_exact = self._fma_matches()
        self._prepared = {}

    def _fma_matches(self) -> tuple[bool, bool]:
        """Whether the float32 FMA loops (Numba's, then kernels/bytewise.c's) give the exact loop's
        result for all 65,536 input pairs (they do wherever FMA instructions run): then they are
        exact for every input."""
        a = np.repeat(np.arange(256, dtype=np.uint8), 256)
        b = np.tile(np.arange(256, dtype=np.uint8), 256)
        exact, fused, fused_rows, compiled = (np.empty(a.size, np.uint8) for _ in range(4))
        _qlinear_add_run(a, *self.constants[:1], b, *self.constants[1:], exact)
        ratio_a, ratio_b, fixed = self.constants32
        _qlinear_add_run_fma_args(a, ratio_a, b, ratio_b, fixed, 0, fused)  # the loop the flat calls run
        # the row loop, with b one row repeated under every row of a (a bias)
        _qlinear_add_fma(a.reshape(256, 256), ratio_a, b[:256].reshape(1, 256), ratio_b, fixed,
                         fused_rows.reshape(256, 256))
        _bytewise.qlinear_add(a, b, compiled, 1, a.size, False, False, ratio_a, ratio_b, fixed)
        return (bool(np.array_equal(exact, fused) and np.array_equal(exact, fused_rows)),
                bool(np.array_equal(exact, compiled)))

    def _prepare(self, a_shape, b_shape):
        shape, kind, rows, n = _binary_layout(a_shape, b_shape)
        if not self.c_exact or kind not in ("flat", "rows"):
            return super()._prepare(a_shape, b_shape)
        # the C loop (kernels/bytewise.c): the FMA form, which _fma_matches found exact
        a_repeats = kind == "rows" and math.prod(a_shape) != math.prod(shape)
        b_repeats = kind == "rows" and not a_repeats
        ratio_a, ratio_b, fixed = self.constants32
        add = _bytewise.qlinear_add

        def run(a, b):
            return add(a, b, np.empty(shape, np.uint8), rows, n, a_repeats, b_repeats, ratio_a, ratio_b, fixed)
        return run

    def _flat_kernel(self):
        """(loop, its four constant arguments) for ``loop(a, c0, b, c1, c2, c3, out)``."""
        if self.fma_exact:
            return _qlinear_add_run_fma_args, (*self.constants32[:1], *self.constants32[1:], 0)
        return _qlinear_add_run_args, (*self.constants[:1], *self.constants[1:], 0)

    def _flat(self, a, b, out):
        if self.fma_exact:
            _qlinear_add_run_fma(a, *self.constants32[:1], b, *self.constants32[1:], out)
        else:
            _qlinear_add_run(a, *self.constants[:1], b, *self.constants[1:], out)

    def _rows(self, a, b, out):
        if self.fma_exact:
            _qlinear_add_fma(a, *self.constants32[:1], b, *self.constants32[1:], out)
        else:
            _qlinear_add(a, *self.constants[:1], b, *self.constants[1:], out)

    def _channel(self, a, b, b_per_row, out):
        _qlinear_add_channel(a, *self.constants[:1], b, *self.constants[1:], b_per_row, out)


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_mul_run(a, a_zero_point, b, b_zero_point, ratio, c_zero_point, out):
    for i in range(out.shape[0]):
        product = (np.int32(a[i]) - a_zero_point) * (np.int32(b[i]) - b_zero_point)
        # the zero point is added in float32 before rounding, as onnxruntime's kernel does
        value = np.rint(np.float32(product) * ratio + c_zero_point)
        out[i] = np.uint8(min(max(value, np.float32(0)), np.float32(255)))


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_mul(a, a_zero_point, b, b_zero_point, ratio, c_zero_point, out):
    a_rows, b_rows = a.shape[0], b.shape[0]
    for r in range(out.shape[0]):
        _qlinear_mul_run(a[r % a_rows], a_zero_point, b[r % b_rows], b_zero_point, ratio, c_zero_point, out[r])


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_mul_scaled_run(src, zero_point, factor, ratio, c_zero_point, out):
    for i in range(out.shape[0]):
        product = (np.int32(src[i]) - zero_point) * factor
        value = np.rint(np.float32(product) * ratio + c_zero_point)
        out[i] = np.uint8(min(max(value, np.float32(0)), np.float32(255)))


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_mul_channel(a, a_zero_point, b, b_zero_point, ratio, c_zero_point, b_per_row, out):
    # one operand one value per row: its centered value is the row's integer factor (the
    # integer product commutes, so either operand may be the per-row one)
    for r in range(out.shape[0]):
        if b_per_row:
            _qlinear_mul_scaled_run(a[r], a_zero_point, np.int32(b[r, 0]) - b_zero_point, ratio, c_zero_point, out[r])
        else:
            _qlinear_mul_scaled_run(b[r], b_zero_point, np.int32(a[r, 0]) - a_zero_point, ratio, c_zero_point, out[r])


class QLinearMul(_Binary):
    """uint8 ``a * b`` requantized as onnxruntime's QLinearMul (its SSE2 kernel) does:
    ``rint(float32((a - za)(b - zb)) * (s_a·s_b/s_c) + zc)``, the ratio in float32 and the zero
    point added before rounding (``rint(v) + zc`` differs where ``v + zc`` rounds to a tie)."""

    def __init__(self, a_scale, a_zero_point, b_scale, b_zero_point, c_scale, c_zero_point):
        ratio = np.float32(np.float32(a_scale) * np.float32(b_scale)) / np.float32(c_scale)
        self.constants = (np.int32(a_zero_point), np.int32(b_zero_point), np.float32(ratio),
                          np.float32(c_zero_point))
        self._prepared = {}

    def _flat_kernel(self):
        """(loop, its four constant arguments) for ``loop(a, c0, b, c1, c2, c3, out)``."""
        return _qlinear_mul_run, self.constants

    def _flat(self, a, b, out):
        za, zb, ratio, zc = self.constants
        _qlinear_mul_run(a, za, b, zb, ratio, zc, out)

    def _rows(self, a, b, out):
        za, zb, ratio, zc = self.constants
        _qlinear_mul(a, za, b, zb, ratio, zc, out)

    def _channel(self, a, b, b_per_row, out):
        za, zb, ratio, zc = self.constants
        _qlinear_mul_channel(a, za, b, zb, ratio, zc, b_per_row, out)


@numba.jit(nopython=True, nogil=True, cache=True)
def _lookup(x, table, out):
    for i in range(x.size):
        out[i] = table[x[i]]


def lookup(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[x]`` for uint8 ``x`` (numpy's fancy indexing first widens every index to 64 bits);
    a uint8 table in C (kernels/bytewise.c: 64 values an instruction sequence)."""
    if x.dtype == np.uint8 and table.dtype == np.uint8 and table.size == 256 and table.flags.c_contiguous:
        return _bytewise.lookup(x, table)
    out = np.empty(x.shape, table.dtype)
    _lookup(np.ascontiguousarray(x).reshape(-1), table, out.reshape(-1))
    return out


class TableLookup:
    """A lowered step mapping each uint8 value alone: ``table[x]`` (uint8, or float32 when a
    DequantizeLinear was folded into the table). ``min_rank``: a constant operand of shape (1,)
    makes a rank-0 input rank 1, as broadcasting would."""

    def __init__(self, table: np.ndarray, min_rank: int = 0):
        self.table = np.ascontiguousarray(table)
        self.min_rank = min_rank

    def __call__(self, xq: np.ndarray) -> np.ndarray:
        if xq.ndim < self.min_rank:
            xq = xq.reshape((1,) * (self.min_rank - xq.ndim) + xq.shape)
        return lookup(xq, self.table)


@numba.jit(nopython=True, nogil=True, cache=True)
def _quantize_lookup(x, scale, zero_point, table, out):
    """_quantize_uint8's arithmetic, its result used as an index into ``table``: by chunks, the
    quantization (vectorized; its division would be scalar in the same loop as the table reads)
    into a small buffer, then the table reads."""
    chunk = 1024
    index = np.empty(chunk, np.uint8)
    n = x.shape[0]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        _quantize_uint8(x[start:stop], scale, zero_point, index[:stop - start])
        _lookup(index[:stop - start], table, out[start:stop])


@numba.jit(nopython=True, nogil=True, cache=True)
def _quantize_dequantize(x, scale, zero_point, out_scale, out_zero_point, out):
    # _quantize_uint8 then _dequantize, in one pass
    lo, hi = np.float32(0 - zero_point), np.float32(255 - zero_point)
    for i in range(x.shape[0]):
        v = min(max(np.rint(x[i] / scale), lo), hi)
        q = np.uint8(np.int32(v) + zero_point)
        out[i] = np.float32(np.int32(q) - out_zero_point) * out_scale


class QuantizeLookup:
    """QuantizeLinear (per tensor, uint8) followed by a :class:`TableLookup`, in one pass over
    float32 input; other input types take ``fallback`` (the QuantizeLinear kernel) then the table."""

    def __init__(self, scale, zero_point, lookup: TableLookup, fallback):
        self.scale, self.zero_point = np.float32(scale), np.int32(zero_point)
        self.lookup, self.fallback = lookup, fallback

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float32 or x.ndim < max(1, self.lookup.min_rank):
            return self.lookup(self.fallback(x))
        out = np.empty(x.shape, self.lookup.table.dtype)
        _quantize_lookup(np.ascontiguousarray(x).reshape(-1), self.scale, self.zero_point,
                         self.lookup.table, out.reshape(-1))
        return out


class QuantizeDequantize:
    """QuantizeLinear (per tensor, uint8) whose only reader is a DequantizeLinear (per tensor):
    float32 in, float32 out, in one pass; other input types take the two kernels."""

    def __init__(self, scale, zero_point, out_scale, out_zero_point, fallback_q, fallback_dq):
        self.args = (np.float32(scale), np.int32(zero_point), np.float32(out_scale), np.int32(out_zero_point))
        self.fallback_q, self.fallback_dq = fallback_q, fallback_dq

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float32 or not x.ndim:
            return self.fallback_dq(self.fallback_q(x))
        out = np.empty(x.shape, np.float32)
        _quantize_dequantize(np.ascontiguousarray(x).reshape(-1), *self.args, out.reshape(-1))
        return out


@numba.jit(nopython=True, nogil=True, cache=True)
def _quantize_uint8(x, scale, zero_point, out):
    # kernels.glue.quantize_linear's arithmetic, per tensor, on one flat run
    lo, hi = np.float32(0 - zero_point), np.float32(255 - zero_point)
    for i in range(x.shape[0]):
        v = min(max(np.rint(x[i] / scale), lo), hi)
        out[i] = np.int32(v) + zero_point


def quantize_uint8(x: np.ndarray, scale: np.float32, zero_point: np.int32) -> np.ndarray:
    """float32 ``x`` to uint8 with one scale and zero point, as QuantizeLinear rounds."""
    out = np.empty(x.shape, np.uint8)
    _quantize_uint8(np.ascontiguousarray(x).reshape(-1), scale, zero_point, out.reshape(-1))
    return out


@numba.jit(nopython=True, nogil=True, cache=True)
def _dequantize(q, scale, zero_point, out):
    # kernels.glue.dequantize_linear's arithmetic, per tensor, on one flat run (vectorized)
    for i in range(q.shape[0]):
        out[i] = np.float32(np.int32(q[i]) - zero_point) * scale


def dequantize(q: np.ndarray, scale: np.float32, zero_point: np.int32) -> np.ndarray:
    """uint8 or int8 ``q`` to float32 with one scale and zero point, as DequantizeLinear does."""
    out = np.empty(q.shape, np.float32)
    _dequantize(np.ascontiguousarray(q).reshape(-1), scale, zero_point, out.reshape(-1))
    return out


@numba.jit(nopython=True, nogil=True, cache=True)
def _layer_norm_uint8(q, in_scale, in_zero_point, gamma, beta, has_bias, epsilon, out_scale, out_zero_point,
                      out):
    """DequantizeLinear → LayerNormalization → QuantizeLinear row by row, through float32 row
    buffers and the very kernels of the three steps: the same values as running them apart."""
    n = q.shape[1]
    x = np.empty(n, np.float32)
    y = np.empty(n, np.float32)
    for r in range(q.shape[0]):
        _dequantize(q[r], in_scale, in_zero_point, x)
        numba_fp32._layer_norm_row_f32(x, gamma, beta, has_bias, epsilon, y)
        _quantize_uint8(y, out_scale, out_zero_point, out[r])


@numba.jit(nopython=True, nogil=True, cache=True)
def _softmax_uint8(q, in_scale, in_zero_point, out_scale, out_zero_point, out):
    """DequantizeLinear → Softmax (last axis) → QuantizeLinear row by row, through float32 row
    buffers and the kernels of the three steps: the same values as running them apart."""
    n = q.shape[1]
    x = np.empty(n, np.float32)
    y = np.empty(n, np.float32)
    for r in range(q.shape[0]):
        _dequantize(q[r], in_scale, in_zero_point, x)
        numba_fp32._softmax_row(x, y)
        _quantize_uint8(y, out_scale, out_zero_point, out[r])


@numba.jit(nopython=True, nogil=True, cache=True)
def _softmax_exp_table(in_scale, in_zero_point):
    """table[m, v]: the float32 exp(x_v - x_m) that Softmax computes for an element dequantized
    from v in a row whose maximum is dequantized from m (dequantization is increasing: the row's
    maximum is its largest uint8's), as numba_fp32._softmax_row computes it."""
    values = np.empty(256, np.float32)
    _dequantize(np.arange(256).astype(np.uint8), in_scale, in_zero_point, values)
    table = np.zeros((256, 256), np.float32)
    for m in range(256):
        for v in range(m + 1):
            table[m, v] = numba_fp32._exp_nonpositive(np.float64(values[v]) - np.float64(values[m]))
    return table


@numba.jit(nopython=True, nogil=True, cache=True)
def _softmax_uint8_table(q, table, out_scale, out_zero_point, out):
    """_softmax_uint8 with each exp read from ``table`` (same values, same sum, same scaling)."""
    n = q.shape[1]
    y = np.empty(n, np.float32)
    for r in range(q.shape[0]):
        row = q[r]
        top = row[0]
        for i in range(n):
            top = max(top, row[i])
        exps = table[top]
        for i in range(n):
            y[i] = exps[row[i]]
        scale = 1.0 / numba_fp32._sum64(y)
        for i in range(n):
            y[i] = np.float64(y[i]) * scale
        _quantize_uint8(y, out_scale, out_zero_point, out[r])


@functools.lru_cache(maxsize=16)
def _exp_table(in_scale: np.float32, in_zero_point: np.int32) -> np.ndarray:
    return _softmax_exp_table(in_scale, in_zero_point)


class QuantizedSoftmax:
    """A lowered ``DQ → Softmax (last axis, float32) → Q``, per-tensor uint8 both sides: one pass
    over uint8 rows; ``fallback`` (the three kernels) for inputs the compiled path does not take.
    The exps come from a 256 x 256 table (a row of uint8 takes 256 values at most), made once per
    input scale and zero point: attention's 32-wide rows ran 4x faster."""

    def __init__(self, in_scale, in_zero_point, out_scale, out_zero_point, fallback):
        self.args_in = (np.float32(in_scale), np.int32(in_zero_point))
        self.args_out = (np.float32(out_scale), np.int32(out_zero_point))
        self.fallback = fallback
        self.table = _exp_table(*self.args_in) if self.args_in[0] > 0 else None

    def __call__(self, q):
        if q.dtype != np.uint8 or not q.ndim or not q.size:
            return self.fallback(q)
        n = q.shape[-1]
        out = np.empty(q.shape, np.uint8)
        rows = np.ascontiguousarray(q).reshape(-1, n)
        if self.table is None:
            _softmax_uint8(rows, *self.args_in, *self.args_out, out.reshape(-1, n))
        else:
            _softmax_uint8_table(rows, self.table, *self.args_out, out.reshape(-1, n))
        return out


class QuantizedLayerNorm:
    """A lowered ``DQ → LayerNormalization → Q`` (per-tensor uint8 on both sides, float32): one
    pass over uint8 rows instead of three steps and two float32 tensors. ``float_kernel``: the
    node's own kernel, for inputs the compiled path does not take."""

    def __init__(self, axis: int, epsilon: float, in_scale, in_zero_point, out_scale, out_zero_point,
                 float_kernel, dequantize_kernel, quantize_kernel):
        self.axis, self.epsilon = axis, float(epsilon)
        self.args_in = (np.float32(in_scale), np.int32(in_zero_point))
        self.args_out = (np.float32(out_scale), np.int32(out_zero_point))
        self.float_kernel, self.dequantize_kernel, self.quantize_kernel = float_kernel, dequantize_kernel, quantize_kernel

    def __call__(self, q, scale, bias=None):
        axis = self.axis + q.ndim if self.axis < 0 else self.axis
        tail = q.shape[axis:]
        if (q.dtype != np.uint8 or np.asarray(scale).dtype != np.float32 or not q.ndim or not 0 <= axis < q.ndim
                or not q.size or np.shape(scale) != tail or (bias is not None and (np.shape(bias) != tail
                                                                                   or bias.dtype != np.float32))):
            y = self.float_kernel(self.dequantize_kernel(q), scale, bias)
            return self.quantize_kernel(y[0] if isinstance(y, tuple) else y)
        n = math.prod(tail)
        gamma = np.ascontiguousarray(scale).reshape(-1)
        beta = np.zeros(n, np.float32) if bias is None else np.ascontiguousarray(bias).reshape(-1)
        out = np.empty(q.shape, np.uint8)
        _layer_norm_uint8(np.ascontiguousarray(q).reshape(-1, n), *self.args_in, gamma, beta, bias is not None,
                          np.float32(self.epsilon), *self.args_out, out.reshape(-1, n))
        return out


class GemmWeights:
    """Constant int8 ``w[K, N]`` packed once for the qgemm kernel."""

    def __init__(self, w: np.ndarray):
        self.k, self.n = w.shape
        self.packed = kernels.pack_weights(np.ascontiguousarray(w))


def qgemm_nd(a: np.ndarray, a_zero_point: int, weights: GemmWeights, threads: int, **epilogue) -> np.ndarray:
    """``a[..., K]`` (uint8 or int8) times packed weights: ``[..., N]`` with qgemm's epilogue."""
    a, a_zero_point = to_uint8(a, a_zero_point)
    rows = a.reshape(-1, weights.k)
    out = kernels.qgemm(rows, a_zero_point, weights.packed, threads=threads, **epilogue)
    return out.reshape(a.shape[:-1] + (weights.n,))


class PreparedProduct:
    """``a[..., K]`` (uint8, or int8 shifted by 128) times constant int8 ``w[K, N]`` with a fixed
    epilogue: one :class:`graphopt.kernels.PreparedGemm`, its arguments validated once when the
    session is made, so that a call only checks ``a``."""

    def __init__(self, w: np.ndarray, a_zero_point: int, a_dtype: np.dtype, threads: int, **epilogue):
        self.k, self.n = w.shape
        self.shift = np.dtype(a_dtype) == np.int8
        packed = kernels.pack_weights(np.ascontiguousarray(w))
        self.gemm = kernels.PreparedGemm(packed, a_zero_point + 128 * self.shift, threads=threads, **epilogue)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if self.shift:
            a = a.view(np.uint8) ^ np.uint8(0x80)
        if a.ndim == 2:
            return self.gemm(a)
        return self.gemm(a.reshape(-1, self.k)).reshape(a.shape[:-1] + (self.n,))


class ConvWeights:
    """Constant int8 ``w[OC, C/group, KH, KW]`` packed once for the qconv2d kernel."""

    def __init__(self, w: np.ndarray, group: int):
        self.packed = kernels.pack_conv_weights(np.ascontiguousarray(w), group)
        self.kernel = list(w.shape[2:])


# Below this many multiply-adds per thread (~15 us of VNNI work) a convolution stays on one
# thread: handing tiles to the worker pool (qg_parallel_for in kernels/qgemm.c) costs a few us,
# and a worker that wakes late does no tile (the caller takes them), so the threshold can be low
# (it was 8M under OpenMP, whose join waited for late workers: mobilenetv3's int8 convolutions
# at 2 threads took 178 us each instead of 41 us at 1). resnet18's 1x1 stride-2 convolutions
# (6.4M) went from 84 / 57 / 55 us at 1 thread to 50 / 39 / 37 at 2.
_MIN_CONV_MACS_PER_THREAD = 3_000_000


def qconv2d(x: np.ndarray, x_zero_point: int, weights: ConvWeights, window: Window, threads: int,
            **epilogue) -> np.ndarray:
    x, x_zero_point = to_uint8(x, x_zero_point)
    kernel, strides, dilations, begin, end, _, out = window.resolve(x.shape[2:], weights.kernel)
    packed = weights.packed
    macs = x.shape[0] * packed.out_channels * math.prod(out) * packed.group_channels * math.prod(kernel)
    threads = max(1, min(threads, macs // _MIN_CONV_MACS_PER_THREAD))
    return kernels.qconv2d(np.ascontiguousarray(x), x_zero_point, packed, stride=tuple(strides),
                           padding=(begin[0], begin[1], end[0], end[1]), dilation=tuple(dilations),
                           threads=threads, **epilogue)


class PreparedConv:
    """A lowered int8 Conv step: :func:`qconv2d` with the weights, zero point, bias and epilogue
    fixed at plan time. Pads (auto_pad) and the thread count depend on the input shape, so one
    ``kernels.PreparedConv`` is built per input shape and zero point, on first sight, and a run
    then costs a dictionary look-up on top of the kernel."""

    def __init__(self, x_zero_point: int, weights: ConvWeights, window: Window, threads: int,
                 **epilogue):
        self.x_zero_point, self.weights, self.window = x_zero_point, weights, window
        self.threads, self.epilogue = threads, epilogue
        self._prepared = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x, x_zero_point = to_uint8(x, self.x_zero_point)
        prepared = self._prepared.get((x.shape, x_zero_point))
        if prepared is None:
            prepared = self._prepared[(x.shape, x_zero_point)] = self._prepare(x.shape, x_zero_point)
        return prepared(x)

    def _prepare(self, shape, x_zero_point: int):
        kernel, strides, dilations, begin, end, _, out = self.window.resolve(shape[2:], self.weights.kernel)
        packed = self.weights.packed
        macs = shape[0] * packed.out_channels * math.prod(out) * packed.group_channels * math.prod(kernel)
        threads = max(1, min(self.threads, macs // _MIN_CONV_MACS_PER_THREAD))
        return kernels.PreparedConv(packed, x_zero_point, stride=tuple(strides),
                                    padding=(begin[0], begin[1], end[0], end[1]),
                                    dilation=tuple(dilations), threads=threads, **self.epilogue)


# --- weights that int8 does not hold as they are (uint8, zero point zw): see OffsetWeightConv ---

# The exact sum of K products of two 8-bit differences, each at most 255 * 255 in magnitude,
# fits int32 while K * 255 * 255 < 2**31.
MAX_OFFSET_WEIGHT_K = (2 ** 31 - 1) // (255 * 255)


def offset_weights(w: np.ndarray, zero_point, channel_axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """uint8 ``w`` with zero points ``zw`` (scalar or one per output channel) as int8 weights and
    a per-channel int32 offset with ``w - zw == int8_weights - offset`` exactly: ``w - zw`` itself
    where a channel's values fit int8 (offset 0), else ``w - 128`` with offset ``zw - 128`` (both
    parts in int8's range, while ``w - zw`` spans [-255, 255])."""
    if w.dtype != np.uint8:
        return None
    channels = w.shape[channel_axis]
    zw = np.broadcast_to(np.asarray(zero_point, np.int32).reshape(-1), (channels,))
    shape = [1] * w.ndim
    shape[channel_axis] = channels
    centered = w.astype(np.int32) - zw.reshape(shape)
    others = tuple(i for i in range(w.ndim) if i != channel_axis)
    fits = (centered.min(axis=others, initial=0) >= -128) & (centered.max(axis=others, initial=0) <= 127)
    offset = np.where(fits, 0, zw - 128).astype(np.int32)
    return (centered + offset.reshape(shape)).astype(np.int8), offset


@numba.jit(nopython=True, nogil=True, cache=True)
def _offset_epilogue_uint8(acc, sums, sum_index, offset, bias, mult, zero_point, low, high, out):
    """``out[b, c, p] = clamp(rint(float32(acc[b, c, p] - offset[c] * sums[b, sum_index[c], p]
    + bias[c]) * mult[c]) + zero_point, low, high)``: :func:`requantize`'s arithmetic on the
    corrected sums. acc ``[B, >= C, P]`` int32, sums ``[B, S, P]`` int32, read only where
    ``offset[c]`` is not 0. Exact in int32: |acc - offset * sums| <= K * 255 * 255, which the
    lowering keeps, bias included, below 2**31 (MAX_OFFSET_WEIGHT_K)."""
    for b in range(out.shape[0]):
        for c in range(out.shape[1]):
            m, beta, k = mult[c], bias[c], offset[c]
            row, dst = acc[b, c], out[b, c]
            if k != 0:
                src = sums[b, sum_index[c]]
                for p in range(dst.shape[0]):
                    # numba computes in int64; the int32 cast (exact) lets LLVM vectorize at full width
                    value = np.rint(np.float32(np.int32(row[p] - k * src[p] + beta)) * m) + zero_point
                    dst[p] = np.uint8(np.int32(min(max(value, low), high)))
            else:
                for p in range(dst.shape[0]):
                    value = np.rint(np.float32(np.int32(row[p] + beta)) * m) + zero_point
                    dst[p] = np.uint8(np.int32(min(max(value, low), high)))


@numba.jit(nopython=True, nogil=True, cache=True)
def _offset_epilogue_float(acc, sums, sum_index, offset, bias, scale, out):
    """:func:`_offset_epilogue_uint8`'s sums scaled to float32: ``float32(sum) * scale[c]``."""
    for b in range(out.shape[0]):
        for c in range(out.shape[1]):
            s, beta, k = scale[c], bias[c], offset[c]
            row, dst = acc[b, c], out[b, c]
            if k != 0:
                src = sums[b, sum_index[c]]
                for p in range(dst.shape[0]):
                    dst[p] = np.float32(np.int32(row[p] - k * src[p] + beta)) * s
            else:
                for p in range(dst.shape[0]):
                    dst[p] = np.float32(np.int32(row[p] + beta)) * s


class _OffsetEpilogue:
    """The epilogue of the offset-weight steps, per output channel: ``offset`` (see
    :func:`offset_weights`) times the sums at ``sum_index``, an int32 ``bias`` (or None), then
    onnxruntime's requantization to uint8 (multiplier ``float32(s_x * s_w) / s_y``, quantized
    clamp ``low..high`` for a fused Relu/Clip) when ``quantize`` = (scale, zero point), else
    float32 ``sum * s_x * s_w``."""

    def __init__(self, offset, scale, bias, quantize, clamp=(0, 255), sum_index=None):
        channels = len(scale)
        self.offset = np.broadcast_to(np.asarray(offset, np.int32), (channels,)).copy()
        self.sum_index = np.zeros(channels, np.int32) if sum_index is None else np.asarray(sum_index, np.int32)
        self.scale = np.asarray(scale, np.float32).reshape(-1)
        self.bias = np.zeros(channels, np.int32) if bias is None else \
            np.broadcast_to(np.asarray(bias, np.int32).reshape(-1), (channels,)).copy()
        self.quantize = quantize
        self.args_q = None if quantize is None else (
            (self.scale / np.float32(quantize[0])).astype(np.float32), np.float32(quantize[1]),
            np.float32(clamp[0]), np.float32(clamp[1]))
        self._no_sums = np.zeros((1, 1, 1), np.int32)

    @property
    def correct(self) -> bool:
        return bool(np.any(self.offset))

    def __call__(self, acc, sums, shape):
        """acc ``[B, >= C, P]`` int32, sums ``[B, S, P]`` int32 (or None when every offset is 0);
        returns ``[B, C, P]`` reshaped to ``shape``."""
        out = np.empty((acc.shape[0], len(self.scale), acc.shape[2]),
                       np.float32 if self.quantize is None else np.uint8)
        if sums is None:
            sums = self._no_sums
        if self.quantize is None:
            _offset_epilogue_float(acc, sums, self.sum_index, self.offset, self.bias, self.scale, out)
        else:
            _offset_epilogue_uint8(acc, sums, self.sum_index, self.offset, self.bias, *self.args_q, out)
        return out.reshape(shape)


class OffsetWeightConv:
    """A Conv whose int8 weights ``w`` stand for ``w - offset[oc]`` (uint8 weights with any zero
    point, made int8 by :func:`offset_weights`), with an int32 bias, in exact integers:

    ``Σ (x - zx)(w - offset) = Σ (x - zx) w - offset · Σ (x - zx)`` over each output's receptive
    field (padding is x = zx, 0 in ``x - zx``). The second sum is what one more output channel of
    all-ones weights computes in the same kernel call (the kernel handles zx); a depthwise Conv
    has one such sum per channel: a second depthwise call with all-ones weights on the channels
    whose offset is not 0 (a few: most channels' ``w - zw`` fit int8). The kernel writes int32;
    one compiled pass then applies the correction, the bias, and onnxruntime's requantization
    (or writes float32)."""

    def __init__(self, x_zero_point: int, w: np.ndarray, offset, group: int, window: Window, threads: int,
                 scale, bias, quantize, clamp=(0, 255)):
        oc = w.shape[0]
        offset = np.broadcast_to(np.asarray(offset, np.int32).reshape(-1), (oc,))
        self.out_channels, self.depthwise = oc, group > 1
        self.subset = np.flatnonzero(offset) if self.depthwise else None
        sum_index = np.zeros(oc, np.int32)
        self.sums = None
        if self.depthwise and len(self.subset):
            sum_index[self.subset] = np.arange(len(self.subset))
            ones = np.ones((len(self.subset),) + w.shape[1:], np.int8)
            self.sums = PreparedConv(x_zero_point, ConvWeights(ones, len(self.subset)), window, threads)
        elif not self.depthwise and np.any(offset):
            w = np.concatenate([w, np.ones((1,) + w.shape[1:], np.int8)])
        self.epilogue = _OffsetEpilogue(offset, scale, bias, quantize, clamp, sum_index)
        self.main = PreparedConv(x_zero_point, ConvWeights(np.ascontiguousarray(w), group), window, threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acc = self.main(x)
        batch, channels, oh, ow = acc.shape
        acc3 = acc.reshape(batch, channels, oh * ow)
        sums = None
        if self.sums is not None:
            sums = self.sums(np.take(x, self.subset, axis=1)).reshape(batch, len(self.subset), oh * ow)
        elif channels > self.out_channels:
            sums = acc3[:, self.out_channels:]
        return self.epilogue(acc3, sums, (batch, self.out_channels, oh, ow))


class OffsetWeightProduct:
    """``a[..., K] @ w[K, N]`` with int8 ``w`` standing for ``w - offset[n]`` and an int32 bias:
    :class:`OffsetWeightConv`'s arithmetic, the row sums ``Σ_k (a - za)`` coming from one more
    column of ones in the same product."""

    def __init__(self, w: np.ndarray, offset, a_zero_point: int, a_dtype: np.dtype, threads: int,
                 scale, bias, quantize, clamp=(0, 255)):
        self.k, self.n = w.shape
        self.epilogue = _OffsetEpilogue(offset, scale, bias, quantize, clamp)
        if self.epilogue.correct:
            w = np.concatenate([w, np.ones((self.k, 1), np.int8)], axis=1)
        self.product = PreparedProduct(w, a_zero_point, a_dtype, threads)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        rows = a.reshape(-1, self.k)
        acc = self.product(rows)
        acc3 = acc.reshape(acc.shape[0], acc.shape[1], 1)
        sums = acc3[:, self.n:] if self.epilogue.correct else None
        return self.epilogue(acc3, sums, a.shape[:-1] + (self.n,))


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_average_pool2d(x, levels, kh, kw, sh, sw, top, left, include_pad, y_scale, y_zero_point, out):
    """onnxruntime's QLinearAveragePool (NCHW, 2-D): float32 dequantized values (``levels``:
    ``x_scale * (v - zp)`` for each uint8 v) summed over the window's taps on the input, row by
    row, divided by the count, then ``rint(y / y_scale + y_zero_point)`` saturated.
    x ``[N*C, H, W]``, out ``[N*C, OH, OW]``."""
    height, width = x.shape[1], x.shape[2]
    for c in range(x.shape[0]):
        for ph in range(out.shape[1]):
            h0 = ph * sh - top
            h1 = min(h0 + kh, height)
            h0 = max(h0, 0)
            for pw in range(out.shape[2]):
                w0 = pw * sw - left
                w1 = min(w0 + kw, width)
                w0 = max(w0, 0)
                total = np.float32(0)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        total += levels[x[c, h, w]]
                count = kh * kw if include_pad else (h1 - h0) * (w1 - w0)
                total = total / np.float32(count)
                value = np.rint(total / y_scale + y_zero_point)
                out[c, ph, pw] = np.uint8(min(max(value, np.float32(0)), np.float32(255)))


class QLinearAveragePool:
    """``DQ → AveragePool → Q`` (2-D, uint8 per tensor) as onnxruntime runs it once fused into
    QLinearAveragePool: :func:`_qlinear_average_pool2d`. Its float rounding differs from the
    float AveragePool's and from QuantizeLinear's (the zero point is added before rounding)."""

    def __init__(self, window: Window, kernel, include_pad: bool, x_scale, x_zero_point, y_scale, y_zero_point,
                 fallback):
        self.window, self.kernel, self.include_pad = window, list(kernel), include_pad
        # a window covering the whole unpadded image: onnxruntime runs QLinearGlobalAveragePool's
        # integer arithmetic instead, not reproduced here (the separate float steps run)
        self.fallback = fallback
        self.levels = (np.float32(x_scale) * (np.arange(256, dtype=np.int32) - x_zero_point).astype(np.float32))
        self.levels = self.levels.astype(np.float32)
        self.y_scale, self.y_zero_point = np.float32(y_scale), np.float32(y_zero_point)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        kernel, strides, _, begin, end, _, out = self.window.resolve(x.shape[2:], self.kernel)
        if list(x.shape[2:]) == list(kernel) and not any(begin) and not any(end):
            return self.fallback(x)
        y = np.empty(x.shape[:2] + tuple(out), np.uint8)
        _qlinear_average_pool2d(np.ascontiguousarray(x).reshape((-1,) + x.shape[2:]), self.levels, kernel[0],
                                kernel[1], strides[0], strides[1], begin[0], begin[1], self.include_pad,
                                self.y_scale, self.y_zero_point, y.reshape((-1,) + tuple(out)))
        return y


@numba.jit(nopython=True, nogil=True, cache=True)
def _qlinear_softmax_rows(q, table, y_scale, y_zero_point, out):
    """onnxruntime's QLinearSoftmax (uint8) on rows: the exp table shifted so the row's maximum
    reads entry 255, a float32 running sum, ``rint(t * y_scale / sum) + zp`` saturated at 255."""
    n = q.shape[1]
    for r in range(q.shape[0]):
        top = 0
        for i in range(n):
            top = max(top, np.int64(q[r, i]))
        shift = 255 - top
        total = np.float32(0)
        for i in range(n):
            total += table[shift + q[r, i]]
        for i in range(n):
            value = np.uint32(np.rint((table[shift + q[r, i]] * y_scale) / total)) + np.uint32(y_zero_point)
            out[r, i] = np.uint8(min(value, np.uint32(255)))


class QLinearSoftmax:
    """``DQ → Softmax → Q`` before opset 13 (rows of everything from ``axis`` on), uint8 per
    tensor, as onnxruntime runs it once fused into QLinearSoftmax: a float32 table
    ``exp((i - 255 + shift) * s_x)`` per row length (``shift`` keeps the sums finite), the output
    scale used as ``floor(1 / s_y)``. Its values differ from the float steps' by up to one step
    (and then by more downstream: ppocr-rec's attention). ``fallback``: the three float steps,
    for inputs the table does not take (empty, not uint8)."""

    def __init__(self, axis: int, x_scale, y_scale, y_zero_point, fallback):
        self.axis, self.x_scale = axis, np.float32(x_scale)
        self.y_scale = np.float32(np.floor(np.float32(1.0) / np.float32(y_scale)))
        self.y_zero_point = np.int32(y_zero_point)
        self.fallback = fallback
        self._tables = {}

    def _table(self, n: int) -> np.ndarray:
        table = self._tables.get(n)
        if table is None:
            # float max / n in float32, the rest in double, as onnxruntime builds it
            bit_shift = np.log(np.float64(np.float32(np.finfo(np.float32).max) / np.float32(n)))
            bit_shift = max(0.0, bit_shift - 5.0) / np.float64(self.x_scale)
            levels = np.arange(256, dtype=np.float64)
            table = np.exp((levels - 255 + bit_shift) * np.float64(self.x_scale)).astype(np.float32)
            table = self._tables[n] = np.concatenate([table, np.zeros(256, np.float32)])
        return table

    def __call__(self, q: np.ndarray) -> np.ndarray:
        if q.dtype != np.uint8 or not q.ndim or not q.size:
            return self.fallback(q)
        axis = self.axis % q.ndim
        n = math.prod(q.shape[axis:])
        out = np.empty(q.shape, np.uint8)
        _qlinear_softmax_rows(np.ascontiguousarray(q).reshape(-1, n), self._table(n), self.y_scale,
                              self.y_zero_point, out.reshape(-1, n))
        return out
