/* Micro-kernels per ISA, A packing, the cache-blocking loops of one tile, and the epilogue.
 * Each ISA-specific function carries its own target attribute; the file is compiled for baseline
 * x86-64 so that one build runs anywhere and the run-time check picks the path. */
#include "qgemm.h"
#include "layout.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* K groups (of 4) per cache block: 256 groups = 1024 of K. The B micro-panel (1024 x 64 columns,
 * 64 KiB) then lives in the 1 MiB L2 rather than L1, which the hardware prefetcher hides well
 * since each panel is read sequentially; in exchange the int32 C tile is reloaded once per
 * 1024 of K instead of once per 256. Measured on the Zen 4 / VNNI path: 256 groups beat 64 and
 * 128 by 3-8% on 768-1024-deep products and on conv-shaped (3136 x 576 x 64) ones. */
#ifndef QG_KC_GROUPS
#define QG_KC_GROUPS 256
#endif

/* AVX-512 VNNI: 6 rows x 4 zmm (64 columns) = 24 accumulators, + 4 B registers + 1 broadcast
 * of A = 29 of the 32 zmm registers. Few rows re-read B from L2 once per slab, so a product with
 * up to 8 rows gets shapes that cover all its rows in one pass: 8 x 3 (24 accumulators, 3 B), and
 * 1 or 2 rows x 8 zmm (128 columns), whose 8 or 16 independent accumulators hide vpdpbusd's
 * latency that 1 x 4 could not (4 chains of a 4-5 cycle dependency). */
#define VNNI_MR 6
#define VNNI_NP 4
#define VNNI_MAX_MR 8
#define VNNI_MAX_NP 8
/* AVX2: 4 rows x 2 ymm (16 columns) = 8 accumulators, + 2 B + 5 temporaries of the 16 ymm. */
#define AVX2_MR 4
/* Portable C: the same 4 x 16 shape; the compiler vectorizes what it can. */
#define GENERIC_MR 4

void qg_shape(int isa, int64_t m, int *mr, int *npanels)
{
    if (isa != QG_ISA_VNNI) {
        *mr = isa == QG_ISA_AVX2 ? AVX2_MR : GENERIC_MR;
        *npanels = 1;
    } else if (m <= 2) {
        *mr = (int)(m < 1 ? 1 : m);
        *npanels = 8;
    } else if (m == 7 || m == 8) {
        *mr = 8;
        *npanels = 3;
    } else {
        *mr = VNNI_MR;
        *npanels = VNNI_NP;
    }
}

int qg_cpu_supports(int isa)
{
    __builtin_cpu_init();
    switch (isa) {
    case QG_ISA_GENERIC: return 1;
    case QG_ISA_AVX2: return __builtin_cpu_supports("avx2");
    case QG_ISA_VNNI:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    default: return 0; /* AMX: no micro-kernel in this build */
    }
}

/* Packing A is O(MK) against the product's O(MKN): negligible for wide N, but a convolution with
 * 64 output channels spent half its time here copying byte by byte. Both layouts the callers use
 * therefore move whole 4-byte groups: row-major A (cs == 1) copies them, and pixel-major columns
 * (rs == 1, im2col's transposed view) assemble them from four contiguous k rows. */
static void pack_group_rows(const uint8_t *src, int64_t rs, int rows, uint8_t *dst)
{
    for (int i = 0; i < rows; i++)
        memcpy(dst + i * 4, src + i * rs, 4);
}

static void pack_group_cols(const uint8_t *src, int64_t cs, int rows, uint8_t *dst)
{
    const uint8_t *k0 = src, *k1 = src + cs, *k2 = src + 2 * cs, *k3 = src + 3 * cs;
    for (int i = 0; i < rows; i++) {
        const uint32_t quad = (uint32_t)k0[i] | (uint32_t)k1[i] << 8 | (uint32_t)k2[i] << 16
                              | (uint32_t)k3[i] << 24;
        memcpy(dst + i * 4, &quad, 4); /* little-endian: k0 lands first, as vpdpbusd expects */
    }
}

void qg_pack_a(int mr, const uint8_t *a, int64_t rs, int64_t cs, int64_t m, int64_t k,
               uint8_t *apack, int64_t slab)
{
    const int64_t k4 = (k + 3) / 4, full = k / 4;
    uint8_t *dst = apack + slab * k4 * mr * 4;
    const int64_t r0 = slab * mr;
    const int rows = (int)(m - r0 < mr ? m - r0 : mr);
    const uint8_t *src = a + r0 * rs;
    /* Padding (rows past M, K past the last group) is zero; B's padding is zero too, so the
     * padded products vanish whatever A's zero point is. */
    memset(dst, 0, (size_t)(k4 * mr * 4));
    for (int64_t g = 0; g < full; g++) {
        if (cs == 1)
            pack_group_rows(src + 4 * g, rs, rows, dst + g * mr * 4);
        else if (rs == 1)
            pack_group_cols(src + 4 * g * cs, cs, rows, dst + g * mr * 4);
        else
            for (int i = 0; i < rows; i++)
                for (int t = 0; t < 4; t++)
                    dst[(g * mr + i) * 4 + t] = src[i * rs + (4 * g + t) * cs];
    }
    for (int64_t kk = full * 4; kk < k; kk++)
        for (int i = 0; i < rows; i++)
            dst[(full * mr + i) * 4 + kk % 4] = src[i * rs + kk * cs];
}

/* ---- AVX-512 VNNI -------------------------------------------------------------------------- */

/* VL for the 16-byte masked stores of the transposed convolution's uint8 output. */
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* The accumulators are named scalars, not an array: GCC keeps an array of vectors in memory and
 * spills every update. mr and np are compile-time constants in each instantiation, so the guards
 * fold away and unused accumulators vanish. */
#define VNNI_EACH_COL(X, i) X(i, 0) X(i, 1) X(i, 2) X(i, 3) X(i, 4) X(i, 5) X(i, 6) X(i, 7)
#define VNNI_EACH(X)                                                                             \
    VNNI_EACH_COL(X, 0) VNNI_EACH_COL(X, 1) VNNI_EACH_COL(X, 2) VNNI_EACH_COL(X, 3)              \
    VNNI_EACH_COL(X, 4) VNNI_EACH_COL(X, 5) VNNI_EACH_COL(X, 6) VNNI_EACH_COL(X, 7)
#define VNNI_EACH_PANEL(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define VNNI_LIVE(i, j) ((i) < mr && (j) < np)
#define VNNI_INIT(i, j)                                                                          \
    __m512i c##i##j = VNNI_LIVE(i, j) && accumulate ? _mm512_loadu_si512(c + (i) * ldc + 16 * (j)) \
                                                    : _mm512_setzero_si512();
