# cython: boundscheck=False, wraparound=False, cdivision=True
"""Convolution drivers in C: the implicit GEMM over a padded channels-last image
(``qg_conv_tile`` in ``qgemm.c``), the depthwise kernels (``depthwise.c``), and the layout
changes they read from (``layout.c``). Both convolutions run :func:`qgemm`'s epilogue.

The padded image lives in a per-thread workspace that grows to the largest image seen and is
reused: a fresh array per call page-faulted its way in on every convolution.
"""
import math
import os
import threading

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

cnp.import_array()

include "_epilogue.pxi"

cdef extern from "layout.h" nogil:
    ctypedef struct pad_shape:
        int64_t channels, height, width, top, left, padded_width, pixel_stride
    void transpose_u8(const uint8_t *src, int64_t rows, int64_t cols, int64_t src_rs,
                      uint8_t *dst, int64_t dst_rs)
    void pad_channels_last_rows(const pad_shape *s, const uint8_t *x, uint8_t zero_point,
                                uint8_t *out, int64_t row0, int64_t row1)
    void pad_c4_planes(const pad_shape *s, const uint8_t *x, uint8_t zero_point, uint8_t *out,
                       int64_t plane_stride, int64_t g0, int64_t g1)
    void im2col_rows(const uint8_t *img, const int64_t *tap_off, int taps, int64_t c4,
                     int64_t out_width, int64_t in_row_stride, int64_t in_px_stride, uint8_t *dst,
                     int64_t p0, int64_t p1)

cdef extern from "depthwise.h" nogil:
    enum:
        DW_QUAD
    ctypedef struct dw_shape:
        int64_t height, width, out_height, out_width
        int kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w
    int dw_vbmi_supported()
    int dw_vbmi_fits(const dw_shape *s)
    int dw_planes_vbmi(const dw_shape *s, const uint8_t *x, const int32_t *quads,
                       const qg_args *p, int64_t c0, int64_t c1)
    int dw_rows_portable(const dw_shape *s, int64_t channels, int64_t padded_width,
                         int64_t pixel_stride, const uint8_t *x, const int32_t *w,
                         const qg_args *p, int64_t row0, int64_t row1)

_workspace = threading.local()


# Input images (bytes per group) from which PreparedConv pads on several threads: a 3x3
# convolution of 56 x 56 x 64 at 2 threads ran 7% faster with its 200 KiB padded on both.
# im2col matrices (bytes) from which it copies on several threads.
cdef enum:
    _PARALLEL_PAD_BYTES = 64 * 1024
    _PARALLEL_IM2COL_BYTES = 512 * 1024


# Tasks for qg_parallel_for (the worker pool that PreparedConv runs its loops on): ctx points
# at a _Job on the caller's stack, i is the index of the task.
cdef struct _Job:
    const qg_args *p
    const qg_conv *cv
    const qg_conv_t *cvt
    const pad_shape *ps
    const uint8_t *src
    uint8_t *out
    uint8_t zp
    int64_t mc, kc, per, total, plane_stride


cdef int _task_pad_rows(void *ctx, int64_t i) noexcept nogil:
    cdef _Job *j = <_Job *>ctx
    pad_channels_last_rows(j.ps, j.src, j.zp, j.out, i * j.per, min(j.total, (i + 1) * j.per))
    return 0


cdef int _task_pad_planes(void *ctx, int64_t i) noexcept nogil:
    cdef _Job *j = <_Job *>ctx
    pad_c4_planes(j.ps, j.src, j.zp, j.out, j.plane_stride, i, i + 1)
    return 0


cdef int _task_im2col(void *ctx, int64_t i) noexcept nogil:
    cdef _Job *j = <_Job *>ctx
    im2col_rows(j.src, j.cv.tap_off, j.cv.taps, j.plane_stride, j.cv.out_width,
                j.cv.in_row_stride, j.cv.in_px_stride, j.out, i * j.per,
                min(j.total, (i + 1) * j.per))
    return 0


cdef int _task_conv_t(void *ctx, int64_t i) noexcept nogil:
    cdef _Job *j = <_Job *>ctx
    return qg_conv_t_tile(j.p, j.cvt, i)


cdef int _task_conv(void *ctx, int64_t i) noexcept nogil:
    cdef _Job *j = <_Job *>ctx
    return qg_conv_tile_mc(j.p, j.cv, j.mc, i)


cdef int _task_tile(void *ctx, int64_t i) noexcept nogil:
    cdef _Job *j = <_Job *>ctx
    return qg_tile_mc_kc(j.p, j.mc, j.kc, i)


cdef int _run_tiles(int threads, int64_t tiles, qg_task_fn task, _Job *job) except -1:
    """The product's tiles on the worker pool (in order, here, on one thread)."""
    cdef int failed
    with nogil:
        failed = qg_parallel_for(threads, tiles, task, job)
    if failed:
        raise MemoryError("convolution: could not allocate a tile's scratch buffer")
    return 0


cdef struct _DwJob:  # a depthwise convolution's channels (planar) or output rows in chunks
    const dw_shape *s
    const qg_args *p
    const uint8_t *x
    const int32_t *quads
    const int32_t *taps
    int64_t channels, padded_width, pixel_stride, per_chunk, total
    bint planar


cdef int _task_depthwise(void *ctx, int64_t r) noexcept nogil:
    cdef _DwJob *j = <_DwJob *>ctx
    cdef int64_t first = r * j.per_chunk, last = min(j.total, (r + 1) * j.per_chunk)
    if j.planar:
        return dw_planes_vbmi(j.s, j.x, j.quads, j.p, first, last)
    return dw_rows_portable(j.s, j.channels, j.padded_width, j.pixel_stride, j.x, j.taps, j.p, first, last)


