# cython: boundscheck=False, wraparound=False, cdivision=True
"""uint8 x int8 -> int32 GEMM with a fused epilogue, driven over threads with OpenMP.

The micro-kernels and the loops around them are C (``qgemm.c``); this module validates arguments,
packs A when the kernels cannot read it in place, cuts the product into tiles and hands them to
``prange`` with the GIL released.

Epilogue, exactly (the numpy reference in ``reference.py`` computes the same operations):

* ``y = sum_k a[m,k] w[k,n] - a_zero_point * col_sums[n] + bias[n]`` in int32;
* ``output="int32"``: ``y``, clamped at 0 when ``relu``;
* ``output="float32"``: ``v = float32(y) * scale[n]`` (one float32 multiply), then ``relu`` /
  ``clip=(lo, hi)`` clamp ``v``;
* ``output="uint8"``: ``m[n] = float32(scale[n]) / float32(out_scale)`` (float32 division),
  ``q = round_half_even(float32(y) * m[n]) + out_zero_point`` saturated to [0, 255]; ``relu`` and
  ``clip`` clamp ``q`` to their quantized bounds (``lo`` becomes
  ``round_half_even(float32(lo) / float32(out_scale)) + out_zero_point``).
"""
import math
import os

import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

from graphopt.kernels._packing import pack_weights_vnni

cnp.import_array()

cdef extern from "qgemm.h" nogil:
    enum:
        QG_ISA_GENERIC
        QG_ISA_AVX2
        QG_ISA_VNNI
        QG_ISA_AMX
        QG_OUT_INT32
        QG_OUT_UINT8
        QG_OUT_FLOAT32
        QG_MC
        QG_NC_GRANULE
    ctypedef struct qg_args:
        int isa
        int64_t m, n, k4
        const uint8_t *apack
        const uint8_t *a
        int64_t a_rs
        const int8_t *bpack
        const int32_t *col_sums
        int32_t a_zero_point
        const int32_t *bias
        const float *mult
        int out_kind
        void *out
        int64_t out_rs, out_cs
        int32_t relu
        float lo, hi
        int32_t out_zero_point
        int64_t nc
    int qg_cpu_supports(int isa)
    int qg_mr(int isa)
    void qg_pack_a(int isa, const uint8_t *a, int64_t rs, int64_t cs, int64_t m, int64_t k,
                   uint8_t *apack, int64_t slab)
    int64_t qg_tile_count(const qg_args *p)
    int qg_tile(const qg_args *p, int64_t tile)
    void qg_epilogue(const qg_args *p, const int32_t *acc, int64_t rs, int64_t cs,
                     int64_t m0, int64_t mc, int64_t n0, int64_t nc)

ISA_NAMES = {"generic": QG_ISA_GENERIC, "avx2": QG_ISA_AVX2, "vnni": QG_ISA_VNNI, "amx": QG_ISA_AMX}
# Fastest first; run-time selection takes the first one the CPU supports.
_PREFERENCE = ("amx", "vnni", "avx2", "generic")
_OUTPUTS = {"int32": (QG_OUT_INT32, np.int32), "uint8": (QG_OUT_UINT8, np.uint8),
            "float32": (QG_OUT_FLOAT32, np.float32)}
# Waking a sleeping OpenMP thread costs ~10-100 us on a shared machine: a product smaller than
# this many multiply-adds per thread (~25 us of one core's VNNI work) is not worth splitting.
_MIN_MACS_PER_THREAD = 4_000_000
# Most columns per tile: the tile's int32 scratch (MC x 512 x 4 = 288 KiB) stays in the 1 MiB L2
# next to the A block; the B block (KC x 512 = 512 KiB) streams through it panel by panel.
_NC_MAX = 512


class UnsupportedISAError(RuntimeError):
    """GRAPHOPT_ISA (or ``isa=``) names a path this CPU or this build cannot run."""


def supported_isas():
    """The ISA paths this CPU (and OS) can run, fastest first."""
    return [name for name in _PREFERENCE if qg_cpu_supports(ISA_NAMES[name])]


def isa(name=None):
    """The path the kernels use: ``name``, else ``$GRAPHOPT_ISA``, else the fastest supported."""
    forced = name or os.environ.get("GRAPHOPT_ISA")
    if not forced:
        return supported_isas()[0]
    if forced not in ISA_NAMES:
        raise UnsupportedISAError(f"unknown ISA {forced!r}; choose one of {', '.join(ISA_NAMES)}")
    if not qg_cpu_supports(ISA_NAMES[forced]):
        why = ("this build has no AMX micro-kernel" if forced == "amx"
               else "this CPU does not support it")
        raise UnsupportedISAError(f"ISA {forced!r} was requested but {why}; "
                                  f"supported: {', '.join(supported_isas())}")
    return forced


