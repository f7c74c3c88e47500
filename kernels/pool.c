/* 2-D max pooling of NCHW planes (see pool.h). */
#include "pool.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define MXP_TARGET __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#define MXP_TARGET_F __attribute__((target("avx512f")))
#define MXP_INLINE static inline __attribute__((always_inline))

int mxp_avx512_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* The byte kernels' permute (vpermt2b) is VBMI, which AVX-512 CPUs before Ice Lake lack. */
static int bytes_supported(void)
{
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi");
}

/* Bits [lo, hi) of a `lanes`-bit mask, lo = -c and hi = width - c clamped to [0, lanes]: the
 * lanes whose column c + lane lies in the image. */
MXP_INLINE uint64_t cols_in(int64_t c, int64_t width, int lanes)
{
    int64_t lo = -c, hi = width - c;
    lo = lo < 0 ? 0 : lo > lanes ? lanes : lo;
    hi = hi < 0 ? 0 : hi > lanes ? lanes : hi;
    if (hi <= lo)
        return 0;
    return (hi == 64 ? ~0ull : (1ull << hi) - 1) & ~((1ull << lo) - 1);
}

/* row + c, c possibly negative (the lanes before the row are masked out and not read). */
MXP_INLINE const void *at(const void *row, int64_t c, int size)
{
    return (const void *)((uintptr_t)row + (uintptr_t)(c * size));
}

/* ---- AVX-512 ---------------------------------------------------------------------------------
 * A block is L outputs of one row, L = min(lanes, (2 * lanes - 1 - (KW - 1) * DW) / SW + 1):
 * the inputs under it fit two vectors from column c = j0 * SW - pad_left. Rows outside the image
 * are skipped (a window with none gives the lowest value). Output j's tap t is lane
 * j * SW + t * DW of the pair, one permute. A block column runs down MXP_ROWS output rows (the
 * whole plane when one block spans a row), so its column masks are worked out once for them
 * and their input rows stay in L1. The common shapes (3x3 and 2x2 at stride 2) are compiled
 * with constant geometry, so the tap loops unroll; others read it at run time. */

#define MXP_ROWS 8

MXP_TARGET MXP_INLINE __m512i max_bytes(__m512i a, __m512i b, int is_signed)
{
    return is_signed ? _mm512_max_epi8(a, b) : _mm512_max_epu8(a, b);
}

MXP_TARGET MXP_INLINE void bytes_avx512(const mxp_shape *s, const uint8_t *x, uint8_t *y,
                                        int64_t p0, int64_t p1, int is_signed, int kh, int kw,
                                        int sh, int sw, int dh, int dw)
{
    const int64_t height = s->height, width = s->width, oh = s->out_height, ow = s->out_width;
    const int64_t ext = (int64_t)(kw - 1) * dw;
    int64_t block = (127 - ext) / sw + 1;
    block = block > 64 ? 64 : block;
    const int64_t tile = ow <= block ? oh : MXP_ROWS;
    const __m512i lowest = _mm512_set1_epi8(is_signed ? (char)-128 : 0);
    uint8_t lanes[64];
    for (int j = 0; j < 64; j++)
        lanes[j] = (uint8_t)(j * sw);
    const __m512i first = _mm512_loadu_si512(lanes);
    for (int64_t p = p0; p < p1; p++) {
        const uint8_t *plane = x + p * height * width;
        uint8_t *out = y + p * oh * ow;
        for (int64_t y0 = 0; y0 < oh; y0 += tile)
        for (int64_t j0 = 0, y1 = y0 + tile < oh ? y0 + tile : oh; j0 < ow; j0 += block) {
            const int64_t n = ow - j0 < block ? ow - j0 : block;
            const int64_t c = j0 * sw - s->pad_left;
            const int two = (n - 1) * sw + ext >= 64;
            const __mmask64 m0 = cols_in(c, width, 64), m1 = two ? cols_in(c + 64, width, 64) : 0;
            const __mmask64 keep = n == 64 ? ~0ull : (1ull << n) - 1;
            for (int64_t oy = y0; oy < y1; oy++) {
                const int64_t r0 = oy * sh - s->pad_top;
                __m512i v0 = lowest, v1 = lowest;
                for (int i = 0; i < kh; i++) {
                    const int64_t iy = r0 + (int64_t)i * dh;
                    if ((uint64_t)iy >= (uint64_t)height)
                        continue;
                    const uint8_t *row = plane + iy * width;
                    v0 = max_bytes(v0, _mm512_mask_loadu_epi8(lowest, m0, at(row, c, 1)), is_signed);
                    if (two)
                        v1 = max_bytes(v1, _mm512_mask_loadu_epi8(lowest, m1, at(row, c + 64, 1)),
                                       is_signed);
                }
                __m512i acc = _mm512_permutex2var_epi8(v0, first, v1);
                for (int t = 1; t < kw; t++) {
                    const __m512i idx = _mm512_add_epi8(first, _mm512_set1_epi8((char)(t * dw)));
                    acc = max_bytes(acc, _mm512_permutex2var_epi8(v0, idx, v1), is_signed);
                }
                _mm512_mask_storeu_epi8(out + oy * ow + j0, keep, acc);
            }
        }
    }
}

