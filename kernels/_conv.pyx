# cython: boundscheck=False, wraparound=False, cdivision=True
"""Convolution helpers in C: depthwise sums (``depthwise.c``, one plane per task across OpenMP
threads) and the channels-last transposition of activations (``layout.c``)."""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

cnp.import_array()

cdef extern from "layout.h" nogil:
    void channels_last_u8(const uint8_t *x, int64_t channels, int64_t pixels, uint8_t *out)

cdef extern from "depthwise.h" nogil:
    ctypedef struct dw_shape:
        int64_t height, width, out_height, out_width
        int kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w
    int dw_plane(const dw_shape *s, const uint8_t *x, int32_t zero_point, const int8_t *w,
                  int32_t *out)


def conv_output_size(size, kernel, stride, pad_begin, pad_end, dilation):
    """Output length of a convolution or pooling window along one axis (ONNX, floor mode)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def depthwise_conv2d_sums(x, int x_zero_point, w, stride=(1, 1), pads=(0, 0, 0, 0),
                          dilation=(1, 1), int threads=1):
    """int32 ``sum (x - x_zero_point) * w`` of a depthwise convolution of uint8 NCHW ``x``.

    ``w[C, KH, KW]`` int8, one filter per channel; padded taps contribute nothing (a padded input
    equals the zero point).
    """
    cdef const uint8_t[:, :, :, ::1] xv = np.ascontiguousarray(x, np.uint8)
    cdef const int8_t[:, :, ::1] wv = np.ascontiguousarray(w, np.int8)
    cdef dw_shape s
    batch, channels, s.height, s.width = x.shape
    s.kh, s.kw = wv.shape[1], wv.shape[2]
    if wv.shape[0] != channels:
        raise ValueError(f"{wv.shape[0]} filters for {channels} channels")
    s.stride_h, s.stride_w = stride
    s.pad_top, s.pad_left = pads[0], pads[1]
    s.dilation_h, s.dilation_w = dilation
    s.out_height = conv_output_size(s.height, s.kh, stride[0], pads[0], pads[2], dilation[0])
    s.out_width = conv_output_size(s.width, s.kw, stride[1], pads[1], pads[3], dilation[1])
    out = np.empty((batch, channels, s.out_height, s.out_width), np.int32)
    cdef int32_t[:, :, :, ::1] ov = out
    cdef int64_t plane, planes = batch * channels, c_count = channels
    cdef int failed = 0
    for plane in prange(planes, nogil=True, num_threads=threads, schedule="static"):
        if dw_plane(&s, &xv[plane // c_count, plane % c_count, 0, 0], x_zero_point,
                    &wv[plane % c_count, 0, 0], &ov[plane // c_count, plane % c_count, 0, 0]):
            failed = 1
    if failed:
        raise MemoryError("depthwise convolution: could not allocate a plane's scratch")
    return out


def channels_last(x):
    """uint8 ``x[C, H, W]`` to ``[H*W, C]``: the GEMM operand of a 1x1 convolution."""
    cdef const uint8_t[:, :, ::1] xv = np.ascontiguousarray(x, np.uint8)
    cdef int64_t channels = xv.shape[0], pixels = xv.shape[1] * xv.shape[2]
    out = np.empty((pixels, channels), np.uint8)
    cdef uint8_t[:, ::1] ov = out
    if channels and pixels:
        with nogil:
            channels_last_u8(&xv[0, 0, 0], channels, pixels, &ov[0, 0])
    return out
