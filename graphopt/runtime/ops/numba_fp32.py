"""Numba loops for the fp32 ops where numpy makes several passes over memory.

Depthwise convolution (one small filter per channel: BLAS has nothing to offer), erf (numpy
has none), HardSwish / HardSigmoid / per-channel affine (one pass instead of numpy's two to
four, the same roundings), Gelu and Softmax (their exp / erf as plain arithmetic, so that LLVM
vectorizes them: Numba would call libm's scalar functions), LayerNormalization (float32: the
arithmetic of onnxruntime's kernel, to the bit), means over trailing axes (one pass per row,
float64 sums) and nearest Resize of the last two axes. Each runs on float32 and float64;
``cache=True`` keeps the compiled code between processes.
"""
import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_JIT = dict(nopython=True, nogil=True, cache=True)


@numba.jit(**_JIT)
def _multiply_add(dst, src, w):
    # indexed from 0 by the loop counter, so that LLVM vectorizes it (see kernels/glue.py)
    for x in range(dst.shape[0]):
        dst[x] += w * src[x]


@numba.jit(**_JIT)
def _depthwise_phases(phases, w, sh, sw, dh, dw, wq, out):
    """``out[c, y, x] = sum_ij w[c, i, j] * xp[c, y*sh + i*dh, x*sw + j*dw]`` where ``phases``
    holds the padded input ``xp`` split by stride phase: ``phases[a*sw + b, c]`` is
    ``xp[c, a::sh, b::sw]``, rows of width ``wq`` laid end to end.

    In its phase, a tap reads a unit-stride window, so over the phase's full width each tap is one
    long run per channel (thousands of elements, which LLVM vectorizes) instead of one short run
    per output row; the rows are cut out of the sums at the end."""
    oh, ow = out.shape[1], out.shape[2]
    kh, kw = w.shape[1], w.shape[2]
    run = (oh - 1) * wq + ow
    acc = np.empty(run, out.dtype)
    for c in range(out.shape[0]):
        acc[:] = 0
        for i in range(kh):
            for j in range(kw):
                a, di = (i * dh) % sh, (i * dh) // sh
                b, dj = (j * dw) % sw, (j * dw) // sw
                start = di * wq + dj
                _multiply_add(acc, phases[a * sw + b, c, start:start + run], w[c, i, j])
        for y in range(oh):
            out[c, y, :] = acc[y * wq:y * wq + ow]


@numba.jit(**_JIT)
def _multiply_add_channels(dst, src, w):
    for c in range(dst.shape[0]):
        dst[c] += w[c] * src[c]


@numba.jit(**_JIT)
def _depthwise_channels_last(xp, w, sh, sw, dh, dw, out):
    """``out[y, x, c] = sum_ij w[i, j, c] * xp[y*sh + i*dh, x*sw + j*dw, c]`` (input pre-padded):
    the inner loop runs over channels, the longer run when the planes are small."""
    oh, ow = out.shape[0], out.shape[1]
    kh, kw = w.shape[0], w.shape[1]
    for y in range(oh):
        for x in range(ow):
            dst = out[y, x]
            dst[:] = 0
            for i in range(kh):
                for j in range(kw):
                    _multiply_add_channels(dst, xp[y * sh + i * dh, x * sw + j * dw], w[i, j])