#define VNNI_LOAD_B(j) const __m512i b##j = (j) < np ? _mm512_loadu_si512(bg + (j) * bps) : zero;
#define VNNI_FMA(i, j)                                                                           \
    if (VNNI_LIVE(i, j))                                                                         \
        c##i##j = _mm512_dpbusd_epi32(c##i##j, av, b##j);
#define VNNI_ROW(i, unused)                                                                      \
    if ((i) < mr) {                                                                              \
        int32_t quad;                                                                            \
        memcpy(&quad, at + (i) * a_rs + g * a_gs, 4);                                           \
        const __m512i av = _mm512_set1_epi32(quad);                                              \
        VNNI_EACH_COL(VNNI_FMA, i)                                                               \
    }
#define VNNI_STORE(i, j)                                                                         \
    if (VNNI_LIVE(i, j))                                                                         \
        _mm512_storeu_si512(c + (i) * ldc + 16 * (j), c##i##j);

/* A convolution's taps (tap_off != NULL) are one reduction of taps x kg groups whose A rows
 * start tap_off[t] bytes further on, while B continues in sequence: the accumulators stay in
 * registers across all taps. */
static inline __attribute__((always_inline)) VNNI_TARGET void
vnni_ukr(const int mr, const int np, int taps, const int64_t *tap_off, int64_t kg,
         const uint8_t *a, int64_t a_rs, int64_t a_gs, const int8_t *b, int64_t bps, int32_t *c,
         int64_t ldc, int accumulate)
{
    const __m512i zero = _mm512_setzero_si512();
    VNNI_EACH(VNNI_INIT)
    for (int t = 0; t < taps; t++) {
        const uint8_t *at = tap_off ? a + tap_off[t] : a;
        const int8_t *bt = b + (int64_t)t * kg * 64;
        for (int64_t g = 0; g < kg; g++) {
            const int8_t *bg = bt + g * 64;
            VNNI_EACH_PANEL(VNNI_LOAD_B)
            VNNI_ROW(0, _) VNNI_ROW(1, _) VNNI_ROW(2, _) VNNI_ROW(3, _)
            VNNI_ROW(4, _) VNNI_ROW(5, _) VNNI_ROW(6, _) VNNI_ROW(7, _)
        }
    }
    VNNI_EACH(VNNI_STORE)
}

typedef void (*ukr_fn)(int, const int64_t *, int64_t, const uint8_t *, int64_t, int64_t,
                       const int8_t *, int64_t, int32_t *, int64_t, int);

#define VNNI_UKR(MR_, NP_)                                                                        \
    static VNNI_TARGET void vnni_ukr_##MR_##_##NP_(int taps, const int64_t *tap_off, int64_t kg,   \
                                                   const uint8_t *a, int64_t a_rs, int64_t a_gs,  \
                                                   const int8_t *b, int64_t bps, int32_t *c,      \
                                                   int64_t ldc, int acc)                          \
    {                                                                                             \
        vnni_ukr(MR_, NP_, taps, tap_off, kg, a, a_rs, a_gs, b, bps, c, ldc, acc);                \
    }
/* Every shape qg_shape hands out, and every smaller one that its ragged edges need. */
#define VNNI_UKR_ROW4(MR_) VNNI_UKR(MR_, 1) VNNI_UKR(MR_, 2) VNNI_UKR(MR_, 3) VNNI_UKR(MR_, 4)
#define VNNI_UKR_ROW8(MR_) VNNI_UKR_ROW4(MR_) VNNI_UKR(MR_, 5) VNNI_UKR(MR_, 6) VNNI_UKR(MR_, 7) \
                           VNNI_UKR(MR_, 8)
VNNI_UKR_ROW8(1)
VNNI_UKR_ROW8(2)
VNNI_UKR_ROW4(3)
VNNI_UKR_ROW4(4)
VNNI_UKR_ROW4(5)
VNNI_UKR_ROW4(6)
VNNI_UKR(7, 1) VNNI_UKR(7, 2) VNNI_UKR(7, 3)
VNNI_UKR(8, 1) VNNI_UKR(8, 2) VNNI_UKR(8, 3)

