"""qgemm on every ISA path this machine runs, bit-exact against the numpy reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphopt.kernels as kernels
from graphopt.kernels.reference import qgemm_reference

ISAS = ["amx", "vnni", "avx2", "generic"]


def isa_param(name):
    """Every path is a test case; the ones this CPU (or build) cannot run skip and say why."""
    reason = f"{name} is not supported here (supported: {', '.join(kernels.supported_isas())})"
    return pytest.param(name, marks=pytest.mark.skipif(name not in kernels.supported_isas(),
                                                       reason=reason))


ALL_ISAS = [isa_param(name) for name in ISAS]


def random_case(rng, m, k, n):
    return (rng.integers(0, 256, (m, k), dtype=np.uint8),
            rng.integers(-128, 128, (k, n), dtype=np.int8))


def check(a, zp, w, isa, threads=1, **epilogue):
    got = kernels.qgemm(a, zp, kernels.pack_weights(w), threads=threads, isa_name=isa, **epilogue)
    ref = qgemm_reference(a, zp, w, **epilogue)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


# M=1, K not a multiple of 4 or 64 (A packed; multiples of 4 are read in place), N not a
# multiple of 16, M past one MC=144 tile, K past one KC=1024 block, and products above
# 2 x 4M multiply-adds, which qgemm does split across 2 threads (row and column tiles).
SHAPES = [(1, 1, 1), (1, 768, 33), (3, 5, 17), (7, 67, 16), (13, 130, 65), (150, 61, 200),
          (9, 1030, 70), (301, 258, 130), (40, 1024, 260)]


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_int32_matches_reference(isa, m, k, n, threads):
    rng = np.random.default_rng(m * 1000 + k + n)
    a, w = random_case(rng, m, k, n)
    check(a, 131, w, isa, threads)


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("zp", [0, 255])
def test_extreme_values(isa, zp):
    """255 x -128 in every pair: vpmaddubsw's int16 would saturate without the AVX2 split."""
    k, n = 131, 35
    for a_val in (0, 255):
        for w_val in (-128, 127):
            check(np.full((5, k), a_val, np.uint8), zp, np.full((k, n), w_val, np.int8), isa)
    rng = np.random.default_rng(zp)
    a = rng.choice(np.array([0, 255], np.uint8), (11, k))
    w = rng.choice(np.array([-128, 127], np.int8), (k, n))
    check(a, zp, w, isa, threads=2)


@pytest.mark.parametrize("isa", ALL_ISAS)
def test_epilogues(isa):
    rng = np.random.default_rng(7)
    a, w = random_case(rng, 21, 77, 40)
    bias = rng.integers(-5000, 5000, 40, dtype=np.int32)
    per_channel = rng.uniform(1e-4, 1e-3, 40).astype(np.float32)
    check(a, 200, w, isa, bias=bias, relu=True)
    check(a, 3, w, isa, bias=bias, scale=per_channel, output="float32")
    check(a, 3, w, isa, scale=np.float32(2e-4), output="float32", clip=(-0.5, 1.5), threads=2)
    check(a, 3, w, isa, bias=bias, scale=per_channel, output="float32", relu=True)
    check(a, 90, w, isa, bias=bias, scale=per_channel, output="uint8", out_scale=0.05,
          out_zero_point=17)
    check(a, 90, w, isa, scale=per_channel, output="uint8", out_scale=0.05, out_zero_point=128,
          relu=True)
    check(a, 90, w, isa, scale=per_channel, output="uint8", out_scale=0.05, out_zero_point=128,
          clip=(-1.0, 2.0), threads=2)


def test_requantization_rounds_half_to_even():
    # y = 1..6, multiplier 0.5: 0.5 1 1.5 2 2.5 3 -> 0 1 2 2 2 3
    a = np.arange(1, 7, dtype=np.uint8)[:, None]
    w = np.ones((1, 1), np.int8)
    got = kernels.qgemm(a, 0, kernels.pack_weights(w), scale=0.5, output="uint8", out_scale=1.0)
    np.testing.assert_array_equal(got[:, 0], [0, 1, 2, 2, 2, 3])


def test_strided_input_and_output_views():
    rng = np.random.default_rng(3)
    big_a, w = random_case(rng, 40, 60, 23)
    a = big_a[::2, 1::2]
    out = np.zeros((23, 20), np.int32).T
    got = kernels.qgemm(a, 9, kernels.pack_weights(w[1::2]), out=out)
    assert got is out
    np.testing.assert_array_equal(out, qgemm_reference(a, 9, w[1::2]))


