# cython: boundscheck=False, wraparound=False, cdivision=True
"""float32 GEMM and implicit-GEMM 2-D convolution with a fused epilogue, over the worker pool.

The micro-kernels, packing and tile loops are C (``sgemm.c``, layout in ``sgemm.h``); this module
validates arguments, chooses the blocking and the number of threads, and hands the tiles to the
worker pool (``_workers.pxi``) with the GIL released.

Epilogue: ``y = sum_k a[m, k] b[k, n]`` (float32 FMAs, blocked summation order) ``+ bias`` (per
row or per column), then ``relu`` (``max(y, 0)``) or ``clip=(lo, hi)``; NaN passes through.

* :class:`PackedB`: a constant ``B[K, N]`` (Gemm / MatMul weights; ``trans=True`` takes
  ``[N, K]``) packed once; :class:`Gemm` runs ``a[M, K] x B`` with it.
* :class:`PackedConv`: constant NCHW conv weights ``[OC, C, KH, KW]``; :class:`Conv2d` runs the
  convolution of NCHW float32 images (group 1): ``Y[n] = W[OC, C*KH*KW] . cols(x[n])`` where the
  column panels are gathered from ``x`` per tile (no im2col matrix).
* :func:`sgemm`: one-off products, 2-D or batched 3-D, of arrays at any strides.
"""
import os

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t
from libc.math cimport INFINITY

cnp.import_array()

include "_workers.pxi"


cdef extern from "sgemm.h" nogil:
    enum:
        SG_ISA_GENERIC
        SG_ISA_AVX512
        SG_B_DIRECT
        SG_B_PACKED
        SG_B_STRIDED
        SG_B_IM2COL
        SG_B_SHIFTED
        SG_BIAS_NONE
        SG_BIAS_ROW
        SG_BIAS_COL
        SG_NR
    ctypedef struct sg_args:
        int isa
        int64_t m, n, k, batch
        int mr
        int64_t kc, mc, nc
        const float *a
        int64_t a_bs, a_rs, a_ks
        const float *apack
        int b_mode
        const float *b
        int64_t b_bs, b_ks, b_ns
        const float *bpack
        int64_t ch, ih, iw, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow
        int64_t wp
        float *c
        int64_t c_bs, c_rs
        int bias_mode
        const float *bias
        int clamp
        float lo, hi
    int sg_cpu_supports(int isa)
    int sg_choose_mr(int64_t m)
    int64_t sg_kc(int64_t k)
    int64_t sg_packed_size(int64_t k, int64_t n)
    void sg_pack_b(const float *b, int64_t ks, int64_t ns, int64_t k, int64_t n, float *dst)
    int64_t sg_packed_a_size(int64_t m, int64_t k, int mr)
    void sg_pack_a(const float *a, int64_t rs, int64_t ks, int64_t m, int64_t k, int mr, int64_t kc,
                   float *dst)
    int64_t sg_tile_count(const sg_args *p)
    int sg_tile(const sg_args *p, int64_t tile)


ISA_NAMES = {"generic": SG_ISA_GENERIC, "avx512": SG_ISA_AVX512}
_PREFERENCE = ("avx512", "generic")
# GRAPHOPT_ISA names the int8 paths (DESIGN.md); those without AVX-512 mean the portable fp32 path.
_FROM_INT8_ISA = {"amx": "avx512", "vnni": "avx512", "avx2": "generic", "generic": "generic"}

cdef enum:
    # Waking a sleeping worker thread costs ~10-100 us on a shared machine: below this many
    # multiply-adds per thread (~15 us of one core's AVX-512 work) a product stays on one thread.
    MIN_MACS_PER_THREAD = 1_500_000
    # Columns per tile, in 32-column panels: 8 x 32 = 256. The packed B block of a tile
    # (kc <= 512 rows x 256 columns, <= 512 KiB) then stays in the 1 MiB L2 while every slab of A
    # passes over it.
    NC_PANELS = 8
    # The shifted convolution (stride 1): output rows per tile make about this many virtual
    # columns (a padded row each), the same 256 as an im2col tile.
    SHIFTED_COLUMNS = 256
    # Widest padded row and most taps it takes: beyond them im2col (the scratch buffers grow with
    # the row width, and K blocks must hold whole channels).
    SHIFTED_MAX_WP = 512
    SHIFTED_MAX_TAPS = 64
    SHIFTED_MIN_WIDTH = 7


