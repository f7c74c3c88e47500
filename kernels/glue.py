"""Numba glue kernels around the int8 GEMM: (de/re)quantization, im2col, pooling.

Rounding follows onnxruntime's QuantizeLinear: ``x / scale`` in float32, round half to even,
add the zero point, saturate to [0, 255]. ``np.rint`` rounds half to even. No kernel here does int8
dot products: those live in the compiled GEMM and depthwise kernels.
"""
import functools
import itertools
import os
import queue
import threading

import numba
import numpy as np

from graphopt.kernels._conv import conv_output_size
from graphopt.kernels._pool import max_pool2d as _max_pool2d_planes

_JIT = dict(nopython=True, nogil=True, cache=True)


def _channel_view(x, axis):
    """``x`` as [outer, channels, inner] so that one kernel serves per-tensor and per-axis."""
    if axis is None:
        return x.reshape(1, 1, -1)
    axis = axis % x.ndim
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(outer, x.shape[axis], -1)


def _per_channel(values, channels, dtype):
    values = np.asarray(values, dtype).reshape(-1)
    if values.size == 1:
        return np.full(channels, values[0], dtype)
    if values.size != channels:
        raise ValueError(f"expected 1 or {channels} scales / zero points, got {values.size}")
    return values


@numba.jit(**_JIT)
def _quantize(x, scale, zero_point, out):
    for o in range(x.shape[0]):
        for c in range(x.shape[1]):
            s = scale[c]
            lo = np.float32(0 - zero_point[c])
            hi = np.float32(255 - zero_point[c])
            for i in range(x.shape[2]):
                v = np.rint(x[o, c, i] / s)
                v = min(max(v, lo), hi)
                out[o, c, i] = np.int32(v) + zero_point[c]


def quantize_linear(x, scale, zero_point, axis=None):
    """float32 ``x`` to uint8, per tensor (``axis=None``) or per channel along ``axis``."""
    x = np.ascontiguousarray(x, np.float32)
    view = _channel_view(x, axis)
    out = np.empty(x.shape, np.uint8)
    _quantize(view, _per_channel(scale, view.shape[1], np.float32),
              _per_channel(zero_point, view.shape[1], np.int32), out.reshape(view.shape))
    return out


@numba.jit(**_JIT)
def _dequantize(q, scale, zero_point, out):
    for o in range(q.shape[0]):
        for c in range(q.shape[1]):
            for i in range(q.shape[2]):
                out[o, c, i] = np.float32(np.int32(q[o, c, i]) - zero_point[c]) * scale[c]


def dequantize_linear(q, scale, zero_point=0, axis=None):
    """uint8 or int8 ``q`` to float32: ``float32(q - zero_point) * scale``."""
    q = np.ascontiguousarray(q)
    if q.dtype not in (np.uint8, np.int8):
        raise ValueError(f"dequantize_linear takes uint8 or int8, got {q.dtype}")
    view = _channel_view(q, axis)
    out = np.empty(q.shape, np.float32)
    _dequantize(view, _per_channel(scale, view.shape[1], np.float32),
                _per_channel(zero_point, view.shape[1], np.int32), out.reshape(view.shape))
    return out


@numba.jit(**_JIT)
def _requantize(q, in_zero_point, multiplier, out_zero_point, out):
    lo = np.float32(0 - out_zero_point)
    hi = np.float32(255 - out_zero_point)
    for i in range(q.size):
        v = np.rint(np.float32(np.int32(q[i]) - in_zero_point) * multiplier)
        out[i] = np.int32(min(max(v, lo), hi)) + out_zero_point


def requantize(q, in_scale, in_zero_point, out_scale, out_zero_point):
    """uint8 from one (scale, zero point) to another, per tensor, with one float32 multiplier
    ``float32(in_scale) / float32(out_scale)``."""
    q = np.ascontiguousarray(q, np.uint8)
    multiplier = np.float32(in_scale) / np.float32(out_scale)
    out = np.empty(q.shape, np.uint8)
    _requantize(q.reshape(-1), np.int32(in_zero_point), multiplier, np.int32(out_zero_point),
                out.reshape(-1))
    return out


# A unit-stride run gets its own function, indexed from 0 by the loop counter: Numba then drops
# its negative-index handling and LLVM vectorizes (20x faster than `src[i + offset]`).
@numba.jit(**_JIT)
def _copy_run(dst, src):
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@numba.jit(**_JIT)
def _im2col(xp, kh, kw, sh, sw, dh, dw, oh, ow, out):
    channels = xp.shape[2]
    for y in range(oh):
        for xo in range(ow):
            row = out[y * ow + xo]
            for i in range(kh):
                src = xp[y * sh + i * dh]
                if dw == 1:  # the kw taps of a kernel row are one contiguous run of kw * C bytes
                    start = xo * sw * channels
                    _copy_run(row[i * kw * channels:(i + 1) * kw * channels],
                              src.reshape(-1)[start:start + kw * channels])
                    continue
                for j in range(kw):
                    start = (i * kw + j) * channels
                    _copy_run(row[start:start + channels], src[xo * sw + j * dw])


