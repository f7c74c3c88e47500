"""qconv2d (implicit GEMM, plain and transposed, and the depthwise kernels) bit-exact against the
numpy reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphopt.kernels as kernels
from graphopt.kernels._conv import channels_last
from graphopt.kernels.reference import qconv2d_reference

# batch, C, H, W, OC, KH, KW, groups, stride, pads (top, left, bottom, right), dilation
CASES = {
    "3x3 pad 1": (1, 3, 7, 9, 5, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1)),
    "asymmetric everything": (2, 8, 10, 11, 6, 3, 2, 2, (2, 1), (0, 1, 2, 0), (1, 2)),
    "1x1 direct": (1, 16, 9, 9, 8, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "1x1 strided, grouped": (2, 16, 9, 9, 8, 1, 1, 2, (2, 2), (0, 0, 0, 0), (1, 1)),
    "1x1 padded (im2col)": (1, 5, 4, 6, 7, 1, 1, 1, (1, 1), (1, 0, 0, 2), (1, 1)),
    "depthwise 3x3": (2, 6, 13, 12, 6, 3, 3, 6, (1, 1), (1, 1, 1, 1), (1, 1)),
    "depthwise strided dilated": (1, 6, 13, 12, 6, 5, 3, 6, (2, 3), (2, 0, 1, 2), (2, 1)),
    "depthwise dilated stride 1": (1, 4, 9, 10, 4, 3, 3, 4, (1, 1), (2, 2, 2, 2), (2, 2)),
    "K past one KC block (1024)": (1, 120, 6, 6, 20, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1)),
    # Stride 1 on the VNNI path runs transposed (output channels x pixels): channels not a
    # multiple of 4, rows of 16+ pixels with a ragged end, more than one tile of pixels and
    # output channels past a slab of 8; the other paths read channels-last slabs of pixels that
    # run across rows (stride 1) or stop at a row's end (stride 2).
    "stride 1, 37 wide, ragged channels": (1, 7, 9, 37, 19, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1)),
    "stride 1, dilated, past one tile": (2, 13, 30, 29, 11, 3, 2, 1, (1, 1), (2, 0, 1, 3), (2, 2)),
    "stride 2, wide rows": (1, 9, 11, 40, 13, 3, 3, 1, (2, 2), (1, 1, 1, 1), (1, 1)),
    "1x1, 18 wide": (1, 20, 5, 18, 70, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    # Depthwise: one register per input row (narrow), 16-output blocks (wide), kernels wider
    # than one quad of taps, and a geometry the VBMI kernel cannot reach (portable loops).
    "depthwise narrow 3x3, 56 wide": (1, 5, 8, 56, 5, 3, 3, 5, (1, 1), (1, 1, 1, 1), (1, 1)),
    "depthwise wide, 100 wide": (1, 3, 6, 100, 3, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "depthwise 7x5 stride 2": (1, 4, 15, 70, 4, 7, 5, 4, (2, 2), (3, 2, 3, 2), (1, 1)),
    "depthwise out of VBMI reach": (1, 3, 9, 90, 3, 3, 7, 3, (1, 4), (1, 3, 1, 3), (1, 3)),
}


def run_case(case, x_zero_point, seed=0, threads=1, isa=None, **epilogue):
    n, c, h, w_, oc, kh, kw, groups, stride, pads, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, c, h, w_), dtype=np.uint8)
    w = rng.integers(-128, 128, (oc, c // groups, kh, kw), dtype=np.int8)
    bias = rng.integers(-2000, 2000, oc, dtype=np.int32)
    packed = kernels.pack_conv_weights(w, groups)
    got = kernels.qconv2d(x, x_zero_point, packed, stride=stride, padding=pads, dilation=dilation,
                          bias=bias, threads=threads, isa_name=isa, **epilogue)
    ref = qconv2d_reference(x, x_zero_point, w, groups=groups, stride=stride, pads=pads,
                            dilation=dilation, bias=bias, **epilogue)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)
    return packed


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("isa", kernels.supported_isas())
def test_int32_matches_reference(name, isa):
    run_case(CASES[name], 77, isa=isa, threads=2 if isa == "vnni" else 1)


@pytest.mark.parametrize("name", CASES)
def test_requantized_outputs_match_reference(name):
    scale = np.random.default_rng(1).uniform(1e-4, 1e-3, CASES[name][4]).astype(np.float32)
    run_case(CASES[name], 200, output="uint8", scale=scale, out_scale=0.05, out_zero_point=9,
             relu=True)
    run_case(CASES[name], 0, output="float32", scale=scale, clip=(-1.0, 6.0), threads=2)


def test_workspace_reuse_across_sizes_and_zero_points():
    """The padded image lives in a reused workspace: borders must follow each call's zero point,
    and a smaller image must not see the larger one's leftovers."""
    for case, zp in ((CASES["stride 1, dilated, past one tile"], 250),
                     (CASES["3x3 pad 1"], 3), (CASES["stride 2, wide rows"], 128),
                     (CASES["3x3 pad 1"], 200), (CASES["depthwise out of VBMI reach"], 17)):
        for isa in kernels.supported_isas():
            run_case(case, zp, isa=isa)


