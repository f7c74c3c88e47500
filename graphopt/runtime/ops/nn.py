"""Dense and convolutional ops in fp32: Conv, ConvTranspose, Gemm, MatMul, normalizations, pooling.

float32 Conv (2-D, one group), Gemm and MatMul run on the compiled kernels of
``graphopt.kernels._sgemm`` (kernels/sgemm.c): constant weights are packed once when the node is
built, a constant bias goes into the kernel's epilogue, and a convolution is an implicit GEMM
(no im2col matrix). What follows describes the numpy paths that serve the other cases (float64,
other ranks, groups, weights that are not float32).

Convolution is im2col (a strided window view, copied once) followed by one batched matmul on
BLAS, split over the session's threads by :func:`matmul`; a 2-D stride-1 convolution that narrows
the channels reads shifted views of the padded input instead, one product per tap, with no
im2col copy (:func:`_conv_shifted`); 2-D depthwise convolution is a Numba loop
(``numba_fp32``), since a GEMM with K = kernel size and one output channel per group would waste
BLAS. MaxPool takes the maximum one axis at a time over strided views; 2-D average pooling
on float32 uses the Numba kernel of ``graphopt.kernels.glue``, other cases a window view.
"""
from __future__ import annotations

import concurrent.futures
import functools
import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from graphopt.kernels import glue
from graphopt.runtime.ops import NodeSpec, normalize_axis, numba_fp32, refuse, register

try:  # the compiled fp32 GEMM / implicit-GEMM convolution and depthwise convolution
    from graphopt.kernels import _dwconv, _sgemm
except ImportError:  # an unbuilt checkout: the numpy paths below serve every case
    _dwconv = _sgemm = None



# Below this many multiply-adds per thread a product is not worth splitting (~0.1 ms of one core).
_MIN_MACS_PER_THREAD = 4_000_000


@functools.lru_cache(maxsize=None)
def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="graphopt-matmul")


def matmul(a: np.ndarray, b: np.ndarray, threads: int = 1) -> np.ndarray:
    """``np.matmul`` over ``threads`` threads, each taking a slice of ``b``'s columns.

    BLAS itself runs single-threaded (the session sets it so): OpenBLAS's own threads spin
    between calls and, on a shared machine, make a 2-thread run several times slower than a
    1-thread one. numpy releases the GIL inside matmul, so Python threads do run in parallel.
    """
    columns = b.shape[-1]
    if b.ndim < 2 or threads == 1 or a.size * columns < _MIN_MACS_PER_THREAD * 2 or columns < 2 * threads:
        return np.matmul(a, b)
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], columns)
    out = np.empty(shape, np.result_type(a, b))
    bounds = np.linspace(0, columns, threads + 1).astype(int)
    parts = [_pool(threads).submit(np.matmul, a, b[..., lo:hi], out=out[..., lo:hi])
             for lo, hi in zip(bounds[:-1], bounds[1:])]
    for part in parts:
        part.result()
    return out


class Window:
    """Kernel, strides, dilations and padding of a Conv or pooling node, resolved per input shape."""

    def __init__(self, node: NodeSpec, kernel: list[int] | None, ceil_mode: bool = False):
        self.kernel = kernel
        self.auto_pad = node.attr("auto_pad", "NOTSET")
        refuse(self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"),
               f"auto_pad={self.auto_pad!r}")
        self.strides, self.dilations = node.attr("strides"), node.attr("dilations")
        self.pads, self.ceil_mode = node.attr("pads"), ceil_mode
        self._resolved = {}

    def resolve(self, spatial: tuple[int, ...], kernel: list[int] | None = None):
        """(kernel, strides, dilations, pads_begin, pads_end, explicit_end, out) for these dims.

        ``explicit_end`` is the end padding the node asked for; ``pads_end`` adds what ceil_mode
        needs on top of it. Cached per input shape: a plan calls it with the same one every run.
        """
        key = (tuple(spatial), None if kernel is None else tuple(kernel))
        if key not in self._resolved:
            self._resolved[key] = self._resolve(spatial, kernel)
        return self._resolved[key]

    def _resolve(self, spatial, kernel):
        kernel = list(kernel or self.kernel)
        nd = len(kernel)
        strides = list(self.strides or [1] * nd)
        dilations = list(self.dilations or [1] * nd)
        extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = [-(-n // s) for n, s in zip(spatial, strides)]
            total = [max((o - 1) * s + e - n, 0) for o, s, e, n in zip(out, strides, extent, spatial)]
            small = [t // 2 for t in total]
            begin = small if self.auto_pad == "SAME_UPPER" else [t - h for t, h in zip(total, small)]
            end = [t - b for t, b in zip(total, begin)]
            return kernel, strides, dilations, begin, end, end, out
        pads = [0] * (2 * nd) if self.auto_pad == "VALID" or not self.pads else list(self.pads)
        begin, end = pads[:nd], pads[nd:]
        out, full_end = [], []
        for n, k, s, b, e in zip(spatial, extent, strides, begin, end):
            span = n + b + e - k
            o = (-(-span // s) if self.ceil_mode else span // s) + 1
            if self.ceil_mode and (o - 1) * s >= n + b:
                o -= 1  # the last window would start in the end padding
            out.append(o)
            full_end.append(max(e, (o - 1) * s + k - n - b))
        return kernel, strides, dilations, begin, full_end, end, out


def _windows(xp, kernel, strides, dilations, out):
    """``xp[N, C, *S]`` padded to its views ``[N, C, *out, *kernel]``."""
    nd = len(kernel)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nd)))
    index = (slice(None), slice(None)) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides)) \
        + tuple(slice(None, None, d) for d in dilations)
    return view[index]