def supported_isas():
    """The fp32 paths this CPU can run, fastest first."""
    return [name for name in _PREFERENCE if sg_cpu_supports(ISA_NAMES[name])]


def isa(name=None):
    """The path the kernels use: ``name``, else ``$GRAPHOPT_ISA`` (int8 names mapped), else the
    fastest supported."""
    forced = name
    if not forced and os.environ.get("GRAPHOPT_ISA"):
        forced = _FROM_INT8_ISA.get(os.environ["GRAPHOPT_ISA"])
    if not forced:
        return supported_isas()[0]
    if forced not in ISA_NAMES:
        raise ValueError(f"unknown fp32 ISA {forced!r}; choose one of {', '.join(ISA_NAMES)}")
    if not sg_cpu_supports(ISA_NAMES[forced]):
        # an int8 path the CPU runs may still lack AVX-512F (AVX2 machines): fall back
        if name:
            raise ValueError(f"fp32 ISA {forced!r} is not supported by this CPU")
        return supported_isas()[0]
    return forced


cdef int64_t _elements(Py_ssize_t stride_bytes) except? -1:
    if stride_bytes % 4:
        raise ValueError("float32 array strides must be multiples of 4 bytes")
    return stride_bytes // 4


cdef object _f32(x, str what):
    arr = x if cnp.PyArray_CheckExact(x) else np.asarray(x)
    if cnp.PyArray_TYPE(<cnp.ndarray>arr) != cnp.NPY_FLOAT32:
        raise ValueError(f"{what} must be float32, got {arr.dtype}")
    return arr


cdef class PackedB:
    """A constant ``B[K, N]`` (``trans=True``: given as ``[N, K]``) packed once into 32-column
    panels per K block; the unpacked array is not kept."""
    cdef readonly object packed
    cdef readonly int64_t k, n

    def __init__(self, b, bint trans=False):
        b = np.asarray(b, dtype=np.float32)
        if b.ndim != 2:
            raise ValueError(f"B must be 2-D, got shape {b.shape}")
        view = b.T if trans else b
        if any(s < 0 or s % 4 for s in view.strides):
            view = np.ascontiguousarray(view)
        self.k, self.n = view.shape
        packed = np.empty(sg_packed_size(self.k, self.n), np.float32)
        cdef cnp.ndarray v = view
        with nogil:
            sg_pack_b(<const float *>cnp.PyArray_DATA(v), cnp.PyArray_STRIDE(v, 0) // 4,
                      cnp.PyArray_STRIDE(v, 1) // 4, self.k, self.n,
                      <float *>cnp.PyArray_DATA(<cnp.ndarray>packed))
        self.packed = packed


