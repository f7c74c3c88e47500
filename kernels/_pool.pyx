# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""2-D max pooling of NCHW float32, uint8 and int8 planes in C (``pool.c``): AVX-512 (for bytes
also BW and VBMI) with a portable fallback, planes split over ``threads`` cores with the GIL
released (the worker pool of ``_workers.pxi``) when the input is large.

The call path is short on purpose: small models (digits-cnn) pool an 8x8 plane in well under a
microsecond, so the arguments are read as plain ints, the output comes from PyArray_EMPTY, and
no memoryview is taken.
"""

import numpy as np

from graphopt.kernels._choice import avx512_or_portable
cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()

cdef extern from "pool.h" nogil:
    enum:
        MXP_F32
        MXP_U8
        MXP_I8
        MXP_ISA_PORTABLE
        MXP_ISA_AVX512
    ctypedef struct mxp_shape:
        int64_t height, width, out_height, out_width
        int kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w
        int dtype
    int mxp_avx512_supported()
    int mxp_planes(const mxp_shape *s, const void *x, void *y, int64_t p0, int64_t p1, int isa)

include "_workers.pxi"

ISA_NAMES = {"portable": MXP_ISA_PORTABLE, "avx512": MXP_ISA_AVX512}


cdef struct _Chunks:  # the planes in `chunks` contiguous runs, one task each
    const mxp_shape *s
    const void *x
    void *y
    int64_t planes, chunks
    int isa


cdef int _task_chunk(void *ctx, int64_t r) noexcept nogil:
    cdef _Chunks *j = <_Chunks *>ctx
    return mxp_planes(j.s, j.x, j.y, r * j.planes // j.chunks, (r + 1) * j.planes // j.chunks, j.isa)

# Below this many input bytes a call runs on one thread: pooling streams its input at ~50 GB/s
# (resnet18's uint8 stem pool, 800 KB, in ~16 us), and waking a second thread costs ~10 us.
cdef int64_t PARALLEL_MIN_BYTES = 1 << 20


def isa(name=None):
    """The kernel path to run: ``name`` ("auto", "avx512", "portable"), else
    $GRAPHOPT_POOL_ISA, else the best this CPU supports."""
    return avx512_or_portable(name, "GRAPHOPT_POOL_ISA", bool(mxp_avx512_supported()))


cdef int _default_isa = ISA_NAMES[isa()]


def max_pool2d(x, kernel, stride, begin, dilation, out_hw, int threads=1, isa_name=None):
    """ONNX MaxPool of ``x[N, C, H, W]`` (float32, uint8 or int8) to ``[N, C, OH, OW]``,
    ``out_hw`` = (OH, OW) as resolved by the caller (ceil_mode included). ``kernel``, ``stride``,
    ``dilation``: (h, w); ``begin``: the (top, left) padding. Positions outside ``x`` never win;
    a float32 window holding a NaN gives NaN. ``isa_name``: see :func:`isa`."""
    if not cnp.PyArray_Check(x):
        raise ValueError(f"x must be a numpy array, got {type(x)}")
    cdef cnp.ndarray xa = <cnp.ndarray>x
    if cnp.PyArray_NDIM(xa) != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {x.shape}")
    cdef int type_num = cnp.PyArray_TYPE(xa)
    cdef mxp_shape s
    if type_num == cnp.NPY_FLOAT32:
        s.dtype = MXP_F32
    elif type_num == cnp.NPY_UINT8:
        s.dtype = MXP_U8
    elif type_num == cnp.NPY_INT8:
        s.dtype = MXP_I8
    else:
        raise ValueError(f"x must be float32, uint8 or int8, got {x.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(xa) or cnp.PyArray_ISBYTESWAPPED(xa):
        xa = np.ascontiguousarray(xa, xa.dtype.newbyteorder("="))
    s.kh, s.kw = kernel[0], kernel[1]
    s.stride_h, s.stride_w = stride[0], stride[1]
    s.pad_top, s.pad_left = begin[0], begin[1]
    s.dilation_h, s.dilation_w = dilation[0], dilation[1]
    if (s.kh < 1 or s.kw < 1 or s.stride_h < 1 or s.stride_w < 1 or s.dilation_h < 1
            or s.dilation_w < 1 or s.pad_top < 0 or s.pad_left < 0):
        raise ValueError(f"kernel, stride and dilation must be >= 1 and begin >= 0, got kernel "
                         f"{kernel}, stride {stride}, begin {begin}, dilation {dilation}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cdef cnp.npy_intp *xdims = cnp.PyArray_DIMS(xa)
    cdef cnp.npy_intp dims[4]
    dims[0], dims[1], dims[2], dims[3] = xdims[0], xdims[1], out_hw[0], out_hw[1]
    if dims[2] < 0 or dims[3] < 0:
        raise ValueError(f"out_hw must be >= 0, got {out_hw}")
    cdef cnp.ndarray ya = cnp.PyArray_EMPTY(4, dims, type_num, 0)
    cdef int64_t planes = dims[0] * dims[1]
    if planes == 0 or dims[2] == 0 or dims[3] == 0:
        return ya
    s.height, s.width = xdims[2], xdims[3]
    s.out_height, s.out_width = dims[2], dims[3]
    cdef int isa_code = _default_isa if isa_name is None else ISA_NAMES[isa(isa_name)]
    cdef const void *xp = cnp.PyArray_DATA(xa)
    cdef void *yp = cnp.PyArray_DATA(ya)
    cdef int failed
    cdef int64_t chunks = threads
    if planes * s.height * s.width * cnp.PyArray_ITEMSIZE(xa) < PARALLEL_MIN_BYTES:
        chunks = 1
    elif chunks > planes:
        chunks = planes
    cdef _Chunks job
    job.s, job.x, job.y, job.planes, job.chunks, job.isa = &s, xp, yp, planes, chunks, isa_code
    with nogil:  # one chunk: a plain call
        failed = parallel_for(threads, chunks, _task_chunk, &job)
    if failed:
        raise MemoryError("max pooling: could not allocate a padded row")
    return ya