def test_empty_dimensions():
    w = np.ones((4, 3), np.int8)
    assert kernels.qgemm(np.zeros((0, 4), np.uint8), 0, kernels.pack_weights(w)).shape == (0, 3)
    bias = np.arange(3, dtype=np.int32)
    got = kernels.qgemm(np.zeros((2, 0), np.uint8), 5, kernels.pack_weights(np.ones((0, 3), np.int8)),
                        bias=bias)
    np.testing.assert_array_equal(got, np.tile(bias, (2, 1)))


def test_isa_is_reported_and_forced(monkeypatch):
    monkeypatch.delenv("GRAPHOPT_ISA", raising=False)
    assert kernels.isa() == kernels.supported_isas()[0]
    a, w = random_case(np.random.default_rng(5), 9, 70, 20)
    for name in kernels.supported_isas():
        monkeypatch.setenv("GRAPHOPT_ISA", name)
        assert kernels.isa() == name
        check(a, 40, w, None)
    monkeypatch.setenv("GRAPHOPT_ISA", "sse9")
    with pytest.raises(kernels.UnsupportedISAError, match="unknown ISA"):
        kernels.isa()


def test_forcing_an_unavailable_isa_is_an_error(monkeypatch):
    missing = [name for name in ISAS if name not in kernels.supported_isas()]
    if not missing:
        pytest.skip("this machine supports every ISA path")
    monkeypatch.setenv("GRAPHOPT_ISA", missing[0])
    with pytest.raises(kernels.UnsupportedISAError, match=missing[0]):
        kernels.qgemm(np.zeros((1, 4), np.uint8), 0, kernels.pack_weights(np.ones((4, 1), np.int8)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(output="float16"), "output must be"),
    (dict(output="float32"), "needs scale"),
    (dict(scale=1.0), "no scale or clip"),
    (dict(output="uint8", scale=1.0), "out_scale"),
    (dict(bias=np.zeros(2, np.int32)), "bias must be"),
    (dict(threads=0), "threads"),
])
def test_rejects_bad_arguments(kwargs, match):
    w = kernels.pack_weights(np.ones((4, 3), np.int8))
    with pytest.raises(ValueError, match=match):
        kernels.qgemm(np.zeros((2, 4), np.uint8), 0, w, **kwargs)


def test_rejects_mismatched_k():
    with pytest.raises(ValueError, match="K=5"):
        kernels.qgemm(np.zeros((2, 5), np.uint8), 0, kernels.pack_weights(np.ones((4, 3), np.int8)))


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 300), n=st.integers(1, 90),
       zp=st.integers(0, 255), isa=st.sampled_from(kernels.supported_isas()),
       threads=st.integers(1, 2), output=st.sampled_from(["int32", "float32", "uint8"]),
       relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_matches_reference(m, k, n, zp, isa, threads, output, relu, seed):
    rng = np.random.default_rng(seed)
    a, w = random_case(rng, m, k, n)
    epilogue = dict(output=output, relu=relu, bias=rng.integers(-3000, 3000, n, dtype=np.int32))
    if output != "int32":
        epilogue["scale"] = rng.uniform(1e-4, 1e-2, n).astype(np.float32)
    if output == "uint8":
        epilogue.update(out_scale=float(rng.uniform(0.01, 1.0)),
                        out_zero_point=int(rng.integers(0, 256)))
    check(a, zp, w, isa, threads, **epilogue)


# Few rows get their own micro-kernel shapes on the VNNI path (1 or 2 rows x 8 panels, 8 rows x
# 3 panels): N = 200 leaves ragged panels in each, K = 130 packs A into slabs of that height.
SMALL_M_SHAPES = [(m, k, n) for m in (1, 2, 3, 7, 8, 9) for k, n in ((130, 200), (768, 129))]


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("m,k,n", SMALL_M_SHAPES)
def test_small_m_matches_reference(isa, m, k, n):
    rng = np.random.default_rng(m + k + n)
    a, w = random_case(rng, m, k, n)
    check(a, 77, w, isa, threads=2)
    check(a, 201, w, isa, scale=rng.uniform(1e-4, 1e-3, n).astype(np.float32), output="uint8",
          out_scale=0.05, out_zero_point=3, relu=True)


