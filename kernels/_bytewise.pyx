# cython: boundscheck=False, wraparound=False, cdivision=True
"""Elementwise kernels on uint8 tensors in C (``bytewise.c``): onnxruntime's QLinearAdd on rows,
for the runtime's lowered ``DQ → Add → Q`` groups, and 256-entry table lookups (``DQ → Gelu /
Sigmoid / HardSwish → Q`` composed into one table). Transformers run dozens of these on a few
thousand values each, where a Numba call's dispatch and a Python wrapper cost as much as the
arithmetic: these calls check the arrays and run."""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t

cnp.import_array()

cdef extern from "bytewise.h" nogil:
    void qadd_rows(const uint8_t *a, int64_t a_step, const uint8_t *b, int64_t b_step, uint8_t *out,
                   int64_t rows, int64_t n, float ratio_a, float ratio_b, float fixed)
    void bytes_lookup(const uint8_t *x, const uint8_t *table, uint8_t *out, int64_t n)


cdef inline cnp.ndarray _uint8(cnp.ndarray x, int64_t size, str name):
    if cnp.PyArray_TYPE(x) != cnp.NPY_UINT8 or cnp.PyArray_SIZE(x) != size:
        raise ValueError(f"qlinear_add: {name} must be uint8 with {size} values, got {x.dtype} {(<object>x).shape}")
    return x if cnp.PyArray_IS_C_CONTIGUOUS(x) else np.ascontiguousarray(x)


def qlinear_add(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, int64_t rows, int64_t n,
                bint a_repeats, bint b_repeats, float ratio_a, float ratio_b, float fixed):
    """``out`` (C-contiguous uint8, ``rows * n`` values) ``= clamp(rint(fma(a, ratio_a,
    fma(b, ratio_b, fixed))), 0, 255)``; ``a`` / ``b`` hold ``rows * n`` values, or ``n`` when
    ``a_repeats`` / ``b_repeats`` (one row under every row of the output). Returns ``out``."""
    a = _uint8(a, n if a_repeats else rows * n, "a")
    b = _uint8(b, n if b_repeats else rows * n, "b")
    if cnp.PyArray_TYPE(out) != cnp.NPY_UINT8 or cnp.PyArray_SIZE(out) != rows * n \
            or not cnp.PyArray_IS_C_CONTIGUOUS(out):
        raise ValueError(f"qlinear_add: out must be C-contiguous uint8 with {rows * n} values")
    cdef const uint8_t *pa = <const uint8_t *>cnp.PyArray_DATA(a)
    cdef const uint8_t *pb = <const uint8_t *>cnp.PyArray_DATA(b)
    cdef uint8_t *po = <uint8_t *>cnp.PyArray_DATA(out)
    with nogil:
        qadd_rows(pa, 0 if a_repeats else n, pb, 0 if b_repeats else n, po, rows, n, ratio_a, ratio_b, fixed)
    return out


def lookup(cnp.ndarray x, cnp.ndarray table):
    """``table[x]`` for uint8 ``x`` (any shape) and a uint8 ``table`` of 256 entries: a new array
    of ``x``'s shape."""
    if cnp.PyArray_TYPE(x) != cnp.NPY_UINT8:
        raise ValueError(f"lookup: x must be uint8, got {x.dtype}")
    if cnp.PyArray_TYPE(table) != cnp.NPY_UINT8 or cnp.PyArray_SIZE(table) != 256 \
            or not cnp.PyArray_IS_C_CONTIGUOUS(table):
        raise ValueError("lookup: table must be a C-contiguous uint8 array of 256 entries")
    if not cnp.PyArray_IS_C_CONTIGUOUS(x):
        x = np.ascontiguousarray(x)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.NPY_UINT8, 0)
    cdef const uint8_t *px = <const uint8_t *>cnp.PyArray_DATA(x)
    cdef const uint8_t *pt = <const uint8_t *>cnp.PyArray_DATA(table)
    cdef uint8_t *po = <uint8_t *>cnp.PyArray_DATA(out)
    cdef int64_t n = cnp.PyArray_SIZE(x)
    with nogil:
        bytes_lookup(px, pt, po, n)
    return out