class PackedWeights:
    """int8 weights ``w[K, N]`` packed once for every micro-kernel, with their column sums."""

    def __init__(self, w):
        w = np.asarray(w)
        if w.ndim != 2 or w.dtype != np.int8:
            raise ValueError(f"weights must be a 2-D int8 array [K, N], got {w.dtype} {w.shape}")
        self.k, self.n = w.shape
        self.packed, self.col_sums = pack_weights_vnni(w)


def pack_weights(w):
    """Pack ``w_int8[K, N]`` once (at session creation) for :func:`qgemm`."""
    return PackedWeights(w)


cdef int64_t _elements(object stride, int itemsize) except -1:
    if stride < 0 or stride % itemsize:
        raise ValueError("arrays with negative or unaligned strides are not supported")
    return stride // itemsize


cdef object _prepare_epilogue(qg_args *p, int64_t m, int64_t n, object bias, object scale,
                              str output, object out_scale, int out_zero_point, bint relu,
                              object clip, object out):
    """Fill the epilogue fields of ``p``; returns the arrays that must outlive the call."""
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(_OUTPUTS)}, got {output!r}")
    kind, dtype = _OUTPUTS[output]
    if out is None:
        out = np.empty((m, n), dtype)
    elif out.shape != (m, n) or out.dtype != dtype or not out.flags.writeable:
        raise ValueError(f"out must be a writeable {np.dtype(dtype)} {(m, n)} array, "
                         f"got {out.dtype} {out.shape}")
    p.out_kind = kind
    p.out = cnp.PyArray_DATA(<cnp.ndarray>out)
    p.out_rs = _elements(out.strides[0], out.itemsize)
    p.out_cs = _elements(out.strides[1], out.itemsize)
    p.relu = relu
    p.out_zero_point = 0
    keep = [out]
    bias = np.zeros(n, np.int32) if bias is None else np.ascontiguousarray(bias, np.int32)
    if bias.shape != (n,):
        raise ValueError(f"bias must be int32 [{n}], got {bias.shape}")
    p.bias = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>bias)
    keep.append(bias)
    if kind == QG_OUT_INT32:
        if scale is not None or clip is not None:
            raise ValueError("int32 output takes no scale or clip (only relu)")
        p.mult = NULL
        return keep
    if scale is None:
        raise ValueError(f"{output} output needs scale (per tensor or per output channel)")
    scale = np.asarray(scale, np.float32)
    if scale.size == 1:
        scale = np.full(n, scale.reshape(()), np.float32)  # np.broadcast_to costs microseconds
    elif scale.shape != (n,):
        raise ValueError(f"scale must be one value or [{n}], got {scale.shape}")
    lo, hi = (-np.inf, np.inf) if clip is None else clip
    if relu:
        lo = max(lo, 0.0)
    if kind == QG_OUT_FLOAT32:
        mult = np.ascontiguousarray(scale)
        p.lo, p.hi = lo, hi
    else:
        if out_scale is None or not out_scale > 0 or not 0 <= out_zero_point <= 255:
            raise ValueError("uint8 output needs out_scale > 0 and 0 <= out_zero_point <= 255")
        out_scale = np.float32(out_scale)
        mult = scale / out_scale
        p.lo = _quantized_bound(lo, out_scale, out_zero_point)
        p.hi = _quantized_bound(hi, out_scale, out_zero_point)
        p.out_zero_point = out_zero_point
    p.mult = <const float *>cnp.PyArray_DATA(<cnp.ndarray>mult)
    keep.append(mult)
    return keep


def _quantized_bound(bound, out_scale, int zero_point):
    if math.isinf(bound):
        return 0.0 if bound < 0 else 255.0
    q = float(np.rint(np.float32(bound) / np.float32(out_scale))) + zero_point
    return min(max(q, 0.0), 255.0)