#define VNNI_ROW_TABLE4(MR_) \
    { vnni_ukr_##MR_##_1, vnni_ukr_##MR_##_2, vnni_ukr_##MR_##_3, vnni_ukr_##MR_##_4 }
#define VNNI_ROW_TABLE8(MR_)                                                                      \
    { vnni_ukr_##MR_##_1, vnni_ukr_##MR_##_2, vnni_ukr_##MR_##_3, vnni_ukr_##MR_##_4,             \
      vnni_ukr_##MR_##_5, vnni_ukr_##MR_##_6, vnni_ukr_##MR_##_7, vnni_ukr_##MR_##_8 }
#define VNNI_ROW_TABLE3(MR_) { vnni_ukr_##MR_##_1, vnni_ukr_##MR_##_2, vnni_ukr_##MR_##_3 }
static const ukr_fn vnni_table[VNNI_MAX_MR][VNNI_MAX_NP] = {
    VNNI_ROW_TABLE8(1), VNNI_ROW_TABLE8(2), VNNI_ROW_TABLE4(3), VNNI_ROW_TABLE4(4),
    VNNI_ROW_TABLE4(5), VNNI_ROW_TABLE4(6), VNNI_ROW_TABLE3(7), VNNI_ROW_TABLE3(8),
};

/* The transposed convolution (qg_conv_t_tile): rows are output channels, whose int8 weight
 * quads are broadcast (row i of A at a + i * a_rs, groups of 4 bytes in a row), and the 16
 * lanes of a panel are 16 output pixels of a channels-in-fours image (4 channels x 16 pixels
 * = 64 bytes, panels 64 bytes apart, the next 4 channels b_gs bytes on). Tap t moves B by
 * tap_off[t], while the weights continue in sequence. vpdpbusd's unsigned operand is now the
 * vector of pixels and its signed one the broadcast weights. */
#define VNNI_T_LOAD_B(j) const __m512i b##j = (j) < np ? _mm512_loadu_si512(bg + 64 * (j)) : zero;
#define VNNI_T_FMA(i, j)                                                                         \
    if (VNNI_LIVE(i, j))                                                                         \
        c##i##j = _mm512_dpbusd_epi32(c##i##j, b##j, av);
#define VNNI_T_ROW(i, unused)                                                                    \
    if ((i) < mr) {                                                                              \
        int32_t quad;                                                                            \
        memcpy(&quad, at + (i) * a_rs + g * 4, 4);                                              \
        const __m512i av = _mm512_set1_epi32(quad);                                              \
        VNNI_EACH_COL(VNNI_T_FMA, i)                                                             \
    }

/* uint8 output requantized from the accumulators (qg_conv_t_tile): the int32 tile and the
 * epilogue's second pass over it took 5% of a 3x3 convolution on 56 x 56 pixels, this 2-3%. Row
 * i is output channel i of out, bias, col_sums and mult; panel j's 16 pixels land in up to two
 * runs, one per virtual row (see t_runs): lane 0 of run r at at[j][r], its lanes k[j][r]. */
typedef struct {
    uint8_t *out;
    int64_t out_cs;
    const int32_t *bias, *col_sums;
    const float *mult;
    int32_t a_zero_point, zero_point;
    float lo_rel, hi_rel;           /* the quantized bounds less the zero point */
    int64_t at[QG_T_NP][2];
    __mmask16 k[QG_T_NP][2];
} t_store;

#define VNNI_T_REQUANTIZE(i, j)                                                                  \
    if (VNNI_LIVE(i, j)) {                                                                       \
        if ((j) == 0) {                                                                          \
            shift = _mm512_set1_epi32(o->bias[i] - o->a_zero_point * o->col_sums[i]);           \
            mult = _mm512_set1_ps(o->mult[i]);                                                   \
        }                                                                                        \
        const __m128i q = _mm512_cvtusepi32_epi8(                                               \
            qg_requantize16(_mm512_add_epi32(c##i##j, shift), mult, lo, hi, zp));               \
        uint8_t *plane = out + (i) * out_cs;                                                     \
        if (k[j][0])                                                                             \
            _mm_mask_storeu_epi8(plane + at[j][0], k[j][0], q);                                 \
        if (k[j][1])                                                                             \
            _mm_mask_storeu_epi8(plane + at[j][1], k[j][1], q);                                 \
    }

/* Stores the sums to c, or with o, requantizes them into the output. */
static inline __attribute__((always_inline)) VNNI_TARGET void
vnni_ukr_t(const int mr, const int np, int taps, const int64_t *tap_off, int64_t kg,
           const int8_t *a, int64_t a_rs, const uint8_t *b, int64_t b_gs, int32_t *c, int64_t ldc,
           const t_store *o)
{
    const __m512i zero = _mm512_setzero_si512();
    const int accumulate = 0;
    VNNI_EACH(VNNI_INIT)
    for (int t = 0; t < taps; t++) {
        const int8_t *at = a + (int64_t)t * kg * 4;
        const uint8_t *bt = b + tap_off[t];
        for (int64_t g = 0; g < kg; g++) {
            const uint8_t *bg = bt + g * b_gs;
            VNNI_EACH_PANEL(VNNI_T_LOAD_B)
            VNNI_T_ROW(0, _) VNNI_T_ROW(1, _) VNNI_T_ROW(2, _) VNNI_T_ROW(3, _)
            VNNI_T_ROW(4, _) VNNI_T_ROW(5, _) VNNI_T_ROW(6, _) VNNI_T_ROW(7, _)
        }
    }
    if (!o) {
        VNNI_EACH(VNNI_STORE)
        return;
    }
    /* Locals: a store through out may alias o, which would reload its fields after each. */
    uint8_t *const out = o->out;
    const int64_t out_cs = o->out_cs;
    int64_t at[QG_T_NP][2];
    __mmask16 k[QG_T_NP][2];
    memcpy(at, o->at, sizeof at);
    memcpy(k, o->k, sizeof k);
    const __m512 lo = _mm512_set1_ps(o->lo_rel), hi = _mm512_set1_ps(o->hi_rel);
    const __m512i zp = _mm512_set1_epi32(o->zero_point);
    __m512i shift = zero;
    __m512 mult = _mm512_setzero_ps();
    VNNI_EACH(VNNI_T_REQUANTIZE)
}

typedef void (*ukr_t_fn)(int, const int64_t *, int64_t, const int8_t *, int64_t, const uint8_t *,
                         int64_t, int32_t *, int64_t, const t_store *);
#define VNNI_UKR_T(MR_, NP_)                                                                      \
    static VNNI_TARGET void vnni_ukr_t_##MR_##_##NP_(int taps, const int64_t *tap_off,             \
                                                     int64_t kg, const int8_t *a, int64_t a_rs,   \
                                                     const uint8_t *b, int64_t b_gs, int32_t *c,  \
                                                     int64_t ldc, const t_store *o)               \
    {                                                                                             \
        vnni_ukr_t(MR_, NP_, taps, tap_off, kg, a, a_rs, b, b_gs, c, ldc, o);                     \
    }
#define VNNI_UKR_T_ROW(MR_) VNNI_UKR_T(MR_, 1) VNNI_UKR_T(MR_, 2) VNNI_UKR_T(MR_, 3)
VNNI_UKR_T_ROW(1) VNNI_UKR_T_ROW(2) VNNI_UKR_T_ROW(3) VNNI_UKR_T_ROW(4)
VNNI_UKR_T_ROW(5) VNNI_UKR_T_ROW(6) VNNI_UKR_T_ROW(7) VNNI_UKR_T_ROW(8)
#define VNNI_T_TABLE(MR_) { vnni_ukr_t_##MR_##_1, vnni_ukr_t_##MR_##_2, vnni_ukr_t_##MR_##_3 }
static const ukr_t_fn vnni_t_table[QG_T_MR][QG_T_NP] = {
    VNNI_T_TABLE(1), VNNI_T_TABLE(2), VNNI_T_TABLE(3), VNNI_T_TABLE(4),
    VNNI_T_TABLE(5), VNNI_T_TABLE(6), VNNI_T_TABLE(7), VNNI_T_TABLE(8),
};

/* ---- AVX2 ---------------------------------------------------------------------------------- */
/* vpmaddubsw adds two u8 x s8 products into a *saturating* int16: 255*-128*2 = -65280 does not
 * fit. Splitting each activation a = (a & 0x7f) + (a & 0x80) keeps both halves exact:
 * 127*-128*2 = -32512 and 128*-128*2 = -32768 are representable, and vpmaddwd against ones widens
 * each half to int32 before they are added. */

#define AVX2_TARGET __attribute__((target("avx2")))

static inline __attribute__((always_inline)) AVX2_TARGET __m256i
avx2_dot4(__m256i acc, __m256i a_lo, __m256i a_hi, __m256i b, __m256i ones)
{
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a_lo, b), ones));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a_hi, b), ones));
}

