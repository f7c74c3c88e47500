"""Quantized 2-D convolution, NCHW: uint8 activations x int8 weights, qgemm's epilogue.

Two families of paths, chosen by the weights' shape when they are packed:

* depthwise (groups == input channels == output channels): dedicated kernels
  (``depthwise.c``), since a GEMM with K = KH*KW and N = 1 per group does not fit. With AVX-512
  VBMI they read the NCHW planes directly, output pixels as vector lanes; otherwise portable
  loops run over a zero-point-padded channels-last copy;
* anything else: an implicit GEMM that never writes an im2col matrix (KH*KW times the image).
  Each image (and group) is copied once into a zero-point-padded workspace that the
  micro-kernel reads every tap from. Stride 1 on the VNNI path runs transposed: output channels
  are the GEMM's rows, the workspace holds planes of 4 channels whose rows share their border
  column with the next, and the sums come out pixel-contiguous as NCHW stores them (uint8
  output straight from the micro-kernel's registers). Other strides and ISAs read a
  channels-last workspace with pixels as rows.
  On the VNNI path, :class:`PreparedConv` reads pixels as rows in slabs that stop at the end
  of each output row, of a micro-kernel shape (6x4, 7x3 or 8x3) that fits the row (7x3 for
  rows of 7, 14, 28), also at stride 1 where that wastes less than the transposed path (7x7
  to 28x28 maps, whose planes' rows are cut into panels of 16 pixels); it writes an explicit
  im2col matrix after all for strided layers with at most 400 output pixels whose rows fit the
  slabs worse than the matrix's rows, which run across output rows.

The GEMM convolutions' threads run on a small pool of persistent workers (``qg_parallel_for`` in ``qgemm.c``)
rather than OpenMP: the caller waits only for tiles that a worker has actually taken, so a worker
whose core is busy elsewhere costs nothing, where an OpenMP region's closing barrier waited for it.

Every path writes ``[pixels, out channels]`` straight into the NCHW output through a transposed
view, so no path transposes afterwards.
"""
import numpy as np

from graphopt.kernels._conv import (PreparedConv, conv_output_size, depthwise_conv2d,
                                    implicit_conv2d, pack_depthwise)
from graphopt.kernels._qgemm import ISA_NAMES, isa, pack_weights