def _pad_spatial(x, begin, end, value):
    if not any(begin) and not any(end):
        return x
    # np.pad costs tens of microseconds of Python per call; a filled array and one copy do not
    shape = x.shape[:2] + tuple(n + b + e for n, b, e in zip(x.shape[2:], begin, end))
    padded = np.full(shape, value, x.dtype)
    padded[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(begin, x.shape[2:]))] = x
    return padded


def _conv_depthwise(xp, w, strides, dilations, out):
    """Depthwise conv: one multiply-add over the whole tensor per kernel tap."""
    kernel = w.shape[2:]
    result = np.zeros(xp.shape[:2] + tuple(out), np.result_type(xp, w))
    for tap in itertools.product(*(range(k) for k in kernel)):
        index = (slice(None), slice(None)) + tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, dilations, out, strides))
        result += xp[index] * w[(slice(None), 0) + tap].reshape((1, -1) + (1,) * len(kernel))
    return result


def _conv_shifted(xp, taps, dilations, out, threads):
    """Stride-1 2-D convolution of padded ``xp[N, C, Hp, Wp]``, ``taps[KH, KW, OC, C]``, without
    an im2col matrix: over the padded width, the input a tap reads is one slice of each
    channel's flattened plane, a view that BLAS takes as it is. One product per tap, summed; the
    columns that fall in the padding are dropped at the end."""
    batch, channels, _, wp = xp.shape
    kh, kw, oc, _ = taps.shape
    oh, ow = out
    run = (oh - 1) * wp + ow
    y = np.empty((batch, oc, oh, ow), np.result_type(xp, taps))
    for n in range(batch):
        planes = xp[n].reshape(channels, -1)
        acc = None
        for i, j in itertools.product(range(kh), range(kw)):
            start = i * dilations[0] * wp + j * dilations[1]
            part = matmul(taps[i, j], planes[:, start:start + run], threads)
            acc = part if acc is None else np.add(acc, part, out=acc)
        y[n] = np.lib.stride_tricks.as_strided(acc, (oc, oh, ow), (acc.strides[0], wp * acc.itemsize, acc.itemsize))
    return y


def conv_taps(w: np.ndarray) -> np.ndarray:
    """2-D conv weights ``[OC, C, KH, KW]`` as one contiguous ``[OC, C]`` matrix per tap."""
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))


# Below this many input channels a tap's product is too thin for BLAS: im2col's single product
# (K = C * KH * KW) wins.
_SHIFTED_MIN_CHANNELS = 16


def _shifted_pays(channels: int, out_channels: int) -> bool:
    """Per tap, the shifted products add an [OC, pixels] partial sum; im2col copies [C, pixels]:
    measured on ppocr's and resnet's 3x3 layers, the sums cost less once OC <= C / 2 (96 -> 24
    channels at 80x80: 2.4 ms instead of 5.1 ms), more when OC >= C (64 -> 64 at 56x56)."""
    return channels >= _SHIFTED_MIN_CHANNELS and 2 * out_channels <= channels


# Largest im2col matrix (per sample) that a precomputed gather index builds; above it the index
# array costs more memory than the strided-view copy saves in Python overhead.
_GATHER_MAX_ELEMENTS = 1 << 18


