# cython: boundscheck=False, wraparound=False, cdivision=True
"""Products of two uint8 activations, ``(a - za) @ (b - zb)`` over a batch, requantized to uint8
or scaled to float32 (``qmatmul.c``): attention's Q·Kᵀ and P·V in a quantized transformer.

A call validates what the C code relies on and nothing more: it runs once per attention head
group per inference, where Python-side overhead is a good part of the cost.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t

cnp.import_array()

cdef extern from "qmatmul.h" nogil:
    ctypedef struct qmm_epilogue:
        float mult, zero_point, low, high, scale
    int qmm_u8u8(const uint8_t *a, int64_t a_batch, int64_t a_row, int32_t za,
                 const uint8_t *b, int64_t b_batch, int64_t b_row, int64_t b_col, int32_t zb,
                 int64_t batch, int64_t m, int64_t k, int64_t n, const qmm_epilogue *e, uint8_t *q, float *f)
    int qmm_supported()


def supported():
    """Whether this CPU runs :func:`activation_product` (AVX-512 with VNNI)."""
    return bool(qmm_supported())


def activation_product(cnp.ndarray a, int za, cnp.ndarray b, int zb, cnp.ndarray out,
                       float mult=1, float zero_point=0, float low=0, float high=255, float scale=1):
    """``out[s] = epilogue((a[s] - za) @ (b[s] - zb))`` for uint8 ``a`` [S, M, K] (unit stride
    along K) and ``b`` [S, K, N] (any strides). ``out`` [S, M, N] C-contiguous: uint8 gets
    ``clamp(rint(float32(acc) * mult) + zero_point, low, high)``, float32 ``float32(acc) * scale``."""
    if a.ndim != 3 or b.ndim != 3 or a.dtype != np.uint8 or b.dtype != np.uint8 or a.strides[2] != 1 \
            or b.shape[0] != a.shape[0] or b.shape[1] != a.shape[2]:
        raise ValueError(f"activation_product: uint8 [S, M, K] (unit stride along K) and [S, K, N], "
                         f"got {a.dtype} {(<object>a).shape} and {b.dtype} {(<object>b).shape}")
    cdef int64_t batch = a.shape[0], m = a.shape[1], k = a.shape[2], n = b.shape[2]
    if not out.flags.c_contiguous or out.size != batch * m * n or out.dtype not in (np.uint8, np.float32):
        raise ValueError(f"activation_product: out must be a C-contiguous uint8 or float32 array of "
                         f"{batch * m * n} values, got {out.dtype} {(<object>out).shape}")
    cdef qmm_epilogue e
    e.mult, e.zero_point, e.low, e.high, e.scale = mult, zero_point, low, high, scale
    cdef uint8_t *q = NULL
    cdef float *f = NULL
    if out.dtype == np.uint8:
        q = <uint8_t *>cnp.PyArray_DATA(out)
    else:
        f = <float *>cnp.PyArray_DATA(out)
    cdef const uint8_t *pa = <const uint8_t *>cnp.PyArray_DATA(a)
    cdef const uint8_t *pb = <const uint8_t *>cnp.PyArray_DATA(b)
    cdef int64_t sa0 = a.strides[0], sa1 = a.strides[1], sb0 = b.strides[0], sb1 = b.strides[1], sb2 = b.strides[2]
    cdef int failed
    with nogil:
        failed = qmm_u8u8(pa, sa0, sa1, za, pb, sb0, sb1, sb2, zb, batch, m, k, n, &e, q, f)
    if failed == -2:
        raise RuntimeError("activation_product needs AVX-512 VNNI (see supported())")
    if failed:
        raise MemoryError("activation_product: no memory for the widened operands")
    return out
