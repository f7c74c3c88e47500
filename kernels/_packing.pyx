# cython: boundscheck=False, wraparound=False, cdivision=True
"""Weight packing for the int8 GEMM micro-kernels.

An AVX-512 VNNI ``vpdpbusd`` multiplies 4 consecutive uint8 activations by 4 consecutive int8
weights and accumulates into one int32 lane; a zmm register holds 16 lanes. The micro-kernel
therefore wants B laid out as panels of 16 output columns, and within a panel, for each group of
4 reduction steps, the 4 weights of column 0, then the 4 of column 1, ... (64 bytes = one zmm).
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t

cnp.import_array()

# 4 int8 products feed one int32 lane of vpdpbusd.
cdef enum:
    K_GROUP = 4
# 16 int32 lanes in a 512-bit register: one panel of output columns per zmm accumulator.
cdef enum:
    N_PANEL = 16
VNNI_K_GROUP = K_GROUP
VNNI_N_PANEL = N_PANEL


# A zmm load that straddles two 64-byte cache lines costs two loads: the panels start on a line.
cdef enum:
    CACHE_LINE = 64


def _zeros_cache_aligned(shape):
    """int8 zeros of ``shape`` whose first byte starts a cache line."""
    size = int(np.prod(shape))
    raw = np.zeros(size + CACHE_LINE, dtype=np.int8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + size].reshape(shape)


def pack_weights_vnni(const int8_t[:, :] w):
    """Pack int8 weights ``w[K, N]`` for the VNNI micro-kernel.

    Returns ``(packed, col_sums)``: ``packed`` has shape
    ``(ceil(N/16), ceil(K/4), 16, 4)`` (zero-padded in K and N) and ``col_sums[N]`` holds the int32
    sum of each column, needed to correct for the activation zero point
    (``sum_k (a_k - za) w_kn = sum_k a_k w_kn - za * col_sums[n]``). ``packed`` starts on a
    64-byte boundary.
    """
    cdef Py_ssize_t k_dim = w.shape[0], n_dim = w.shape[1]
    cdef Py_ssize_t n_panels = (n_dim + N_PANEL - 1) // N_PANEL
    cdef Py_ssize_t k_groups = (k_dim + K_GROUP - 1) // K_GROUP
    packed_arr = _zeros_cache_aligned((n_panels, k_groups, N_PANEL, K_GROUP))
    sums_arr = np.zeros(n_dim, dtype=np.int32)
    cdef int8_t[:, :, :, ::1] packed = packed_arr
    cdef int32_t[::1] sums = sums_arr
    cdef Py_ssize_t k, n, p, c
    with nogil:
        for k in range(k_dim):
            for n in range(n_dim):
                p = n // N_PANEL
                c = n - p * N_PANEL
                packed[p, k // K_GROUP, c, k % K_GROUP] = w[k, n]
                sums[n] += w[k, n]
    return packed_arr, sums_arr
