# Shared by _qgemm.pyx and _conv.pyx (textual include): the C interface of qgemm.h, and the
# validation that turns epilogue arguments into qg_args fields once, in one place.

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
        QG_T_MR
        QG_T_NP
        QG_T_FUSED_ROW
    ctypedef struct qg_args:
        int isa
        int mr, npanels
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
    ctypedef struct qg_conv:
        const uint8_t *x
        int64_t row_len, out_width
        int64_t in_row_stride, in_px_stride
        int taps
        const int64_t *tap_off
    ctypedef struct qg_conv_t:
        const uint8_t *x
        int64_t plane_stride
        const int8_t *w
        int64_t row_len, out_width
        int taps
        const int64_t *tap_off
    ctypedef int (*qg_task_fn)(void *ctx, int64_t i) noexcept nogil
    int qg_parallel_for(int threads, int64_t n, qg_task_fn fn, void *ctx)
    int qg_cpu_supports(int isa)
    void qg_shape(int isa, int64_t m, int *mr, int *npanels)
    void qg_pack_a(int mr, const uint8_t *a, int64_t rs, int64_t cs, int64_t m, int64_t k,
                   uint8_t *apack, int64_t slab)
    int64_t qg_tile_count(const qg_args *p)
    int qg_tile(const qg_args *p, int64_t tile)
    int64_t qg_tile_count_mc(const qg_args *p, int64_t mc)
    int qg_tile_mc(const qg_args *p, int64_t mc, int64_t tile)
    int qg_tile_mc_kc(const qg_args *p, int64_t mc, int64_t kc, int64_t tile)
    int qg_conv_tile(const qg_args *p, const qg_conv *cv, int64_t tile)
    int qg_conv_tile_mc(const qg_args *p, const qg_conv *cv, int64_t mc, int64_t tile)
    int qg_conv_t_tile(const qg_args *p, const qg_conv_t *cv, int64_t tile)
    void qg_epilogue(const qg_args *p, const int32_t *acc, int64_t rs, int64_t cs,
                     int64_t m0, int64_t mc, int64_t n0, int64_t nc)

_OUTPUTS = {"int32": (QG_OUT_INT32, np.int32), "uint8": (QG_OUT_UINT8, np.uint8),
            "float32": (QG_OUT_FLOAT32, np.float32)}
# Most columns per tile: the tile's int32 scratch (MC x 512 x 4 = 288 KiB) stays in the 1 MiB L2
# next to the A block; the B block (KC x 512 = 512 KiB) streams through it panel by panel.
cdef enum:
    NC_MAX = 512


cdef int64_t _elements(cnp.npy_intp stride, int itemsize) except -1:
    if stride < 0 or stride % itemsize:
        raise ValueError("arrays with negative or unaligned strides are not supported")
    return stride // itemsize


cdef object _prepare_params(qg_args *p, int64_t n, object bias, object scale, str output,
                            object out_scale, int out_zero_point, bint relu, object clip):
    """Fill the epilogue's parameter fields of ``p``; returns the arrays they point into."""
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(_OUTPUTS)}, got {output!r}")
    kind = _OUTPUTS[output][0]
    p.out_kind = kind
    p.relu = relu
    p.out_zero_point = 0
    bias = np.zeros(n, np.int32) if bias is None else np.ascontiguousarray(bias, np.int32)
    if bias.shape != (n,):
        raise ValueError(f"bias must be int32 [{n}], got {bias.shape}")
    p.bias = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>bias)
    keep = [bias]
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


cdef object _prepare_out(qg_args *p, int64_t m, int64_t n, object out):
    """Point ``p`` at ``out`` (a new array when None), an [m, n] view of p.out_kind's dtype.

    Through numpy's C API, not Python attributes: at M <= 8 a product takes a few
    microseconds, and each attribute look-up here cost a tenth of one."""
    cdef int typenum = (cnp.NPY_INT32, cnp.NPY_UINT8, cnp.NPY_FLOAT32)[p.out_kind]
    cdef cnp.npy_intp dims[2]
    cdef cnp.ndarray arr
    if out is None:
        dims[0], dims[1] = m, n
        out = cnp.PyArray_EMPTY(2, dims, typenum, 0)
    elif (not isinstance(out, cnp.ndarray) or cnp.PyArray_NDIM(out) != 2
          or cnp.PyArray_DIM(out, 0) != m or cnp.PyArray_DIM(out, 1) != n
          or cnp.PyArray_TYPE(out) != typenum or not cnp.PyArray_ISWRITEABLE(out)):
        raise ValueError(f"out must be a writeable {np.dtype(cnp.PyArray_TypeObjectFromType(typenum))} "
                         f"{(m, n)} array, got {getattr(out, 'dtype', type(out))} "
                         f"{getattr(out, 'shape', None)}")
    arr = <cnp.ndarray>out
    p.out = cnp.PyArray_DATA(arr)
    p.out_rs = _elements(cnp.PyArray_STRIDE(arr, 0), cnp.PyArray_ITEMSIZE(arr))
    p.out_cs = _elements(cnp.PyArray_STRIDE(arr, 1), cnp.PyArray_ITEMSIZE(arr))
    return out


def _quantized_bound(bound, out_scale, int zero_point):
    if math.isinf(bound):
        return 0.0 if bound < 0 else 255.0
    q = float(np.rint(np.float32(bound) / np.float32(out_scale))) + zero_point
    return min(max(q, 0.0), 255.0)


cdef int64_t _tile_columns(int64_t m, int64_t n, int threads) noexcept:
    """Columns per tile: whole granules, capped by L2, and enough tiles for every thread."""
    cdef int64_t granules = (n + QG_NC_GRANULE - 1) // QG_NC_GRANULE
    cdef int64_t m_blocks = (m + QG_MC - 1) // QG_MC
    # Aim for 4 tiles per thread so that dynamic scheduling evens out the ragged last ones.
    cdef int64_t n_splits = max(1, (4 * threads + m_blocks - 1) // m_blocks) if threads > 1 else 1
    cdef int64_t per_tile = max(1, (granules + n_splits - 1) // n_splits)
    return min(per_tile * QG_NC_GRANULE, NC_MAX)
