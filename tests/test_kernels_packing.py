"""The compiled VNNI weight packing against its numpy reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphopt.kernels as kernels
from graphopt.kernels.reference import pack_weights_vnni_reference


def check(w: np.ndarray) -> None:
    packed, sums = kernels.pack_weights_vnni(w)
    ref_packed, ref_sums = pack_weights_vnni_reference(w)
    assert packed.dtype == np.int8 and sums.dtype == np.int32
    np.testing.assert_array_equal(packed, ref_packed)
    np.testing.assert_array_equal(sums, ref_sums)


@pytest.mark.parametrize("k,n", [(1, 1), (3, 17), (4, 16), (64, 64), (67, 33), (255, 1000)])
def test_pack_matches_reference(k, n):
    check(np.random.default_rng(k * n).integers(-128, 128, (k, n), dtype=np.int8))


def test_pack_extremes_and_layout():
    w = np.full((5, 18), -128, np.int8)
    w[::2] = 127
    check(w)
    packed, sums = kernels.pack_weights_vnni(w)
    assert packed.shape == (2, 2, kernels.VNNI_N_PANEL, kernels.VNNI_K_GROUP)
    # Column 17 lives in panel 1, lane 1; K row 4 is group 1, slot 0; padding is zero.
    assert packed[1, 1, 1, 0] == w[4, 17] and packed[1, 1, 1, 1] == 0 and packed[1, 0, 2, 0] == 0
    assert sums[0] == 3 * 127 - 2 * 128


def test_pack_accepts_non_contiguous_views():
    w = np.random.default_rng(1).integers(-128, 128, (40, 30), dtype=np.int8)
    check(w[::2, 1::3])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 130), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_pack_property(k, n, seed):
    check(np.random.default_rng(seed).integers(-128, 128, (k, n), dtype=np.int8))
