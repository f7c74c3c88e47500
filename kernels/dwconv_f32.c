/* fp32 depthwise convolution (see dwconv_f32.h). */
#include "dwconv_f32.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define DWF_TARGET __attribute__((target("avx512f")))
#define DWF_INLINE static inline __attribute__((always_inline))

int dwf_avx512_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* ---- AVX-512 ---------------------------------------------------------------------------------
 * A tile is R output rows x U blocks of 16 outputs (R * U accumulators in registers, bias
 * first). It walks the T = (R - 1) * SH + (KH - 1) * DH + 1 input rows under it once: each
 * loaded vector feeds every output row whose window covers that input row (R = 8 at stride 1
 * and a 3x3 kernel: 10 rows loaded for 24 row-taps). Stride 2 loads 32 inputs and splits
 * them with two permutes into tap j's (even lanes) and tap j + 1's (odd lanes). Rows up to 8
 * wide (and a last part of a row of at most 8 columns) put two output rows in one vector.
 * Tiles whose columns lie inside the image load unmasked, the border ones with a lane mask;
 * rows above and below the image point at a zero row. The common geometries (3x3 and 5x5,
 * stride 1 or 2, no dilation) are compiled with constant shapes, so the loops unroll; others
 * run the same code with the shape read at run time. */

/* Lanes whose column c + lane lies in [0, width): bits [lo, hi), no branches. */
DWF_INLINE __mmask16 cols_in(int64_t c, int64_t width)
{
    int64_t lo = -c, hi = width - c;
    lo = lo < 0 ? 0 : lo > 16 ? 16 : lo;
    hi = hi < 0 ? 0 : hi > 16 ? 16 : hi;
    return (__mmask16)((0xffffu << lo) & (0xffffu >> (16 - hi)));
}

/* 16 floats from column c of row (c may be negative: masked-out lanes are not read). */
DWF_TARGET DWF_INLINE __m512 load16(const float *row, int64_t c, int64_t width, int masked)
{
    const float *at = (const float *)((uintptr_t)row + (uintptr_t)(c * (int64_t)sizeof(float)));
    return masked ? _mm512_maskz_loadu_ps(cols_in(c, width), at) : _mm512_loadu_ps(at);
}

/* Columns c + lane * sw, zero outside [0, width): strides of 3 and more. */
DWF_TARGET DWF_INLINE __m512 gather16(const float *row, int64_t c, int sw, int64_t width)
{
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i col = _mm512_add_epi32(_mm512_mullo_epi32(lane, _mm512_set1_epi32(sw)),
                                         _mm512_set1_epi32((int)c));
    const __mmask16 m = _mm512_cmpge_epi32_mask(col, _mm512_setzero_si512())
                        & _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32((int)width));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, col, row, 4);
}

DWF_TARGET DWF_INLINE __m512 activate(const dwf_shape *s, __m512 v)
{
    /* max(lo, v) and min(hi, v) return v when it is NaN, as numpy's maximum and minimum do. */
    if (s->activation != DWF_ACT_NONE)
        v = _mm512_max_ps(_mm512_set1_ps(s->lo), v);
    if (s->activation == DWF_ACT_CLIP)
        v = _mm512_min_ps(_mm512_set1_ps(s->hi), v);
    return v;
}

/* Lanes 0-7 from row a and lanes 8-15 from row b, columns c..c+7 of each (zero outside the
 * image): a narrow plane's two output rows in one vector. */
DWF_TARGET DWF_INLINE __m512 load_pair(const float *a, const float *b, int64_t c, int64_t width)
{
    const __mmask16 m = cols_in(c, width) & 0xff;
    const __m512 lo = _mm512_maskz_loadu_ps(m, (const float *)((uintptr_t)a + (uintptr_t)(c * 4)));
    return _mm512_mask_loadu_ps(lo, (__mmask16)(m << 8),
                                (const float *)((uintptr_t)b + (uintptr_t)((c - 8) * 4)));
}

