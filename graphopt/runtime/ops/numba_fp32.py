"""Numba loops for the fp32 ops where numpy makes several passes over memory.

Depthwise convolution (one small filter per channel: BLAS has nothing to offer), erf (numpy
has none) and HardSwish (one pass instead of numpy's four). Each runs on float32 and float64;
``cache=True`` keeps the compiled code between processes.
"""
import math

import numba
import numpy as np

_JIT = dict(nopython=True, nogil=True, cache=True)


@numba.jit(**_JIT)
def _multiply_add(dst, src, w):
    # indexed from 0 by the loop counter, so that LLVM vectorizes it (see kernels/glue.py)
    for x in range(dst.shape[0]):
        dst[x] += w * src[x]


@numba.jit(**_JIT)
def _depthwise_phases(phases, w, sh, sw, dh, dw, wq, out):
    """``out[c, y, x] = sum_ij w[c, i, j] * xp[c, y*sh + i*dh, x*sw + j*dw]`` where ``phases``
    holds the padded input ``xp`` split by stride phase: ``phases[a*sw + b, c]`` is
    ``xp[c, a::sh, b::sw]``, rows of width ``wq`` laid end to end.

    In its phase, a tap reads a unit-stride window, so over the phase's full width each tap is one
    long run per channel (thousands of elements, which LLVM vectorizes) instead of one short run
    per output row; the rows are cut out of the sums at the end."""
    oh, ow = out.shape[1], out.shape[2]
    kh, kw = w.shape[1], w.shape[2]
    run = (oh - 1) * wq + ow
    acc = np.empty(run, out.dtype)
    for c in range(out.shape[0]):
        acc[:] = 0
        for i in range(kh):
            for j in range(kw):
                a, di = (i * dh) % sh, (i * dh) // sh
                b, dj = (j * dw) % sw, (j * dw) // sw
                start = di * wq + dj
                _multiply_add(acc, phases[a * sw + b, c, start:start + run], w[c, i, j])
        for y in range(oh):
            out[c, y, :] = acc[y * wq:y * wq + ow]


@numba.jit(**_JIT)
def _multiply_add_channels(dst, src, w):
    for c in range(dst.shape[0]):
        dst[c] += w[c] * src[c]


@numba.jit(**_JIT)
def _depthwise_channels_last(xp, w, sh, sw, dh, dw, out):
    """``out[y, x, c] = sum_ij w[i, j, c] * xp[y*sh + i*dh, x*sw + j*dw, c]`` (input pre-padded):
    the inner loop runs over channels, the longer run when the planes are small."""
    oh, ow = out.shape[0], out.shape[1]
    kh, kw = w.shape[0], w.shape[1]
    for y in range(oh):
        for x in range(ow):
            dst = out[y, x]
            dst[:] = 0
            for i in range(kh):
                for j in range(kw):
                    _multiply_add_channels(dst, xp[y * sh + i * dh, x * sw + j * dw], w[i, j])


def _stride_phases(xp, strides):
    """``xp[C, Hp, Wp]`` as ``[sh*sw, C, Hq*Wq]``: its stride phases, zero-filled to one size."""
    sh, sw = strides
    channels, hp, wp = xp.shape
    if (sh, sw) == (1, 1):
        return xp.reshape(1, channels, -1), wp
    hq, wq = -(-hp // sh), -(-wp // sw)
    phases = np.zeros((sh * sw, channels, hq, wq), xp.dtype)
    for a in range(sh):
        for b in range(sw):
            part = xp[:, a::sh, b::sw]
            phases[a * sw + b, :, :part.shape[1], :part.shape[2]] = part
    return phases.reshape(sh * sw, channels, -1), wq


def depthwise_conv2d(xp, w, strides, dilations, out_shape):
    """Depthwise conv of padded ``xp[N, C, Hp, Wp]`` with ``w[C, KH, KW]``.

    The inner loop runs along whichever is longer: a channel's plane (NCHW, by stride phase) or
    the channels (channels-last copies in and out, which pay when the planes are a few pixels:
    576 channels of 7x7 at 5x5 taps, 110 us instead of 204 us)."""
    xp = np.ascontiguousarray(xp)
    w = np.ascontiguousarray(w, xp.dtype)
    batch, channels = xp.shape[:2]
    out = np.empty((batch, channels) + tuple(out_shape), xp.dtype)
    plane_run = (out_shape[0] - 1) * -(-xp.shape[3] // strides[1]) + out_shape[1]
    if channels >= 2 * plane_run:
        w_last = np.ascontiguousarray(w.transpose(1, 2, 0))
        for n in range(batch):
            result = np.empty(tuple(out_shape) + (channels,), xp.dtype)
            _depthwise_channels_last(np.ascontiguousarray(xp[n].transpose(1, 2, 0)), w_last, strides[0],
                                     strides[1], dilations[0], dilations[1], result)
            out[n] = result.transpose(2, 0, 1)
        return out
    for n in range(batch):
        phases, wq = _stride_phases(xp[n], strides)
        _depthwise_phases(phases, w, strides[0], strides[1], dilations[0], dilations[1], wq, out[n])
    return out


_UNARY_SIGNATURES = ["float32(float32)", "float64(float64)"]


@numba.vectorize(_UNARY_SIGNATURES, cache=True)
def erf(x):
    return math.erf(x)


@numba.jit(**_JIT)
def _hard_swish(x, sixth, half, zero, one, out):
    # numpy's x * clip(x * (1/6) + 0.5, 0, 1), constants of x's dtype, the same roundings (no
    # FMA contraction); NaN passes through as np.clip lets it
    for i in range(x.shape[0]):
        gate = x[i] * sixth + half
        if gate < zero:
            gate = zero
        elif gate > one:
            gate = one
        out[i] = gate * x[i]


def hard_swish(x):
    """HardSwish of float32 or float64 ``x`` in one pass."""
    t = x.dtype.type
    out = np.empty(x.shape, x.dtype)
    _hard_swish(np.ascontiguousarray(x).reshape(-1), t(1 / 6), t(0.5), t(0), t(1), out.reshape(-1))
    return out