def _stride_phases(xp, strides):
    """``xp[C, Hp, Wp]`` as ``[sh*sw, C, Hq*Wq]``: its stride phases, zero-filled to one size."""
    sh, sw = strides
    channels, hp, wp = xp.shape
    if (sh, sw) == (1, 1):
        return xp.reshape(1, channels, -1), wp
    hq, wq = -(-hp // sh), -(-wp // sw)
    phases = np.zeros((sh * sw, channels, hq, wq), xp.dtype)
    for a in range(sh):
        for b in range(sw):
            part = xp[:, a::sh, b::sw]
            phases[a * sw + b, :, :part.shape[1], :part.shape[2]] = part
    return phases.reshape(sh * sw, channels, -1), wq


def depthwise_conv2d(xp, w, strides, dilations, out_shape):
    """Depthwise conv of padded ``xp[N, C, Hp, Wp]`` with ``w[C, KH, KW]``.

    The inner loop runs along whichever is longer: a channel's plane (NCHW, by stride phase) or
    the channels (channels-last copies in and out, which pay when the planes are a few pixels:
    576 channels of 7x7 at 5x5 taps, 110 us instead of 204 us)."""
    xp = np.ascontiguousarray(xp)
    w = np.ascontiguousarray(w, xp.dtype)
    batch, channels = xp.shape[:2]
    out = np.empty((batch, channels) + tuple(out_shape), xp.dtype)
    plane_run = (out_shape[0] - 1) * -(-xp.shape[3] // strides[1]) + out_shape[1]
    if channels >= 2 * plane_run:
        w_last = np.ascontiguousarray(w.transpose(1, 2, 0))
        for n in range(batch):
            result = np.empty(tuple(out_shape) + (channels,), xp.dtype)
            _depthwise_channels_last(np.ascontiguousarray(xp[n].transpose(1, 2, 0)), w_last, strides[0],
                                     strides[1], dilations[0], dilations[1], result)
            out[n] = result.transpose(2, 0, 1)
        return out
    for n in range(batch):
        phases, wq = _stride_phases(xp[n], strides)
        _depthwise_phases(phases, w, strides[0], strides[1], dilations[0], dilations[1], wq, out[n])
    return out


_UNARY_SIGNATURES = ["float32(float32)", "float64(float64)"]


@numba.vectorize(_UNARY_SIGNATURES, cache=True)
def erf(x):
    return math.erf(x)


@numba.jit(**_JIT)
def _hard_swish(x, sixth, half, zero, one, out):
    # numpy's x * clip(x * (1/6) + 0.5, 0, 1), constants of x's dtype, the same roundings (no
    # FMA contraction); NaN passes through as np.clip lets it
    for i in range(x.shape[0]):
        gate = x[i] * sixth + half
        if gate < zero:
            gate = zero
        elif gate > one:
            gate = one
        out[i] = gate * x[i]


def hard_swish(x):
    """HardSwish of float32 or float64 ``x`` in one pass."""
    t = x.dtype.type
    out = np.empty(x.shape, x.dtype)
    _hard_swish(np.ascontiguousarray(x).reshape(-1), t(1 / 6), t(0.5), t(0), t(1), out.reshape(-1))
    return out


# ---- Gelu -------------------------------------------------------------------------------------
# numpy has no erf and Numba calls libm's scalar erf/tanh (about 5 ns a value): Gelu runs on its
# own erf instead, all arithmetic (no calls), so that LLVM vectorizes it. The erf is
# onnxruntime's (MLAS's, after njuffa's erff): an odd polynomial below |x| = 0.921875, else
# 1 - exp(-p(|x|)); evaluated in float64 here, so it is at least as accurate as MLAS's float32.

# Gelu / Softmax arithmetic: FMA contraction allowed (a tolerance-compared float op), and numpy's
# error model (x / 0 without a check, which would keep the loops from vectorizing)
_GELU_JIT = dict(_JIT, fastmath={"contract"}, error_model="numpy")


@numba.jit(inline="always", **_GELU_JIT)
def _exp_bounded(y):
    """exp(y) for float64 ``y`` in [-32, 32] (callers clamp): exp(y/64)**64, the inner exp by its
    Taylor series to degree 11 (relative error < 1e-12 before the six squarings)."""
    z = y * (1.0 / 64.0)
    p = 1.0 + z * (1.0 + z * (1.0 / 2 + z * (1.0 / 6 + z * (1.0 / 24 + z * (1.0 / 120 + z * (
        1.0 / 720 + z * (1.0 / 5040 + z * (1.0 / 40320 + z * (1.0 / 362880 + z * (
            1.0 / 3628800 + z * (1.0 / 39916800)))))))))))
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p


@numba.jit(inline="always", **_GELU_JIT)
def _erf64(a):
    t = abs(a)
    s = a * a
    small = -5.99104969e-4
    small = small * s + 4.99339588e-3
    small = small * s - 2.67667342e-2
    small = small * s + 1.12818025e-1
    small = small * s - 3.76124859e-1
    small = small * s + 1.28379151e-1
    small = small * a + a
    u = t if t < 3.925 else 3.925
    big = 1.72948930e-5
    big = big * u - 3.83208680e-4
    big = big * u + 3.88393435e-3
    big = big * u - 2.42545605e-2
    big = big * u + 1.06777847e-1
    big = big * u + 6.34846687e-1
    big = big * u + 1.28717512e-1
    big = big * u + u
    # beyond 3.925 MLAS's float32 1 - exp(...) is 1 exactly
    e = _exp_bounded(-big)
    big = 1.0 - e if t < 3.925 else 1.0
    big = -big if a < 0 else big
    return big if t >= 0.921875 else small


@numba.jit(**_GELU_JIT)
def _gelu_erf(x, out):
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        out[i] = 0.5 * v * (1.0 + _erf64(v * 0.7071067811865476))


@numba.jit(**_GELU_JIT)
def _gelu_tanh(x, out):
    # 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        y = -2.0 * u
        y = y if y > -32.0 else -32.0
        y = y if y < 32.0 else 32.0
        e = _exp_bounded(y)
        out[i] = v / (1.0 + e)


def gelu(x, approximate: bool = False):
    """Gelu of float32 or float64 ``x`` in one vectorized pass (``approximate``: the tanh form)."""
    out = np.empty(x.shape, x.dtype)
    (_gelu_tanh if approximate else _gelu_erf)(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out


# ---- LayerNormalization -----------------------------------------------------------------------
@intrinsic
def _fma32(typingctx, a, b, c):
    """Fused multiply-add of three float32 values, rounded once (LLVM's ``llvm.fma.f32``: one
    ``vfmadd`` on FMA hardware, vectorizable)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)
    return sig, codegen


def _lanes(builder, vector, count):
    return [builder.extract_element(vector, ir.Constant(ir.IntType(32), j)) for j in range(count)]


@intrinsic
def _sum_lanes4_f64(typingctx, row, blocks):
    """float64 sum of contiguous float32 ``row[:4 * blocks]`` in 4 lanes (lane j adds elements
    4k + j in order), reduced as (l0 + l2) + (l1 + l3): MLAS's ``vcvtps2pd`` + ``vaddpd`` loop,
    written as LLVM vectors (Numba would leave the lanes scalar, and ``reassoc`` would change the
    order)."""
    if not (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C" and row.dtype == types.float32):
        return None
    sig = types.float64(row, types.intp)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        v4f, v4d = ir.VectorType(ir.FloatType(), 4), ir.VectorType(ir.DoubleType(), 4)
        acc = cgutils.alloca_once_value(builder, ir.Constant(v4d, None))
        with cgutils.for_range(builder, args[1]) as loop:
            offset = builder.mul(loop.index, ir.Constant(loop.index.type, 4))
            v = builder.load(builder.bitcast(builder.gep(data, [offset]), v4f.as_pointer()), align=4)
            builder.store(builder.fadd(builder.load(acc), builder.fpext(v, v4d)), acc)
        lane = _lanes(builder, builder.load(acc), 4)
        return builder.fadd(builder.fadd(lane[0], lane[2]), builder.fadd(lane[1], lane[3]))
    return sig, codegen


@intrinsic
def _centered_squares_lanes8_f32(typingctx, row, blocks, mean):
    """``acc = fma(x - mean, x - mean, acc)`` over contiguous float32 ``row[:8 * blocks]`` in 8
    float32 lanes (lane j: elements 8k + j in order), reduced as ((a0 + a4) + (a2 + a6)) +
    ((a1 + a5) + (a3 + a7)): MLAS's AVX2 ``vsubps`` + ``vfmadd`` loop and its horizontal sum."""
    if not (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C" and row.dtype == types.float32):
        return None
    sig = types.float32(row, types.intp, types.float32)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        v8 = ir.VectorType(ir.FloatType(), 8)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8, v8, v8]), "llvm.fma.v8f32")
        means = ir.Constant(v8, None)
        for j in range(8):
            means = builder.insert_element(means, args[2], ir.Constant(ir.IntType(32), j))
        acc = cgutils.alloca_once_value(builder, ir.Constant(v8, None))
        with cgutils.for_range(builder, args[1]) as loop:
            offset = builder.mul(loop.index, ir.Constant(loop.index.type, 8))
            v = builder.load(builder.bitcast(builder.gep(data, [offset]), v8.as_pointer()), align=4)
            d = builder.fsub(v, means)
            builder.store(builder.call(fma, [d, d, builder.load(acc)]), acc)
        a = _lanes(builder, builder.load(acc), 8)
        return builder.fadd(builder.fadd(builder.fadd(a[0], a[4]), builder.fadd(a[2], a[6])),
                            builder.fadd(builder.fadd(a[1], a[5]), builder.fadd(a[3], a[7])))
    return sig, codegen


_LN_JIT = dict(_JIT, error_model="numpy")


@numba.jit(**_LN_JIT)
def _layer_norm_row_f32(row, scale, bias, has_bias, epsilon, out):
    """One float32 row normalized as onnxruntime's CPU LayerNormalization does it, to the bit:
    returns its (mean, inv_std) as float32.

    onnxruntime (1.32, x86-64 with AVX2/FMA) calls ``MlasLayerNormF32``
    (onnxruntime/core/mlas/lib/layernorm.cpp) from ComputeJob in
    onnxruntime/core/providers/cpu/nn/layer_norm_impl.cc. For rows of 8 or more elements that is
    ``MlasLayerNormKernelAvx2`` (onnxruntime/core/mlas/lib/x86_64/layernorm_kernel_avx2.cpp), a
    centered two-pass kernel:

    * mean: a float64 sum in 4 lanes (lane j adds elements 4k + j), reduced as
      (l0 + l2) + (l1 + l3), then the remaining < 4 elements in order;
      ``mean = float32(sum / n)``;
    * var: ``d = x - mean`` in float32, ``fma(d, d, acc)`` in 8 float32 lanes, reduced as
      ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)); the compiler's tail handles 4 more
      elements as unfused products added in order, then the last < 4 by fma;
    * ``inv_std = 1 / sqrtf(var / n + epsilon)`` (float32);
    * ``y = fma((x - mean) * inv_std, scale, bias)``, or ``(x - mean) * inv_std * scale``
      without bias.

    Rows shorter than 8 fall back to ComputeJob's scalar float32 code: Welford's
    ``mean += delta / (h + 1); M2 += delta * (x - mean)`` (unfused), ``std = sqrtf(M2 / n +
    epsilon)``, ``y = (x - mean) / std * scale + bias``, inv_std = 1 / std."""
    n = row.shape[0]
    eps = np.float32(epsilon)
    nf = np.float32(n)
    if n < 8:
        mean = np.float32(0.0)
        m2 = np.float32(0.0)
        for h in range(n):
            delta = row[h] - mean
            mean = mean + delta / np.float32(h + 1)
            m2 = m2 + delta * (row[h] - mean)
        std = np.sqrt(m2 / nf + eps)
        for h in range(n):
            v = (row[h] - mean) / std * scale[h]
            out[h] = v + bias[h] if has_bias else v
        return mean, np.float32(1.0) / std
    n4 = n - n % 4
    total = _sum_lanes4_f64(row, n4 // 4)
    for k in range(n4, n):
        total += np.float64(row[k])
    mean = np.float32(total / n)
    n8 = n - n % 8
    var = _centered_squares_lanes8_f32(row, n8 // 8, mean)
    k = n8
    if n - k >= 4:
        for j in range(k, k + 4):
            d = row[j] - mean
            var = var + d * d
        k += 4
    for j in range(k, n):
        d = row[j] - mean
        var = _fma32(d, d, var)
    inv_std = np.float32(1.0) / np.sqrt(var / nf + eps)
    if has_bias:
        for h in range(n):
            out[h] = _fma32((row[h] - mean) * inv_std, scale[h], bias[h])
    else:
        for h in range(n):
            out[h] = (row[h] - mean) * inv_std * scale[h]
    return mean, inv_std


@numba.jit(**_LN_JIT)
def _layer_norm_f32(x, scale, bias, has_bias, epsilon, out, means, inv_stds):
    """Rows of float32 ``x[rows, n]``: :func:`_layer_norm_row_f32` each."""
    for r in range(x.shape[0]):
        means[r], inv_stds[r] = _layer_norm_row_f32(x[r], scale, bias, has_bias, epsilon, out[r])


@numba.jit(nopython=True, nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _row_moments(row):
    # float64 rows: sums in float64 (reassociated so that they vectorize), the mean and the variance
    total = 0.0
    squares = 0.0
    for i in range(row.shape[0]):
        v = np.float64(row[i])
        total += v
        squares += v * v
    mean = total / row.shape[0]
    return mean, max(squares / row.shape[0] - mean * mean, 0.0)


@numba.jit(**_JIT)
def _normalize_row(row, mean, inv_std, scale, bias, out):
    # float64 arithmetic (mean and inv_std are float64), rounded once to out's type
    for i in range(row.shape[0]):
        out[i] = (row[i] - mean) * inv_std * scale[i] + bias[i]


@numba.jit(**_JIT)
def _layer_norm(x, scale, bias, epsilon, out, means, inv_stds):
    """Rows of ``x[rows, n]`` normalized, scaled and shifted; each row's mean and 1/std kept."""
    for r in range(x.shape[0]):
        mean, var = _row_moments(x[r])
        inv_std = 1.0 / np.sqrt(var + epsilon)
        means[r] = mean
        inv_stds[r] = inv_std
        _normalize_row(x[r], mean, inv_std, scale, bias, out[r])


def layer_norm(x, scale, bias, axis: int, epsilon: float):
    """ONNX LayerNormalization (stash type float32) over the axes from ``axis`` of float32 or
    float64 ``x``: (y, mean, inv_std), the two statistics shaped ``x.shape[:axis] + (1,) * ...``.
    float32: onnxruntime's CPU arithmetic to the bit (:func:`_layer_norm_row_f32`); float64:
    float64 moments."""
    tail = x.shape[axis:]
    n = math.prod(tail)
    rows = math.prod(x.shape[:axis])
    dtype = x.dtype
    scale = np.asarray(scale, dtype)
    scale = scale.reshape(-1) if scale.shape == tail else np.ascontiguousarray(np.broadcast_to(scale, tail)).reshape(-1)
    has_bias = bias is not None
    if bias is None:
        bias = np.zeros(n, dtype)
    else:
        bias = np.asarray(bias, dtype)
        bias = bias.reshape(-1) if bias.shape == tail else np.ascontiguousarray(np.broadcast_to(bias, tail)).reshape(-1)
    out = np.empty(x.shape, dtype)
    stats_shape = x.shape[:axis] + (1,) * len(tail)
    means = np.empty(stats_shape, np.float32)
    inv_stds = np.empty(stats_shape, np.float32)
    if rows and n:
        args = (np.ascontiguousarray(x).reshape(rows, n), np.ascontiguousarray(scale), np.ascontiguousarray(bias))
        if dtype == np.float32:
            _layer_norm_f32(*args, has_bias, np.float32(epsilon), out.reshape(rows, n), means.reshape(-1),
                            inv_stds.reshape(-1))
        else:
            _layer_norm(*args, epsilon, out.reshape(rows, n), means.reshape(-1), inv_stds.reshape(-1))
    return out, means, inv_stds


# ---- means over trailing axes (ReduceMean over H, W; GlobalAveragePool) ------------------------
@numba.jit(nopython=True, nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _row_means(x, out):
    # float64 sums, reassociated so that they vectorize
    n = x.shape[1]
    for r in range(x.shape[0]):
        total = 0.0
        row = x[r]
        for i in range(n):
            total += row[i]
        out[r] = total / n


def mean_trailing(x, first_axis: int, keepdims: bool = True):
    """Mean of float32/float64 ``x`` over the axes from ``first_axis`` on, in one pass."""
    rows = math.prod(x.shape[:first_axis])
    n = math.prod(x.shape[first_axis:])
    shape = x.shape[:first_axis] + ((1,) * (x.ndim - first_axis) if keepdims else ())
    out = np.empty(shape, x.dtype)
    if n == 0:
        out.fill(np.nan)
        return out
    if rows:
        _row_means(np.ascontiguousarray(x).reshape(rows, n), out.reshape(-1))
    return out


# ---- Softmax over the last axis ---------------------------------------------------------------
@numba.jit(inline="always", **_GELU_JIT)
def _exp_nonpositive(y):
    """exp(y) for float64 ``y`` <= 0 (NaN passes through, below -88 gives 0): exp(y/128)**128,
    the inner exp by its Taylor series to degree 14 (relative error ~1e-12 after the seven
    squarings)."""
    z = (y if not (y < -88.0) else -88.0) * (1.0 / 128.0)
    p = 1.0 + z * (1.0 + z * (0.5 + z * (0.16666666666666666 + z * (0.041666666666666664 + z * (0.008333333333333333 + z * (0.001388888888888889 + z * (0.0001984126984126984 + z * (2.48015873015873e-05 + z * (2.7557319223985893e-06 + z * (2.755731922398589e-07 + z * (2.505210838544172e-08 + z * (2.08767569878681e-09 + z * (1.6059043836821613e-10 + z * (1.1470745597729725e-11))))))))))))))
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p if not (y < -88.0) else 0.0


@numba.jit(nopython=True, nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _sum64(row):
    total = 0.0
    for i in range(row.shape[0]):
        total += row[i]
    return total


@numba.jit(**_GELU_JIT)
def _softmax_rows(x, out):
    for r in range(x.shape[0]):
        _softmax_row(x[r], out[r])


@numba.jit(**_GELU_JIT)
def _softmax_row(row, dst):
    top = -np.inf
    for i in range(row.shape[0]):
        v = row[i]
        top = v if (v > top or v != v) else top
    for i in range(row.shape[0]):  # no reduction here: the loop vectorizes
        dst[i] = _exp_nonpositive(np.float64(row[i]) - top)
    scale = 1.0 / _sum64(dst)
    for i in range(row.shape[0]):
        dst[i] = np.float64(dst[i]) * scale


def softmax_rows(x, rows: int):
    """Softmax of float32/float64 ``x`` seen as ``[rows, -1]`` along its rows, one compiled
    pass per row for the max, one for exp and sum, one to scale."""
    out = np.empty(x.shape, x.dtype)
    if x.size:
        _softmax_rows(np.ascontiguousarray(x).reshape(rows, -1), out.reshape(rows, -1))
    return out


@numba.jit(**_JIT)
def _hard_sigmoid(x, alpha, beta, zero, one, out):
    # numpy's clip(x * alpha + beta, 0, 1): the same roundings (no FMA), NaN passes through
    for i in range(x.shape[0]):
        v = x[i] * alpha + beta
        if v < zero:
            v = zero
        elif v > one:
            v = one
        out[i] = v


def hard_sigmoid(x, alpha: float, beta: float):
    """HardSigmoid of float32 or float64 ``x`` in one pass."""
    t = x.dtype.type
    out = np.empty(x.shape, x.dtype)
    _hard_sigmoid(np.ascontiguousarray(x).reshape(-1), t(alpha), t(beta), t(0), t(1), out.reshape(-1))
    return out


# ---- nearest Resize over the last two axes ----------------------------------------------------
@numba.jit(**_JIT)
def _nearest_2d(x, rows, columns, out):
    """``out[p, y, j] = x[p, rows[y], columns[j]]``: each distinct source row gathered once into
    a scratch row, then copied (a vectorized copy) to every output row that repeats it."""
    scratch = np.empty(out.shape[2], out.dtype)
    for p in range(x.shape[0]):
        plane_in, plane_out = x[p], out[p]
        last = -1
        for y in range(out.shape[1]):
            r = rows[y]
            if r != last:
                src = plane_in[r]
                for j in range(scratch.shape[0]):
                    scratch[j] = src[columns[j]]
                last = r
            dst = plane_out[y]
            for j in range(scratch.shape[0]):
                dst[j] = scratch[j]


def nearest_2d(x, rows, columns):
    """Nearest-neighbour selection over the last two axes of ``x`` (any dtype) by index vectors."""
    out = np.empty(x.shape[:-2] + (rows.size, columns.size), x.dtype)
    if out.size:
        lead = math.prod(x.shape[:-2])
        _nearest_2d(np.ascontiguousarray(x).reshape((lead,) + x.shape[-2:]), rows.astype(np.intp, copy=False),
                    columns.astype(np.intp, copy=False), out.reshape((lead, rows.size, columns.size)))
    return out


# ---- per-channel affine (inference BatchNormalization) ----------------------------------------
@numba.jit(**_JIT)
def _channel_affine(x, a, shift, out):
    # x * a[c] + shift[c], two roundings as numpy's two passes make them (no FMA contraction)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            src, dst = x[n, c], out[n, c]
            scale, offset = a[c], shift[c]
            for i in range(src.shape[0]):
                dst[i] = src[i] * scale + offset


def channel_affine(x, a, shift):
    """``x * a + shift`` with ``a``, ``shift`` one value per channel (axis 1) of float32/float64
    ``x``, in one pass; the same values as numpy's broadcast multiply then add."""
    out = np.empty(x.shape, x.dtype)
    if x.size:
        view = (x.shape[0], x.shape[1], -1)
        _channel_affine(np.ascontiguousarray(x).reshape(view), np.ascontiguousarray(a, x.dtype),
                        np.ascontiguousarray(shift, x.dtype), out.reshape(view))
    return out


# ---- Sigmoid / SiLU (x * sigmoid(x)) ----------------------------------------------------------
@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits`` (vectorizable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


@numba.jit(inline="always", **_GELU_JIT)
def _exp32(v):
    """exp(v) for float32 ``v`` in float32 arithmetic (Cephes expf: within 1-2 ulp), all
    arithmetic so that LLVM vectorizes it. ``v`` is clamped to [-87.3, 88.3] (callers need only
    the limits: 0 and a finite huge value); NaN passes through."""
    v = v if not (v > np.float32(88.3)) else np.float32(88.3)
    v = v if not (v < np.float32(-87.3)) else np.float32(-87.3)
    t = v * np.float32(1.44269504088896341) + np.float32(12582912.0)
    n = t - np.float32(12582912.0)  # round(v / ln 2)
    r = v - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    scale = _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    return p * scale


@numba.jit(**_GELU_JIT)
def _sigmoid32(x, out):
    for i in range(x.shape[0]):
        out[i] = np.float32(1.0) / (np.float32(1.0) + _exp32(-x[i]))


@numba.jit(**_GELU_JIT)
def _silu32(x, out):
    # x * sigmoid(x), the two roundings of a Sigmoid node then a Mul node
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = v * (np.float32(1.0) / (np.float32(1.0) + _exp32(-v)))


@numba.jit(**_GELU_JIT)
def _silu32_in_place(x):
    # one array: a loop writing where it reads through a second argument would not vectorize
    for i in range(x.shape[0]):
        v = x[i]
        x[i] = v * (np.float32(1.0) / (np.float32(1.0) + _exp32(-v)))


def sigmoid(x, out=None):
    """Sigmoid of float32 ``x`` in one vectorized pass (float32 exp)."""
    if out is None:
        out = np.empty(x.shape, np.float32)
    _sigmoid32(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out


def silu(x, out=None):
    """``x * sigmoid(x)`` of float32 ``x`` in one pass; ``out`` may be ``x`` (in place)."""
    if out is None:
        out = np.empty(x.shape, np.float32)
    _silu32(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out


# ---- elementwise binary loops (same shapes, or the second operand one value) -------------------
# One kernel per op, exact IEEE arithmetic as numpy's: threaded chunks give the same bits.
@numba.jit(**_JIT)
def _add_relu(a, b, out):
    for i in range(out.shape[0]):
        v = a[i] + b[i]
        out[i] = v if not (v < 0) else 0


@numba.jit(**_JIT)
def _add(a, b, out):
    for i in range(out.shape[0]):
        out[i] = a[i] + b[i]


@numba.jit(**_JIT)
def _mul(a, b, out):
    for i in range(out.shape[0]):
        out[i] = a[i] * b[i]


@numba.jit(**_JIT)
def _sub(a, b, out):
    for i in range(out.shape[0]):
        out[i] = a[i] - b[i]


@numba.jit(**_GELU_JIT)
def _div(a, b, out):
    for i in range(out.shape[0]):
        out[i] = a[i] / b[i]


@numba.jit(**_JIT)
def _add_scalar(a, b, out):
    s = b[0]
    for i in range(out.shape[0]):
        out[i] = a[i] + s


@numba.jit(**_JIT)
def _mul_scalar(a, b, out):
    s = b[0]
    for i in range(out.shape[0]):
        out[i] = a[i] * s


@numba.jit(**_JIT)
def _sub_scalar(a, b, out):
    s = b[0]
    for i in range(out.shape[0]):
        out[i] = a[i] - s


@numba.jit(**_GELU_JIT)
def _div_scalar(a, b, out):
    s = b[0]
    for i in range(out.shape[0]):
        out[i] = a[i] / s


@numba.jit(**_JIT)
def _add_relu_scalar(a, b, out):
    s = b[0]
    for i in range(out.shape[0]):
        v = a[i] + s
        out[i] = v if not (v < 0) else 0


@numba.jit(**_JIT)
def _relu(a, out):
    for i in range(out.shape[0]):
        v = a[i]
        out[i] = v if not (v < 0) else 0


@numba.jit(**_JIT)
def _clip(a, lo, hi, out):
    # np.clip's order: min(max(a, lo), hi); NaN passes through
    for i in range(out.shape[0]):
        v = a[i]
        v = v if not (v < lo) else lo
        out[i] = v if not (v > hi) else hi


@numba.jit(**_JIT)
def _add_row(a, s, out):
    for i in range(out.shape[0]):
        out[i] = a[i] + s


@numba.jit(**_JIT)
def _mul_row(a, s, out):
    for i in range(out.shape[0]):
        out[i] = a[i] * s


@numba.jit(**_JIT)
def _sub_row(a, s, out):
    for i in range(out.shape[0]):
        out[i] = a[i] - s


@numba.jit(**_GELU_JIT)
def _div_row(a, s, out):
    for i in range(out.shape[0]):
        out[i] = a[i] / s


@numba.jit(**_JIT)
def _channels(op, a, b, first, last, out):
    """Rows ``first:last`` of ``a`` [N*C, HW] with one value per channel ``b`` [C] (0 add,
    1 multiply, 2 subtract, 3 divide)."""
    channels = b.shape[0]
    for p in range(first, last):
        s = b[p % channels]
        if op == 0:
            _add_row(a[p], s, out[p])
        elif op == 1:
            _mul_row(a[p], s, out[p])
        elif op == 2:
            _sub_row(a[p], s, out[p])
        else:
            _div_row(a[p], s, out[p])