def _gather_conv(x_shape, dtype, w, bias, window: Window, group: int, threads: int):
    """For small im2col convolutions with a constant ``w``, a kernel specialised to ``x_shape``:
    the im2col matrix is one ``np.take`` of the input, flattened and followed by a single zero
    (which every padding position indexes), through an index array computed here, once.
    None when the shape does not take conv_forward's im2col branch or the matrix is large."""
    if np.dtype(dtype).kind != "f" or group != 1 or len(x_shape) < 3:
        return None
    kernel, strides, dilations, begin, end, _, out = window.resolve(x_shape[2:], list(w.shape[2:]))
    batch, channels = x_shape[:2]
    oc = w.shape[0]
    if _conv_branch(kernel, strides, begin, end, group, channels, w, dtype) != "im2col" or w.shape[1] != channels:
        return None
    pixels, size = math.prod(out), channels * math.prod(x_shape[2:])
    if pixels == 0 or size == 0 or channels * math.prod(kernel) * pixels > _GATHER_MAX_ELEMENTS:
        return None
    positions = np.arange(size, dtype=np.intp).reshape((1, channels) + tuple(x_shape[2:]))
    views = _windows(_pad_spatial(positions, begin, end, size), kernel, strides, dilations, out)
    nd = len(kernel)
    order = (0, 1) + tuple(range(2 + nd, 2 + 2 * nd)) + tuple(range(2, 2 + nd))
    index = np.ascontiguousarray(views.transpose(order).reshape(-1, pixels))
    padded = bool(any(begin) or any(end))
    weights = np.ascontiguousarray(w.reshape(oc, -1))
    out_shape = (batch, oc) + tuple(out)
    shift = None if bias is None else np.ascontiguousarray(bias.reshape(-1, 1)).astype(dtype)

    if batch == 1 and threads == 1:
        # one sample: a 2-D take and a plain 2-D product, the fewest numpy calls
        def conv_one(x, b):
            if padded:
                source = np.empty(size + 1, dtype)
                source[:size] = x.reshape(size)
                source[size] = 0
            else:
                source = x.reshape(size)
            return _add_bias(np.matmul(weights, source.take(index)), shift, b).reshape(out_shape)
        return conv_one

    def conv(x, b):
        flat = x.reshape(batch, size)
        if padded:
            source = np.empty((batch, size + 1), dtype)
            source[:, :size] = flat
            source[:, size] = 0
        else:
            source = flat
        return _add_bias(matmul(weights, np.take(source, index, axis=1), threads), shift, b).reshape(out_shape)
    return conv


