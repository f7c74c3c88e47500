"""Numba loops for the fp32 ops where numpy makes several passes over memory.

Depthwise convolution (one small filter per channel: BLAS has nothing to offer) and erf (numpy
has none). Each runs on float32 and float64; ``cache=True`` keeps the compiled code between
processes.
"""
import math

import numba
import numpy as np

_JIT = dict(nopython=True, nogil=True, cache=True)


@numba.jit(**_JIT)
def _multiply_add(dst, src, w):
    # indexed from 0 by the loop counter, so that LLVM vectorizes it (see kernels/glue.py)
    for c in range(dst.shape[0]):
        dst[c] += w[c] * src[c]


@numba.jit(**_JIT)
def _depthwise_channels_last(xp, w, sh, sw, dh, dw, out):
    """``out[y, x, c] = sum_ij w[i, j, c] * xp[y*sh + i*dh, x*sw + j*dw, c]`` (input pre-padded)."""
    oh, ow = out.shape[0], out.shape[1]
    kh, kw = w.shape[0], w.shape[1]
    for y in range(oh):
        for x in range(ow):
            dst = out[y, x]
            dst[:] = 0
            for i in range(kh):
                for j in range(kw):
                    _multiply_add(dst, xp[y * sh + i * dh, x * sw + j * dw], w[i, j])


def depthwise_conv2d(xp, w, strides, dilations, out_shape):
    """Depthwise conv of padded ``xp[N, C, Hp, Wp]`` with ``w[C, KH, KW]``.

    Channels-last inside: the innermost loop runs over channels, long and contiguous, where NCHW
    would give it one short output row (7 to 112 pixels) per tap.
    """
    w_last = np.ascontiguousarray(w.transpose(1, 2, 0), xp.dtype)
    out = np.empty((xp.shape[0], xp.shape[1]) + tuple(out_shape), xp.dtype)
    for n in range(xp.shape[0]):
        image = np.ascontiguousarray(xp[n].transpose(1, 2, 0))
        result = np.empty(tuple(out_shape) + (xp.shape[1],), xp.dtype)
        _depthwise_channels_last(image, w_last, strides[0], strides[1], dilations[0], dilations[1], result)
        out[n] = result.transpose(2, 0, 1)
    return out


_UNARY_SIGNATURES = ["float32(float32)", "float64(float64)"]


@numba.vectorize(_UNARY_SIGNATURES, cache=True)
def erf(x):
    return math.erf(x)