/* Lanes n..15 of a then 0..n-1 of b (valignd; n folds to a constant in the kernels). */
DWF_TARGET DWF_INLINE __m512 shift_in(__m512 a, __m512 b, int n)
{
    const __m512i x = _mm512_castps_si512(a), y = _mm512_castps_si512(b);
    switch (n) {
#define DWF_ALIGN_CASE(k) case k: return _mm512_castsi512_ps(_mm512_alignr_epi32(y, x, k));
        DWF_ALIGN_CASE(1) DWF_ALIGN_CASE(2) DWF_ALIGN_CASE(3) DWF_ALIGN_CASE(4)
        DWF_ALIGN_CASE(5) DWF_ALIGN_CASE(6) DWF_ALIGN_CASE(7) DWF_ALIGN_CASE(8)
        DWF_ALIGN_CASE(9) DWF_ALIGN_CASE(10) DWF_ALIGN_CASE(11) DWF_ALIGN_CASE(12)
        DWF_ALIGN_CASE(13) DWF_ALIGN_CASE(14) DWF_ALIGN_CASE(15)
#undef DWF_ALIGN_CASE
    default: return a;
    }
}

#define DWF_UNROLL _Pragma("GCC unroll 32")

/* R output rows from oy x U blocks of 16 outputs from ox0. rows[t]: input row
 * (oy * SH - pad_top + t), or a zero row outside the image. PAIR (U = 1, at most 8 columns):
 * each vector holds 8 outputs of row oy + q and 8 of row oy + q + R, whose input rows start at
 * rows[R * SH]. The taps go column by column (j outer), so that only column j's KH weights are
 * live while the input rows stream past the R x U accumulators. */
