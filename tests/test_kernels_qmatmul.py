"""uint8 x uint8 activation products (graphopt.kernels._qmatmul) against an int64 numpy reference,
and the runtime's ActivationProduct on it against the BLAS path it replaces."""
import numpy as np
import pytest

qmm = pytest.importorskip("graphopt.kernels._qmatmul")
needs_vnni = pytest.mark.skipif(not qmm.supported(), reason="this CPU has no AVX-512 VNNI")

SHAPES = [  # (batch, m, k, n): attention's, then every remainder of the 6 x 32 tile and of K's quads
    (4, 32, 64, 32), (4, 32, 32, 64), (1, 1, 1, 1), (3, 7, 5, 45), (2, 13, 300, 17), (1, 40, 129, 33),
    (2, 6, 4, 16), (1, 5, 3, 31), (2, 12, 258, 64), (1, 2, 2, 100),
]


def operands(rng, batch, m, k, n, b_layout):
    a = rng.integers(0, 256, (batch, m, k), dtype=np.uint8)
    if b_layout == "rows":
        b = rng.integers(0, 256, (batch, k, n), dtype=np.uint8)
    else:  # a transposed view, as attention's Kᵀ arrives: unit stride down each column
        b = rng.integers(0, 256, (batch, n, k), dtype=np.uint8).transpose(0, 2, 1)
    return a, b


@needs_vnni
@pytest.mark.parametrize("b_layout", ["rows", "columns"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float_output_is_the_exact_sums_scaled(shape, b_layout):
    rng = np.random.default_rng(sum(shape))
    a, b = operands(rng, *shape, b_layout)
    for za, zb in [(0, 0), (255, 255), (int(rng.integers(256)), int(rng.integers(256)))]:
        sums = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
        out = np.empty(sums.shape, np.float32)
        qmm.activation_product(a, za, b, zb, out, scale=0.125)
        np.testing.assert_array_equal(out, sums.astype(np.float32) * np.float32(0.125))


@needs_vnni
@pytest.mark.parametrize("b_layout", ["rows", "columns"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_uint8_output_is_requantized_and_clamped(shape, b_layout):
    rng = np.random.default_rng(7 + sum(shape))
    a, b = operands(rng, *shape, b_layout)
    za, zb = int(rng.integers(256)), int(rng.integers(256))
    sums = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    mult = np.float32(100.0 / max(1, np.abs(sums).max()))  # spreads the sums over [-100, 100]
    for low, high in [(0, 255), (130, 200)]:
        out = np.empty(sums.shape, np.uint8)
        qmm.activation_product(a, za, b, zb, out, mult=mult, zero_point=128, low=low, high=high)
        expected = np.clip(np.rint(sums.astype(np.float32) * mult) + np.float32(128), low, high)
        np.testing.assert_array_equal(out, expected.astype(np.uint8))


@needs_vnni
def test_a_with_strided_rows_is_read_in_place():
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 256, (2, 9, 80), dtype=np.uint8)
    a, b = wide[:, :, 3:67], rng.integers(0, 256, (2, 64, 20), dtype=np.uint8)
    out = np.empty((2, 9, 20), np.float32)
    qmm.activation_product(a, 10, b, 20, out)
    np.testing.assert_array_equal(out, ((a.astype(np.int64) - 10) @ (b.astype(np.int64) - 20)).astype(np.float32))


def test_bad_operands_are_refused():
    a, b = np.zeros((1, 2, 3), np.uint8), np.zeros((1, 4, 5), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        qmm.activation_product(a, 0, b, 0, np.empty((1, 2, 5), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        qmm.activation_product(a, 0, b[:, :3], 0, np.empty((1, 2, 4), np.uint8))


@needs_vnni
@pytest.mark.parametrize("quantize", [None, (np.float32(0.05), 120)])
def test_activation_product_matches_the_blas_path(monkeypatch, quantize):
    """The runtime's attention products give what its float32 BLAS path (used where the CPU has
    no VNNI) gives, on attention's layouts: Q·Kᵀ with Kᵀ a transposed view, then P·V."""
    from graphopt.runtime import int8
    rng = np.random.default_rng(11)
    q = rng.integers(0, 256, (1, 32, 4, 64), dtype=np.uint8).transpose(0, 2, 1, 3)
    k = rng.integers(0, 256, (1, 32, 4, 64), dtype=np.uint8).transpose(0, 2, 3, 1)
    product = int8.ActivationProduct(131, 97, np.float32(0.002), quantize, (0, 255))
    vnni = product(q, k)
    monkeypatch.setattr(int8._qmatmul, "supported", lambda: False)
    np.testing.assert_array_equal(vnni, product(q, k))
