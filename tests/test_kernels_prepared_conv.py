"""PreparedConv (qconv2d with weights, geometry, epilogue and threads fixed once) bit-exact against
qconv2d itself, on the odd shapes of test_kernels_conv plus depthwise, 1x1 and stride-2 layers."""
import numpy as np
import pytest

import graphopt.kernels as kernels
from tests.test_kernels_conv import CASES

MORE = {
    # batch, C, H, W, OC, KH, KW, groups, stride, pads, dilation
    "tiny 3x3": (1, 16, 8, 8, 16, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1)),
    "depthwise stride 2, odd": (3, 11, 9, 7, 11, 3, 3, 11, (2, 2), (1, 1, 1, 1), (1, 1)),
    "1x1 odd channels": (2, 13, 5, 3, 9, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "stride 2, grouped, batch 3": (3, 12, 9, 11, 6, 3, 3, 3, (2, 2), (1, 0, 1, 2), (1, 1)),
    "empty output": (1, 4, 2, 2, 5, 3, 3, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
}
ALL = {**CASES, **MORE}
EPILOGUES = {
    "int32": dict(output="int32"),
    "int32 relu": dict(output="int32", relu=True),
    "uint8 per channel": dict(output="uint8", out_scale=0.05, out_zero_point=9, relu=True),
    "uint8 per tensor clip": dict(output="uint8", out_scale=0.02, out_zero_point=128, clip=(-1.0, 6.0)),
    "float32": dict(output="float32", clip=(-1.0, 6.0)),
}


def _case(case, seed=0):
    n, c, h, w_, oc, kh, kw, groups, stride, pads, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, c, h, w_), dtype=np.uint8)
    w = rng.integers(-128, 128, (oc, c // groups, kh, kw), dtype=np.int8)
    bias = rng.integers(-2000, 2000, oc, dtype=np.int32)
    geometry = dict(stride=stride, padding=pads, dilation=dilation)
    return x, kernels.pack_conv_weights(w, groups), bias, geometry, rng


@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("threads", [1, 2])
def test_prepared_matches_qconv2d(name, epilogue, threads):
    x, packed, bias, geometry, rng = _case(ALL[name])
    kwargs = dict(EPILOGUES[epilogue], bias=bias, threads=threads, **geometry)
    if kwargs["output"] != "int32":
        oc = packed.out_channels
        kwargs["scale"] = (rng.uniform(1e-4, 1e-3, oc).astype(np.float32) if "per channel" in epilogue
                           or epilogue == "float32" else np.float32(4e-4))
    for isa in kernels.supported_isas():
        prepared = kernels.PreparedConv(packed, 77, isa_name=isa, **kwargs)
        want = kernels.qconv2d(x, 77, packed, isa_name=isa, **kwargs)
        for _ in range(2):  # the second call runs from the cached shape plan
            got = prepared(x)
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        out = np.full_like(want, 3)
        assert prepared(x, out=out) is out
        np.testing.assert_array_equal(out, want)


def test_shapes_and_zero_points_alternate():
    """One PreparedConv across input sizes (its per-shape plans) and two of them with different
    zero points sharing the thread's workspace."""
    x, packed, bias, geometry, _ = _case(ALL["stride 1, dilated, past one tile"])
    for isa in kernels.supported_isas():
        a = kernels.PreparedConv(packed, 250, bias=bias, isa_name=isa, **geometry)
        b = kernels.PreparedConv(packed, 3, bias=bias, isa_name=isa, **geometry)
        for sub in (x, x[:1, :, :11, :7], x, x[:, :, 5:, 3:]):
            for prepared, zp in ((a, 250), (b, 3)):
                want = kernels.qconv2d(sub, zp, packed, bias=bias, isa_name=isa, **geometry)
                np.testing.assert_array_equal(prepared(sub), want)  # sub may be non-contiguous


def test_rejects_bad_arguments():
    x, packed, bias, geometry, _ = _case(ALL["3x3 pad 1"])
    prepared = kernels.PreparedConv(packed, 5, bias=bias, **geometry)
    with pytest.raises(ValueError):
        prepared(x.astype(np.int8))
    with pytest.raises(ValueError):
        prepared(x[:, :2])
    with pytest.raises(ValueError):
        prepared(x, out=np.empty((1, 5, 7, 9), np.float32))
    with pytest.raises(ValueError):
        kernels.PreparedConv(packed, 256)
    with pytest.raises(ValueError):
        kernels.PreparedConv(packed, 0, output="uint8")
    with pytest.raises(ValueError):
        kernels.PreparedConv(packed, 0, stride=0)


def test_grouped_per_tensor_scale_matches_reference():
    """A grouped (not depthwise) convolution with one scale for every channel: qconv2d used to
    drop the scale per group and raise; both now keep it."""
    from graphopt.kernels.reference import qconv2d_reference
    case = ALL["stride 2, grouped, batch 3"]
    x, packed, bias, geometry, _ = _case(case)
    n, c, h, w_, oc, kh, kw, groups, stride, pads, dilation = case
    rng = np.random.default_rng(0)  # _case's draws, again, for the unpacked weights
    rng.integers(0, 256, (n, c, h, w_), dtype=np.uint8)
    weights = rng.integers(-128, 128, (oc, c // groups, kh, kw), dtype=np.int8)
    epilogue = dict(scale=np.float32(4e-4), output="uint8", out_scale=0.05, out_zero_point=9)
    want = qconv2d_reference(x, 30, weights, groups=groups, stride=stride, pads=pads,
                             dilation=dilation, bias=bias, **epilogue)
    np.testing.assert_array_equal(kernels.qconv2d(x, 30, packed, bias=bias, **geometry, **epilogue), want)
    np.testing.assert_array_equal(kernels.PreparedConv(packed, 30, bias=bias, **geometry, **epilogue)(x), want)