DWF_TARGET DWF_INLINE void dwf_tile(const dwf_shape *s, const float *const *rows, int64_t oy,
                                    int64_t ox0, const float *w, __m512 vb, float *y, const int KH,
                                    const int KW, const int SH, const int SW, const int DH,
                                    const int DW, const int R, const int U, const int PAIR,
                                    const int masked)
{
    __m512 acc[8][2];
    DWF_UNROLL
    for (int q = 0; q < R; q++)
        DWF_UNROLL
        for (int u = 0; u < U; u++)
            acc[q][u] = vb;
    const int64_t width = s->width;
    const int64_t c0 = ox0 * SW - s->pad_left;
    const int T = (R - 1) * SH + (KH - 1) * DH + 1;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    /* stride 2, dilation 1: 32 inputs from column c (PAIR: 16 from each row) hold tap j's
     * inputs in the even lanes and tap j + 1's in the odd lanes */
    const int both = SW == 2 && DW == 1;
    if (PAIR && SW == 1 && (KW - 1) * DW <= 8) {
        /* each row's 16 columns from c0 are loaded once; a permute picks tap j's 8 from each
         * of the two rows */
        const __m512i base = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        DWF_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 a = load16(rows[t], c0, width, 1);
            const __m512 b = load16(rows[t + R * SH], c0, width, 1);
            DWF_UNROLL
            for (int j = 0; j < KW; j++) {
                const __m512 v = _mm512_permutex2var_ps(a, _mm512_add_epi32(base, _mm512_set1_epi32(j * DW)), b);
                DWF_UNROLL
                for (int q = 0; q < R; q++) {
                    const int d = t - q * SH;
                    if (d < 0 || d % DH != 0 || d / DH >= KH)
                        continue;
                    acc[q][0] = _mm512_fmadd_ps(v, _mm512_set1_ps(w[(d / DH) * KW + j]), acc[q][0]);
                }
            }
        }
    } else if (!PAIR && SW == 1 && KW <= 3 && (KW - 1) * DW <= 16) {
        /* each row's 16 (U + 1) columns from c0 are loaded once; valignd shifts them by each
         * tap's offset (it pays for 3 taps a row, not for 5: there the shifts cost more than
         * the loads they save) */
        DWF_UNROLL
        for (int t = 0; t < T; t++) {
            __m512 l[3];
            DWF_UNROLL
            for (int u = 0; u < U; u++)
                l[u] = load16(rows[t], c0 + 16 * u, width, masked);
            l[U] = KW > 1 ? load16(rows[t], c0 + 16 * U, width, 1) : l[0];
            DWF_UNROLL
            for (int j = 0; j < KW; j++) {
                __m512 v[2];
                DWF_UNROLL
                for (int u = 0; u < U; u++)
                    v[u] = j == 0 ? l[u] : shift_in(l[u], l[u + 1], (j * DW) & 15);
                DWF_UNROLL
                for (int q = 0; q < R; q++) {
                    const int d = t - q * SH;
                    if (d < 0 || d % DH != 0 || d / DH >= KH)
                        continue;
                    const __m512 wv = _mm512_set1_ps(w[(d / DH) * KW + j]);
                    DWF_UNROLL
                    for (int u = 0; u < U; u++)
                        acc[q][u] = _mm512_fmadd_ps(v[u], wv, acc[q][u]);
                }
            }
        }
    } else
    DWF_UNROLL
    for (int j = 0; j < KW; j += both ? 2 : 1) {
        const int second = both && j + 1 < KW;
        DWF_UNROLL
        for (int t = 0; t < T; t++) {
            const float *row = rows[t];
            const float *row2 = PAIR ? rows[t + R * SH] : row;
            __m512 v[2], v2[2];
            DWF_UNROLL
            for (int u = 0; u < U; u++) {
                if (SW == 1) {
                    const int64_t c = c0 + 16 * u + (int64_t)j * DW;
                    v[u] = PAIR ? load_pair(row, row2, c, width) : load16(row, c, width, masked);
                    v2[u] = v[u];
                } else if (SW == 2) {
                    const int64_t c = c0 + 32 * u + (int64_t)j * DW;
                    const __m512 a = load16(row, c, width, masked || PAIR);
                    const __m512 b = PAIR ? load16(row2, c, width, 1) : load16(row, c + 16, width, masked);
                    v[u] = _mm512_permutex2var_ps(a, even, b);
                    v2[u] = second ? _mm512_permutex2var_ps(a, odd, b) : v[u];
                } else {
                    v[u] = gather16(row, c0 + 16 * u * SW + (int64_t)j * DW, SW, width);
                    v2[u] = v[u];
                }
            }
            DWF_UNROLL
            for (int q = 0; q < R; q++) {
                const int d = t - q * SH;
                if (d < 0 || d % DH != 0 || d / DH >= KH)
                    continue;
                const int i = d / DH;
                const __m512 wv = _mm512_set1_ps(w[i * KW + j]);
                DWF_UNROLL
                for (int u = 0; u < U; u++)
                    acc[q][u] = _mm512_fmadd_ps(v[u], wv, acc[q][u]);
                if (second) {
                    const __m512 wv2 = _mm512_set1_ps(w[i * KW + j + 1]);
                    DWF_UNROLL
                    for (int u = 0; u < U; u++)
                        acc[q][u] = _mm512_fmadd_ps(v2[u], wv2, acc[q][u]);
                }
            }
        }
    }
    const int64_t oh = s->out_height, ow = s->out_width;
    DWF_UNROLL
    for (int q = 0; q < R; q++) {
        if (PAIR) {
            const __m512 v = activate(s, acc[q][0]);
            const __mmask16 m = (__mmask16)((1u << (ow - ox0)) - 1);
            if (oy + q < oh)
                _mm512_mask_storeu_ps(y + (oy + q) * ow + ox0, m, v);
            if (oy + q + R < oh)
                _mm512_mask_storeu_ps((float *)((uintptr_t)(y + (oy + q + R) * ow + ox0) - 32),
                                      (__mmask16)(m << 8), v);
            continue;
        }
        if (oy + q >= oh)
            break;
        float *yr = y + (oy + q) * ow;
        DWF_UNROLL
        for (int u = 0; u < U; u++) {
            const int64_t o = ox0 + 16 * u;
            if (o >= ow)
                break;
            const __m512 v = activate(s, acc[q][u]);
            if (ow - o >= 16)
                _mm512_storeu_ps(yr + o, v);
            else
                _mm512_mask_storeu_ps(yr + o, (__mmask16)((1u << (ow - o)) - 1), v);
        }
    }
}

typedef void (*dwf_plane_fn)(const dwf_shape *s, const float *x, const float *w, float bias,
                             float *y, const float *zero, const float **rows);
typedef void (*dwf_tile_fn)(const dwf_shape *s, const float *const *rows, int64_t oy,
                            int64_t ox0, const float *w, __m512 vb, float *y);

/* The last column that a tile of U blocks reads, from its first (-1: gathers, always masked). */
#define DWF_REACH(U)                                                                               \
    (SW == 1   ? 16 * (U) - 1 + (int64_t)(KW - 1) * DW                                            \
     : SW == 2 ? 32 * (U) - 1 + (DW == 1 ? (KW - 1) / 2 * 2 : (int64_t)(KW - 1) * DW)              \
               : -1)