class PackedConvWeights:
    """int8 ``w[OC, C/groups, KH, KW]`` packed once for :func:`qconv2d`."""

    def __init__(self, w, groups=1):
        w = np.asarray(w)
        if w.ndim != 4 or w.dtype != np.int8:
            raise ValueError(f"conv weights must be int8 [OC, C/groups, KH, KW], got {w.dtype} {w.shape}")
        out_channels, group_channels, kh, kw = w.shape
        if groups < 1 or out_channels % groups:
            raise ValueError(f"{out_channels} output channels do not split into {groups} groups")
        self.groups, self.out_channels, self.group_channels = groups, out_channels, group_channels
        self.kernel = (kh, kw)
        self.depthwise = groups > 1 and group_channels == 1 and out_channels == groups
        if self.depthwise:
            self.depthwise_weights = pack_depthwise(w[:, 0])
            return
        per_group = out_channels // groups
        # [OCg, Cg, KH, KW] -> [KH*KW*C4, OCg]: rows in the workspace's order (kh, kw, c), with
        # channels padded to a multiple of 4 by zero rows (vpdpbusd reads 4 channels at a time).
        c4 = -(-group_channels // 4) * 4
        # weight_rows[g]: the same matrix transposed, [OCg, KH*KW*C4], for the transposed path.
        taps = np.zeros((per_group, kh, kw, c4), np.int8)
        self.gemm_weights, self.weight_rows = [], []
        for g in range(groups):
            taps[..., :group_channels] = w[g * per_group:(g + 1) * per_group].transpose(0, 2, 3, 1)
            self.weight_rows.append(taps.reshape(per_group, -1).copy())
            self.gemm_weights.append(pack_weights(np.ascontiguousarray(taps.reshape(per_group, -1).T)))


def pack_conv_weights(w, groups=1):
    """Pack conv weights once (at session creation) for :func:`qconv2d`."""
    return PackedConvWeights(w, groups)


def _pair(value):
    return (value, value) if isinstance(value, (int, np.integer)) else tuple(value)


def _pads(padding):
    """int, (pad_h, pad_w) or ONNX's (top, left, bottom, right)."""
    if isinstance(padding, (int, np.integer)):
        return (padding,) * 4
    padding = tuple(padding)
    return padding * 2 if len(padding) == 2 else padding


def qconv2d(x, x_zero_point, weights, *, stride=1, padding=0, dilation=1, bias=None, scale=None,
            output="int32", out_scale=None, out_zero_point=0, relu=False, clip=None, threads=1,
            isa_name=None):
    """Convolution of uint8 ``x[N, C, H, W]`` with packed weights, returning ``[N, OC, OH, OW]``.

    The epilogue (bias, per-tensor or per-output-channel scale, ReLU / Clip, int32, uint8 or
    float32 output) is :func:`graphopt.kernels.qgemm`'s, channel by channel. ``isa_name`` picks
    the GEMM's micro-kernel (stride-1 convolutions on the ``vnni`` path run transposed, output
    channels as rows); the depthwise kernel reads NCHW planes with AVX-512 VBMI on the ``vnni``
    and ``amx`` paths when the CPU has it, and runs portable loops otherwise. A convolution
    repeated with the same weights, geometry and epilogue costs less per call as a
    :class:`PreparedConv` (same arguments, same results).
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"x must be uint8 [N, C, H, W], got {x.dtype} {x.shape}")
    if not 0 <= x_zero_point <= 255:
        raise ValueError(f"x_zero_point must be in [0, 255], got {x_zero_point}")
    if x.shape[1] != weights.group_channels * weights.groups:
        raise ValueError(f"x has {x.shape[1]} channels but the weights expect "
                         f"{weights.group_channels * weights.groups}")
    stride, dilation, pads = _pair(stride), _pair(dilation), _pads(padding)
    if min(pads) < 0 or min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"pads must be >= 0 and stride, dilation >= 1, got pads {pads}, "
                         f"stride {stride}, dilation {dilation}")
    (kh, kw), (batch, _, height, width) = weights.kernel, x.shape
    oh = conv_output_size(height, kh, stride[0], pads[0], pads[2], dilation[0])
    ow = conv_output_size(width, kw, stride[1], pads[1], pads[3], dilation[1])
    oc = weights.out_channels
    out = np.empty((batch, oc, max(oh, 0), max(ow, 0)), _dtype(output))
    path = isa(isa_name)
    geometry = ((kh, kw), stride, pads, dilation)
    if weights.depthwise:
        for b in range(batch):
            depthwise_conv2d(x[b], x_zero_point, weights.depthwise_weights, *geometry,
                             out[b].reshape(oc, -1).T, bias=bias, scale=scale, output=output,
                             out_scale=out_scale, out_zero_point=out_zero_point, relu=relu,
                             clip=clip, threads=threads, vectorized=path in ("vnni", "amx"))
        return out
    per_group, cg = oc // weights.groups, weights.group_channels
    if weights.groups > 1:
        bias = None if bias is None else np.asarray(bias)
        scale = None if scale is None else np.asarray(scale, np.float32)
    isa_code = ISA_NAMES[path]
    for b in range(batch):
        for g in range(weights.groups):
            group_bias, group_scale = bias, scale
            if weights.groups > 1:
                channels = slice(g * per_group, (g + 1) * per_group)
                group_bias = None if bias is None else bias[channels]
                group_scale = scale if scale is None or scale.size == 1 else scale[channels]
            implicit_conv2d(x[b, g * cg:(g + 1) * cg], x_zero_point, weights.gemm_weights[g],
                            *geometry, out[b, g * per_group:(g + 1) * per_group].reshape(per_group, -1).T,
                            bias=group_bias, scale=group_scale, output=output,
                            out_scale=out_scale, out_zero_point=out_zero_point, relu=relu,
                            clip=clip, threads=threads, isa_code=isa_code,
                            weight_rows=weights.weight_rows[g])
    return out


def _dtype(output):
    dtypes = {"int32": np.int32, "uint8": np.uint8, "float32": np.float32}
    if output not in dtypes:
        raise ValueError(f"output must be one of {', '.join(dtypes)}, got {output!r}")
    return dtypes[output]
