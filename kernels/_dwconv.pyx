# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""fp32 depthwise 2-D convolution in C (``dwconv_f32.c``): NCHW, one filter per channel
(group == C == OC), AVX-512 along the output rows with a portable fallback, bias and
activation (none, relu, clip) fused into the store. Planes run on ``threads`` cores with the
GIL released (the worker pool of ``_workers.pxi``); small layers stay on one.

``depthwise_conv2d_f32`` is the one-call form; ``PreparedDepthwise`` holds the weights (laid out
once as [C, KH*KW]) and the geometry for repeated calls.
"""

import numpy as np

from graphopt.kernels._choice import avx512_or_portable
cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()

cdef extern from "dwconv_f32.h" nogil:
    enum:
        DWF_ACT_NONE
        DWF_ACT_RELU
        DWF_ACT_CLIP
        DWF_ISA_PORTABLE
        DWF_ISA_AVX512
    ctypedef struct dwf_shape:
        int64_t channels, height, width, out_height, out_width
        int kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w
        int activation
        float lo, hi
    int dwf_avx512_supported()
    int dwf_planes(const dwf_shape *s, const float *x, const float *w, const float *bias,
                   float *y, int64_t p0, int64_t p1, int isa)

include "_workers.pxi"

ISA_NAMES = {"portable": DWF_ISA_PORTABLE, "avx512": DWF_ISA_AVX512}


cdef struct _Chunks:  # a layer's planes in `chunks` contiguous runs, one task each
    const dwf_shape *s
    const float *x
    const float *w
    const float *bias
    float *y
    int64_t planes, chunks
    int isa


cdef int _task_chunk(void *ctx, int64_t r) noexcept nogil:
    cdef _Chunks *j = <_Chunks *>ctx
    return dwf_planes(j.s, j.x, j.w, j.bias, j.y, r * j.planes // j.chunks, (r + 1) * j.planes // j.chunks, j.isa)

# Below this many multiply-adds a layer runs on one thread: waking a second costs more. A layer
# runs at ~15-25 GMAC/s here, so this is ~0.2 ms of one core; at 200,000 (~10 us), mobilenetv3's
# depthwise layers at 2 threads made the whole model 1.26x slower than at 1 thread (OpenMP's
# join waited for a worker the shared machine scheduled late; the worker pool does not).
PARALLEL_MIN_MACS = 4_000_000


def isa(name=None):
    """The kernel path to run: ``name`` ("auto", "avx512", "portable"), else
    $GRAPHOPT_DWCONV_ISA, else the best this CPU supports."""
    return avx512_or_portable(name, "GRAPHOPT_DWCONV_ISA", bool(dwf_avx512_supported()))


def _ints(value, n, what):
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{what} must be a sequence of {n} ints, got {value!r}") from None
    if len(out) != n:
        raise ValueError(f"{what} must have {n} values, got {value!r}")
    return out


cdef class PreparedDepthwise:
    """A depthwise convolution with its weights laid out once.

    ``w``: float32 [C, 1, KH, KW] or [C, KH, KW]; ``bias``: float32 [C] or None; ``strides``
    (sh, sw); ``pads`` (top, left, bottom, right); ``dilations`` (dh, dw); ``activation`` None,
    "relu" or "clip" (with ``clip`` = (lo, hi)). Call with ``x`` float32 C-contiguous
    [N, C, H, W]."""
    cdef dwf_shape base
    cdef readonly object weights, bias, strides, pads, dilations, activation, clip
    cdef readonly int channels, kh, kw
    cdef int isa_code

    def __init__(self, w, bias, strides, pads, dilations, activation=None, clip=(0.0, 6.0),
                 isa_name=None):
        if not isinstance(w, np.ndarray) or w.dtype != np.float32:
            raise ValueError(f"w must be a float32 array, got {getattr(w, 'dtype', type(w))}")
        if w.ndim == 4:
            if w.shape[1] != 1:
                raise ValueError(f"w must be [C, 1, KH, KW] for a depthwise convolution, got {w.shape}")
            w = w.reshape(w.shape[0], w.shape[2], w.shape[3])
        if w.ndim != 3 or min(w.shape) < 1:
            raise ValueError(f"w must be [C, 1, KH, KW] or [C, KH, KW] with no empty axis, got {w.shape}")
        self.channels, self.kh, self.kw = w.shape
        self.weights = np.ascontiguousarray(w).reshape(self.channels, -1).copy()
        if bias is not None:
            if not isinstance(bias, np.ndarray) or bias.dtype != np.float32:
                raise ValueError(f"bias must be a float32 array, got {getattr(bias, 'dtype', type(bias))}")
            if bias.shape != (self.channels,):
                raise ValueError(f"bias must be [{self.channels}], got {bias.shape}")
            bias = np.ascontiguousarray(bias).copy()
        self.bias = bias
        self.strides = _ints(strides, 2, "strides")
        self.pads = _ints(pads, 4, "pads")
        self.dilations = _ints(dilations, 2, "dilations")
        if min(self.strides) < 1 or min(self.dilations) < 1 or min(self.pads) < 0:
            raise ValueError(f"strides and dilations must be >= 1 and pads >= 0, got strides "
                             f"{self.strides}, pads {self.pads}, dilations {self.dilations}")
        if activation not in (None, "relu", "clip"):
            raise ValueError(f"activation must be None, 'relu' or 'clip', got {activation!r}")
        self.activation = activation
        self.base.activation = DWF_ACT_NONE
        self.base.lo, self.base.hi = 0.0, 0.0
        if activation == "relu":
            self.base.activation = DWF_ACT_RELU
        elif activation == "clip":
            lo, hi = (float(v) for v in clip)
            self.base.activation = DWF_ACT_CLIP
            self.base.lo, self.base.hi = lo, hi
            self.clip = (lo, hi)
        self.isa_code = ISA_NAMES[isa(isa_name)]
        self.base.channels = self.channels
        self.base.kh, self.base.kw = self.kh, self.kw
        self.base.stride_h, self.base.stride_w = self.strides
        self.base.pad_top, self.base.pad_left = self.pads[0], self.pads[1]
        self.base.dilation_h, self.base.dilation_w = self.dilations

    def output_shape(self, shape):
        """[N, C, OH, OW] for input ``shape`` [N, C, H, W]."""
        n, c, h, w = shape
        oh = (h + self.pads[0] + self.pads[2] - self.dilations[0] * (self.kh - 1) - 1) // self.strides[0] + 1
        ow = (w + self.pads[1] + self.pads[3] - self.dilations[1] * (self.kw - 1) - 1) // self.strides[1] + 1
        return (n, c, oh, ow)

    def __call__(self, x, int threads=1, out=None):
        if not isinstance(x, np.ndarray) or (<cnp.ndarray>x).descr.type_num != cnp.NPY_FLOAT32:
            raise ValueError(f"x must be a float32 array, got {getattr(x, 'dtype', type(x))}")
        cdef cnp.ndarray xa = <cnp.ndarray>x
        if xa.ndim != 4:
            raise ValueError(f"x must be [N, C, H, W], got shape {x.shape}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(xa):
            raise ValueError("x must be C-contiguous")
        if xa.shape[1] != self.channels:
            raise ValueError(f"x has {xa.shape[1]} channels but the weights have {self.channels}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        shape = self.output_shape(x.shape)
        if shape[2] < 1 or shape[3] < 1:
            raise ValueError(f"the kernel does not fit the padded input: output {shape} from "
                             f"input {x.shape}, kernel {(self.kh, self.kw)}, pads {self.pads}, "
                             f"dilations {self.dilations}")
        cdef cnp.ndarray ya
        if out is None:
            ya = np.empty(shape, np.float32)
        else:
            if (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape
                    or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out)
                    or not (<cnp.ndarray>out).flags.writeable):
                raise ValueError(f"out must be a writeable C-contiguous float32 {shape} array, got "
                                 f"{getattr(out, 'dtype', type(out))} {getattr(out, 'shape', None)}")
            ya = <cnp.ndarray>out
        cdef dwf_shape s = self.base
        s.height, s.width = xa.shape[2], xa.shape[3]
        s.out_height, s.out_width = shape[2], shape[3]
        cdef int64_t planes = shape[0] * shape[1]
        if planes == 0:
            return ya
        cdef const float *xp = <const float *>cnp.PyArray_DATA(xa)
        cdef const float *wp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>self.weights)
        cdef const float *bp = NULL
        if self.bias is not None:
            bp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>self.bias)
        cdef float *yp = <float *>cnp.PyArray_DATA(ya)
        cdef int isa_code = self.isa_code, failed = 0
        cdef int64_t chunks = threads
        if planes * s.out_height * s.out_width * s.kh * s.kw < PARALLEL_MIN_MACS:
            chunks = 1
        elif chunks > 1:
            # a few chunks per thread, handed out as threads come free: a core that another
            # process holds up does not leave the other waiting at the end
            chunks = 4 * threads
        if chunks > planes:
            chunks = planes
        cdef _Chunks job
        job.s, job.x, job.w, job.bias, job.y = &s, xp, wp, bp, yp
        job.planes, job.chunks, job.isa = planes, chunks, isa_code
        with nogil:
            failed = parallel_for(threads, chunks, _task_chunk, &job)
        if failed:
            raise MemoryError("depthwise convolution: could not allocate a scratch row")
        return ya


def depthwise_conv2d_f32(x, w, bias, strides, pads, dilations, activation=None, clip=(0.0, 6.0),
                         threads=1, out=None, isa_name=None):
    """Depthwise convolution of float32 C-contiguous ``x[N, C, H, W]`` with ``w[C, 1, KH, KW]``
    (or [C, KH, KW]) and ``bias[C]`` (or None): ``y[N, C, OH, OW]``,
    OH = (H + top + bottom - dh * (KH - 1) - 1) // sh + 1 (likewise OW). ``strides`` (sh, sw),
    ``pads`` (top, left, bottom, right), ``dilations`` (dh, dw); ``activation`` None, "relu" or
    "clip" (``clip`` = (lo, hi)) applied to the output. ``isa_name``: see :func:`isa`."""
    return PreparedDepthwise(w, bias, strides, pads, dilations, activation, clip, isa_name)(
        x, threads, out)