#define AVX2_EACH(X) X(0) X(1) X(2) X(3)
#define AVX2_INIT(i)                                                                             \
    __m256i c##i##0 = _mm256_setzero_si256(), c##i##1 = _mm256_setzero_si256();                 \
    if ((i) < mr && accumulate) {                                                                \
        c##i##0 = _mm256_loadu_si256((const __m256i *)(c + (i) * ldc));                          \
        c##i##1 = _mm256_loadu_si256((const __m256i *)(c + (i) * ldc + 8));                      \
    }
#define AVX2_ROW(i)                                                                              \
    if ((i) < mr) {                                                                              \
        int32_t quad;                                                                            \
        memcpy(&quad, a + (i) * a_rs + g * a_gs, 4);                                            \
        const __m256i av = _mm256_set1_epi32(quad);                                              \
        const __m256i a_lo = _mm256_and_si256(av, low7);                                         \
        const __m256i a_hi = _mm256_andnot_si256(low7, av);                                      \
        c##i##0 = avx2_dot4(c##i##0, a_lo, a_hi, b0, ones);                                      \
        c##i##1 = avx2_dot4(c##i##1, a_lo, a_hi, b1, ones);                                      \
    }
#define AVX2_STORE(i)                                                                            \
    if ((i) < mr) {                                                                              \
        _mm256_storeu_si256((__m256i *)(c + (i) * ldc), c##i##0);                                \
        _mm256_storeu_si256((__m256i *)(c + (i) * ldc + 8), c##i##1);                            \
    }

static inline __attribute__((always_inline)) AVX2_TARGET void
avx2_ukr(const int mr, int64_t kg, const uint8_t *a, int64_t a_rs, int64_t a_gs, const int8_t *b,
         int32_t *c, int64_t ldc, int accumulate)
{
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i low7 = _mm256_set1_epi8(0x7f);
    AVX2_EACH(AVX2_INIT)
    for (int64_t g = 0; g < kg; g++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(b + g * 64));
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + g * 64 + 32));
        AVX2_EACH(AVX2_ROW)
    }
    AVX2_EACH(AVX2_STORE)
}

typedef void (*avx2_fn)(int64_t, const uint8_t *, int64_t, int64_t, const int8_t *, int32_t *,
                        int64_t, int);
#define AVX2_UKR(MR_)                                                                             \
    static AVX2_TARGET void avx2_ukr_##MR_(int64_t kg, const uint8_t *a, int64_t a_rs,             \
                                           int64_t a_gs, const int8_t *b, int32_t *c,             \
                                           int64_t ldc, int acc)                                  \
    {                                                                                             \
        avx2_ukr(MR_, kg, a, a_rs, a_gs, b, c, ldc, acc);                                         \
    }
AVX2_UKR(1)
AVX2_UKR(2)
AVX2_UKR(3)
AVX2_UKR(4)
static const avx2_fn avx2_table[AVX2_MR] = {avx2_ukr_1, avx2_ukr_2, avx2_ukr_3, avx2_ukr_4};

/* ---- portable C ---------------------------------------------------------------------------- */

static void generic_ukr(int mr, int64_t kg, const uint8_t *a, int64_t a_rs, int64_t a_gs,
                        const int8_t *b, int32_t *c, int64_t ldc, int accumulate)
{
    int32_t acc[GENERIC_MR][16];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < 16; j++)
            acc[i][j] = accumulate ? c[i * ldc + j] : 0;
    for (int64_t g = 0; g < kg; g++) {
        const int8_t *bg = b + g * 64;
        for (int i = 0; i < mr; i++) {
            const uint8_t *ag = a + i * a_rs + g * a_gs;
            for (int j = 0; j < 16; j++)
                acc[i][j] += ag[0] * bg[j * 4] + ag[1] * bg[j * 4 + 1] + ag[2] * bg[j * 4 + 2]
                             + ag[3] * bg[j * 4 + 3];
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < 16; j++)
            c[i * ldc + j] = acc[i][j];
}

/* A is read at a + i * a_rs + g * a_gs (row i, group g of 4 along K): packed slabs have
 * a_rs = 4, a_gs = 4 * MR; a row-major A used in place has a_rs = its row stride, a_gs = 4.
 * With tap_off, the reduction is taps x kg groups (see vnni_ukr); the paths without a tap loop
 * of their own accumulate one tap at a time in memory. */
static void run_ukr(int isa, int mr, int np, int taps, const int64_t *tap_off, int64_t kg,
                    const uint8_t *a, int64_t a_rs, int64_t a_gs, const int8_t *b, int64_t bps,
                    int32_t *c, int64_t ldc, int accumulate)
{
    if (isa == QG_ISA_VNNI) {
        vnni_table[mr - 1][np - 1](taps, tap_off, kg, a, a_rs, a_gs, b, bps, c, ldc, accumulate);
        return;
    }
    for (int t = 0; t < taps; t++) {
        const uint8_t *at = tap_off ? a + tap_off[t] : a;
        const int8_t *bt = b + (int64_t)t * kg * 64;
        const int acc = accumulate || t > 0;
        if (isa == QG_ISA_AVX2)
            avx2_table[mr - 1](kg, at, a_rs, a_gs, bt, c, ldc, acc);
        else
            generic_ukr(mr, kg, at, a_rs, a_gs, bt, c, ldc, acc);
    }
}

/* ---- epilogue ------------------------------------------------------------------------------ */

/* Round half to even (onnxruntime's QuantizeLinear) for |v| <= 2^22, the default rounding
 * mode of an add that pushes the fraction out of a float's 24-bit significand; unlike
 * cvtss2si it vectorizes at every ISA level. */
#define QG_ROUNDING_SHIFT 12582912.0f /* 1.5 * 2^23 */
static inline float round_half_even(float v)
{
    return (v + QG_ROUNDING_SHIFT) - QG_ROUNDING_SHIFT;
}

static inline int32_t corrected_sum(const qg_args *p, int32_t raw, int64_t n)
{
    return raw - p->a_zero_point * p->col_sums[n] + p->bias[n];
}