cdef int _run_depthwise(int threads, _DwJob *job) except -1:
    """The chunks on the worker pool (one thread: in order, here)."""
    cdef int failed
    with nogil:
        failed = qg_parallel_for(threads, (job.total + job.per_chunk - 1) // job.per_chunk, _task_depthwise, job)
    if failed:
        raise MemoryError("depthwise convolution: could not allocate a task's scratch")
    return 0


cdef int _pad_rows(const pad_shape *s, const uint8_t *src, uint8_t zp, uint8_t *out, int64_t hp,
                   int threads) except -1:
    cdef _Job job
    job.ps, job.src, job.zp, job.out, job.per, job.total = s, src, zp, out, 8, hp
    with nogil:
        if threads == 1:
            pad_channels_last_rows(s, src, zp, out, 0, hp)
        else:
            qg_parallel_for(threads, (hp + 7) // 8, _task_pad_rows, &job)
    return 0


def conv_output_size(size, kernel, stride, pad_begin, pad_end, dilation):
    """Output length of a convolution or pooling window along one axis (ONNX, floor mode)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _scratch(int64_t nbytes):
    """This thread's reusable uint8 buffer of at least ``nbytes``."""
    buf = getattr(_workspace, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = np.zeros(nbytes, np.uint8)
        _workspace.buf = buf
    return buf


cdef int64_t _pad_image(object x, int zero_point, int64_t top, int64_t left, int64_t hp,
                        int64_t wp, int64_t pixel_stride, int64_t slack, uint8_t **image,
                        int threads) except -1:
    """``x[C, H, W]`` into this thread's workspace as [hp][wp][pixel_stride] with zero points
    around it; ``slack`` more pixels after the last row are readable. Sets ``*image``."""
    cdef const uint8_t[:, :, ::1] xv = np.ascontiguousarray(x)
    cdef pad_shape s
    s.channels, s.height, s.width = xv.shape[0], xv.shape[1], xv.shape[2]
    s.top, s.left, s.padded_width, s.pixel_stride = top, left, wp, pixel_stride
    buf = _scratch((hp * wp + slack) * pixel_stride)
    cdef uint8_t *out = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef int64_t r, rows_per = 8, chunks = (hp + rows_per - 1) // rows_per
    cdef uint8_t zp = zero_point
    cdef const uint8_t *src = &xv[0, 0, 0] if xv.size else NULL
    if not xv.size:
        s.height = 0  # every row is border
    _pad_rows(&s, src, zp, out, hp,
              threads if s.channels * s.height * s.width >= _PARALLEL_PAD_BYTES else 1)
    image[0] = out
    return 0


cdef object _tap_offsets(int64_t kh, int64_t kw, int64_t row_step, int64_t col_step):
    """int64 ``[kh * kw]``: bytes from a pixel's first tap to tap (i, j), row-major."""
    offsets = np.empty(kh * kw, np.int64)
    cdef int64_t[::1] view = offsets
    cdef int64_t i, j
    for i in range(kh):
        for j in range(kw):
            view[i * kw + j] = i * row_step + j * col_step
    return offsets


def implicit_conv2d(x, int x_zero_point, weights, kernel, stride, pads, dilation, out, *,
                    bias=None, scale=None, output="int32", out_scale=None, int out_zero_point=0,
                    bint relu=False, clip=None, int threads=1, int isa_code=QG_ISA_GENERIC,
                    weight_rows=None):
    """One image and group: uint8 ``x[C, H, W]`` into ``out[OH*OW, OC]`` (any strides).

    ``weights`` is a :class:`PackedWeights` of ``[KH*KW*C4, OC]``, rows in (kh, kw, c) order with
    channels padded to C4 = ceil(C/4)*4 (zero rows). Pads must be >= 0. ``weight_rows``, the
    same matrix transposed (int8 ``[OC, KH*KW*C4]``), lets a stride-1 convolution on the VNNI
    path run transposed (:func:`_transposed_conv2d`).
    """
    if weight_rows is not None and isa_code == QG_ISA_VNNI and tuple(stride) == (1, 1):
        return _transposed_conv2d(x, x_zero_point, weights, weight_rows, kernel, pads, dilation,
                                  out, bias, scale, output, out_scale, out_zero_point, relu, clip,
                                  threads)
    cdef qg_args p
    cdef qg_conv cv
    cdef int64_t c = x.shape[0], height = x.shape[1], width = x.shape[2]
    cdef int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1]
    cdef int64_t dh = dilation[0], dw = dilation[1]
    cdef int64_t c4 = (c + 3) // 4 * 4, hp = height + pads[0] + pads[2], wp = width + pads[1] + pads[3]
    cdef int64_t oh = conv_output_size(height, kh, sh, pads[0], pads[2], dh)
    cdef int64_t ow = conv_output_size(width, kw, sw, pads[1], pads[3], dw)
    keep = _prepare_params(&p, weights.n, bias, scale, output, out_scale, out_zero_point, relu,
                           clip)
    _prepare_out(&p, oh * ow, weights.n, out)
    if oh <= 0 or ow <= 0 or weights.n == 0:
        return out
    cdef bint flat = sh == 1 and sw == 1
    # Flat: virtual rows as wide as the padded input, whose last row's dropped columns read
    # (kw - 1) * dw pixels past the image.
    cdef uint8_t *image = NULL
    _pad_image(x, x_zero_point, pads[0], pads[1], hp, wp, c4, (kw - 1) * dw + 1, &image, threads)
    tap_off = _tap_offsets(kh, kw, dh * wp * c4, dw * c4)
    cv.x = image
    cv.taps = kh * kw
    cv.tap_off = <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>tap_off)
    cv.out_width = ow
    cv.in_px_stride = sw * c4
    cv.in_row_stride = sh * wp * c4
    cv.row_len = wp if flat else ow
    cdef cnp.ndarray packed = weights.packed, col_sums = weights.col_sums
    p.isa = isa_code
    p.n, p.k4 = weights.n, cv.taps * c4 // 4
    p.a_zero_point = x_zero_point
    p.bpack = <const int8_t *>cnp.PyArray_DATA(packed)
    p.col_sums = <const int32_t *>cnp.PyArray_DATA(col_sums)
    p.apack = NULL
    p.m = oh * cv.row_len
    qg_shape(p.isa, p.m, &p.mr, &p.npanels)
    p.nc = _tile_columns(p.m, p.n, threads)
    cdef int64_t tiles = qg_tile_count(&p)
    cdef _Job job
    job.p, job.cv, job.mc = &p, &cv, QG_MC
    _run_tiles(threads, tiles, _task_conv, &job)
    return out


cdef int64_t _plane_row(int64_t width, int64_t left, int64_t right, int64_t out_width) noexcept:
    """Pixels per row of the transposed path's planes (stride 1). A row's right border and the
    next row's left border are the same zero points: a tap past the end of a row reads the next
    row's left border, so a row needs only max(left, right) of them (28 + 1 instead of 28 + 2
    virtual pixels per output row, whose extra columns are computed and dropped). Wide enough for
    every output column too, where the pads outreach the kernel."""
    return max(width + max(left, right), out_width)


cdef object _transposed_conv2d(x, int x_zero_point, weights, weight_rows, kernel, pads, dilation,
                               out, bias, scale, str output, out_scale, int out_zero_point,
                               bint relu, clip, int threads):
    """:func:`implicit_conv2d` with output channels as GEMM rows and pixels as columns
    (``qg_conv_t_tile``): the image is only regrouped into planes of 4 channels (cheaper than a
    full channels-last transposition) and the sums come out pixel-contiguous, as NCHW stores
    them, so the epilogue needs no transposition either."""
    cdef qg_args p
    cdef qg_conv_t cv
    cdef pad_shape s
    cdef cnp.ndarray xa = np.ascontiguousarray(x)
    s.channels, s.height, s.width = xa.shape[0], xa.shape[1], xa.shape[2]
    s.top, s.left = pads[0], pads[1]
    cdef int64_t kh = kernel[0], kw = kernel[1], dh = dilation[0], dw = dilation[1]
    cdef int64_t hp = s.height + pads[0] + pads[2]
    cdef int64_t oh = conv_output_size(s.height, kh, 1, pads[0], pads[2], dh)
    cdef int64_t ow = conv_output_size(s.width, kw, 1, pads[1], pads[3], dw)
    s.padded_width = _plane_row(s.width, pads[1], pads[3], ow)
    cdef int64_t groups = (s.channels + 3) // 4, oc = weights.n
    keep = _prepare_params(&p, oc, bias, scale, output, out_scale, out_zero_point, relu, clip)
    _prepare_out(&p, oh * ow, oc, out)
    if oh <= 0 or ow <= 0 or oc == 0:
        return out
    # Columns are read in whole panels of 16 pixels, each tap up to (kh-1)*dh rows and
    # (kw-1)*dw pixels on: the plane holds that much past the padded image.
    cdef int64_t plane_px = hp * s.padded_width + 16 + (kw - 1) * dw
    cdef int64_t plane_stride = (plane_px * 4 + 63) // 64 * 64
    buf = _scratch(groups * plane_stride)
    cdef uint8_t *image = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef const uint8_t *src = <const uint8_t *>cnp.PyArray_DATA(xa)
    cdef int64_t g
    cdef _Job job
    job.ps, job.src, job.zp, job.out, job.plane_stride = &s, src, <uint8_t>x_zero_point, image, plane_stride
    with nogil:
        if threads == 1 or s.channels * s.height * s.width < _PARALLEL_PAD_BYTES:
            pad_c4_planes(&s, src, <uint8_t>x_zero_point, image, plane_stride, 0, groups)
        else:
            qg_parallel_for(threads, groups, _task_pad_planes, &job)
    tap_off = _tap_offsets(kh, kw, dh * s.padded_width * 4, dw * 4)
    cv.x, cv.plane_stride = image, plane_stride
    cv.w = <const int8_t *>cnp.PyArray_DATA(<cnp.ndarray>weight_rows)
    cv.row_len, cv.out_width = s.padded_width, ow
    cv.taps = kh * kw
    cv.tap_off = <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>tap_off)
    cdef cnp.ndarray col_sums = weights.col_sums
    p.isa = QG_ISA_VNNI
    p.m, p.n, p.k4 = oc, oh * s.padded_width, weight_rows.shape[1] // 4
    p.a_zero_point = x_zero_point
    p.col_sums = <const int32_t *>cnp.PyArray_DATA(col_sums)
    p.nc = _transposed_columns(p.m, p.n, threads,
                               output == "uint8" and s.padded_width >= QG_T_FUSED_ROW)
    cdef int64_t tiles = qg_tile_count(&p)
    job.p, job.cvt = &p, &cv
    _run_tiles(threads, tiles, _task_conv_t, &job)
    return out