/* The max over window (oy, ox) of a float plane, NaN if it holds one: the AVX-512 blocks that
 * met a NaN (vmaxps does not carry it). */
static float window_max_f32(const mxp_shape *s, const float *plane, int64_t oy, int64_t ox)
{
    float m = -__builtin_inff();
    for (int i = 0; i < s->kh; i++) {
        const int64_t iy = oy * s->stride_h - s->pad_top + (int64_t)i * s->dilation_h;
        if ((uint64_t)iy >= (uint64_t)s->height)
            continue;
        for (int j = 0; j < s->kw; j++) {
            const int64_t ix = ox * s->stride_w - s->pad_left + (int64_t)j * s->dilation_w;
            if ((uint64_t)ix >= (uint64_t)s->width)
                continue;
            const float v = plane[iy * s->width + ix];
            if (v > m || v != v)
                m = v;
            if (m != m)
                return m;
        }
    }
    return m;
}

MXP_TARGET_F MXP_INLINE void f32_avx512(const mxp_shape *s, const float *x, float *y, int64_t p0,
                                      int64_t p1, int kh, int kw, int sh, int sw, int dh, int dw)
{
    const int64_t height = s->height, width = s->width, oh = s->out_height, ow = s->out_width;
    const int64_t ext = (int64_t)(kw - 1) * dw;
    int64_t block = (31 - ext) / sw + 1;
    block = block > 16 ? 16 : block;
    const int64_t tile = ow <= block ? oh : MXP_ROWS;
    const __m512 lowest = _mm512_set1_ps(-__builtin_inff());
    const __m512i first = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(sw));
    for (int64_t p = p0; p < p1; p++) {
        const float *plane = x + p * height * width;
        float *out = y + p * oh * ow;
        for (int64_t y0 = 0; y0 < oh; y0 += tile)
        for (int64_t j0 = 0, y1 = y0 + tile < oh ? y0 + tile : oh; j0 < ow; j0 += block) {
            const int64_t n = ow - j0 < block ? ow - j0 : block;
            const int64_t c = j0 * sw - s->pad_left;
            const int two = (n - 1) * sw + ext >= 16;
            const __mmask16 m0 = (__mmask16)cols_in(c, width, 16);
            const __mmask16 m1 = two ? (__mmask16)cols_in(c + 16, width, 16) : 0;
            const __mmask16 keep = (__mmask16)((1u << n) - 1);
            for (int64_t oy = y0; oy < y1; oy++) {
                const int64_t r0 = oy * sh - s->pad_top;
                __m512 v0 = lowest, v1 = lowest;
                __mmask16 nan = 0;
                for (int i = 0; i < kh; i++) {
                    const int64_t iy = r0 + (int64_t)i * dh;
                    if ((uint64_t)iy >= (uint64_t)height)
                        continue;
                    const float *row = plane + iy * width;
                    const __m512 a = _mm512_mask_loadu_ps(lowest, m0, at(row, c, 4));
                    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
                    v0 = _mm512_max_ps(v0, a);
                    if (two) {
                        const __m512 b = _mm512_mask_loadu_ps(lowest, m1, at(row, c + 16, 4));
                        nan |= _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
                        v1 = _mm512_max_ps(v1, b);
                    }
                }
                float *dst = out + oy * ow + j0;
                if (__builtin_expect(nan != 0, 0)) {
                    for (int64_t j = 0; j < n; j++)
                        dst[j] = window_max_f32(s, plane, oy, j0 + j);
                    continue;
                }
                __m512 acc = _mm512_permutex2var_ps(v0, first, v1);
                for (int t = 1; t < kw; t++) {
                    const __m512i idx = _mm512_add_epi32(first, _mm512_set1_epi32(t * dw));
                    acc = _mm512_max_ps(acc, _mm512_permutex2var_ps(v0, idx, v1));
                }
                _mm512_mask_storeu_ps(dst, keep, acc);
            }
        }
    }
}

#define MXP_GEOMETRY(s) (s)->kh, (s)->kw, (s)->stride_h, (s)->stride_w, (s)->dilation_h, (s)->dilation_w
#define MXP_IS(s, k, st) ((s)->kh == (k) && (s)->kw == (k) && (s)->stride_h == (st) \
                          && (s)->stride_w == (st) && (s)->dilation_h == 1 && (s)->dilation_w == 1)

MXP_TARGET static void bytes_avx512_any(const mxp_shape *s, const uint8_t *x, uint8_t *y, int64_t p0,
                                        int64_t p1, int is_signed)
{
    if (MXP_IS(s, 3, 2))
        bytes_avx512(s, x, y, p0, p1, is_signed, 3, 3, 2, 2, 1, 1);
    else if (MXP_IS(s, 2, 2))
        bytes_avx512(s, x, y, p0, p1, is_signed, 2, 2, 2, 2, 1, 1);
    else
        bytes_avx512(s, x, y, p0, p1, is_signed, MXP_GEOMETRY(s));
}