static inline float clamp(float v, float lo, float hi)
{
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* uint8: lo/hi are quantized bounds; clamping before rounding is the same as after, since the
 * bounds are integers, and keeps v inside round_half_even's range. The bounds come in relative to
 * the zero point (lo - zp, hi - zp) so that loops can hoist them. */
static inline uint8_t requantize(int32_t y, float mult, float lo_rel, float hi_rel, int32_t zp)
{
    return (uint8_t)((int32_t)round_half_even(clamp((float)y * mult, lo_rel, hi_rel)) + zp);
}

/* One output element from one int32 sum: the definition the vectorized loops below follow. */
static inline void epilogue_one(const qg_args *p, int32_t raw, int64_t r, int64_t n)
{
    const int32_t y = corrected_sum(p, raw, n);
    const int64_t at = r * p->out_rs + n * p->out_cs;
    if (p->out_kind == QG_OUT_INT32)
        ((int32_t *)p->out)[at] = p->relu && y < 0 ? 0 : y;
    else if (p->out_kind == QG_OUT_FLOAT32)
        ((float *)p->out)[at] = clamp((float)y * p->mult[n], p->lo, p->hi);
    else
        ((uint8_t *)p->out)[at] = requantize(y, p->mult[n], p->lo - (float)p->out_zero_point,
                                             p->hi - (float)p->out_zero_point, p->out_zero_point);
}

/* The epilogue runs once per output element, O(MN) against the product's O(MNK), but a scalar
 * loop with a branch per element cost a quarter of a 1024^3 GEMM: these loops are branch-free per
 * element and cloned per ISA so that the compiler vectorizes them. Every field of p is copied to a
 * local first: a uint8 store may alias p, which would force a reload per element. */
#define QG_EPILOGUE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* uint8 output, the common case, by hand on AVX-512: cvtps2dq rounds half to even under the
 * default MXCSR, as round_half_even does, and vpmovusdb narrows 16 lanes in one instruction,
 * where GCC's vectorization of requantize() packed 256-bit halves in several steps. */
#define QG_AVX512_TARGET __attribute__((target("avx512f")))

static int qg_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

static inline __mmask16 first_lanes(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* Row-major sums, channels along j (see epilogue_rows). */
QG_AVX512_TARGET static void epilogue_rows_u8_avx512(const qg_args *p, const int32_t *acc,
                                                     int64_t rs, int64_t mc, int64_t n0,
                                                     int64_t nc, uint8_t *out, int64_t out_rs)
{
    const __m512i za = _mm512_set1_epi32(p->a_zero_point), zp = _mm512_set1_epi32(p->out_zero_point);
    const __m512 lo = _mm512_set1_ps(p->lo - (float)p->out_zero_point);
    const __m512 hi = _mm512_set1_ps(p->hi - (float)p->out_zero_point);
    for (int64_t j = 0; j < nc; j += 16) {
        const __mmask16 k = first_lanes(nc - j);
        const __m512i shift = _mm512_sub_epi32(
            _mm512_maskz_loadu_epi32(k, p->bias + n0 + j),
            _mm512_mullo_epi32(za, _mm512_maskz_loadu_epi32(k, p->col_sums + n0 + j)));
        const __m512 mult = _mm512_maskz_loadu_ps(k, p->mult + n0 + j);
        for (int64_t i = 0; i < mc; i++) {
            const __m512i y = _mm512_add_epi32(_mm512_maskz_loadu_epi32(k, acc + i * rs + j), shift);
            _mm512_mask_cvtusepi32_storeu_epi8(out + i * out_rs + j, k,
                                               qg_requantize16(y, mult, lo, hi, zp));
        }
    }
}

/* Sums of one channel contiguous (rs == 1), output pixels contiguous (see epilogue_cols). */
QG_AVX512_TARGET static void epilogue_cols_u8_avx512(const qg_args *p, const int32_t *acc,
                                                     int64_t cs, int64_t m0, int64_t mc,
                                                     int64_t n0, int64_t nc)
{
    const __m512i zp = _mm512_set1_epi32(p->out_zero_point);
    const __m512 lo = _mm512_set1_ps(p->lo - (float)p->out_zero_point);
    const __m512 hi = _mm512_set1_ps(p->hi - (float)p->out_zero_point);
    for (int64_t j = 0; j < nc; j++) {
        const int64_t n = n0 + j;
        const __m512i shift = _mm512_set1_epi32(p->bias[n] - p->a_zero_point * p->col_sums[n]);
        const __m512 mult = _mm512_set1_ps(p->mult[n]);
        const int32_t *src = acc + j * cs;
        uint8_t *o = (uint8_t *)p->out + n * p->out_cs + m0;
        for (int64_t i = 0; i < mc; i += 16) {
            const __mmask16 k = first_lanes(mc - i);
            const __m512i y = _mm512_add_epi32(_mm512_maskz_loadu_epi32(k, src + i), shift);
            _mm512_mask_cvtusepi32_storeu_epi8(o + i, k, qg_requantize16(y, mult, lo, hi, zp));
        }
    }
}

/* Row-major sums: channel parameters vary along the contiguous direction. Writes row i, column j
 * to out[i * out_rs + j], out pointing at output element (m0, n0). */
QG_EPILOGUE_CLONES static void epilogue_rows(const qg_args *p, const int32_t *acc, int64_t rs,
                                             int64_t mc, int64_t n0, int64_t nc, void *out,
                                             int64_t out_rs)
{
    const int32_t za = p->a_zero_point, zp = p->out_zero_point;
    const int32_t *restrict sums = p->col_sums + n0, *restrict bias = p->bias + n0;
    const float *restrict mult = p->mult ? p->mult + n0 : NULL;
    const float lo = p->lo, hi = p->hi, lo_rel = lo - (float)zp, hi_rel = hi - (float)zp;
    const int32_t floor = p->relu ? 0 : INT32_MIN;
    for (int64_t i = 0; i < mc; i++) {
        const int32_t *restrict src = acc + i * rs;
        if (p->out_kind == QG_OUT_INT32) {
            int32_t *restrict o = (int32_t *)out + i * out_rs;
            for (int64_t j = 0; j < nc; j++) {
                const int32_t y = src[j] - za * sums[j] + bias[j];
                o[j] = y < floor ? floor : y;
            }
        } else if (p->out_kind == QG_OUT_FLOAT32) {
            float *restrict o = (float *)out + i * out_rs;
            for (int64_t j = 0; j < nc; j++)
                o[j] = clamp((float)(src[j] - za * sums[j] + bias[j]) * mult[j], lo, hi);
        } else {
            uint8_t *restrict o = (uint8_t *)out + i * out_rs;
            for (int64_t j = 0; j < nc; j++)
                o[j] = requantize(src[j] - za * sums[j] + bias[j], mult[j], lo_rel, hi_rel, zp);
        }
    }
}

/* Column-contiguous output (a convolution writing NCHW from [pixels, channels] sums): one
 * channel's parameters serve a whole contiguous run. */
QG_EPILOGUE_CLONES static void epilogue_cols(const qg_args *p, const int32_t *acc, int64_t rs,
                                             int64_t cs, int64_t m0, int64_t mc, int64_t n0,
                                             int64_t nc)
{
    const int32_t zp = p->out_zero_point;
    const float lo = p->lo, hi = p->hi, lo_rel = lo - (float)zp, hi_rel = hi - (float)zp;
    const int32_t floor = p->relu ? 0 : INT32_MIN;
    for (int64_t j = 0; j < nc; j++) {
        const int64_t n = n0 + j;
        const int32_t *restrict src = acc + j * cs;
        const int64_t at = n * p->out_cs + m0;
        const int32_t shift = p->bias[n] - p->a_zero_point * p->col_sums[n];
        const float mult = p->mult ? p->mult[n] : 0.0f;
        if (p->out_kind == QG_OUT_INT32) {
            int32_t *restrict o = (int32_t *)p->out + at;
            for (int64_t i = 0; i < mc; i++) {
                const int32_t y = src[i * rs] + shift;
                o[i] = y < floor ? floor : y;
            }
        } else if (p->out_kind == QG_OUT_FLOAT32) {
            float *restrict o = (float *)p->out + at;
            for (int64_t i = 0; i < mc; i++)
                o[i] = clamp((float)(src[i * rs] + shift) * mult, lo, hi);
        } else {
            uint8_t *restrict o = (uint8_t *)p->out + at;
            for (int64_t i = 0; i < mc; i++)
                o[i] = requantize(src[i * rs] + shift, mult, lo_rel, hi_rel, zp);
        }
    }
}

static void rows_dispatch(const qg_args *p, const int32_t *acc, int64_t rs, int64_t mc,
                          int64_t n0, int64_t nc, void *out, int64_t out_rs)
{
    if (p->out_kind == QG_OUT_UINT8 && qg_has_avx512())
        epilogue_rows_u8_avx512(p, acc, rs, mc, n0, nc, out, out_rs);
    else
        epilogue_rows(p, acc, rs, mc, n0, nc, out, out_rs);
}

/* uint8 output with pixels contiguous (a convolution writing NCHW): requantize row-major, where
 * the loop vectorizes along channels, into a small block, then transpose the bytes 16 x 16 with
 * SSE2; reading the int32 sums down a column instead cost 8% of a 3x3 convolution. */
#define QG_TRANSPOSE_ROWS 64
#define QG_TRANSPOSE_COLS 256
static void epilogue_transposed_u8(const qg_args *p, const int32_t *acc, int64_t rs, int64_t m0,
                                   int64_t mc, int64_t n0, int64_t nc)
{
    uint8_t block[QG_TRANSPOSE_ROWS * QG_TRANSPOSE_COLS];
    for (int64_t i = 0; i < mc; i += QG_TRANSPOSE_ROWS) {
        const int64_t rows = mc - i < QG_TRANSPOSE_ROWS ? mc - i : QG_TRANSPOSE_ROWS;
        for (int64_t j = 0; j < nc; j += QG_TRANSPOSE_COLS) {
            const int64_t cols = nc - j < QG_TRANSPOSE_COLS ? nc - j : QG_TRANSPOSE_COLS;
            rows_dispatch(p, acc + i * rs + j, rs, rows, n0 + j, cols, block, cols);
            transpose_u8(block, rows, cols, cols,
                         (uint8_t *)p->out + (n0 + j) * p->out_cs + m0 + i, p->out_cs);
        }
    }
}

void qg_epilogue(const qg_args *p, const int32_t *acc, int64_t rs, int64_t cs, int64_t m0,
                 int64_t mc, int64_t n0, int64_t nc)
{
    const int64_t size = p->out_kind == QG_OUT_UINT8 ? 1 : 4;
    if (cs == 1 && p->out_cs == 1) {
        rows_dispatch(p, acc, rs, mc, n0, nc, (char *)p->out + (m0 * p->out_rs + n0) * size,
                      p->out_rs);
    } else if (cs == 1 && p->out_rs == 1 && p->out_kind == QG_OUT_UINT8) {
        epilogue_transposed_u8(p, acc, rs, m0, mc, n0, nc);
    } else if (rs == 1 && p->out_rs == 1 && p->out_kind == QG_OUT_UINT8 && qg_has_avx512()) {
        epilogue_cols_u8_avx512(p, acc, cs, m0, mc, n0, nc);
    } else if (p->out_rs == 1) {
        epilogue_cols(p, acc, rs, cs, m0, mc, n0, nc);
    } else {
        for (int64_t i = 0; i < mc; i++)
            for (int64_t j = 0; j < nc; j++)
                epilogue_one(p, acc[i * rs + j * cs], m0 + i, n0 + j);
    }
}

/* ---- the loops around the micro-kernel ------------------------------------------------------- */

int64_t qg_tile_count(const qg_args *p)
{
    return ((p->m + QG_MC - 1) / QG_MC) * ((p->n + p->nc - 1) / p->nc);
}

/* Tile number -> its first row and column, its extent, and an int32 scratch for its sums. */
typedef struct {
    int64_t m0, n0, mc, nc, panels, ldc;
    int32_t *c;
} qg_tile_box;

static int tile_box_mc(const qg_args *p, int64_t mc, int64_t tile, int scratch, qg_tile_box *t)
{
    const int64_t n_tiles_n = (p->n + p->nc - 1) / p->nc;
    t->m0 = (tile / n_tiles_n) * mc;
    t->n0 = (tile % n_tiles_n) * p->nc;
    t->mc = p->m - t->m0 < mc ? p->m - t->m0 : mc;
    t->nc = p->n - t->n0 < p->nc ? p->n - t->n0 : p->nc;
    t->panels = (t->nc + 15) / 16;
    t->ldc = t->panels * 16;
    t->c = scratch ? aligned_alloc(64, (size_t)((t->mc * t->ldc * 4 + 63) / 64 * 64)) : NULL;
    return t->c || !scratch ? 0 : -1;
}

static int tile_box(const qg_args *p, int64_t tile, int scratch, qg_tile_box *t)
{
    return tile_box_mc(p, QG_MC, tile, scratch, t);
}

int64_t qg_tile_count_mc(const qg_args *p, int64_t mc)
{
    return ((p->m + mc - 1) / mc) * ((p->n + p->nc - 1) / p->nc);
}

int qg_tile(const qg_args *p, int64_t tile)
{
    return qg_tile_mc(p, QG_MC, tile);
}

int qg_tile_mc(const qg_args *p, int64_t mc, int64_t tile)
{
    return qg_tile_mc_kc(p, mc, QG_KC_GROUPS, tile);
}

int qg_tile_mc_kc(const qg_args *p, int64_t mc, int64_t kc, int64_t tile)
{
    const int mr = p->mr, np = p->npanels;
    qg_tile_box t;
    if (tile_box_mc(p, mc, tile, 1, &t))
        return -1;
    const int64_t bps = p->k4 * 64; /* bytes from one 16-column panel to the next */
    /* BLIS loops 3-1: KC blocks of the reduction; NR column groups; MR row slabs. The KC loop
     * runs at least once, so that K = 0 still zeroes the tile. */
    int64_t g0 = 0;
    do {
        const int64_t kg = p->k4 - g0 < kc ? p->k4 - g0 : kc;
        for (int64_t jp = 0; jp < t.panels; jp += np) {
            const int npc = (int)(t.panels - jp < np ? t.panels - jp : np);
            const int8_t *b = p->bpack + (t.n0 / 16 + jp) * bps + g0 * 64;
            for (int64_t i = 0; i < t.mc; i += mr) {
                const int mrc = (int)(t.mc - i < mr ? t.mc - i : mr);
                const uint8_t *a;
                int64_t a_rs, a_gs;
                if (p->apack) {
                    a = p->apack + (((t.m0 + i) / mr) * p->k4 + g0) * mr * 4;
                    a_rs = 4;
                    a_gs = (int64_t)mr * 4;
                } else {
                    a = p->a + (t.m0 + i) * p->a_rs + g0 * 4;
                    a_rs = p->a_rs;
                    a_gs = 4;
                }
                run_ukr(p->isa, mrc, npc, 1, NULL, kg, a, a_rs, a_gs, b, bps,
                        t.c + i * t.ldc + jp * 16, t.ldc, g0 > 0);
            }
        }
        g0 += kc;
    } while (g0 < p->k4);
    qg_epilogue(p, t.c, t.ldc, 1, t.m0, t.mc, t.n0, t.nc);
    free(t.c);
    return 0;
}

/* The whole reduction (all taps) runs in one micro-kernel call, so there is no KC loop: B for
 * one group of panels, taps x C x 64 bytes (73 KiB for 3x3 x 128 channels), stays in L2. */
int qg_conv_tile(const qg_args *p, const qg_conv *cv, int64_t tile)
{
    return qg_conv_tile_mc(p, cv, QG_MC, tile);
}

int qg_conv_tile_mc(const qg_args *p, const qg_conv *cv, int64_t mc, int64_t tile)
{
    const int mr = p->mr, np = p->npanels;
    const int64_t kg = p->k4 / cv->taps, bps = p->k4 * 64;
    const int flat = cv->in_row_stride == cv->row_len * cv->in_px_stride;
    qg_tile_box t;
    if (tile_box_mc(p, mc, tile, 1, &t))
        return -1;
    for (int64_t jp = 0; jp < t.panels; jp += np) {
        const int npc = (int)(t.panels - jp < np ? t.panels - jp : np);
        const int8_t *b = p->bpack + (t.n0 / 16 + jp) * bps;
        for (int64_t i = 0; i < t.mc;) {
            const int64_t px = t.m0 + i, row = px / cv->row_len, col = px % cv->row_len;
            int64_t rows = t.mc - i < mr ? t.mc - i : mr;
            if (!flat && rows > cv->row_len - col)
                rows = cv->row_len - col;
            const uint8_t *a = cv->x + row * cv->in_row_stride + col * cv->in_px_stride;
            run_ukr(p->isa, (int)rows, npc, cv->taps, cv->tap_off, kg, a, cv->in_px_stride, 4, b,
                    bps, t.c + i * t.ldc + jp * 16, t.ldc, 0);
            i += rows;
        }
    }
    /* Virtual row by virtual row, the columns that exist in the output; rows as long as the
     * output's follow each other there, and go in one run (whole 16 x 16 blocks for the
     * transposing epilogue, where rows of 14 pixels each went through partial ones). */
    for (int64_t i = 0; i < t.mc;) {
        const int64_t px = t.m0 + i, row = px / cv->row_len, col = px % cv->row_len;
        int64_t run = t.mc - i, real = run;
        if (cv->row_len != cv->out_width) {
            run = run < cv->row_len - col ? run : cv->row_len - col;
            real = col >= cv->out_width ? 0 : run < cv->out_width - col ? run : cv->out_width - col;
        }
        if (real)
            qg_epilogue(p, t.c + i * t.ldc, t.ldc, 1, row * cv->out_width + col, real, t.n0, t.nc);
        i += run;
    }
    free(t.c);
    return 0;
}

/* Lanes [first, end) of 16, end clipped to 16. */
static __mmask16 lane_range(int64_t first, int64_t end)
{
    end = end < 16 ? end : 16;
    return end <= first ? 0 : (__mmask16)(((1u << end) - 1) & ~((1u << first) - 1));
}

/* The output pixels among the 16 virtual pixels from v, which span at most two virtual rows
 * (row_len >= QG_T_FUSED_ROW): those before vend in columns below out_width, as a run in v's row
 * and one in the next, each with the output index that lane 0 would have. */
static void t_runs(const qg_conv_t *cv, int64_t v, int64_t vend, __mmask16 k[2], int64_t at[2])
{
    const int64_t row = v / cv->row_len, col = v % cv->row_len, ow = cv->out_width;
    const int64_t end = vend - v, next = cv->row_len - col; /* next: the next row's first lane */
    k[0] = lane_range(0, end < ow - col ? end : ow - col);
    at[0] = row * ow + col;
    k[1] = lane_range(next, end < next + ow ? end : next + ow);
    at[1] = (row + 1) * ow - next;
}

/* Rows: output channels in slabs of QG_T_MR; columns: virtual pixels (p->n of them), in
 * panels of 16. The sums come out channel-major, pixels contiguous, as NCHW wants them; uint8
 * output with rows of QG_T_FUSED_ROW pixels or more goes straight from the micro-kernel. */
int qg_conv_t_tile(const qg_args *p, const qg_conv_t *cv, int64_t tile)
{
    const int64_t kg = p->k4 / cv->taps, a_rs = p->k4 * 4;
    const int fused = p->out_kind == QG_OUT_UINT8 && cv->row_len >= QG_T_FUSED_ROW;
    qg_tile_box t;
    if (tile_box(p, tile, !fused, &t))
        return -1;
    t_store o;
    o.out_cs = p->out_cs;
    o.a_zero_point = p->a_zero_point;
    o.zero_point = p->out_zero_point;
    o.lo_rel = p->lo - (float)p->out_zero_point;
    o.hi_rel = p->hi - (float)p->out_zero_point;
    for (int64_t jp = 0; jp < t.panels; jp += QG_T_NP) {
        const int npc = (int)(t.panels - jp < QG_T_NP ? t.panels - jp : QG_T_NP);
        const uint8_t *b = cv->x + (t.n0 + jp * 16) * 4;
        for (int j = 0; fused && j < npc; j++)
            t_runs(cv, t.n0 + (jp + j) * 16, t.n0 + t.nc, o.k[j], o.at[j]);
        for (int64_t i = 0; i < t.mc; i += QG_T_MR) {
            const int mrc = (int)(t.mc - i < QG_T_MR ? t.mc - i : QG_T_MR);
            const int64_t n = t.m0 + i;
            if (fused) {
                o.out = (uint8_t *)p->out + n * p->out_cs;
                o.bias = p->bias + n;
                o.col_sums = p->col_sums + n;
                o.mult = p->mult + n;
            }
            vnni_t_table[mrc - 1][npc - 1](cv->taps, cv->tap_off, kg, cv->w + n * a_rs, a_rs, b,
                                            cv->plane_stride,
                                            fused ? NULL : t.c + i * t.ldc + jp * 16, t.ldc,
                                            fused ? &o : NULL);
        }
    }
    /* Virtual row by virtual row, the columns that exist in the output; the sums are read as
     * [pixels, channels] with pixels contiguous. */
    for (int64_t j = 0; !fused && j < t.nc;) {
        const int64_t px = t.n0 + j, row = px / cv->row_len, col = px % cv->row_len;
        const int64_t run = t.nc - j < cv->row_len - col ? t.nc - j : cv->row_len - col;
        if (col < cv->out_width) {
            const int64_t real = run < cv->out_width - col ? run : cv->out_width - col;
            qg_epilogue(p, t.c + j, 1, t.ldc, row * cv->out_width + col, real, t.m0, t.mc);
        }
        j += run;
    }
    free(t.c);
    return 0;
}

/* ---- the worker pool (qg_parallel_for) ------------------------------------------------------ */

#define QG_POOL_MAX 15
/* Pause iterations a worker polls for the next job before it sleeps: consecutive convolutions
 * (padding, then tiles, then the next layer) follow each other within microseconds. */
#define QG_POOL_SPIN 4000

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t pool_call = PTHREAD_MUTEX_INITIALIZER;
static int pool_started;                 /* workers created (under pool_mu) */
static pid_t pool_pid;                   /* the process that created them: a forked child has none
                                          * and may have inherited pool_mu locked */
static _Atomic uint32_t pool_epoch;      /* job number; written under pool_mu */
static qg_task_fn pool_fn;               /* the job: under pool_mu */
static void *pool_ctx;
static int64_t pool_n;
static int pool_want;                    /* workers that may take part */
/* (epoch << 32) | next index: a worker can only take an index of the job it read. */
static _Atomic uint64_t pool_next;
static _Atomic int64_t pool_done;
static _Atomic int pool_failed;

static int64_t pool_take(uint32_t epoch, int64_t n)
{
    uint64_t v = atomic_load_explicit(&pool_next, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(v >> 32) != epoch || (int64_t)(v & 0xffffffffu) >= n)
            return -1;
        if (atomic_compare_exchange_weak_explicit(&pool_next, &v, v + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return (int64_t)(v & 0xffffffffu);
    }
}

static void pool_run(uint32_t epoch, qg_task_fn fn, void *ctx, int64_t n)
{
    int64_t i;
    while ((i = pool_take(epoch, n)) >= 0) {
        if (fn(ctx, i))
            atomic_store_explicit(&pool_failed, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&pool_done, 1, memory_order_release);
    }
}

static void *pool_worker(void *arg)
{
    const int id = (int)(intptr_t)arg;
    pthread_mutex_lock(&pool_mu);
    uint32_t seen = atomic_load(&pool_epoch);
    pthread_mutex_unlock(&pool_mu);
    for (;;) {
        for (int spin = 0; spin < QG_POOL_SPIN
                           && atomic_load_explicit(&pool_epoch, memory_order_relaxed) == seen;
             spin++)
            _mm_pause();
        pthread_mutex_lock(&pool_mu);
        while (atomic_load(&pool_epoch) == seen)
            pthread_cond_wait(&pool_cv, &pool_mu);
        seen = atomic_load(&pool_epoch);
        const qg_task_fn fn = pool_fn;
        void *const ctx = pool_ctx;
        const int64_t n = pool_n;
        const int take_part = id < pool_want;
        pthread_mutex_unlock(&pool_mu);
        if (take_part)
            pool_run(seen, fn, ctx, n);
    }
    return NULL;
}

int qg_parallel_for(int threads, int64_t n, qg_task_fn fn, void *ctx)
{
    int failed = 0;
    if (threads <= 1 || n <= 1 || n > 0xffffffffLL || pthread_mutex_trylock(&pool_call)) {
        for (int64_t i = 0; i < n; i++)
            failed |= fn(ctx, i) != 0;
        return failed;
    }
    if (pool_pid && pool_pid != getpid()) {
        pthread_mutex_unlock(&pool_call);
        for (int64_t i = 0; i < n; i++)
            failed |= fn(ctx, i) != 0;
        return failed;
    }
    pool_pid = getpid();
    int want = threads - 1;
    if (want > QG_POOL_MAX)
        want = QG_POOL_MAX;
    if (want > n - 1)
        want = (int)(n - 1);
    pthread_mutex_lock(&pool_mu);
    while (pool_started < want) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&thread, &attr, pool_worker, (void *)(intptr_t)pool_started);
        pthread_attr_destroy(&attr);
        if (rc)
            break;
        pool_started++;
    }
    const uint32_t epoch = atomic_load(&pool_epoch) + 1;
    pool_fn = fn;
    pool_ctx = ctx;
    pool_n = n;
    pool_want = want;
    atomic_store(&pool_done, 0);
    atomic_store(&pool_failed, 0);
    atomic_store(&pool_next, (uint64_t)epoch << 32);
    atomic_store(&pool_epoch, epoch);
    pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    pool_run(epoch, fn, ctx, n);
    /* Only indices that a worker has taken are outstanding. */
    for (int spin = 0; atomic_load_explicit(&pool_done, memory_order_acquire) < n; spin++) {
        if (spin < 20000)
            _mm_pause();
        else
            sched_yield();
    }
    failed = atomic_load(&pool_failed);
    pthread_mutex_unlock(&pool_call);
    return failed;
}