def pack_depthwise(w):
    """int8 ``w[C, KH, KW]`` for :func:`depthwise_conv2d`: ``(quads, taps, sums)``.

    ``quads[C, KH, ceil(KW/4)]`` int32: each kernel row's weights 4 taps at a time, zero-padded
    (the VBMI kernel); ``taps[KH*KW, C16]`` int32 with channels padded to a multiple of 16 (the
    portable loops); ``sums[C]`` int32 per channel.
    """
    w = np.asarray(w, np.int8)
    channels, kh, kw = w.shape
    groups = -(-kw // DW_QUAD)
    padded_taps = np.zeros((channels, kh, groups * DW_QUAD), np.int8)
    padded_taps[:, :, :kw] = w
    quads = np.ascontiguousarray(padded_taps).view("<i4").astype(np.int32)
    plain = np.zeros((kh * kw, -(-channels // 16) * 16), np.int32)
    plain[:, :channels] = w.reshape(channels, -1).T
    sums = w.reshape(channels, -1).astype(np.int32).sum(axis=1, dtype=np.int32)
    return quads.reshape(channels, kh, groups), plain, sums


def depthwise_conv2d(x, int x_zero_point, packed, kernel, stride, pads, dilation, out, *,
                     bias=None, scale=None, output="int32", out_scale=None,
                     int out_zero_point=0, bint relu=False, clip=None, int threads=1,
                     bint vectorized=True):
    """One image: uint8 ``x[C, H, W]`` into ``out[OH*OW, C]`` (any strides), with the weights
    from :func:`pack_depthwise`. The VBMI kernel runs where the CPU and the geometry allow it and
    ``vectorized`` is true; the portable loops otherwise."""
    cdef qg_args p
    cdef dw_shape s
    quads, taps, sums = packed
    cdef cnp.ndarray xa = np.ascontiguousarray(x)
    cdef int64_t c = xa.shape[0]
    s.height, s.width = xa.shape[1], xa.shape[2]
    s.kh, s.kw = kernel
    s.stride_h, s.stride_w = stride
    s.dilation_h, s.dilation_w = dilation
    s.pad_top, s.pad_left = pads[0], pads[1]
    s.out_height = conv_output_size(s.height, s.kh, s.stride_h, pads[0], pads[2], s.dilation_h)
    s.out_width = conv_output_size(s.width, s.kw, s.stride_w, pads[1], pads[3], s.dilation_w)
    keep = _prepare_params(&p, c, bias, scale, output, out_scale, out_zero_point, relu, clip)
    _prepare_out(&p, s.out_height * s.out_width, c, out)
    if s.out_height <= 0 or s.out_width <= 0 or c == 0:
        return out
    p.col_sums = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>sums)
    p.a_zero_point = x_zero_point
    cdef const int32_t *quad_ptr = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>quads)
    cdef const int32_t *tap_ptr = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>taps)
    cdef const uint8_t *src = <const uint8_t *>cnp.PyArray_DATA(xa)
    cdef uint8_t *image = NULL
    cdef int64_t per_chunk, total
    cdef int64_t stride_px = taps.shape[1], wp = s.width + pads[1] + pads[3]
    cdef bint planar = vectorized and dw_vbmi_supported() and dw_vbmi_fits(&s)
    if planar:
        # Chunks of channels, a few per thread, so that each task reuses its scratch plane.
        total = c
        per_chunk = max(1, -(-c // (4 * threads)))
    else:
        _pad_image(xa, x_zero_point, pads[0], pads[1], s.height + pads[0] + pads[2], wp,
                   stride_px, 0, &image, threads)
        total = s.out_height
        per_chunk = 4
    cdef _DwJob job
    job.s, job.p, job.x, job.quads, job.taps = &s, &p, src if planar else image, quad_ptr, tap_ptr
    job.channels, job.padded_width, job.pixel_stride = c, wp, stride_px
    job.per_chunk, job.total, job.planar = per_chunk, total, planar
    _run_depthwise(threads, &job)
    return out


def channels_last(x):
    """uint8 ``x[C, H, W]`` to ``[H*W, C]``: the byte transposition that the channels-last
    workspace and the NCHW uint8 epilogue use, exposed so that tests can check it directly."""
    cdef const uint8_t[:, :, ::1] xv = np.ascontiguousarray(x, np.uint8)
    cdef int64_t channels = xv.shape[0], pixels = xv.shape[1] * xv.shape[2]
    out = np.empty((pixels, channels), np.uint8)
    cdef uint8_t[:, ::1] ov = out
    if channels and pixels:
        with nogil:
            transpose_u8(&xv[0, 0, 0], channels, pixels, pixels, &ov[0, 0], channels)
    return out


# --- PreparedConv: qconv2d with everything but the image fixed once --------------------------

cdef enum:
    _IMPLICIT = 0
    _TRANSPOSED = 1
    _IM2COL = 2
    _DW_PLANAR = 3
    _DW_ROWS = 4

# GRAPHOPT_CONV_IM2COL: "auto" (default), "1" (every VNNI convolution that can), "0" (never).
_IM2COL_MODE = os.environ.get("GRAPHOPT_CONV_IM2COL", "auto")
# The explicit im2col matrix is m x K bytes: beyond this, the implicit paths run instead.
_IM2COL_MAX_BYTES = 4 << 20
# Micro-kernel shapes (rows, 16-column panels) the im2col and row paths pick from.
_IM2COL_SHAPES = ((6, 4), (7, 3), (8, 3))
# Micro-kernel cycles per output element that the row path spends beyond the transposed one:
# a channels-last padded copy and an epilogue that transposes, against planes of 4 channels and
# requantization in the micro-kernel (measured on 3x3 convolutions of 56 x 56 x 64).
_ROWS_EXTRA_CYCLES = 0.6


def _ukr_cycles(int64_t m, int64_t n, int64_t mc, int64_t nc, int mr, int np_):
    """Rough cycles per group of 4 along K for an m x n product cut into mc x nc tiles and
    mr x np_ micro-kernel calls: one vpdpbusd per cycle, two loads per cycle, at least the
    instruction's latency per update of an accumulator, and B's panels streamed from L2, which
    slabs of one or two rows barely reuse (a 1 x 4 slab ran at half speed)."""
    cdef int64_t i0, i, j0, j, rows, panels, mrc, npc
    cdef double total = 0
    for i0 in range(0, m, mc):
        rows = min(mc, m - i0)
        for j0 in range(0, n, nc):
            panels = (min(nc, n - j0) + 15) // 16
            for i in range(0, rows, mr):
                mrc = min(mr, rows - i)
                for j in range(0, panels, np_):
                    npc = min(np_, panels - j)
                    total += max(mrc * npc, (mrc + npc) * 0.5, 4.0, 2.4 * npc)
    return total


cdef double _tile_span(int64_t m, int64_t mc, int64_t n, int64_t nc, int64_t unit, int threads):
    """Simulated finishing time of ``threads`` threads taking the mc x nc tiles of an m x n
    product in order as they come free, each tile costing its area plus a fixed overhead."""
    cdef int64_t i0, j0, rows
    cdef double overhead = 0.25 * unit * min(m, mc)
    free = [0.0] * threads
    for i0 in range(0, m, mc):
        rows = min(mc, m - i0)
        for j0 in range(0, n, nc):
            k = free.index(min(free))
            free[k] += rows * min(nc, n - j0) + overhead
    return max(free)


def _balanced_columns(int64_t m, int64_t mc, int64_t n, int64_t unit, int threads,
                      int64_t max_units):
    """Columns per tile (a multiple of ``unit``, at most ``max_units`` of them) for ``threads``
    threads: the smallest _tile_span."""
    cdef int64_t units = (n + unit - 1) // unit, per, best_per = 1
    cdef double best = -1, span
    for per in range(1, min(units, max_units) + 1):
        span = _tile_span(m, mc, n, per * unit, unit, threads)
        if best < 0 or span < best * 0.999:
            best, best_per = span, per
    return best_per * unit


cdef int64_t _transposed_columns(int64_t m, int64_t n, int threads, bint fused):
    """Pixels per tile on the transposed path: whole micro-kernel widths (3 panels, 48). A tile
    whose output the micro-kernel requantizes (``fused``) has no int32 sums to keep in L2 and
    may be wider than NC_MAX: at 2 threads, 56 x 56 x 64 ran 4% faster in 4 tiles than in 9."""
    cdef int64_t unit = 16 * QG_T_NP
    if threads > 1:
        return _balanced_columns(m, QG_MC, n, unit, threads,
                                 (n + unit - 1) // unit if fused else NC_MAX // unit)
    return max(unit, _tile_columns(m, n, threads) // unit * unit)


cdef _row_tiling(int64_t oh, int64_t ow, int64_t n, int threads):
    """(cycles, mr, np, mc, nc) for the implicit path with slabs that stop at the end of each
    of oh output rows of ow pixels: the micro-kernel shape that wastes least on such rows (as
    rated by _ukr_cycles), and tiles of whole rows. One thread: as few tiles as rows of QG_MC
    pixels allow, of equal height. Several: the height (up to twice that) and width with the
    smallest _tile_span; 28 rows in tiles of 5 left 3 tiles to one of 2 threads and 2 and a
    short one to the other."""
    cdef int64_t row_tiles = (oh * ow + QG_MC - 1) // QG_MC, rows, gw, nc = 0, mc = 0
    cdef double span, best_span
    best = None
    for mr, np_ in _IM2COL_SHAPES:
        gw = 16 * np_
        if threads == 1:
            mc = (oh + row_tiles - 1) // row_tiles * ow
            nc = min(NC_MAX // gw, (n + gw - 1) // gw) * gw
        else:
            best_span = -1
            for rows in range(min(oh, max(1, 2 * QG_MC // ow)), 0, -1):
                tile_nc = _balanced_columns(oh * ow, rows * ow, n, gw, threads, NC_MAX // gw)
                span = _tile_span(oh * ow, rows * ow, n, tile_nc, gw, threads)
                if best_span < 0 or span < best_span * 0.999:
                    best_span, mc, nc = span, rows * ow, tile_nc
        cost = oh * _ukr_cycles(ow, n, ow, nc, mr, np_)
        if best is None or cost < best[0]:
            best = (cost, mr, np_, mc, nc)
    return best


cdef _im2col_tiling(int64_t m, int64_t n, int threads):
    """(cycles, mr, np, mc, nc) for the im2col path: the micro-kernel shape that wastes least on
    this m and n, tiles of whole slabs and whole panel groups, and (threads > 1) enough tiles."""
    best = None
    cdef int64_t mc, nc, gw, groups, m_blocks, splits
    for mr, np_ in _IM2COL_SHAPES:
        mc = max(mr, QG_MC // mr * mr)
        gw = 16 * np_
        groups = (n + gw - 1) // gw
        if threads == 1:
            nc = min(NC_MAX // gw, groups) * gw
        else:
            nc = _balanced_columns(m, mc, n, gw, threads, NC_MAX // gw)
        cost = _ukr_cycles(m, n, mc, nc, mr, np_)
        if best is None or cost < best[0]:
            best = (cost, mr, np_, mc, nc)
    return best


# L2 bytes that a tile's block of A and micro-panel of B may take on the im2col path.
cdef enum:
    _IM2COL_BLOCK_BYTES = 512 * 1024


cdef int64_t _im2col_kc(int64_t rows, int np_, int64_t k4) noexcept:
    """Groups of 4 along K per cache block on the im2col path: the whole reduction where the
    tile's rows of A and one micro-panel of B fit _IM2COL_BLOCK_BYTES together (2304 deep for
    3x3 x 256 channels: 2% faster than blocks of 1024, whose int32 tile each block after the
    first reloads), else the fewest blocks of equal depth that fit."""
    cdef int64_t blocks = max(1, (k4 * 4 * (rows + 16 * np_) + _IM2COL_BLOCK_BYTES - 1)
                                 // _IM2COL_BLOCK_BYTES)
    return (k4 + blocks - 1) // blocks


cdef class _GroupArgs:
    """One group's epilogue and weights, as qg_args fields filled once."""
    cdef qg_args p
    cdef object keep
    cdef const int8_t *rows


cdef class _ShapePlan:
    """Everything a PreparedConv derives from one input shape."""
    cdef object out_shape
    cdef cnp.npy_intp dims[4]
    cdef int kind
    cdef bint empty
    cdef int64_t batch, image_elems, group_elems, pixels, hp, scratch_bytes
    cdef int64_t m, n, k4, nc, tiles, chunks, per_chunk, total, plane_stride, planes
    cdef int64_t mc, kc, im2col_off, k_bytes
    cdef int mr, npanels
    cdef pad_shape ps
    cdef qg_conv cv
    cdef qg_conv_t cvt
    cdef dw_shape ds
    cdef object tap_off


cdef int _channels_last_geometry(_ShapePlan s, int64_t channels, int64_t height, int64_t width, int64_t top,
                                 int64_t left, int64_t wp, int64_t c4, int64_t kh, int64_t kw, int64_t dh,
                                 int64_t dw, int64_t sh, int64_t sw, int64_t ow) except -1:
    """The channels-last workspace (zero-point padded, pixels of c4 bytes) and the taps that the
    implicit and im2col paths read from it."""
    s.ps.channels, s.ps.height, s.ps.width = channels, height, width
    s.ps.top, s.ps.left, s.ps.padded_width, s.ps.pixel_stride = top, left, wp, c4
    if s.group_elems == 0:
        s.ps.height = 0
    s.tap_off = _tap_offsets(kh, kw, dh * wp * c4, dw * c4)
    s.cv.taps = kh * kw
    s.cv.tap_off = <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>s.tap_off)
    s.cv.out_width = ow
    s.cv.in_px_stride = sw * c4
    s.cv.in_row_stride = sh * wp * c4
    return 0


def _pair_of(value):
    return (int(value), int(value)) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)


def _pads_of(padding):
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * 4
    padding = tuple(int(v) for v in padding)
    return padding * 2 if len(padding) == 2 else padding




cdef class PreparedConv:
    """:func:`graphopt.kernels.qconv2d` with its weights, zero point, geometry, epilogue and
    threads fixed once.

    The arguments are ``qconv2d``'s and are validated here; the epilogue's arrays are built per
    group once, and everything derived from an input shape (output shape, padded workspace
    size, tap offsets, tiling) is computed on the first call with that shape and cached. A call
    then checks ``x`` (and ``out``), pads the image into this thread's workspace and runs the
    tiles: the results are ``qconv2d``'s, bit for bit. ``out`` may be a C-contiguous
    ``[N, OC, OH, OW]`` array of the output dtype to write into.
    """
    cdef object weights, groups_args, plans, keep
    cdef readonly int threads, x_zero_point
    cdef readonly object stride, pads, dilation, output
    cdef int isa_code, typenum, itemsize, groups, per_group, group_channels, out_channels
    cdef bint vectorized
    cdef int64_t kh, kw

    def __init__(self, weights, int x_zero_point, *, stride=1, padding=0, dilation=1, bias=None,
                 scale=None, output="int32", out_scale=None, int out_zero_point=0, bint relu=False,
                 clip=None, int threads=1, isa_name=None):
        if not 0 <= x_zero_point <= 255:
            raise ValueError(f"x_zero_point must be in [0, 255], got {x_zero_point}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(_OUTPUTS)}, got {output!r}")
        stride, dilation, pads = _pair_of(stride), _pair_of(dilation), _pads_of(padding)
        if min(pads) < 0 or min(stride) < 1 or min(dilation) < 1:
            raise ValueError(f"pads must be >= 0 and stride, dilation >= 1, got pads {pads}, "
                             f"stride {stride}, dilation {dilation}")
        from graphopt.kernels._qgemm import ISA_NAMES, isa
        path = isa(isa_name)
        self.isa_code = ISA_NAMES[path]
        self.vectorized = path in ("vnni", "amx")
        self.weights, self.x_zero_point, self.threads, self.output = weights, x_zero_point, threads, output
        self.stride, self.pads, self.dilation = stride, pads, dilation
        self.kh, self.kw = weights.kernel
        self.groups, self.group_channels = weights.groups, weights.group_channels
        self.out_channels = weights.out_channels
        self.per_group = self.out_channels // self.groups
        dtype = _OUTPUTS[output][1]
        self.typenum = (cnp.NPY_INT32, cnp.NPY_UINT8, cnp.NPY_FLOAT32)[_OUTPUTS[output][0]]
        self.itemsize = np.dtype(dtype).itemsize
        self.plans = {}
        self.groups_args = []
        cdef _GroupArgs ga
        cdef cnp.ndarray arr
        if weights.depthwise:
            quads, taps, sums = weights.depthwise_weights
            ga = _GroupArgs()
            ga.keep = [_prepare_params(&ga.p, self.out_channels, bias, scale, output, out_scale,
                                       out_zero_point, relu, clip), quads, taps, sums]
            ga.p.col_sums = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>sums)
            ga.p.a_zero_point = x_zero_point
            self.groups_args.append(ga)
            return
        if self.groups > 1:
            bias = None if bias is None else np.asarray(bias)
            scale = None if scale is None else np.asarray(scale, np.float32)
        for g in range(self.groups):
            group_bias, group_scale = bias, scale
            if self.groups > 1:
                channels = slice(g * self.per_group, (g + 1) * self.per_group)
                group_bias = None if bias is None else bias[channels]
                group_scale = scale if scale is None or scale.size == 1 else scale[channels]
            gw, rows = weights.gemm_weights[g], weights.weight_rows[g]
            ga = _GroupArgs()
            ga.keep = [_prepare_params(&ga.p, gw.n, group_bias, group_scale, output, out_scale,
                                       out_zero_point, relu, clip), gw, rows]
            arr = gw.packed
            ga.p.bpack = <const int8_t *>cnp.PyArray_DATA(arr)
            arr = gw.col_sums
            ga.p.col_sums = <const int32_t *>cnp.PyArray_DATA(arr)
            arr = rows
            ga.rows = <const int8_t *>cnp.PyArray_DATA(arr)
            ga.p.a_zero_point = x_zero_point
            ga.p.apack = NULL
            self.groups_args.append(ga)

    cdef _ShapePlan _plan(self, tuple shape):
        cdef _ShapePlan s = _ShapePlan()
        cdef int64_t batch = shape[0], c = shape[1], height = shape[2], width = shape[3]
        if c != self.group_channels * self.groups:
            raise ValueError(f"x has {c} channels but the weights expect "
                             f"{self.group_channels * self.groups}")
        cdef int64_t pt = self.pads[0], pl = self.pads[1], pb = self.pads[2], pr = self.pads[3]
        cdef int64_t sh = self.stride[0], sw = self.stride[1]
        cdef int64_t dh = self.dilation[0], dw = self.dilation[1]
        cdef int64_t kh = self.kh, kw = self.kw
        cdef int64_t oh = conv_output_size(height, kh, sh, pt, pb, dh)
        cdef int64_t ow = conv_output_size(width, kw, sw, pl, pr, dw)
        cdef int64_t hp = height + pt + pb, wp = width + pl + pr, cg = self.group_channels
        s.out_shape = (batch, self.out_channels, max(oh, 0), max(ow, 0))
        s.dims[0], s.dims[1], s.dims[2], s.dims[3] = s.out_shape
        s.batch, s.image_elems, s.group_elems = batch, c * height * width, cg * height * width
        s.pixels, s.hp = max(oh, 0) * max(ow, 0), hp
        s.empty = oh <= 0 or ow <= 0 or batch == 0 or self.out_channels == 0
        if s.empty:
            return s
        cdef qg_args tmp
        if self.weights.depthwise:
            s.ds.height, s.ds.width, s.ds.out_height, s.ds.out_width = height, width, oh, ow
            s.ds.kh, s.ds.kw, s.ds.stride_h, s.ds.stride_w = kh, kw, sh, sw
            s.ds.dilation_h, s.ds.dilation_w, s.ds.pad_top, s.ds.pad_left = dh, dw, pt, pl
            taps = self.weights.depthwise_weights[1]
            if self.vectorized and dw_vbmi_supported() and dw_vbmi_fits(&s.ds):
                s.kind = _DW_PLANAR
                s.total = c
                s.per_chunk = max(1, -(-c // (4 * self.threads)))
            else:
                s.kind = _DW_ROWS
                s.ps.channels, s.ps.height, s.ps.width = c, height, width
                s.ps.top, s.ps.left, s.ps.padded_width, s.ps.pixel_stride = pt, pl, wp, taps.shape[1]
                if s.image_elems == 0:
                    s.ps.height = 0
                s.scratch_bytes = hp * wp * taps.shape[1]
                s.total = oh
                s.per_chunk = 4
            s.chunks = (s.total + s.per_chunk - 1) // s.per_chunk
            return s
        cdef int64_t c4 = (cg + 3) // 4 * 4
        cdef int64_t k_bytes = kh * kw * c4, out_px = oh * ow, k4 = k_bytes // 4
        cdef bint im2col = False, stride1 = sh == 1 and sw == 1
        # VNNI: pixels as rows in slabs that stop at the end of each output row, of the shape
        # that fits the row (no pixel is wasted where the row is a multiple of the slab: 7, 14,
        # 28), in tiles of whole rows; or an explicit im2col matrix, or at stride 1 transposed.
        rows = None
        if self.isa_code == QG_ISA_VNNI:
            rows = _row_tiling(oh, ow, self.per_group, self.threads)
        if self.isa_code == QG_ISA_VNNI and _IM2COL_MODE != "0" and out_px * k_bytes <= _IM2COL_MAX_BYTES:
            if _IM2COL_MODE == "1":
                im2col = True
            elif k_bytes >= 64 and not stride1 and out_px <= 400:
                # Strided, small maps: the matrix lets slabs run across short output rows, worth
                # its copy only where the row path's slabs fit the rows worse (on 14 x 14 and
                # 7 x 7 outputs of 3x3 convolutions the row path ran 1-2% faster at 1 thread,
                # 10-18% at 2).
                im2col = out_px <= 8 or (_im2col_tiling(out_px, self.per_group, self.threads)[0]
                                         * 1.02 < rows[0])
        if im2col:
            s.kind = _IM2COL
            _channels_last_geometry(s, cg, height, width, pt, pl, wp, c4, kh, kw, dh, dw, sh, sw, ow)
            s.im2col_off = ((hp * wp + (kw - 1) * dw + 1) * c4 + 63) // 64 * 64
            s.k_bytes = k_bytes
            s.scratch_bytes = s.im2col_off + out_px * k_bytes
            s.m, s.n, s.k4 = out_px, self.per_group, k_bytes // 4
            if out_px <= 8:
                qg_shape(self.isa_code, out_px, &s.mr, &s.npanels)
                s.mc = QG_MC
                s.nc = _tile_columns(s.m, s.n, self.threads)
            else:
                s.mr, s.npanels, s.mc, s.nc = _im2col_tiling(s.m, s.n, self.threads)[1:]
            s.kc = _im2col_kc(min(s.m, s.mc), s.npanels, s.k4)
            tmp.m, tmp.n, tmp.nc = s.m, s.n, s.nc
            s.tiles = qg_tile_count_mc(&tmp, s.mc)
            # Chunks of output pixels for the im2col copy on several threads.
            s.per_chunk = max(1, -(-out_px // (2 * self.threads)))
            s.chunks = (out_px + s.per_chunk - 1) // s.per_chunk
            return s
        # Stride 1: transposed instead where that costs fewer micro-kernel cycles, the row
        # path's channels-last padding and transposing epilogue included.
        cdef int64_t plane_row = _plane_row(width, pl, pr, ow), t_n = oh * plane_row
        if self.isa_code == QG_ISA_VNNI and stride1:
            t_nc = _transposed_columns(self.per_group, t_n, self.threads,
                                       self.output == "uint8" and plane_row >= QG_T_FUSED_ROW)
            if (rows[0] * k4 + _ROWS_EXTRA_CYCLES * out_px * self.per_group
                    >= _ukr_cycles(self.per_group, t_n, QG_MC, t_nc, QG_T_MR, QG_T_NP) * k4):
                rows = None
        if self.isa_code == QG_ISA_VNNI and stride1 and rows is None:
            s.kind = _TRANSPOSED
            wp = plane_row
            s.ps.channels, s.ps.height, s.ps.width = cg, height, width
            s.ps.top, s.ps.left, s.ps.padded_width, s.ps.pixel_stride = pt, pl, wp, 4
            s.planes = (cg + 3) // 4
            s.plane_stride = ((hp * wp + 16 + (kw - 1) * dw) * 4 + 63) // 64 * 64
            s.scratch_bytes = s.planes * s.plane_stride
            s.tap_off = _tap_offsets(kh, kw, dh * wp * 4, dw * 4)
            s.cvt.plane_stride = s.plane_stride
            s.cvt.row_len, s.cvt.out_width = wp, ow
            s.cvt.taps = kh * kw
            s.cvt.tap_off = <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>s.tap_off)
            s.m, s.n = self.per_group, t_n
            s.k4 = self.weights.weight_rows[0].shape[1] // 4
            s.mc, s.nc = QG_MC, t_nc
        else:
            s.kind = _IMPLICIT
            _channels_last_geometry(s, cg, height, width, pt, pl, wp, c4, kh, kw, dh, dw, sh, sw, ow)
            s.scratch_bytes = (hp * wp + (kw - 1) * dw + 1) * c4
            s.cv.row_len = ow if rows is not None or not stride1 else wp
            s.m, s.n, s.k4 = oh * s.cv.row_len, self.per_group, k4
            if rows is None:
                qg_shape(self.isa_code, s.m, &s.mr, &s.npanels)
                s.mc, s.nc = QG_MC, _tile_columns(s.m, s.n, self.threads)
            else:
                s.mr, s.npanels, s.mc, s.nc = rows[1:]
        tmp.m, tmp.n, tmp.nc = s.m, s.n, s.nc
        s.tiles = qg_tile_count_mc(&tmp, s.mc)
        return s

    def __call__(self, x, out=None):
        """uint8 ``x[N, C, H, W]`` through the prepared convolution; returns ``out`` (new if None)."""
        cdef cnp.ndarray xa
        if cnp.PyArray_CheckExact(x) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
            xa = <cnp.ndarray>x
        else:
            xa = np.ascontiguousarray(x)
        if cnp.PyArray_NDIM(xa) != 4 or cnp.PyArray_TYPE(xa) != cnp.NPY_UINT8:
            raise ValueError(f"x must be uint8 [N, C, H, W], got {xa.dtype} {(<object>xa).shape}")
        shape = (<object>xa).shape
        cdef _ShapePlan s = self.plans.get(shape)
        if s is None:
            s = self._plan(shape)
            self.plans[shape] = s
        cdef cnp.ndarray oa
        if out is None:
            oa = cnp.PyArray_EMPTY(4, s.dims, self.typenum, 0)
        elif (not cnp.PyArray_CheckExact(out) or cnp.PyArray_TYPE(<cnp.ndarray>out) != self.typenum
              or (<object>out).shape != s.out_shape
              or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out)
              or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)):
            raise ValueError(f"out must be a writeable C-contiguous {np.dtype(self.output)} "
                             f"{s.out_shape} array, got {getattr(out, 'dtype', type(out))} "
                             f"{getattr(out, 'shape', None)}")
        else:
            oa = <cnp.ndarray>out
        if s.empty:
            return oa
        cdef const uint8_t *src = <const uint8_t *>cnp.PyArray_DATA(xa)
        cdef char *dst = <char *>cnp.PyArray_DATA(oa)
        if s.kind >= _DW_PLANAR:
            self._depthwise(s, src, dst)
        else:
            self._gemm(s, src, dst)
        return oa

    cdef int _depthwise(self, _ShapePlan s, const uint8_t *src, char *dst) except -1:
        cdef _GroupArgs ga = self.groups_args[0]
        cdef qg_args p = ga.p
        quads, taps, sums = self.weights.depthwise_weights
        cdef const int32_t *quad_ptr = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>quads)
        cdef const int32_t *tap_ptr = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>taps)
        cdef int64_t b, c = self.out_channels
        cdef int threads = self.threads
        cdef uint8_t *image = NULL
        cdef const uint8_t *xb
        cdef _DwJob job
        job.s, job.p, job.quads, job.taps = &s.ds, &p, quad_ptr, tap_ptr
        job.channels, job.padded_width, job.pixel_stride = c, s.ps.padded_width, s.ps.pixel_stride
        job.per_chunk, job.total = s.per_chunk, s.total
        p.out_rs, p.out_cs = 1, s.pixels
        for b in range(s.batch):
            p.out = dst + b * c * s.pixels * self.itemsize
            xb = src + b * s.image_elems
            if s.kind == _DW_ROWS:
                buf = _scratch(s.scratch_bytes)
                image = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>buf)
                _pad_rows(&s.ps, xb if s.image_elems else NULL, <uint8_t>self.x_zero_point,
                          image, s.hp, threads)
            job.planar = s.kind == _DW_PLANAR
            job.x = xb if job.planar else image
            _run_depthwise(threads, &job)
        return 0

    cdef int _gemm(self, _ShapePlan s, const uint8_t *src, char *dst) except -1:
        cdef _GroupArgs ga
        cdef qg_args p
        cdef qg_conv cv = s.cv
        cdef qg_conv_t cvt = s.cvt
        cdef int64_t b, g, tiles = s.tiles, pg = self.per_group, planes = s.planes
        cdef int threads = self.threads, failed = 0
        cdef uint8_t zp = self.x_zero_point
        cdef uint8_t *image
        cdef const uint8_t *xg
        cdef _Job job
        # Padding a small image takes microseconds: one thread, one synchronisation fewer.
        cdef int pad_threads = threads if s.group_elems >= _PARALLEL_PAD_BYTES else 1
        buf = _scratch(s.scratch_bytes)
        image = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>buf)
        job.p, job.cv, job.cvt, job.ps, job.zp = &p, &cv, &cvt, &s.ps, zp
        job.mc, job.kc = s.mc, s.kc
        for b in range(s.batch):
            for g in range(self.groups):
                ga = <_GroupArgs>self.groups_args[g]
                p = ga.p
                p.out = dst + (b * self.out_channels + g * pg) * s.pixels * self.itemsize
                p.out_rs, p.out_cs = 1, s.pixels
                p.m, p.n, p.k4, p.nc = s.m, s.n, s.k4, s.nc
                xg = src + b * s.image_elems + g * s.group_elems
                if s.kind == _TRANSPOSED:
                    cvt.x, cvt.w = image, ga.rows
                    p.isa = QG_ISA_VNNI
                    job.src, job.out, job.plane_stride = xg, image, s.plane_stride
                    with nogil:
                        if pad_threads == 1:
                            pad_c4_planes(&s.ps, xg, zp, image, s.plane_stride, 0, planes)
                        else:
                            qg_parallel_for(threads, planes, _task_pad_planes, &job)
                        # one thread: qg_parallel_for runs the tiles in order, here
                        failed = qg_parallel_for(threads, tiles, _task_conv_t, &job)
                elif s.kind == _IM2COL:
                    _pad_rows(&s.ps, xg if s.group_elems else NULL, zp, image, s.hp, pad_threads)
                    p.a, p.a_rs, p.apack = image + s.im2col_off, s.k_bytes, NULL
                    p.isa = self.isa_code
                    p.mr, p.npanels = s.mr, s.npanels
                    job.src, job.out = image, image + s.im2col_off
                    job.plane_stride, job.per, job.total = s.k_bytes // cv.taps, s.per_chunk, s.m
                    with nogil:
                        if threads == 1 or s.m * s.k_bytes < _PARALLEL_IM2COL_BYTES:
                            im2col_rows(image, cv.tap_off, cv.taps, s.k_bytes // cv.taps,
                                        cv.out_width, cv.in_row_stride, cv.in_px_stride,
                                        image + s.im2col_off, 0, s.m)
                        else:
                            qg_parallel_for(threads, s.chunks, _task_im2col, &job)
                        # one thread: qg_parallel_for runs the tiles in order, here
                        failed = qg_parallel_for(threads, tiles, _task_tile, &job)
                else:
                    _pad_rows(&s.ps, xg if s.group_elems else NULL, zp, image, s.hp, pad_threads)
                    cv.x = image
                    p.isa = self.isa_code
                    p.mr, p.npanels = s.mr, s.npanels
                    with nogil:
                        # one thread: qg_parallel_for runs the tiles in order, here
                        failed = qg_parallel_for(threads, tiles, _task_conv, &job)
                if failed:
                    raise MemoryError("convolution: could not allocate a tile's scratch buffer")
        return 0