def qgemm(a, int a_zero_point, weights, *, bias=None, scale=None, output="int32", out_scale=None,
          int out_zero_point=0, bint relu=False, clip=None, out=None, int threads=1, isa_name=None):
    """``a_uint8[M, K] x weights[K, N]`` with the epilogue of the module docstring.

    ``threads`` is an upper bound: products too small to repay waking a thread use fewer.

    ``a`` may be any strided 2-D uint8 view: row-major with K a multiple of 4 is read in place,
    anything else is packed first. ``out`` may be a strided [M, N] view to write into (a
    convolution writes its NCHW output from pixel-major rows this way).
    """
    cdef qg_args p
    a_arr = np.asarray(a)
    if a_arr.ndim != 2 or a_arr.dtype != np.uint8:
        raise ValueError(f"a must be a 2-D uint8 array [M, K], got {a_arr.dtype} {a_arr.shape}")
    if a_arr.shape[1] != weights.k:
        raise ValueError(f"a has K={a_arr.shape[1]} but the weights have K={weights.k}")
    if not 0 <= a_zero_point <= 255:
        raise ValueError(f"a_zero_point must be in [0, 255], got {a_zero_point}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cdef int64_t m = a_arr.shape[0], n = weights.n, k = weights.k
    keep = _prepare_epilogue(&p, m, n, bias, scale, output, out_scale, out_zero_point, relu,
                             clip, out)
    if m == 0 or n == 0:
        return keep[0]
    p.isa = ISA_NAMES[isa(isa_name)]
    p.m, p.n, p.k4 = m, n, (k + 3) // 4
    p.a_zero_point = a_zero_point
    cdef cnp.ndarray packed = weights.packed, col_sums = weights.col_sums
    p.bpack = <const int8_t *>cnp.PyArray_DATA(packed)
    p.col_sums = <const int32_t *>cnp.PyArray_DATA(col_sums)
    cdef int mr = qg_mr(p.isa)
    cdef int64_t slabs = (m + mr - 1) // mr
    threads = max(1, min(threads, m * n * k // _MIN_MACS_PER_THREAD))
    p.nc = _tile_columns(m, n, threads)
    cdef const uint8_t *a_ptr = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>a_arr)
    cdef int64_t rs = _elements(a_arr.strides[0], 1), cs = _elements(a_arr.strides[1], 1)
    p.a, p.a_rs, p.apack = a_ptr, rs, NULL
    cdef uint8_t *ap
    cdef int64_t s, t, tiles = qg_tile_count(&p)
    cdef int failed = 0
    if cs != 1 or k % 4:
        apack = np.empty(slabs * p.k4 * mr * 4, np.uint8)
        ap = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>apack)
        p.apack = ap
        for s in prange(slabs, nogil=True, num_threads=threads, schedule="static"):
            qg_pack_a(p.isa, a_ptr, rs, cs, m, k, ap, s)
    for t in prange(tiles, nogil=True, num_threads=threads, schedule="dynamic"):
        if qg_tile(&p, t) != 0:
            failed = 1
    if failed:
        raise MemoryError("qgemm: could not allocate a tile's scratch buffer")
    return keep[0]


def _tile_columns(int64_t m, int64_t n, int threads):
    """Columns per tile: whole granules, capped by L2, and enough tiles for every thread."""
    granules = (n + QG_NC_GRANULE - 1) // QG_NC_GRANULE
    m_blocks = (m + QG_MC - 1) // QG_MC
    # Aim for 4 tiles per thread so that dynamic scheduling evens out the ragged last ones.
    n_splits = max(1, -(-4 * threads // m_blocks)) if threads > 1 else 1
    per_tile = max(1, -(-granules // n_splits))
    return min(per_tile * QG_NC_GRANULE, _NC_MAX)


def requantize_accumulators(acc, *, bias=None, scale=None, output="uint8", out_scale=None,
                            int out_zero_point=0, bint relu=False, clip=None, out=None):
    """Apply :func:`qgemm`'s epilogue to int32 sums already corrected for the zero points.

    ``acc[M, N]`` (any strides) with channels along N; the depthwise convolution uses it so that
    every convolution path rounds identically.
    """
    cdef qg_args p
    acc_arr = np.asarray(acc)
    if acc_arr.ndim != 2 or acc_arr.dtype != np.int32:
        raise ValueError(f"acc must be a 2-D int32 array, got {acc_arr.dtype} {acc_arr.shape}")
    cdef int64_t m = acc_arr.shape[0], n = acc_arr.shape[1]
    keep = _prepare_epilogue(&p, m, n, bias, scale, output, out_scale, out_zero_point, relu,
                             clip, out)
    zeros = np.zeros(n, np.int32)
    p.col_sums = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>zeros)
    p.a_zero_point = 0
    cdef int64_t rs = _elements(acc_arr.strides[0], 4), cs = _elements(acc_arr.strides[1], 4)
    cdef const int32_t *src = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>acc_arr)
    with nogil:
        qg_epilogue(&p, src, rs, cs, 0, m, 0, n)
    return keep[0]
