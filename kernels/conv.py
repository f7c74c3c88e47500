"""Quantized 2-D convolution, NCHW: uint8 activations x int8 weights, qgemm's epilogue.

Three paths, chosen by the weights' shape when they are packed:

* depthwise (groups == input channels == output channels): a dedicated kernel
  (``depthwise.c``), since a GEMM with K = KH*KW and N = 1 per group does not fit;
* 1x1 without padding: direct, the GEMM reads the input, made channels-last, as ``[H*W, C]``;
* anything else: im2col per image and group (rows of (kh, kw, c)), then qgemm.

The GEMM computes ``[pixels, out channels]`` and writes it straight into the NCHW output through a
transposed view, so no path transposes afterwards.
"""
import numpy as np

from graphopt.kernels._conv import channels_last, conv_output_size, depthwise_conv2d_sums
from graphopt.kernels._qgemm import pack_weights, qgemm, requantize_accumulators
from graphopt.kernels.glue import im2col


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
            self.filters = np.ascontiguousarray(w[:, 0])
            return
        per_group = out_channels // groups
        # [OCg, Cg, KH, KW] -> [KH*KW*Cg, OCg]: rows in im2col's column order (kh, kw, c).
        self.gemm_weights = [pack_weights(np.ascontiguousarray(
            w[g * per_group:(g + 1) * per_group].transpose(0, 2, 3, 1).reshape(per_group, -1).T))
            for g in range(groups)]


def pack_conv_weights(w, groups=1):
    """Pack conv weights once (at session creation) for :func:`qconv2d`."""
    return PackedConvWeights(w, groups)


def _pair(value):
    return (value, value) if np.isscalar(value) else tuple(value)


def _pads(padding):
    """int, (pad_h, pad_w) or ONNX's (top, left, bottom, right)."""
    if np.isscalar(padding):
        return (padding,) * 4
    padding = tuple(padding)
    return padding * 2 if len(padding) == 2 else padding


def qconv2d(x, x_zero_point, weights, *, stride=1, padding=0, dilation=1, bias=None, scale=None,
            output="int32", out_scale=None, out_zero_point=0, relu=False, clip=None, threads=1,
            isa_name=None):
    """Convolution of uint8 ``x[N, C, H, W]`` with packed weights, returning ``[N, OC, OH, OW]``.

    The epilogue (bias, per-tensor or per-output-channel scale, ReLU / Clip, int32, uint8 or
    float32 output) is :func:`graphopt.kernels.qgemm`'s, channel by channel. ``isa_name`` picks
    the GEMM's micro-kernel; the depthwise and layout kernels are vectorized by the compiler for
    each ISA (``target_clones``) and follow the CPU, not ``GRAPHOPT_ISA``.
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
    (kh, kw), (batch, _, height, width) = weights.kernel, x.shape
    oh = conv_output_size(height, kh, stride[0], pads[0], pads[2], dilation[0])
    ow = conv_output_size(width, kw, stride[1], pads[1], pads[3], dilation[1])
    epilogue = dict(output=output, out_scale=out_scale, out_zero_point=out_zero_point, relu=relu,
                    clip=clip)
    oc = weights.out_channels
    scale = None if scale is None else np.broadcast_to(np.asarray(scale, np.float32), (oc,))
    if weights.depthwise:
        sums = depthwise_conv2d_sums(x, x_zero_point, weights.filters, stride, pads, dilation,
                                    threads)
        # Each image's [C, OH*OW] sums, seen as [pixels, channels] like a GEMM's output.
        out = np.empty((batch, oc, oh, ow), _dtype(output))
        for b in range(batch):
            requantize_accumulators(sums[b].reshape(oc, -1).T, bias=bias, scale=scale,
                                    out=out[b].reshape(oc, -1).T, **epilogue)
        return out
    out = np.empty((batch, oc, oh, ow), _dtype(output))
    per_group, cg = oc // weights.groups, weights.group_channels
    direct = (kh, kw) == (1, 1) and pads == (0, 0, 0, 0)
    for b in range(batch):
        for g in range(weights.groups):
            channels = slice(g * per_group, (g + 1) * per_group)
            x_g = x[b, g * cg:(g + 1) * cg]
            if direct:
                a = channels_last(x_g[:, ::stride[0], ::stride[1]])
            else:
                a = im2col(x_g, x_zero_point, (kh, kw), stride, pads, dilation)
            qgemm(a, x_zero_point, weights.gemm_weights[g],
                  bias=None if bias is None else np.asarray(bias)[channels],
                  scale=None if scale is None else scale[channels],
                  out=out[b, channels].reshape(per_group, -1).T, threads=threads,
                  isa_name=isa_name, **epilogue)
    return out


def _dtype(output):
    dtypes = {"int32": np.int32, "uint8": np.uint8, "float32": np.float32}
    if output not in dtypes:
        raise ValueError(f"output must be one of {', '.join(dtypes)}, got {output!r}")
    return dtypes[output]