def _add_bias(y: np.ndarray, shift: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    """In place: the bias prepared at build time (``shift``), else the run-time bias ``b``."""
    if shift is not None:
        y += shift
    elif b is not None:
        y += b.reshape(-1, 1)
    return y


def _conv_branch(kernel, strides, begin, end, group, channels, w, dtype) -> str:
    oc = w.shape[0]
    kind = np.dtype(dtype).kind
    if (group == 1 and len(kernel) == 2 and strides == [1, 1] and _shifted_pays(channels, oc)
            and kernel != [1, 1] and kind == "f"):
        return "shifted"
    if group == channels == oc and w.shape[1] == 1:
        return "depthwise"
    if all(k == 1 for k in kernel) and not any(begin) and not any(end) and group == 1:
        return "pointwise"
    return "im2col"


def conv_forward(x, w, bias, window: Window, group: int, threads: int = 1, taps: np.ndarray | None = None):
    """fp32 convolution of ``x[N, C, *S]`` with ``w[OC, C/group, *K]`` (any number of spatial dims);
    ``taps``: :func:`conv_taps` of ``w``, when the caller keeps them."""
    kernel, strides, dilations, begin, end, _, out = window.resolve(x.shape[2:], list(w.shape[2:]))
    batch, channels = x.shape[:2]
    oc = w.shape[0]
    if _sgemm_conv_applies(x, w, group):
        # weights that are not constant: packed per call (a copy of W, small next to the product)
        return _sgemm_conv(_sgemm.PackedConv(w), bias, strides, begin, end, dilations, threads)(x)
    if (group == 1 and len(kernel) == 2 and strides == [1, 1] and _shifted_pays(channels, oc)
            and kernel != [1, 1] and x.dtype.kind == "f"):
        xp = np.ascontiguousarray(_pad_spatial(x, begin, end, 0))
        y = _conv_shifted(xp, conv_taps(w) if taps is None else taps, dilations, out, threads)
    elif group == channels == oc and w.shape[1] == 1 and len(kernel) == 2 and x.dtype.kind == "f":
        y = numba_fp32.depthwise_conv2d(_pad_spatial(x, begin, end, 0), w[:, 0], strides, dilations, out)
    elif group == channels == oc and w.shape[1] == 1:
        y = _conv_depthwise(_pad_spatial(x, begin, end, 0), w, strides, dilations, out)
    elif all(k == 1 for k in kernel) and not any(begin) and not any(end) and group == 1:
        xs = x[(slice(None), slice(None)) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides))]
        y = matmul(w.reshape(oc, channels), xs.reshape(batch, channels, -1), threads)
    else:
        views = _windows(_pad_spatial(x, begin, end, 0), kernel, strides, dilations, out)
        nd = len(kernel)
        # [N, C, *out, *K] -> [N, G, C/G * prod(K), prod(out)]: the im2col copy
        order = (0, 1) + tuple(range(2 + nd, 2 + 2 * nd)) + tuple(range(2, 2 + nd))
        cols = views.transpose(order).reshape(batch, group, -1, math.prod(out))
        y = matmul(w.reshape(1, group, oc // group, -1), cols, threads)
    y = y.reshape((batch, oc) + tuple(out))
    if bias is not None:
        y += bias.reshape((1, -1) + (1,) * len(out))
    return y


def _sgemm_conv_applies(x, w, group: int) -> bool:
    """fp32 2-D convolutions with one group run on the compiled implicit GEMM (kernels/sgemm.c)."""
    return (_sgemm is not None and group == 1 and x.ndim == 4 and w.ndim == 4
            and x.dtype == np.float32 and w.dtype == np.float32 and w.shape[1] == x.shape[1])


def _sgemm_conv(packed, bias, strides, begin, end, dilations, threads: int, activation=None):
    """A :class:`_sgemm.Conv2d` for one resolved window (pads: top, left, bottom, right)."""
    return _sgemm.Conv2d(packed, bias, (strides[0], strides[1]), (begin[0], begin[1], end[0], end[1]),
                         (dilations[0], dilations[1]), threads=threads, **_epilogue_args(activation))


def _epilogue_args(activation) -> dict:
    """Keyword arguments of the compiled kernels for an activation fused into their epilogue:
    None, ("relu",) or ("clip", lo, hi) with None for an open bound."""
    if activation is None:
        return {}
    if activation[0] == "relu":
        return {"relu": True}
    lo, hi = activation[1:]
    return {"clip": (-np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))}


def _fusable(make, prepacked: tuple[int, ...]):
    """``make(None)``, the kernel, declaring the constant inputs it packed (``prepacked_inputs``,
    which the session then drops) and carrying ``fuse_activation(activation)``: ``make`` again,
    with a ReLU or Clip in the kernel's epilogue (see ``plan.fuse_activation_tails``)."""
    def build(activation):
        kernel = make(activation)
        kernel.prepacked_inputs = prepacked
        kernel.fuse_activation = build
        return kernel
    return build(None)


def _const_bias(node: NodeSpec):
    """A constant Conv bias as a contiguous float32 vector, or None."""
    bias = node.const(2) if node.has_input(2) else None
    return None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)


def _build_conv_sgemm(node: NodeSpec, window: Window, const_w: np.ndarray):
    """Constant fp32 2-D weights, one group: packed once here (the packed copy replaces the
    weights), a prepared kernel per input shape, a constant bias fused into its epilogue."""
    packed = _sgemm.PackedConv(const_w)
    kernel_shape = [packed.kh, packed.kw]
    const_bias = _const_bias(node)
    threads = node.threads

    def make(activation):
        prepared = {}  # input shape -> Conv2d

        def conv(x, w, bias=None):
            if x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != packed.c:
                raise ValueError(f"Conv {node.name}: input {x.dtype} {x.shape} does not match float32 weights "
                                 f"[{packed.oc}, {packed.c}, {packed.kh}, {packed.kw}]")
            run = prepared.get(x.shape)
            if run is None:
                _, strides, dilations, begin, end, _, _ = window.resolve(x.shape[2:], kernel_shape)
                run = prepared[x.shape] = _sgemm_conv(packed, const_bias, strides, begin, end, dilations,
                                                      threads, activation)
            return run(x)
        return conv
    return _fusable(make, (1, 2) if const_bias is not None else (1,))


def _build_conv_depthwise(node: NodeSpec, window: Window, const_w: np.ndarray):
    """Constant fp32 2-D depthwise weights (one filter per channel): the compiled AVX-512 kernel
    (kernels/dwconv_f32.c), prepared per input shape, bias and activation in its epilogue."""
    const_bias = _const_bias(node)
    kernel_shape = list(const_w.shape[2:])
    weights = np.ascontiguousarray(const_w)
    threads = node.threads

    def make(activation):
        prepared = {}  # input shape -> PreparedDepthwise
        kind = None if activation is None else activation[0]
        bounds = _epilogue_args(activation).get("clip", (0.0, 6.0))

        def conv(x, w, bias=None):
            if x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != weights.shape[0]:
                raise ValueError(f"Conv {node.name}: input {x.dtype} {x.shape} does not match float32 "
                                 f"depthwise weights {list(weights.shape)}")
            run = prepared.get(x.shape)
            if run is None:
                _, strides, dilations, begin, end, _, _ = window.resolve(x.shape[2:], kernel_shape)
                run = prepared[x.shape] = _dwconv.PreparedDepthwise(
                    weights, const_bias, strides, (begin[0], begin[1], end[0], end[1]), dilations,
                    activation=kind, clip=bounds)
            return run(np.ascontiguousarray(x), threads)
        return conv
    return _fusable(make, (1, 2) if const_bias is not None else (1,))