/* One tile shape as a function of its own (the register allocator sees one tile at a time). */
#define DWF_TILE_FN(NAME, VARIANT, KH_, KW_, SH_, SW_, DH_, DW_, R, U, PAIR, MASKED)             \
    DWF_TARGET __attribute__((noinline)) static void NAME##_##VARIANT(                             \
        const dwf_shape *s, const float *const *rows, int64_t oy, int64_t ox0, const float *w,     \
        __m512 vb, float *y)                                                                       \
    {                                                                                              \
        dwf_tile(s, rows, oy, ox0, w, vb, y, (KH_), (KW_), (SH_), (SW_), (DH_), (DW_), (R), (U),   \
                 (PAIR), (MASKED));                                                                \
    }

#define DWF_TILE_FNS(NAME, KH_, KW_, SH_, SW_, DH_, DW_, R, RN)                                    \
    DWF_TILE_FN(NAME, r##RN##u2i, KH_, KW_, SH_, SW_, DH_, DW_, R, 2, 0, 0)                        \
    DWF_TILE_FN(NAME, r##RN##u2b, KH_, KW_, SH_, SW_, DH_, DW_, R, 2, 0, 1)                        \
    DWF_TILE_FN(NAME, r##RN##u1i, KH_, KW_, SH_, SW_, DH_, DW_, R, 1, 0, 0)                        \
    DWF_TILE_FN(NAME, r##RN##u1b, KH_, KW_, SH_, SW_, DH_, DW_, R, 1, 0, 1)

/* One channel's plane. Rows go in groups of RA (RB, RC for the last few), each group in tiles
 * of 32 columns and one of 16 at the end. A last part of at most 8 columns (all of a row up
 * to 8 wide) goes in PAIR tiles of 4 + 4 rows. The arguments in capitals are constants in the
 * specialized kernels (the tile's loops unroll) and read from s in the generic one. */
#define DWF_PLANE(NAME, KH_, KW_, SH_, SW_, DH_, DW_, RA, RB, RC)                                  \
    DWF_TILE_FNS(NAME, KH_, KW_, SH_, SW_, DH_, DW_, RA, A)                                        \
    DWF_TILE_FNS(NAME, KH_, KW_, SH_, SW_, DH_, DW_, RB, B)                                        \
    DWF_TILE_FNS(NAME, KH_, KW_, SH_, SW_, DH_, DW_, RC, C)                                        \
    DWF_TILE_FN(NAME, pair, KH_, KW_, SH_, SW_, DH_, DW_, 4, 1, 1, 1)                              \
    DWF_TARGET static void NAME(const dwf_shape *s, const float *x, const float *w, float bias,    \
                                float *y, const float *zero, const float **rows)                   \
    {                                                                                              \
        const int KH = (KH_), KW = (KW_), SH = (SH_), SW = (SW_), DH = (DH_), DW = (DW_);          \
        static const dwf_tile_fn tiles[3][4] = {                                                   \
            {NAME##_rAu2i, NAME##_rAu2b, NAME##_rAu1i, NAME##_rAu1b},                              \
            {NAME##_rBu2i, NAME##_rBu2b, NAME##_rBu1i, NAME##_rBu1b},                              \
            {NAME##_rCu2i, NAME##_rCu2b, NAME##_rCu1i, NAME##_rCu1b}};                             \
        const int sizes[3] = {(RA), (RB), (RC)};                                                   \
        const int64_t oh = s->out_height, ow = s->out_width, rest = ow % 16;                       \
        const int pair = SW <= 2 && rest >= 1 && rest <= 8;                                        \
        const int64_t ow_main = pair ? ow - rest : ow;                                             \
        const __m512 vb = _mm512_set1_ps(bias);                                                    \
        int64_t oy = 0;                                                                            \
        while (ow_main > 0 && oy < oh) {                                                           \
            const int64_t left = oh - oy;                                                          \
            const int g = left >= sizes[0] - 1 ? 0 : left >= sizes[1] - 1 ? 1 : 2;                 \
            const int r = sizes[g];                                                                \
            const int T = (r - 1) * SH + (KH - 1) * DH + 1;                                        \
            for (int t = 0; t < T; t++) {                                                          \
                const int64_t iy = oy * SH - s->pad_top + t;                                       \
                rows[t] = iy >= 0 && iy < s->height ? x + iy * s->width : zero;                    \
            }                                                                                      \
            int64_t ox0 = 0;                                                                       \
            for (; ox0 + 16 < ow_main; ox0 += 32) {                                                \
                const int64_t c0 = ox0 * SW - s->pad_left;                                         \
                const int inside = DWF_REACH(2) >= 0 && c0 >= 0 && c0 + DWF_REACH(2) < s->width;   \
                tiles[g][inside ? 0 : 1](s, rows, oy, ox0, w, vb, y);                              \
            }                                                                                      \
            if (ox0 < ow_main) {                                                                   \
                const int64_t c0 = ox0 * SW - s->pad_left;                                         \
                const int inside = DWF_REACH(1) >= 0 && c0 >= 0 && c0 + DWF_REACH(1) < s->width;   \
                tiles[g][inside ? 2 : 3](s, rows, oy, ox0, w, vb, y);                              \
            }                                                                                      \
            oy += r;                                                                               \
        }                                                                                          \
        if (pair) {                                                                                \
            const int T = 7 * SH + (KH - 1) * DH + 1;                                              \
            for (oy = 0; oy < oh; oy += 8) {                                                       \
                for (int t = 0; t < T; t++) {                                                      \
                    const int64_t iy = oy * SH - s->pad_top + t;                                   \
                    rows[t] = iy >= 0 && iy < s->height ? x + iy * s->width : zero;                \
                }                                                                                  \
                NAME##_pair(s, rows, oy, ow_main, w, vb, y);                                       \
            }                                                                                      \
        }                                                                                          \
    }

DWF_PLANE(dwf_k3s1, 3, 3, 1, 1, 1, 1, 8, 4, 2)
DWF_PLANE(dwf_k5s1, 5, 5, 1, 1, 1, 1, 4, 2, 1)
DWF_PLANE(dwf_k3s2, 3, 3, 2, 2, 1, 1, 4, 2, 1)
DWF_PLANE(dwf_k5s2, 5, 5, 2, 2, 1, 1, 4, 2, 1)
DWF_PLANE(dwf_gen, s->kh, s->kw, s->stride_h, s->stride_w, s->dilation_h, s->dilation_w, 2, 2, 1)

static dwf_plane_fn dwf_pick(const dwf_shape *s)
{
    const int square = s->kh == s->kw && (s->kh == 3 || s->kh == 5);
    const int plain = s->dilation_h == 1 && s->dilation_w == 1 && s->stride_h == s->stride_w;
    if (square && plain && s->stride_w == 1)
        return s->kh == 3 ? dwf_k3s1 : dwf_k5s1;
    if (square && plain && s->stride_w == 2)
        return s->kh == 3 ? dwf_k3s2 : dwf_k5s2;
    return dwf_gen;
}

/* ---- portable ----------------------------------------------------------------------------------
 * The plane is copied once into a zero-padded buffer, cut to the extent the outputs read
 * (hn x wn). At stride 1 each tap is then one multiply-add over the whole plane's run of
 * (oh - 1) * wn + ow outputs, rows laid end to end (the columns between rows are dropped at the
 * end); other strides go row by row. Plain loops, for the compiler to vectorize. */

static void dwf_extent(const dwf_shape *s, int64_t *hn, int64_t *wn)
{
    *hn = (s->out_height - 1) * s->stride_h + (int64_t)(s->kh - 1) * s->dilation_h + 1;
    *wn = (s->out_width - 1) * s->stride_w + (int64_t)(s->kw - 1) * s->dilation_w + 1;
}

static void dwf_pad_plane(const dwf_shape *s, const float *x, float *xp, int64_t hn, int64_t wn)
{
    const int64_t pl = s->pad_left, width = s->width;
    int64_t lo = pl < wn ? pl : wn, hi = pl + width < wn ? pl + width : wn;
    hi = hi < lo ? lo : hi;
    for (int64_t r = 0; r < hn; r++) {
        float *dst = xp + r * wn;
        const int64_t iy = r - s->pad_top;
        if (iy < 0 || iy >= s->height) {
            memset(dst, 0, (size_t)wn * sizeof(float));
            continue;
        }
        memset(dst, 0, (size_t)lo * sizeof(float));
        memcpy(dst + lo, x + iy * width + (lo - pl), (size_t)(hi - lo) * sizeof(float));
        memset(dst + hi, 0, (size_t)(wn - hi) * sizeof(float));
    }
}

static void dwf_store_row(const dwf_shape *s, const float *restrict acc, float bias,
                          float *restrict yr)
{
    for (int64_t ox = 0; ox < s->out_width; ox++) {
        float v = acc[ox] + bias;
        if (s->activation != DWF_ACT_NONE && v < s->lo)
            v = s->lo;
        if (s->activation == DWF_ACT_CLIP && v > s->hi)
            v = s->hi;
        yr[ox] = v;
    }
}

static void dwf_plane_portable(const dwf_shape *s, const float *x, const float *w, float bias,
                               float *y, float *restrict xp, float *restrict acc)
{
    int64_t hn, wn;
    dwf_extent(s, &hn, &wn);
    dwf_pad_plane(s, x, xp, hn, wn);
    const int64_t oh = s->out_height, ow = s->out_width;
    if (s->stride_h == 1 && s->stride_w == 1) {
        const int64_t run = (oh - 1) * wn + ow;
        for (int64_t p = 0; p < run; p++)
            acc[p] = 0.0f;
        for (int i = 0; i < s->kh; i++)
            for (int j = 0; j < s->kw; j++) {
                const float wt = w[i * s->kw + j];
                const float *restrict src = xp + (int64_t)i * s->dilation_h * wn + (int64_t)j * s->dilation_w;
                for (int64_t p = 0; p < run; p++)
                    acc[p] += wt * src[p];
            }
        for (int64_t oy = 0; oy < oh; oy++)
            dwf_store_row(s, acc + oy * wn, bias, y + oy * ow);
        return;
    }
    /* other strides: the padded rows split by column phase, xq[r][b][k] = xp[r][k * sw + b],
     * so that each tap reads a unit-stride run */
    const int sw = s->stride_w;
    const int64_t wq = (wn + sw - 1) / sw;
    float *restrict xq = acc + ow;
    for (int64_t r = 0; r < hn; r++)
        for (int b = 0; b < sw; b++) {
            float *restrict dst = xq + (r * sw + b) * wq;
            const float *restrict src = xp + r * wn + b;
            const int64_t n = (wn - b + sw - 1) / sw;
            for (int64_t k = 0; k < n; k++)
                dst[k] = src[k * sw];
        }
    for (int64_t oy = 0; oy < oh; oy++) {
        for (int64_t ox = 0; ox < ow; ox++)
            acc[ox] = 0.0f;
        for (int i = 0; i < s->kh; i++) {
            const int64_t r = oy * s->stride_h + (int64_t)i * s->dilation_h;
            for (int j = 0; j < s->kw; j++) {
                const int64_t col = (int64_t)j * s->dilation_w;
                const float wt = w[i * s->kw + j];
                const float *restrict src = xq + (r * sw + col % sw) * wq + col / sw;
                for (int64_t ox = 0; ox < ow; ox++)
                    acc[ox] += wt * src[ox];
            }
        }
        dwf_store_row(s, acc, bias, y + oy * ow);
    }
}

int dwf_planes(const dwf_shape *s, const float *x, const float *w, const float *bias, float *y,
               int64_t p0, int64_t p1, int isa)
{
    const int64_t hw = s->height * s->width, ohw = s->out_height * s->out_width;
    const int taps = s->kh * s->kw;
    if (isa == DWF_ISA_AVX512) {
        const int rows_max = 7 * s->stride_h + (s->kh - 1) * s->dilation_h + 1;
        const float **rows = malloc((size_t)rows_max * sizeof(const float *));
        float *zero = calloc((size_t)s->width + 16, sizeof(float));
        if (!rows || !zero) {
            free(rows);
            free(zero);
            return -1;
        }
        const dwf_plane_fn fn = dwf_pick(s);
        for (int64_t p = p0; p < p1; p++) {
            const int64_t c = p % s->channels;
            fn(s, x + p * hw, w + c * taps, bias ? bias[c] : 0.0f, y + p * ohw, zero, rows);
        }
        free(rows);
        free(zero);
        return 0;
    }
    int64_t hn, wn;
    dwf_extent(s, &hn, &wn);
    float *xp = malloc((size_t)(hn * wn) * sizeof(float));
    /* stride 1: the run of sums; other strides: a row of sums, then the phases */
    const int64_t wq = (wn + s->stride_w - 1) / s->stride_w;
    float *acc = malloc((size_t)(hn * wn + s->out_width + hn * s->stride_w * wq) * sizeof(float));
    if (!xp || !acc) {
        free(xp);
        free(acc);
        return -1;
    }
    for (int64_t p = p0; p < p1; p++) {
        const int64_t c = p % s->channels;
        dwf_plane_portable(s, x + p * hw, w + c * taps, bias ? bias[c] : 0.0f, y + p * ohw, xp, acc);
    }
    free(xp);
    free(acc);
    return 0;
}