def prepared_case(rng, m, k, n, output):
    a, w = random_case(rng, m, k, n)
    epilogue = dict(bias=rng.integers(-3000, 3000, n, dtype=np.int32), output=output)
    if output != "int32":
        epilogue["scale"] = rng.uniform(1e-4, 1e-2, n).astype(np.float32)
    if output == "uint8":
        epilogue.update(out_scale=0.07, out_zero_point=30, clip=(-1.0, 3.0))
    return a, w, epilogue


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("output", ["int32", "float32", "uint8"])
@pytest.mark.parametrize("threads", [1, 2])
def test_prepared_gemm_matches_qgemm(isa, output, threads):
    rng = np.random.default_rng(11)
    a, w, epilogue = prepared_case(rng, 8, 300, 150, output)
    prepared = kernels.PreparedGemm(kernels.pack_weights(w), 99, threads=threads, isa_name=isa,
                                    **epilogue)
    ref = qgemm_reference(a, 99, w, **epilogue)
    # The same object serves any number of rows, and fresh or given outputs, call after call.
    for rows in (a, a[:1], a[:3], np.repeat(a, 40, axis=0)):
        np.testing.assert_array_equal(prepared(rows), qgemm_reference(rows, 99, w, **epilogue))
    out = np.empty_like(ref)
    assert prepared(a, out) is out
    np.testing.assert_array_equal(out, ref)
    strided = np.zeros((150, 8), ref.dtype).T
    prepared(a[:, :], strided)
    np.testing.assert_array_equal(strided, ref)


def test_prepared_gemm_validates_once_and_per_call():
    w = kernels.pack_weights(np.ones((4, 3), np.int8))
    with pytest.raises(ValueError, match="needs scale"):
        kernels.PreparedGemm(w, 0, output="uint8")
    with pytest.raises(ValueError, match="a_zero_point"):
        kernels.PreparedGemm(w, 300)
    prepared = kernels.PreparedGemm(w, 0)
    assert (prepared.k, prepared.n, prepared.threads) == (4, 3, 1)
    with pytest.raises(ValueError, match="K=5"):
        prepared(np.zeros((2, 5), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        prepared(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        prepared(np.zeros((2, 4), np.uint8), np.zeros((2, 3), np.float32))
    assert prepared(np.zeros((0, 4), np.uint8)).shape == (0, 3)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 10), k=st.integers(1, 200), n=st.integers(1, 300),
       zp=st.integers(0, 255), isa=st.sampled_from(kernels.supported_isas()),
       threads=st.integers(1, 2), output=st.sampled_from(["int32", "float32", "uint8"]),
       seed=st.integers(0, 2**31 - 1))
def test_property_small_m_prepared(m, k, n, zp, isa, threads, output, seed):
    rng = np.random.default_rng(seed)
    a, w, epilogue = prepared_case(rng, m, k, n, output)
    prepared = kernels.PreparedGemm(kernels.pack_weights(w), zp, threads=threads, isa_name=isa,
                                    **epilogue)
    np.testing.assert_array_equal(prepared(a), qgemm_reference(a, zp, w, **epilogue))


@pytest.mark.parametrize("isa", ALL_ISAS)
@pytest.mark.parametrize("m,k,n", [(8, 768, 768), (8, 770, 771), (5, 64, 49), (1, 12, 130)])
@pytest.mark.parametrize("threads", [1, 2])
def test_prepared_gemm_reads_arrays_through_the_c_api(isa, m, k, n, threads):
    """PreparedGemm checks a and out with numpy's C API: array subclasses, strided, Fortran-order
    and read-only inputs still take the right path, and every wrong out is still refused."""
    rng = np.random.default_rng(m * k + n)
    a, w = random_case(rng, m, k, n)
    prepared = kernels.PreparedGemm(kernels.pack_weights(w), 131, threads=threads, isa_name=isa)
    ref = qgemm_reference(a, 131, w)
    read_only = a.copy()
    read_only.flags.writeable = False
    wide = np.zeros((m, 2 * k), np.uint8)
    wide[:, ::2] = a
    for view in (a, a.view(np.matrix), read_only, wide[:, ::2], np.asfortranarray(a)):
        np.testing.assert_array_equal(prepared(view), ref)
    locked = np.empty((m, n), np.int32)
    locked.flags.writeable = False
    for out in (np.empty((m, n + 1), np.int32), np.empty((m, n), np.int64), np.empty(m * n, np.int32),
                locked, [[0] * n] * m):
        with pytest.raises(ValueError, match="out must be"):
            prepared(a, out)
    for bad in (a[0], a.astype(np.int64), a.tolist()):
        with pytest.raises(ValueError, match="2-D uint8"):
            prepared(bad)