@register("Conv")
def build_conv(node: NodeSpec):
    window = Window(node, node.attr("kernel_shape"))
    group = node.attr("group", 1)
    const_w = node.const(1)
    # compiled kernels: constant float32 2-D weights, and a bias absent or constant (it goes into
    # the epilogue, before a fused activation)
    compiled = (const_w is not None and const_w.dtype == np.float32 and const_w.ndim == 4
                and (not node.has_input(2) or node.const(2) is not None))
    if compiled and _sgemm is not None and group == 1:
        return _build_conv_sgemm(node, window, const_w)
    if compiled and _dwconv is not None and group == const_w.shape[0] and const_w.shape[1] == 1:
        return _build_conv_depthwise(node, window, const_w)
    taps = None
    if const_w is not None:
        const_w = np.ascontiguousarray(const_w)
        taps = conv_taps(const_w) if const_w.ndim == 4 and group == 1 else None

    const_bias = node.const(2) if node.has_input(2) else None
    specialised = {}  # (input shape, dtype, has bias) -> a gather kernel, or None

    def conv(x, w, bias=None):
        if const_w is not None:
            key = (x.shape, x.dtype, bias is None)
            fast = specialised.get(key, False)
            if fast is False:
                fast = specialised[key] = _gather_conv(
                    x.shape, x.dtype, const_w, const_bias if bias is not None else None, window, group,
                    node.threads)
            if fast is not None:
                return fast(x, bias)
            return conv_forward(x, const_w, bias, window, group, node.threads, taps)
        return conv_forward(x, w, bias, window, group, node.threads)
    return conv