cdef int64_t _conv_kc(int64_t k, int64_t taps):
    """A convolution's K block: whole channels (the shifted convolution copies channels)."""
    return max(1, sg_kc(k) // taps) * taps


cdef class PackedConv:
    """Constant conv weights ``[OC, C, KH, KW]``: the GEMM A ``[OC, C*KH*KW]`` packed once into
    slabs of the micro-kernel's rows per K block (sg_pack_a); the unpacked array is not kept."""
    cdef readonly object packed
    cdef readonly int64_t oc, c, kh, kw, kc
    cdef readonly int mr

    def __init__(self, w):
        w = np.asarray(w)
        if w.ndim != 4:
            raise ValueError(f"conv weights must be [OC, C, KH, KW], got shape {w.shape}")
        self.oc, self.c, self.kh, self.kw = w.shape
        cdef cnp.ndarray a = np.ascontiguousarray(w, dtype=np.float32).reshape(self.oc, -1)
        cdef int64_t k = self.c * self.kh * self.kw
        self.mr = sg_choose_mr(self.oc)
        self.kc = _conv_kc(k, self.kh * self.kw)
        packed = np.empty(sg_packed_a_size(self.oc, k, self.mr), np.float32)
        with nogil:
            sg_pack_a(<const float *>cnp.PyArray_DATA(a), k, 1, self.oc, k, self.mr, self.kc,
                      <float *>cnp.PyArray_DATA(<cnp.ndarray>packed))
        self.packed = packed


cdef int _epilogue(sg_args *p, object bias, int mode, int64_t length, bint relu, object clip,
                   list keep) except -1:
    cdef cnp.ndarray b
    p.bias_mode, p.bias = SG_BIAS_NONE, NULL
    if bias is not None:
        b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        if cnp.PyArray_DIM(b, 0) != length:
            raise ValueError(f"bias has {b.shape[0]} values, expected {length}")
        keep.append(b)
        p.bias_mode, p.bias = mode, <const float *>cnp.PyArray_DATA(b)
    p.clamp, p.lo, p.hi = 0, -INFINITY, INFINITY
    if relu:
        p.clamp, p.lo = 1, 0.0
    if clip is not None:
        lo, hi = clip
        p.clamp = 1
        if lo is not None:
            p.lo = max(<float>float(lo), p.lo)
        if hi is not None:
            p.hi = <float>float(hi)
    return 0


cdef int _run(sg_args *p, int threads) except -1:
    """Blocking, thread count and the tiles of the product described by ``p``."""
    cdef int64_t m = p.m, n = p.n, batch = p.batch
    if m == 0 or n == 0 or batch == 0:
        return 0
    cdef int64_t macs = batch * m * n * max(p.k, 1)
    threads = <int>max(1, min(threads, macs // MIN_MACS_PER_THREAD))
    if p.apack == NULL:  # a packed A comes with its own blocking
        p.mr = sg_choose_mr(m)
        p.kc = sg_kc(p.k)
    if p.b_mode == SG_B_SHIFTED:
        return _run_shifted(p, threads)
    cdef int64_t npan = (n + SG_NR - 1) // SG_NR
    cdef int64_t nc_pan = min(npan, NC_PANELS)
    cdef int64_t slabs = (m + p.mr - 1) // p.mr
    p.mc = slabs * p.mr
    cdef int64_t want, tiles, parts
    if threads > 1:
        # enough tiles for dynamic scheduling to even out (2 per thread): row chunks when there
        # are slabs enough (each tile then reads its share of A once), else narrower column
        # tiles (down to 64 columns) and then row chunks
        want = 2 * threads
        if slabs < want:
            while batch * ((npan + nc_pan - 1) // nc_pan) < want and nc_pan > 2:
                nc_pan = (nc_pan + 1) // 2
        tiles = batch * ((npan + nc_pan - 1) // nc_pan)
        if tiles < want:
            parts = min(slabs, (want + tiles - 1) // tiles)
            p.mc = ((slabs + parts - 1) // parts) * p.mr
    p.nc = nc_pan * SG_NR
    return _run_tiles(p, threads)


cdef int _run_shifted(sg_args *p, int threads) except -1:
    """Blocking of the shifted convolution: K blocks of whole channels, tiles of whole rows."""
    if p.apack == NULL:
        p.kc = _conv_kc(p.k, p.kh * p.kw)
    cdef int64_t rows = max(1, SHIFTED_COLUMNS // p.wp)
    cdef int64_t slabs = (p.m + p.mr - 1) // p.mr
    p.mc = slabs * p.mr
    cdef int64_t want, tiles, parts
    if threads > 1:
        # as in _run: row chunks (of A) first when there are slabs enough; cutting the image into
        # fewer output rows per tile re-reads all the weights per tile (512 channels at 7x7 ran
        # 7 tiles of one 9-column row each, slower than one thread)
        want = 2 * threads
        if slabs < want and p.batch * ((p.oh + rows - 1) // rows) < want:
            rows = max(1, (p.batch * p.oh) // want)
        tiles = p.batch * ((p.oh + rows - 1) // rows)
        if tiles < want:
            parts = min(slabs, (want + tiles - 1) // tiles)
            p.mc = ((slabs + parts - 1) // parts) * p.mr
    p.nc = rows
    return _run_tiles(p, threads)


cdef int _task_tile(void *ctx, int64_t i) noexcept nogil:
    return sg_tile(<sg_args *>ctx, i)


cdef int _run_tiles(sg_args *p, int threads) except -1:
    cdef int failed
    with nogil:  # one thread: a plain loop
        failed = parallel_for(threads, sg_tile_count(p), _task_tile, p)
    if failed:
        raise MemoryError("sgemm: could not allocate a tile's scratch buffer (or a tile was too wide)")
    return 0


cdef object _out(object out, tuple shape):
    if out is None:
        return np.empty(shape, np.float32)
    arr = _f32(out, "out")
    if arr.shape != shape:
        raise ValueError(f"out has shape {arr.shape}, expected {shape}")
    if arr.strides[arr.ndim - 1] != 4:
        raise ValueError("out must have unit stride along its last axis")
    return arr


cdef int _set_a(sg_args *p, cnp.ndarray a) except -1:
    """A [M, K] or [batch, M, K] at any (non-negative) strides."""
    cdef int nd = cnp.PyArray_NDIM(a)
    p.a = <const float *>cnp.PyArray_DATA(a)
    p.a_bs = _elements(cnp.PyArray_STRIDE(a, 0)) if nd == 3 else 0
    p.a_rs = _elements(cnp.PyArray_STRIDE(a, nd - 2))
    p.a_ks = _elements(cnp.PyArray_STRIDE(a, nd - 1))
    return 0


cdef class Gemm:
    """``a[M, K] x B`` with a constant, prepacked ``B``, an optional per-column bias, ReLU/clip,
    on up to ``threads`` threads. ``__call__(a, out=None)`` takes a 2-D float32 ``a`` at any
    strides and returns ``[M, N]``."""
    cdef sg_args p
    cdef list keep
    cdef readonly PackedB weights
    cdef readonly int threads
    cdef readonly int64_t k, n

    def __init__(self, PackedB weights, bias=None, *, bint relu=False, clip=None, int threads=1,
                 isa_name=None):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.keep = [weights.packed]
        self.p.apack = NULL
        _epilogue(&self.p, bias, SG_BIAS_COL, weights.n, relu, clip, self.keep)
        self.p.isa = ISA_NAMES[isa(isa_name)]
        self.p.b_mode = SG_B_PACKED
        self.p.b = NULL
        self.p.bpack = <const float *>cnp.PyArray_DATA(<cnp.ndarray>weights.packed)
        self.p.b_bs = self.p.b_ks = self.p.b_ns = 0
        self.p.k, self.p.n, self.p.batch = weights.k, weights.n, 1
        self.weights, self.threads, self.k, self.n = weights, threads, weights.k, weights.n

    def __call__(self, a, out=None):
        cdef sg_args p = self.p
        cdef cnp.ndarray arr = _f32(a, "a")
        if cnp.PyArray_NDIM(arr) != 2 or cnp.PyArray_DIM(arr, 1) != self.k:
            raise ValueError(f"a must be [M, {self.k}], got {(<object>arr).shape}")
        if any(s < 0 for s in (<object>arr).strides):
            arr = np.ascontiguousarray(arr)
        p.m = cnp.PyArray_DIM(arr, 0)
        _set_a(&p, arr)
        res = _out(out, (p.m, self.n))
        p.c = <float *>cnp.PyArray_DATA(<cnp.ndarray>res)
        p.c_bs, p.c_rs = 0, _elements(cnp.PyArray_STRIDE(<cnp.ndarray>res, 0))
        _run(&p, self.threads)
        return res


def sgemm(a, b, bias=None, *, int bias_axis=1, bint relu=False, clip=None, out=None,
          int threads=1, isa_name=None):
    """``a x b`` in float32 for ``a`` [M, K] or [batch, M, K] at any strides and ``b`` a
    :class:`PackedB`, a [K, N] array or a [batch, K, N] array (any strides: read in place when its
    columns are contiguous, packed per tile otherwise). ``bias`` is per row (``bias_axis=0``,
    length M) or per column (``bias_axis=1``, length N)."""
    cdef sg_args p
    cdef list keep = []
    cdef cnp.ndarray arr = _f32(a, "a")
    cdef object barr
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if cnp.PyArray_NDIM(arr) not in (2, 3):
        raise ValueError(f"a must be 2-D or 3-D, got shape {(<object>arr).shape}")
    if any(s < 0 for s in (<object>arr).strides):
        arr = np.ascontiguousarray(arr)
    cdef int nd = cnp.PyArray_NDIM(arr)
    p.isa = ISA_NAMES[isa(isa_name)]
    p.batch = cnp.PyArray_DIM(arr, 0) if nd == 3 else 1
    p.m, p.k = cnp.PyArray_DIM(arr, nd - 2), cnp.PyArray_DIM(arr, nd - 1)
    _set_a(&p, arr)
    p.apack = NULL
    p.b, p.bpack, p.b_bs, p.b_ks, p.b_ns = NULL, NULL, 0, 0, 0
    if isinstance(b, PackedB):
        if b.k != p.k:
            raise ValueError(f"a has K={p.k} but B has K={b.k}")
        p.n, p.b_mode = b.n, SG_B_PACKED
        keep.append(b.packed)
        p.bpack = <const float *>cnp.PyArray_DATA(<cnp.ndarray>b.packed)
    else:
        barr = _f32(b, "b")
        bnd = cnp.PyArray_NDIM(barr)
        if bnd not in (2, 3) or (bnd == 3 and (nd != 3 or barr.shape[0] != p.batch)):
            raise ValueError(f"b of shape {barr.shape} does not match a of shape {(<object>arr).shape}")
        if barr.shape[bnd - 2] != p.k:
            raise ValueError(f"a has K={p.k} but b has K={barr.shape[bnd - 2]}")
        if any(s < 0 for s in barr.strides):
            barr = np.ascontiguousarray(barr)
        p.n = barr.shape[bnd - 1]
        p.b = <const float *>cnp.PyArray_DATA(<cnp.ndarray>barr)
        p.b_bs = _elements(barr.strides[0]) if bnd == 3 else 0
        p.b_ks, p.b_ns = _elements(barr.strides[bnd - 2]), _elements(barr.strides[bnd - 1])
        p.b_mode = SG_B_DIRECT if p.b_ns == 1 else SG_B_STRIDED
        keep.append(barr)
    if bias_axis not in (0, 1):
        raise ValueError("bias_axis must be 0 (per row) or 1 (per column)")
    _epilogue(&p, bias, SG_BIAS_ROW if bias_axis == 0 else SG_BIAS_COL,
              p.m if bias_axis == 0 else p.n, relu, clip, keep)
    if nd == 3:
        shape = (p.batch, p.m, p.n)
    else:
        shape = (p.m, p.n)
    res = _out(out, shape)
    p.c = <float *>cnp.PyArray_DATA(<cnp.ndarray>res)
    p.c_bs = _elements(res.strides[0]) if nd == 3 else 0
    p.c_rs = _elements(res.strides[res.ndim - 2])
    _run(&p, threads)
    return res


cdef class Conv2d:
    """2-D convolution (group 1) of NCHW float32 images with constant :class:`PackedConv`
    weights: ``strides`` (sh, sw), ``pads`` (top, left, bottom, right), ``dilations`` (dh, dw);
    per-channel ``bias``, ReLU/clip fused. ``__call__(x, out=None)`` returns [N, OC, OH, OW]."""
    cdef sg_args p
    cdef list keep
    cdef readonly PackedConv weights
    cdef readonly int threads
    cdef int64_t pb, pr

    cdef int method

    def __init__(self, PackedConv weights, bias=None, strides=(1, 1), pads=(0, 0, 0, 0),
                 dilations=(1, 1), *, bint relu=False, clip=None, int threads=1, isa_name=None,
                 method=None):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.keep = [weights.packed]
        _epilogue(&self.p, bias, SG_BIAS_ROW, weights.oc, relu, clip, self.keep)
        self.p.isa = ISA_NAMES[isa(isa_name)]
        self.p.apack = <const float *>cnp.PyArray_DATA(<cnp.ndarray>weights.packed)
        self.p.a = self.p.apack
        self.p.a_bs, self.p.a_rs, self.p.a_ks = 0, 0, 0
        self.p.mr, self.p.kc = weights.mr, weights.kc
        self.p.m, self.p.k = weights.oc, weights.c * weights.kh * weights.kw
        self.p.ch, self.p.kh, self.p.kw = weights.c, weights.kh, weights.kw
        self.p.sh, self.p.sw = strides
        self.p.dh, self.p.dw = dilations
        self.p.ph, self.p.pw, self.pb, self.pr = pads
        if min(strides) < 1 or min(dilations) < 1 or min(pads) < 0:
            raise ValueError(f"bad conv geometry: strides {strides} pads {pads} dilations {dilations}")
        self.p.bpack, self.p.b_ks, self.p.b_ns = NULL, 0, 0
        self.p.wp = 0
        self.weights, self.threads = weights, threads
        # method: None picks (see __call__); "im2col" / "shifted" force one (tests, benchmarks)
        methods = {None: 0, "im2col": 1, "shifted": 2}
        if method not in methods:
            raise ValueError(f"unknown conv method {method!r}")
        self.method = methods[method]

    def __call__(self, x, out=None):
        cdef sg_args p = self.p
        cdef cnp.ndarray arr = _f32(x, "x")
        if cnp.PyArray_NDIM(arr) != 4 or cnp.PyArray_DIM(arr, 1) != p.ch:
            raise ValueError(f"x must be [N, {p.ch}, H, W], got {(<object>arr).shape}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
            arr = np.ascontiguousarray(arr)
        cdef int64_t batch = cnp.PyArray_DIM(arr, 0)
        p.ih, p.iw = cnp.PyArray_DIM(arr, 2), cnp.PyArray_DIM(arr, 3)
        cdef int64_t span_h = p.ih + p.ph + self.pb - (p.kh - 1) * p.dh - 1
        cdef int64_t span_w = p.iw + p.pw + self.pr - (p.kw - 1) * p.dw - 1
        p.oh = span_h // p.sh + 1 if span_h >= 0 else 0
        p.ow = span_w // p.sw + 1 if span_w >= 0 else 0
        res = _out(out, (batch, p.m, p.oh, p.ow))
        if not res.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        p.batch, p.n = batch, p.oh * p.ow
        p.b = <const float *>cnp.PyArray_DATA(arr)
        p.b_bs = p.ch * p.ih * p.iw
        if p.kh == 1 and p.kw == 1 and p.sh == 1 and p.sw == 1 and p.ph == 0 and p.pw == 0 \
                and self.pb == 0 and self.pr == 0:
            # pointwise: B is x[n] as [C, H*W], read in place
            p.b_mode, p.b_ks, p.b_ns = SG_B_DIRECT, p.ih * p.iw, 1
        else:
            p.b_mode = SG_B_IM2COL
            p.wp = p.iw + p.pw + self.pr
            if p.sh == 1 and p.sw == 1 and p.wp <= SHIFTED_MAX_WP and p.kh * p.kw <= SHIFTED_MAX_TAPS \
                    and self.method != 1 and (self.method == 2 or _shifted_pays(&p)):
                p.b_mode = SG_B_SHIFTED
        p.c = <float *>cnp.PyArray_DATA(<cnp.ndarray>res)
        p.c_bs, p.c_rs = p.m * p.n, p.n
        _run(&p, self.threads)
        return res


cdef bint _shifted_pays(sg_args *p):
    """The shifted convolution copies the input once instead of KH*KW times but computes
    (wp - ow) wasted columns per row: it wins unless the rows are short. Measured (1 thread):
    96 -> 24 channels 3x3 at 40x40 0.73 ms against im2col's 0.96, 512 -> 512 at 7x7 3.0 against
    3.3, 64 -> 64 at 56x56 and 128 -> 128 at 28x28 within 3%."""
    return p.ow >= SHIFTED_MIN_WIDTH


def conv2d(x, w, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), *,
           bint relu=False, clip=None, out=None, int threads=1, isa_name=None, method=None):
    """One-off :class:`Conv2d` of ``x`` with weights ``w`` [OC, C, KH, KW] (or a PackedConv)."""
    weights = w if isinstance(w, PackedConv) else PackedConv(w)
    return Conv2d(weights, bias, strides, pads, dilations, relu=relu, clip=clip,
                  threads=threads, isa_name=isa_name, method=method)(x, out)