MXP_TARGET_F static void f32_avx512_any(const mxp_shape *s, const float *x, float *y, int64_t p0, int64_t p1)
{
    if (MXP_IS(s, 3, 2))
        f32_avx512(s, x, y, p0, p1, 3, 3, 2, 2, 1, 1);
    else if (MXP_IS(s, 2, 2))
        f32_avx512(s, x, y, p0, p1, 2, 2, 2, 2, 1, 1);
    else
        f32_avx512(s, x, y, p0, p1, MXP_GEOMETRY(s));
}

/* ---- portable --------------------------------------------------------------------------------
 * Per output row: the max over the window rows into row[pad_left:pad_left + W] (the rest of row
 * holds the lowest value), the max over the KW columns at every start into hor, then every
 * SW-th of hor: contiguous select loops that the compiler vectorizes (a branch per element
 * would mispredict on every other one). BETTER(v, m): v replaces the running max m (for floats
 * also when v is NaN, which then stays). */
#define MXP_PORTABLE(NAME, T, BETTER)                                                            \
    static void NAME(const mxp_shape *s, const T *restrict x, T *restrict y, int64_t p0,        \
                     int64_t p1, T lowest, T *restrict row, int64_t span, T *restrict hor)      \
    {                                                                                           \
        const int64_t height = s->height, width = s->width, oh = s->out_height, ow = s->out_width; \
        const int64_t n = (ow - 1) * s->stride_w + 1;                                           \
        for (int64_t i = 0; i < span; i++)                                                      \
            row[i] = lowest;                                                                    \
        T *mid = row + s->pad_left;                                                             \
        for (int64_t p = p0; p < p1; p++) {                                                     \
            const T *plane = x + p * height * width;                                            \
            for (int64_t oy = 0; oy < oh; oy++) {                                               \
                int started = 0;                                                                \
                for (int i = 0; i < s->kh; i++) {                                               \
                    const int64_t iy = oy * s->stride_h - s->pad_top + (int64_t)i * s->dilation_h; \
                    if ((uint64_t)iy >= (uint64_t)height)                                       \
                        continue;                                                               \
                    const T *restrict src = plane + iy * width;                                 \
                    if (!started) {                                                             \
                        memcpy(mid, src, (size_t)width * sizeof(T));                            \
                        started = 1;                                                            \
                        continue;                                                               \
                    }                                                                           \
                    for (int64_t c = 0; c < width; c++)                                         \
                        mid[c] = BETTER(src[c], mid[c]) ? src[c] : mid[c];                      \
                }                                                                               \
                if (!started)                                                                   \
                    for (int64_t c = 0; c < width; c++)                                         \
                        mid[c] = lowest;                                                        \
                memcpy(hor, row, (size_t)n * sizeof(T));                                        \
                for (int j = 1; j < s->kw; j++) {                                               \
                    const T *tap = row + (int64_t)j * s->dilation_w;                            \
                    for (int64_t c = 0; c < n; c++)                                             \
                        hor[c] = BETTER(tap[c], hor[c]) ? tap[c] : hor[c];                      \
                }                                                                               \
                T *dst = y + (p * oh + oy) * ow;                                                \
                for (int64_t ox = 0; ox < ow; ox++)                                             \
                    dst[ox] = hor[ox * s->stride_w];                                            \
            }                                                                                   \
        }                                                                                       \
    }

#define MXP_GREATER(v, m) ((v) > (m))
#define MXP_GREATER_OR_NAN(v, m) (((v) > (m)) | ((v) != (v)))
MXP_PORTABLE(f32_portable, float, MXP_GREATER_OR_NAN)
MXP_PORTABLE(u8_portable, uint8_t, MXP_GREATER)
MXP_PORTABLE(i8_portable, int8_t, MXP_GREATER)

int mxp_planes(const mxp_shape *s, const void *x, void *y, int64_t p0, int64_t p1, int isa)
{
    const int64_t ext = (int64_t)(s->kw - 1) * s->dilation_w;
    const int lanes = s->dtype == MXP_F32 ? 16 : 64;
    if (isa == MXP_ISA_AVX512 && ext < 2 * lanes && (s->dtype == MXP_F32 || bytes_supported())) {
        if (s->dtype == MXP_F32)
            f32_avx512_any(s, x, y, p0, p1);
        else
            bytes_avx512_any(s, x, y, p0, p1, s->dtype == MXP_I8);
        return 0;
    }
    const int64_t n = (s->out_width - 1) * s->stride_w + 1;
    int64_t span = n + ext;
    if (span < s->pad_left + s->width)
        span = s->pad_left + s->width;
    const size_t size = s->dtype == MXP_F32 ? sizeof(float) : 1;
    char *row = malloc((size_t)(span + n) * size);
    if (!row)
        return -1;
    if (s->dtype == MXP_F32)
        f32_portable(s, x, y, p0, p1, -__builtin_inff(), (float *)row, span, (float *)row + span);
    else if (s->dtype == MXP_U8)
        u8_portable(s, x, y, p0, p1, 0, (uint8_t *)row, span, (uint8_t *)row + span);
    else
        i8_portable(s, x, y, p0, p1, -128, (int8_t *)row, span, (int8_t *)row + span);
    free(row);
    return 0;
}