def im2col(x, pad_value, kernel, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)):
    """``x[C, H, W]`` to the GEMM operand ``[OH*OW, KH*KW*C]``, one row per output pixel.

    Columns are ordered (kh, kw, c): the input goes channels-last first, so that every tap of a
    row is one contiguous copy of C bytes, and the row-major result is what the GEMM reads in
    place. Padding takes ``pad_value``: for uint8 activations, their zero point, i.e. a real 0.
    """
    kh, kw = kernel
    oh = conv_output_size(x.shape[1], kh, stride[0], pads[0], pads[2], dilation[0])
    ow = conv_output_size(x.shape[2], kw, stride[1], pads[1], pads[3], dilation[1])
    padded = np.pad(x.transpose(1, 2, 0), ((pads[0], pads[2]), (pads[1], pads[3]), (0, 0)),
                    constant_values=pad_value)
    out = np.empty((oh * ow, kh * kw * x.shape[0]), x.dtype)
    _im2col(padded, kh, kw, stride[0], stride[1], dilation[0], dilation[1], oh, ow, out)
    return out


@numba.jit(**_JIT)
def _pool(x, kh, kw, sh, sw, pt, pl, dh, dw, average, out):
    batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for b in range(batch):
        for c in range(channels):
            for y in range(oh):
                for xo in range(ow):
                    best = x[b, c, 0, 0]
                    total = 0.0
                    count = 0
                    for i in range(kh):
                        iy = y * sh - pt + i * dh
                        if iy < 0 or iy >= height:
                            continue
                        for j in range(kw):
                            ix = xo * sw - pl + j * dw
                            if ix < 0 or ix >= width:
                                continue
                            v = x[b, c, iy, ix]
                            if count == 0 or v > best:
                                best = v
                            total += v
                            count += 1
                    if average:
                        out[b, c, y, xo] = total / count
                    else:
                        out[b, c, y, xo] = best


def _pool2d(x, kernel, stride, pads, dilation, average):
    batch, channels, height, width = x.shape
    oh = conv_output_size(height, kernel[0], stride[0], pads[0], pads[2], dilation[0])
    ow = conv_output_size(width, kernel[1], stride[1], pads[1], pads[3], dilation[1])
    out = np.empty((batch, channels, oh, ow), x.dtype)
    _pool(np.ascontiguousarray(x), kernel[0], kernel[1], stride[0], stride[1], pads[0], pads[1],
          dilation[0], dilation[1], average, out)
    return out


def max_pool2d(x, kernel, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)):
    """ONNX MaxPool on NCHW (uint8 or float32); padded positions never win."""
    return _pool2d(x, kernel, stride, pads, dilation, False)


def average_pool2d(x, kernel, stride=(1, 1), pads=(0, 0, 0, 0)):
    """ONNX AveragePool on float32 NCHW, ``count_include_pad=0``; sums in float64."""
    if x.dtype != np.float32:
        raise ValueError(f"average_pool2d takes float32, got {x.dtype}")
    return _pool2d(x, kernel, stride, pads, (1, 1), True)


# ONNX MaxPool of float32 / uint8 / int8 NCHW planes, (x, kernel, stride, begin, dilation,
# out_hw, threads=1): ``out_hw`` the resolved output size (ceil_mode included), ``begin`` the
# top / left padding (positions outside ``x`` never win). The C kernel (kernels/pool.c) itself,
# not a wrapper: a small model's pool costs less than a Python frame.
max_pool2d_planes = _max_pool2d_planes


# ---- a lean persistent thread pool for nogil kernels over chunks ------------------------------
# concurrent.futures costs ~20 us a submit; a SimpleQueue per worker costs a few.
class _Job:
    """Chunks of one run_chunks call, each claimed once by whichever thread comes first: the
    caller takes what a worker has not started, so a worker that the scheduler wakes late (its
    core busy with another process) delays nothing; the caller waits only for chunks under way."""

    def __init__(self, fn, bounds):
        self.fn, self.bounds, self.chunks = fn, bounds, len(bounds) - 1
        self.claims = itertools.count()  # next() is atomic under the GIL
        self.finished, self.error = 0, None
        self.lock, self.done = threading.Lock(), threading.Event()

    def work(self):
        while (k := next(self.claims)) < self.chunks:
            try:
                self.fn(self.bounds[k], self.bounds[k + 1])
            except BaseException as error:  # handed to the caller, which raises it
                self.error = error
            with self.lock:
                self.finished += 1
                if self.finished == self.chunks:
                    self.done.set()


class _Workers:
    def __init__(self, count: int):
        self.queues = [queue.SimpleQueue() for _ in range(count)]
        for q in self.queues:
            threading.Thread(target=self._loop, args=(q,), daemon=True, name="graphopt-chunks").start()

    @staticmethod
    def _loop(q):
        while True:
            q.get().work()


@functools.lru_cache(maxsize=None)
def _workers(count: int, pid: int) -> _Workers:
    """The pool of ``count`` workers of process ``pid`` (a forked child starts its own: it has
    none of its parent's threads)."""
    return _Workers(count)


def run_chunks(fn, n: int, threads: int, align: int = 1) -> None:
    """``fn(first, last)`` over ``threads`` contiguous chunks of ``range(n)`` (bounds multiples of
    ``align``), on the calling thread and the pool's workers; returns when all are done. ``fn``
    should release the GIL (a ``nogil`` Numba kernel) for the chunks to run at once."""
    bounds = [min(n, -(-(n * k // threads) // align) * align) for k in range(threads)] + [n]
    bounds = [b for k, b in enumerate(bounds) if k == 0 or b > bounds[k - 1]]
    if len(bounds) <= 2:
        fn(0, n)
        return
    job = _Job(fn, bounds)
    for q in _workers(threads - 1, os.getpid()).queues[:job.chunks - 1]:
        q.put(job)
    job.work()
    job.done.wait()
    if job.error is not None:
        raise job.error