def test_paths_are_chosen_by_shape():
    assert kernels.pack_conv_weights(np.ones((6, 1, 3, 3), np.int8), groups=6).depthwise
    assert not kernels.pack_conv_weights(np.ones((12, 1, 3, 3), np.int8), groups=6).depthwise
    assert not kernels.pack_conv_weights(np.ones((6, 2, 3, 3), np.int8), groups=3).depthwise


def test_extreme_values():
    case = CASES["3x3 pad 1"]
    n, c, h, w_, oc, kh, kw = case[:7]
    x = np.full((n, c, h, w_), 255, np.uint8)
    w = np.full((oc, c, kh, kw), -128, np.int8)
    got = kernels.qconv2d(x, 0, kernels.pack_conv_weights(w), padding=1)
    np.testing.assert_array_equal(got, qconv2d_reference(x, 0, w, pads=(1, 1, 1, 1)))


def test_rejects_bad_arguments():
    packed = kernels.pack_conv_weights(np.ones((4, 2, 3, 3), np.int8), groups=2)
    with pytest.raises(ValueError, match="channels"):
        kernels.qconv2d(np.zeros((1, 3, 5, 5), np.uint8), 0, packed)
    with pytest.raises(ValueError, match="uint8"):
        kernels.qconv2d(np.zeros((1, 4, 5, 5), np.float32), 0, packed)
    with pytest.raises(ValueError, match="x_zero_point"):
        kernels.qconv2d(np.zeros((1, 4, 5, 5), np.uint8), 256, packed)
    with pytest.raises(ValueError, match="groups"):
        kernels.pack_conv_weights(np.ones((5, 2, 3, 3), np.int8), groups=2)


@settings(max_examples=80, deadline=None)
@given(c=st.integers(1, 9), per_group_out=st.integers(1, 20), groups=st.integers(1, 3),
       h=st.integers(3, 12), w=st.integers(3, 70), kh=st.integers(1, 3), kw=st.integers(1, 6),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pads=st.tuples(*[st.integers(0, 2)] * 4), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       depthwise=st.booleans(), zp=st.integers(0, 255), seed=st.integers(0, 2**31 - 1),
       isa=st.sampled_from(kernels.supported_isas()), threads=st.integers(1, 2))
def test_property_matches_reference(c, per_group_out, groups, h, w, kh, kw, stride, pads,
                                    dilation, depthwise, zp, seed, isa, threads):
    if depthwise:
        groups, c_total, oc = c, c, c
    else:
        c_total, oc = c * groups, per_group_out * groups
    if h + pads[0] + pads[2] < dilation[0] * (kh - 1) + 1 or \
            w + pads[1] + pads[3] < dilation[1] * (kw - 1) + 1:
        return  # the window does not fit: no output
    run_case((1, c_total, h, w, oc, kh, kw, groups, stride, pads, dilation), zp, seed,
             threads=threads, isa=isa)


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 40), h=st.integers(1, 20), w=st.integers(1, 20),
       seed=st.integers(0, 2**31 - 1))
def test_channels_last_property(c, h, w, seed):
    """The SSE2 16 x 16 block transposition and its ragged edges."""
    x = np.random.default_rng(seed).integers(0, 256, (c, h, w), dtype=np.uint8)
    np.testing.assert_array_equal(channels_last(x), x.reshape(c, -1).T)