@register("ConvTranspose")
def build_conv_transpose(node: NodeSpec):
    window = Window(node, node.attr("kernel_shape"))
    group = node.attr("group", 1)
    output_padding, output_shape = node.attr("output_padding"), node.attr("output_shape")

    def conv_transpose(x, w, bias=None):
        batch, channels = x.shape[:2]
        spatial = x.shape[2:]
        nd = len(spatial)
        kernel = list(w.shape[2:])
        strides = list(window.strides or [1] * nd)
        dilations = list(window.dilations or [1] * nd)
        extra = list(output_padding or [0] * nd)
        full = [(n - 1) * s + (k - 1) * d + 1 + p for n, s, k, d, p in zip(spatial, strides, kernel, dilations, extra)]
        if output_shape is not None or window.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = list(output_shape)[-nd:] if output_shape is not None else [n * s for n, s in zip(spatial, strides)]
            total = [f - t for f, t in zip(full, target)]
            lower = window.auto_pad == "SAME_LOWER"
            # a negative total padding grows the output at the end, like output_padding
            begin = [max(t - t // 2 if lower else t // 2, 0) for t in total]
        else:
            pads = list(window.pads or [0] * (2 * nd))
            begin = pads[:nd]
            target = [f - b - e for f, b, e in zip(full, pads[:nd], pads[nd:])]
        full = [max(f, b + t) for f, b, t in zip(full, begin, target)]
        ocg = w.shape[1]
        # [N, G, Cg, prod(S)] x [G, Cg, OCg*prod(K)] -> contributions [N, G, OCg, *K, *S]
        xg = x.reshape(batch, group, channels // group, -1)
        wg = w.reshape(group, channels // group, -1)
        contrib = np.matmul(wg.transpose(0, 2, 1)[None], xg)
        contrib = contrib.reshape((batch, group * ocg) + tuple(kernel) + tuple(spatial))
        y = np.zeros((batch, group * ocg) + tuple(full), x.dtype)
        for tap in itertools.product(*(range(k) for k in kernel)):
            index = (slice(None), slice(None)) + tuple(
                slice(t * d, t * d + (n - 1) * s + 1, s) for t, d, n, s in zip(tap, dilations, spatial, strides))
            y[index] += contrib[(slice(None), slice(None)) + tap]
        crop = (slice(None), slice(None)) + tuple(slice(b, b + t) for b, t in zip(begin, target))
        y = y[crop]
        if bias is not None:
            y = y + bias.reshape((1, -1) + (1,) * nd)
        return np.ascontiguousarray(y)
    return conv_transpose


@register("Gemm")
def build_gemm(node: NodeSpec):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
    const_b = node.const(1)
    if const_b is not None:
        # laid out [K, N] once, so that every call is one plain product
        const_b = const_b.T if trans_b else const_b
        if _sgemm is None or const_b.dtype != np.float32 or const_b.ndim != 2:
            const_b = np.ascontiguousarray(const_b)

    const_c = node.const(2) if node.has_input(2) else None
    threads = node.threads
    if (_sgemm is not None and const_b is not None and alpha == 1.0 and not trans_a
            and const_b.dtype == np.float32 and const_b.ndim == 2):
        return _build_gemm_sgemm(const_b, const_c, beta, threads, runtime_c=node.has_input(2) and const_c is None)
    if const_b is not None and alpha == 1.0 and not trans_a:
        shift = None if const_c is None else np.ascontiguousarray(
            const_c * const_c.dtype.type(beta) if beta != 1.0 else const_c)

        def plain_gemm(a, b, c=None):
            y = matmul(a, const_b, threads)
            if c is not None:
                if shift is not None:
                    y += shift
                else:
                    y += c * c.dtype.type(beta) if beta != 1.0 else c
            return y
        return plain_gemm

    def gemm(a, b, c=None):
        a = a.T if trans_a else a
        b = const_b if const_b is not None else (b.T if trans_b else b)
        y = matmul(a, b, node.threads)
        if alpha != 1.0:
            y *= y.dtype.type(alpha)
        if c is not None:
            y += c * c.dtype.type(beta) if beta != 1.0 else c
        return y
    return gemm


def _build_gemm_sgemm(b_kn: np.ndarray, const_c, beta: float, threads: int, runtime_c: bool = False):
    """Gemm with a constant fp32 B (already [K, N], maybe a transposed view): B packed once; a
    constant C of shape [N] or [1, N] (times beta) is the kernel's per-column bias."""
    n = b_kn.shape[1]
    fused = shift = None
    if const_c is not None:
        scaled = const_c * const_c.dtype.type(beta) if beta != 1.0 else const_c
        if scaled.size == n and scaled.ndim >= 1 and scaled.shape[-1] == n and scaled.ndim <= 2:
            fused = np.ascontiguousarray(scaled, dtype=np.float32).reshape(-1)
        else:
            shift = np.ascontiguousarray(scaled)
    packed = _sgemm.PackedB(b_kn)

    def make(activation):
        product = _sgemm.Gemm(packed, fused, threads=threads, **_epilogue_args(activation))

        def gemm(a, b, c=None):
            if a.dtype != np.float32 or a.ndim != 2:
                raise ValueError(f"Gemm: A must be a 2-D float32 matrix, got {a.dtype} {a.shape}")
            y = product(a)
            if shift is not None:
                y += shift
            elif c is not None and fused is None:
                y += c * c.dtype.type(beta) if beta != 1.0 else c
            return y
        return gemm
    if shift is not None or runtime_c:  # C added after the product: no activation in the epilogue
        gemm = make(None)
        gemm.prepacked_inputs = (1, 2) if const_c is not None else (1,)
        return gemm
    return _fusable(make, (1, 2) if const_c is not None else (1,))


def _matmul_sgemm(a, b, threads: int):
    """fp32 ``a @ b`` of two run-time operands on the compiled kernel when their batch dims match
    (or ``b`` is 2-D); any strides (a transposed Kᵀ is packed per tile). None otherwise."""
    if (a.dtype != np.float32 or b.dtype != np.float32 or a.ndim < 2 or b.ndim < 2
            or a.size == 0 or b.size == 0):
        return None
    m, k = a.shape[-2:]
    if b.ndim == 2:
        return _sgemm.sgemm(a.reshape(-1, k), b, threads=threads).reshape(a.shape[:-1] + (b.shape[1],))
    if a.shape[:-2] != b.shape[:-2]:
        return None
    y = _sgemm.sgemm(a.reshape((-1, m, k)), b.reshape((-1,) + b.shape[-2:]), threads=threads)
    return y.reshape(a.shape[:-1] + (b.shape[-1],))


@register("MatMul")
def build_matmul(node: NodeSpec):
    threads = node.threads
    const_b = node.const(1)
    if _sgemm is not None and const_b is not None and const_b.ndim == 2 and const_b.dtype == np.float32:
        packed = _sgemm.PackedB(const_b)
        n = const_b.shape[1]

        def make(activation):
            product = _sgemm.Gemm(packed, threads=threads, **_epilogue_args(activation))

            def matmul_packed(a, b):
                if a.dtype != np.float32 or a.ndim == 0:
                    raise ValueError(f"MatMul: A must be float32 with at least one dim, got {a.dtype} {a.shape}")
                if a.ndim == 1:
                    return product(a.reshape(1, -1)).reshape(n)
                return product(a.reshape(-1, a.shape[-1])).reshape(a.shape[:-1] + (n,))
            return matmul_packed
        return _fusable(make, (1,))

    def matmul_any(a, b):
        if _sgemm is not None:
            y = _matmul_sgemm(a, b, threads)
            if y is not None:
                return y
        return matmul(a, b, threads)
    return matmul_any


@register("BatchNormalization")
def build_batch_norm(node: NodeSpec):
    refuse(bool(node.attr("training_mode", 0)), "BatchNormalization training_mode=1")
    refuse(node.num_outputs() > 1, "BatchNormalization running-statistics outputs")
    refuse(node.opset < 7, "BatchNormalization before opset 7 (spatial / is_test)")
    epsilon = node.attr("epsilon", 1e-5)

    def affine(scale, b, mean, var):
        a = scale / np.sqrt(var + var.dtype.type(epsilon))
        return a, b - mean * a

    consts = [node.const(i) for i in range(1, 5)]
    folded = affine(*consts) if all(c is not None for c in consts) else None

    def batch_norm(x, scale, b, mean, var):
        a, shift = folded or affine(scale, b, mean, var)
        if x.dtype in (np.float32, np.float64) and x.ndim >= 2 and np.size(a) == x.shape[1] == np.size(shift):
            # one pass over x instead of numpy's two (and one temporary), the same roundings
            return numba_fp32.channel_affine(x, np.reshape(a, -1), np.reshape(shift, -1))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * a.reshape(shape).astype(x.dtype) + shift.reshape(shape).astype(x.dtype)
    return batch_norm


@register("LayerNormalization", multi_output=True)
def build_layer_norm(node: NodeSpec):
    axis, epsilon = node.attr("axis", -1), node.attr("epsilon", 1e-5)
    refuse(node.attr("stash_type", 1) != 1, "LayerNormalization stash_type other than float32")

    def layer_norm(x, scale, bias=None):
        a = normalize_axis(axis, x.ndim)
        if x.dtype in (np.float32, np.float64):
            # onnxruntime's arithmetic (MLAS: float64 mean, centered float32 variance), bit-exact
            return numba_fp32.layer_norm(x, scale, bias, a, float(epsilon))
        axes = tuple(range(a, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=axes, keepdims=True)
        inv_std = 1 / np.sqrt(var + x.dtype.type(epsilon))
        y = centered * inv_std * scale
        if bias is not None:
            y += bias
        return y.astype(x.dtype, copy=False), mean, inv_std
    return layer_norm


@register("GlobalAveragePool")
def build_global_average_pool(node: NodeSpec):
    def global_average_pool(x):
        if x.dtype in (np.float32, np.float64) and x.ndim > 2:
            return numba_fp32.mean_trailing(x, 2)  # one pass per channel, float64 sums
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    return global_average_pool


@register("GlobalMaxPool")
def build_global_max_pool(node: NodeSpec):
    return lambda x: x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _separable_max(xp, kernel, strides, dilations, out):
    """Max over windows, one spatial axis at a time: k strided ``np.maximum`` per axis."""
    for axis, (k, s, d, o) in enumerate(zip(kernel, strides, dilations, out), start=2):
        taps = [xp[(slice(None),) * axis + (slice(t * d, t * d + (o - 1) * s + 1, s),)] for t in range(k)]
        result = taps[0].copy()
        for tap in taps[1:]:
            np.maximum(result, tap, out=result)
        xp = result
    return xp


@register("MaxPool", multi_output=True)
def build_max_pool(node: NodeSpec):
    window = Window(node, node.attr("kernel_shape"), bool(node.attr("ceil_mode", 0)))
    refuse(node.attr("storage_order", 0) != 0, "MaxPool storage_order=1 (column-major indices)")
    want_indices = node.num_outputs() > 1

    taps_by_shape = {}  # input shape -> (padding needed, per axis the index of each tap)
    # input shape -> the 2-D kernel's (kernel, strides, begin, dilations, out), or None: a call
    # on a small model is then a lookup and the kernel (the window's resolution costs as much)
    planes_by_shape = {}

    threads = node.threads
    max_pool2d_planes = glue.max_pool2d_planes

    def max_pool(x):
        if not want_indices and x.dtype.char in "fBb":  # float32, uint8, int8
            args = planes_by_shape.get(x.shape, False)
            if args is False:
                kernel, strides, dilations, begin, _, _, out = window.resolve(x.shape[2:])
                args = planes_by_shape[x.shape] = (
                    (kernel, strides, begin, dilations, out) if len(kernel) == 2 else None)
            if args is not None:
                return (max_pool2d_planes(x, *args, threads),)
        kernel, strides, dilations, begin, end, _, out = window.resolve(x.shape[2:])
        if not want_indices:
            plan = taps_by_shape.get(x.shape)
            if plan is None:
                plan = taps_by_shape[x.shape] = (bool(any(begin) or any(end)), [
                    [(slice(None),) * axis + (slice(t * d, t * d + (o - 1) * s + 1, s),) for t in range(k)]
                    for axis, (k, s, d, o) in enumerate(zip(kernel, strides, dilations, out), start=2)])
            pad, axes = plan
            y = _pad_spatial(x, begin, end, _lowest(x.dtype)) if pad else x
            for taps in axes:
                if len(taps) == 1:
                    y = y[taps[0]].copy()
                    continue
                result = np.maximum(y[taps[0]], y[taps[1]])
                for tap in taps[2:]:
                    np.maximum(result, y[tap], out=result)
                y = result
            return (y if y is not x else x.copy(),)
        padded = _pad_spatial(x, begin, end, _lowest(x.dtype))
        views = _windows(padded, kernel, strides, dilations, out)
        flat = views.reshape(views.shape[:2 + len(out)] + (-1,))
        y = flat.max(axis=-1)
        if not want_indices:
            return (y,)
        positions = np.arange(x.size, dtype=np.int64).reshape(x.shape)
        index_views = _windows(_pad_spatial(positions, begin, end, -1), kernel, strides, dilations, out)
        picked = np.take_along_axis(index_views.reshape(flat.shape), flat.argmax(axis=-1)[..., None], -1)
        return y, picked[..., 0]
    return max_pool


@register("AveragePool")
def build_average_pool(node: NodeSpec):
    window = Window(node, node.attr("kernel_shape"), bool(node.attr("ceil_mode", 0)))
    include_pad = bool(node.attr("count_include_pad", 0))

    def average_pool(x):
        kernel, strides, dilations, begin, end, explicit_end, out = window.resolve(x.shape[2:])
        if len(kernel) == 2 and not include_pad and x.dtype == np.float32 and dilations == [1, 1]:
            return glue.average_pool2d(x, tuple(kernel), tuple(strides), tuple(begin + end))
        sums = _windows(_pad_spatial(x, begin, end, 0), kernel, strides, dilations, out)
        sums = sums.reshape(sums.shape[:2 + len(out)] + (-1,)).sum(axis=-1)
        # count the taps that fall on the input, or on explicit padding with count_include_pad
        ones = np.ones((1, 1) + x.shape[2:], x.dtype)
        if include_pad:
            ones = _pad_spatial(ones, begin, explicit_end, 1)
            extra = [e - x for e, x in zip(end, explicit_end)]
            counts = _pad_spatial(ones, [0] * len(out), extra, 0)
        else:
            counts = _pad_spatial(ones, begin, end, 0)
        counts = _windows(counts, kernel, strides, dilations, out)
        counts = counts.reshape(counts.shape[:2 + len(out)] + (-1,)).sum(axis=-1)
        return (sums / counts).astype(x.dtype, copy=False)
    return average_pool


@register("Dropout", multi_output=True)
def build_dropout(node: NodeSpec):
    """Inference only: the output is the input and the mask, when asked for, all true."""
    refuse(node.opset < 7 and not node.attr("is_test", 0), "Dropout before opset 7 without is_test=1")
    training = node.const(2) if node.has_input(2) else np.array(False)
    refuse(training is None or bool(np.asarray(training)), "Dropout in training mode (random masks)")
    want_mask = node.num_outputs() > 1

    def dropout(x, *_):
        return (x, np.ones(x.shape, dtype=bool)) if want_mask else (x,)

    return dropout


@register("LRN")
def build_lrn(node: NodeSpec):
    """y = x / (bias + alpha/size · Σ x²  over a window of ``size`` channels) ** beta."""
    size = int(node.attr("size"))
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2

    def lrn(x):
        squares = np.square(x, dtype=np.float64)
        padded = np.pad(squares, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
        window = np.cumsum(padded, axis=1)
        window = np.concatenate([window[:, size - 1:size], window[:, size:] - window[:, :-size]], axis=1)
        return (x / (bias + alpha / size * window) ** beta).astype(x.dtype)

    return lrn
