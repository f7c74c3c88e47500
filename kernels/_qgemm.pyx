# cython: boundscheck=False, wraparound=False, cdivision=True
"""uint8 x int8 -> int32 GEMM with a fused epilogue, its tiles run on qgemm.c's worker pool.

The micro-kernels and the loops around them are C (``qgemm.c``); this module validates arguments,
packs A when the kernels cannot read it in place, cuts the product into tiles and hands them to
``qg_parallel_for`` with the GIL released.

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
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

from graphopt.kernels._packing import pack_weights_vnni

cnp.import_array()

include "_epilogue.pxi"

from cpython.pycapsule cimport PyCapsule_New

# qg_parallel_for for the other kernel modules (kernels/_workers.pxi): one worker pool a process
WORKER_POOL = PyCapsule_New(<void *>qg_parallel_for, b"graphopt.kernels.parallel_for", NULL)

ISA_NAMES = {"generic": QG_ISA_GENERIC, "avx2": QG_ISA_AVX2, "vnni": QG_ISA_VNNI, "amx": QG_ISA_AMX}
# Fastest first; run-time selection takes the first one the CPU supports.
_PREFERENCE = ("amx", "vnni", "avx2", "generic")
# Waking a sleeping worker thread costs ~10-100 us on a shared machine: a product smaller than
# this many multiply-adds per thread (~25 us of one core's VNNI work) is not worth splitting.
cdef enum:
    MIN_MACS_PER_THREAD = 4_000_000


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


def qgemm(a, int a_zero_point, weights, *, bias=None, scale=None, output="int32", out_scale=None,
          int out_zero_point=0, bint relu=False, clip=None, out=None, int threads=1, isa_name=None):
    """``a_uint8[M, K] x weights[K, N]`` with the epilogue of the module docstring.

    ``threads`` is an upper bound: products too small to repay waking a thread use fewer.

    ``a`` may be any strided 2-D uint8 view: row-major with K a multiple of 4 is read in place,
    anything else is packed first. ``out`` may be a strided [M, N] view to write into (a
    convolution writes its NCHW output from pixel-major rows this way). A product repeated with
    the same weights and epilogue costs less per call as a :class:`PreparedGemm`.
    """
    cdef qg_args p
    cdef cnp.ndarray a_arr = np.asarray(a)
    _check_a(a_arr, weights.k)
    _check_common(a_zero_point, threads)
    keep = _prepare_params(&p, weights.n, bias, scale, output, out_scale, out_zero_point, relu,
                           clip)
    out = _prepare_out(&p, a_arr.shape[0], weights.n, out)
    _set_weights(&p, weights, a_zero_point, ISA_NAMES[isa(isa_name)])
    _run(&p, a_arr, threads)
    return out


cdef class PreparedGemm:
    """``qgemm`` with its weights, zero point, epilogue and threads fixed once.

    The arguments are :func:`qgemm`'s and are validated here; a call then only checks ``a``
    (and ``out``), which makes small products (M <= 8, a few microseconds of arithmetic) cheaper
    per call. The ISA path is resolved at construction.
    """
    cdef qg_args p
    cdef object keep, weights
    cdef readonly int64_t k, n
    cdef readonly int threads

    def __init__(self, weights, int a_zero_point, *, bias=None, scale=None, output="int32",
                 out_scale=None, int out_zero_point=0, bint relu=False, clip=None, int threads=1,
                 isa_name=None):
        _check_common(a_zero_point, threads)
        self.keep = _prepare_params(&self.p, weights.n, bias, scale, output, out_scale,
                                    out_zero_point, relu, clip)
        _set_weights(&self.p, weights, a_zero_point, ISA_NAMES[isa(isa_name)])
        self.weights, self.k, self.n, self.threads = weights, weights.k, weights.n, threads

    def __call__(self, a, out=None):
        """``a_uint8[M, K]`` through the prepared product; returns ``out`` (new if None)."""
        cdef qg_args p = self.p
        cdef cnp.ndarray a_arr = a if cnp.PyArray_CheckExact(a) else np.asarray(a)
        _check_a(a_arr, self.k)
        out = _prepare_out(&p, a_arr.shape[0], self.n, out)
        _run(&p, a_arr, self.threads)
        return out


cdef int _check_a(cnp.ndarray a_arr, int64_t k) except -1:
    if cnp.PyArray_NDIM(a_arr) != 2 or cnp.PyArray_TYPE(a_arr) != cnp.NPY_UINT8:
        raise ValueError(f"a must be a 2-D uint8 array [M, K], got {a_arr.dtype} {(<object>a_arr).shape}")
    if cnp.PyArray_DIM(a_arr, 1) != k:
        raise ValueError(f"a has K={a_arr.shape[1]} but the weights have K={k}")
    return 0


cdef int _check_common(int a_zero_point, int threads) except -1:
    if not 0 <= a_zero_point <= 255:
        raise ValueError(f"a_zero_point must be in [0, 255], got {a_zero_point}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return 0


cdef int _set_weights(qg_args *p, object weights, int a_zero_point, int isa_code) except -1:
    cdef cnp.ndarray packed = weights.packed, col_sums = weights.col_sums
    p.isa = isa_code
    p.n, p.k4 = weights.n, (weights.k + 3) // 4
    p.a_zero_point = a_zero_point
    p.bpack = <const int8_t *>cnp.PyArray_DATA(packed)
    p.col_sums = <const int32_t *>cnp.PyArray_DATA(col_sums)
    return 0


cdef int _task_tile(void *ctx, int64_t i) noexcept nogil:
    return qg_tile(<const qg_args *>ctx, i)


cdef int _run(qg_args *p, cnp.ndarray a_arr, int threads) except -1:
    """The product of ``a_arr`` (checked) into ``p.out``: pack A if needed, run the tiles."""
    cdef int64_t m = cnp.PyArray_DIM(a_arr, 0), n = p.n, k = cnp.PyArray_DIM(a_arr, 1)
    if m == 0 or n == 0:
        return 0
    p.m = m
    qg_shape(p.isa, m, &p.mr, &p.npanels)
    cdef int mr = p.mr
    cdef int64_t slabs = (m + mr - 1) // mr
    threads = max(1, min(threads, m * n * k // MIN_MACS_PER_THREAD))
    p.nc = _tile_columns(m, n, threads)
    cdef const uint8_t *a_ptr = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>a_arr)
    cdef int64_t rs = _elements(cnp.PyArray_STRIDE(a_arr, 0), 1)
    cdef int64_t cs = _elements(cnp.PyArray_STRIDE(a_arr, 1), 1)
    p.a, p.a_rs, p.apack = a_ptr, rs, NULL
    cdef uint8_t *ap
    cdef int64_t s, tiles = qg_tile_count(p)
    cdef int failed = 0
    if cs != 1 or k % 4:
        apack = np.empty(slabs * p.k4 * mr * 4, np.uint8)
        ap = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>apack)
        p.apack = ap
        with nogil:
            for s in range(slabs):
                qg_pack_a(mr, a_ptr, rs, cs, m, k, ap, s)
    # the worker pool of qgemm.c: its threads take tiles as they come, so a worker that the
    # scheduler starts late (a busy shared machine) delays nothing, where OpenMP's join waited
    # for it (a 32 x 256 x 1024 product took 60 us on one thread, 250-700 us on two); with one
    # thread it is a plain loop
    with nogil:
        failed = qg_parallel_for(threads, tiles, _task_tile, p)
    if failed:
        raise MemoryError("qgemm: could not allocate a tile's scratch buffer")
    return 0


def requantize_accumulators(acc, *, bias=None, scale=None, output="uint8", out_scale=None,
                            int out_zero_point=0, bint relu=False, clip=None, out=None):
    """Apply :func:`qgemm`'s epilogue to int32 sums already corrected for the zero points.

    ``acc[M, N]`` (any strides) with channels along N.
    """
    cdef qg_args p
    acc_arr = np.asarray(acc)
    if acc_arr.ndim != 2 or acc_arr.dtype != np.int32:
        raise ValueError(f"acc must be a 2-D int32 array, got {acc_arr.dtype} {acc_arr.shape}")
    cdef int64_t m = acc_arr.shape[0], n = acc_arr.shape[1]
    keep = _prepare_params(&p, n, bias, scale, output, out_scale, out_zero_point, relu, clip)
    out = _prepare_out(&p, m, n, out)
    zeros = np.zeros(n, np.int32)
    p.col_sums = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>zeros)
    p.a_zero_point = 0
    cdef int64_t rs = _elements(acc_arr.strides[0], 4), cs = _elements(acc_arr.strides[1], 4)
    cdef const int32_t *src = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>acc_arr)
    with nogil:
        qg_epilogue(&p, src, rs, cs, 0, m, 0, n)
    return out
