"""Slow, obviously-correct numpy references for the compiled kernels."""
import numpy as np

VNNI_K_GROUP = 4
VNNI_N_PANEL = 16


def pack_weights_vnni_reference(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as :func:`graphopt.kernels.pack_weights_vnni`, written with numpy reshapes."""
    k_dim, n_dim = w.shape
    k_pad = -k_dim % VNNI_K_GROUP
    n_pad = -n_dim % VNNI_N_PANEL
    padded = np.pad(w.astype(np.int8), ((0, k_pad), (0, n_pad)))
    k_groups = padded.shape[0] // VNNI_K_GROUP
    n_panels = padded.shape[1] // VNNI_N_PANEL
    # [K/4, 4, N/16, 16] -> [N/16, K/4, 16, 4]
    blocked = padded.reshape(k_groups, VNNI_K_GROUP, n_panels, VNNI_N_PANEL)
    packed = np.ascontiguousarray(blocked.transpose(2, 0, 3, 1))
    col_sums = w.astype(np.int32).sum(axis=0, dtype=np.int32)
    return packed, col_sums


def qgemm_reference(a, a_zero_point, w, *, bias=None, scale=None, output="int32", out_scale=None,
                    out_zero_point=0, relu=False, clip=None):
    """The epilogue of :func:`graphopt.kernels.qgemm`, step by step in numpy (int64 sums)."""
    acc = (a.astype(np.int64) - a_zero_point) @ w.astype(np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)
    y = acc.astype(np.int32)
    return apply_epilogue_reference(y, scale=scale, output=output, out_scale=out_scale,
                                    out_zero_point=out_zero_point, relu=relu, clip=clip)


def apply_epilogue_reference(y, *, scale=None, output="int32", out_scale=None, out_zero_point=0,
                             relu=False, clip=None):
    """int32 ``y[M, N]`` (channels along N) to the requested output, as the kernels define it."""
    if output == "int32":
        return np.maximum(y, 0) if relu else y
    n = y.shape[1]
    scale = np.broadcast_to(np.asarray(scale, np.float32), (n,))
    lo, hi = (-np.inf, np.inf) if clip is None else clip
    if relu:
        lo = max(lo, 0.0)
    if output == "float32":
        v = y.astype(np.float32) * scale
        return np.minimum(np.maximum(v, np.float32(lo)), np.float32(hi))
    out_scale = np.float32(out_scale)
    v = y.astype(np.float32) * (scale / out_scale).astype(np.float32)
    q = np.rint(v).astype(np.int64) + out_zero_point
    qlo, qhi = 0, 255
    if np.isfinite(lo):
        qlo = max(qlo, int(np.rint(np.float32(lo) / out_scale)) + out_zero_point)
    if np.isfinite(hi):
        qhi = min(qhi, int(np.rint(np.float32(hi) / out_scale)) + out_zero_point)
    return np.clip(q, max(qlo, 0), max(min(qhi, 255), 0)).astype(np.uint8)


def qconv2d_reference(x, x_zero_point, w, *, groups=1, stride=(1, 1), pads=(0, 0, 0, 0),
                      dilation=(1, 1), bias=None, **epilogue):
    """NCHW convolution by shifted slices of the zero-point-padded input, summed in int64."""
    batch, channels, _, _ = x.shape
    out_channels, group_channels, kh, kw = w.shape
    per_group = out_channels // groups
    padded = np.pad(x.astype(np.int64) - x_zero_point,
                    ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (padded.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (padded.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    acc = np.zeros((batch, out_channels, oh, ow), np.int64)
    for g in range(groups):
        xs = padded[:, g * group_channels:(g + 1) * group_channels]
        ws = w[g * per_group:(g + 1) * per_group].astype(np.int64)
        for i in range(kh):
            for j in range(kw):
                window = xs[:, :, i * dilation[0]:i * dilation[0] + stride[0] * (oh - 1) + 1:stride[0],
                            j * dilation[1]:j * dilation[1] + stride[1] * (ow - 1) + 1:stride[1]]
                acc[:, g * per_group:(g + 1) * per_group] += np.einsum("bchw,oc->bohw", window,
                                                                        ws[:, :, i, j])
    if bias is not None:
        acc += np.asarray(bias, np.int64)[None, :, None, None]
    rows = acc.astype(np.int32).transpose(0, 2, 3, 1).reshape(-1, out_channels)
    y = apply_epilogue_reference(rows, **epilogue)
    return y.reshape(batch, oh, ow, out_channels).transpose(0, 3, 1, 2)


def quantize_linear_reference(x, scale, zero_point):
    """onnxruntime's QuantizeLinear to uint8: float32 division, half to even, saturation."""
    q = np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32)) + np.asarray(zero_point)
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_linear_reference(q, scale, zero_point):
    return (q.astype(np.int32) - np.asarray(zero_point, np.int32)).astype(np.float32) * \
        np.asarray(scale, np.float32)
