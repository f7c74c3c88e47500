/* Depthwise convolution kernels (see depthwise.h). */
#include "depthwise.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

/* ---- planar, AVX-512 VBMI -------------------------------------------------------------------
 * Output pixels are the vector lanes, as in the NCHW plane: 16 int32 lanes, one output each.
 * For kernel row i, one 64-byte load covers the input row under all 16 outputs' taps; vpermb
 * gathers, for lane k, the 4 bytes of taps 4q..4q+3 (k * stride + (4q + t) * dilation) into
 * its int32, and one vpdpbusd against the channel's weight quad, broadcast, adds all 4
 * products. A 3x3 kernel costs 3 loads, 3 vpermb and 3 vpdpbusd per 16 outputs, with no
 * transposition on either side. Input bytes outside the image load as the zero point (masked
 * loads do not fault on the masked-out bytes), so padding needs no copy. */

#define DW_VBMI_TARGET __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vnni")))
#define DW_LANES 16

int dw_vbmi_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
}

int dw_vbmi_fits(const dw_shape *s)
{
    return (int64_t)(DW_LANES - 1) * s->stride_w + (int64_t)(s->kw - 1) * s->dilation_w < 64;
}

/* Bytes [lo, hi) of a 64-byte load. */
static inline __mmask64 byte_range(int64_t lo, int64_t hi)
{
    lo = lo < 0 ? 0 : lo;
    hi = hi > 64 ? 64 : hi;
    if (hi <= lo)
        return 0;
    const uint64_t upto = hi == 64 ? ~0ULL : (1ULL << hi) - 1;
    return (__mmask64)(upto & ~((1ULL << lo) - 1));
}

/* Where a plane's sums go: uint8 outputs are requantized in registers and stored straight into
 * the NCHW output (saving a pass over int32 scratch); other outputs go to acc for qg_epilogue. */
typedef struct {
    int fused;
    uint8_t *out;               /* fused: the channel's output plane */
    __m512i shift, zp;          /* bias - a_zero_point * sum(w); output zero point */
    __m512 mult, lo, hi;
    int32_t *acc;               /* otherwise: [pixels] int32 */
} dw_sink;

DW_VBMI_TARGET static inline void dw_store(const dw_sink *d, int64_t at, int64_t n, __m512i sum)
{
    const __mmask16 lanes = (__mmask16)(n >= DW_LANES ? 0xffff : (1u << n) - 1);
    if (d->fused)
        _mm512_mask_cvtusepi32_storeu_epi8(
            d->out + at, lanes,
            qg_requantize16(_mm512_add_epi32(sum, d->shift), d->mult, d->lo, d->hi, d->zp));
    else
        _mm512_mask_storeu_epi32(d->acc + at, lanes, sum);
}

/* Four blocks of 16 outputs in flight: one accumulator would wait on vpdpbusd's latency. */
#define DW_BLOCKS 4
#define DW_EACH_BLOCK(X) X(0) X(1) X(2) X(3)

DW_VBMI_TARGET static void dw_plane_vbmi(const dw_shape *s, const uint8_t *x, uint8_t zero_point,
                                         const int32_t *quads, const __m512i *gather,
                                         const dw_sink *sink)
{
    const int groups = (s->kw + DW_QUAD - 1) / DW_QUAD;
    const __m512i zp = _mm512_set1_epi8((char)zero_point);
    for (int64_t oy = 0; oy < s->out_height; oy++) {
        for (int64_t ox = 0; ox < s->out_width; ox += DW_BLOCKS * DW_LANES) {
            const int64_t left = s->out_width - ox;
            const int nb = left >= DW_BLOCKS * DW_LANES ? DW_BLOCKS
                                                        : (int)((left + DW_LANES - 1) / DW_LANES);
#define DW_START(b)                                                                              \
    const int64_t x##b = (ox + (b) * DW_LANES) * s->stride_w - s->pad_left;                      \
    const __mmask64 in##b = byte_range(-x##b, s->width - x##b);                                  \
    __m512i sum##b = _mm512_setzero_si512();
            DW_EACH_BLOCK(DW_START)
            for (int i = 0; i < s->kh; i++) {
                const int64_t iy = oy * s->stride_h - s->pad_top + (int64_t)i * s->dilation_h;
                const int inside_rows = iy >= 0 && iy < s->height;
                /* The address may lie before the row: only the bytes inside are read. */
                const uintptr_t row = (uintptr_t)(x + (inside_rows ? iy : 0) * s->width);
#define DW_LOAD(b)                                                                               \
    const __m512i row##b = inside_rows && (b) < nb                                               \
                               ? _mm512_mask_loadu_epi8(zp, in##b, (const void *)(row + (uintptr_t)x##b)) \
                               : zp;
                DW_EACH_BLOCK(DW_LOAD)
                for (int q = 0; q < groups; q++) {
                    const __m512i w = _mm512_set1_epi32(quads[i * groups + q]);
                    const __m512i g = gather[q];
#define DW_FMA(b)                                                                                \
    if ((b) < nb)                                                                                \
        sum##b = _mm512_dpbusd_epi32(sum##b, _mm512_permutexvar_epi8(g, row##b), w);
                    DW_EACH_BLOCK(DW_FMA)
                }
            }
#define DW_STORE(b)                                                                              \
    if ((b) < nb)                                                                                \
        dw_store(sink, oy * s->out_width + ox + (b) * DW_LANES, left - (b) * DW_LANES, sum##b);
            DW_EACH_BLOCK(DW_STORE)
        }
    }
}

/* A row narrow enough for one register, padding included (56 + 2 for a 3x3 at 56 x 56):
 * each input row is loaded once per kernel row, and every block permutes from it with its
 * indices moved on by 16 * stride. Lanes past the output's width may wrap around the register
 * (vpermb reads 6 bits of each index); they are never stored. */
DW_VBMI_TARGET static void dw_plane_vbmi_narrow(const dw_shape *s, const uint8_t *x,
                                                uint8_t zero_point, const int32_t *quads,
                                                const __m512i *gather, const dw_sink *sink)
{
    const int groups = (s->kw + DW_QUAD - 1) / DW_QUAD;
    const __m512i zp = _mm512_set1_epi8((char)zero_point);
    const __mmask64 inside = byte_range(s->pad_left, s->pad_left + s->width);
    const int64_t ow = s->out_width;
    const int nb = (int)((ow + DW_LANES - 1) / DW_LANES);
    const __m512i step = _mm512_set1_epi8((char)(DW_LANES * s->stride_w));
    for (int64_t oy = 0; oy < s->out_height; oy++) {
        __m512i sum0 = _mm512_setzero_si512(), sum1 = sum0, sum2 = sum0, sum3 = sum0;
        for (int i = 0; i < s->kh; i++) {
            const int64_t iy = oy * s->stride_h - s->pad_top + (int64_t)i * s->dilation_h;
            const __m512i row = iy >= 0 && iy < s->height
                ? _mm512_mask_loadu_epi8(zp, inside, (const void *)((uintptr_t)(x + iy * s->width)
                                                                     - (uintptr_t)s->pad_left))
                : zp;
            for (int q = 0; q < groups; q++) {
                const __m512i w = _mm512_set1_epi32(quads[i * groups + q]);
                const __m512i g0 = gather[q], g1 = _mm512_add_epi8(g0, step);
                const __m512i g2 = _mm512_add_epi8(g1, step), g3 = _mm512_add_epi8(g2, step);
#define DW_NARROW_FMA(b)                                                                         \
    if ((b) < nb)                                                                                \
        sum##b = _mm512_dpbusd_epi32(sum##b, _mm512_permutexvar_epi8(g##b, row), w);
                DW_EACH_BLOCK(DW_NARROW_FMA)
            }
        }
#define DW_NARROW_STORE(b)                                                                       \
    if ((b) < nb)                                                                                \
        dw_store(sink, oy * ow + (b) * DW_LANES, ow - (b) * DW_LANES, sum##b);
        DW_EACH_BLOCK(DW_NARROW_STORE)
    }
}

DW_VBMI_TARGET static void gather_indices(const dw_shape *s, __m512i *gather)
{
    const int groups = (s->kw + DW_QUAD - 1) / DW_QUAD;
    for (int q = 0; q < groups; q++) {
        uint8_t idx[64];
        for (int k = 0; k < DW_LANES; k++)
            for (int t = 0; t < DW_QUAD; t++) {
                const int j = q * DW_QUAD + t;
                /* Slots past the last tap have zero weights: any byte will do. */
                idx[k * DW_QUAD + t] = (uint8_t)(j < s->kw ? k * s->stride_w + j * s->dilation_w : 0);
            }
        gather[q] = _mm512_loadu_si512(idx);
    }
}

DW_VBMI_TARGET static void dw_planes_vbmi_run(const dw_shape *s, const uint8_t *x,
                                              const int32_t *quads, const qg_args *p,
                                              int64_t c0, int64_t c1, const __m512i *gather,
                                              int32_t *acc)
{
    const int groups = (s->kw + DW_QUAD - 1) / DW_QUAD;
    const int64_t pixels = s->out_height * s->out_width;
    /* Bytes of an input row that the outputs read, padding included. */
    const int64_t span = (s->out_width - 1) * s->stride_w + (int64_t)(s->kw - 1) * s->dilation_w + 1;
    const int narrow = span <= 64 && s->out_width <= DW_BLOCKS * DW_LANES;
    const uint8_t zp = (uint8_t)p->a_zero_point;
    dw_sink sink = {0};
    sink.fused = p->out_kind == QG_OUT_UINT8 && p->out_rs == 1;
    sink.acc = acc;
    sink.zp = _mm512_set1_epi32(p->out_zero_point);
    sink.lo = _mm512_set1_ps(p->lo - (float)p->out_zero_point);
    sink.hi = _mm512_set1_ps(p->hi - (float)p->out_zero_point);
    for (int64_t c = c0; c < c1; c++) {
        const uint8_t *plane = x + c * s->height * s->width;
        const int32_t *q = quads + c * s->kh * groups;
        if (sink.fused) {
            sink.out = (uint8_t *)p->out + c * p->out_cs;
            sink.shift = _mm512_set1_epi32(p->bias[c] - p->a_zero_point * p->col_sums[c]);
            sink.mult = _mm512_set1_ps(p->mult[c]);
        }
        if (narrow)
            dw_plane_vbmi_narrow(s, plane, zp, q, gather, &sink);
        else
            dw_plane_vbmi(s, plane, zp, q, gather, &sink);
        if (!sink.fused)
            qg_epilogue(p, acc, 1, 0, 0, pixels, c, 1);
    }
}

int dw_planes_vbmi(const dw_shape *s, const uint8_t *x, const int32_t *quads, const qg_args *p,
                   int64_t c0, int64_t c1)
{
    const int groups = (s->kw + DW_QUAD - 1) / DW_QUAD;
    __m512i *gather = aligned_alloc(64, (size_t)groups * 64);
    int32_t *acc = malloc((size_t)(s->out_height * s->out_width) * sizeof(int32_t));
    if (!gather || !acc) {
        free(gather);
        free(acc);
        return -1;
    }
    gather_indices(s, gather);
    dw_planes_vbmi_run(s, x, quads, p, c0, c1, gather, acc);
    free(gather);
    free(acc);
    return 0;
}

/* ---- channels-last, portable ---------------------------------------------------------------- */

__attribute__((target_clones("avx2", "default"))) static void
dw_row_portable(const dw_shape *s, int64_t cs, const uint8_t *row, const int64_t *off,
                const int32_t *w, int32_t *acc)
{
    const int taps = s->kh * s->kw;
    for (int64_t ox = 0; ox < s->out_width; ox++) {
        const uint8_t *px = row + ox * s->stride_w * cs;
        int32_t *restrict o = acc + ox * cs;
        for (int64_t c = 0; c < cs; c++)
            o[c] = 0;
        for (int t = 0; t < taps; t++) {
            const uint8_t *restrict xt = px + off[t];
            const int32_t *restrict wt = w + t * cs;
            for (int64_t c = 0; c < cs; c++)
                o[c] += (int32_t)xt[c] * wt[c];
        }
    }
}

int dw_rows_portable(const dw_shape *s, int64_t channels, int64_t padded_width,
                     int64_t pixel_stride, const uint8_t *x, const int32_t *w, const qg_args *p,
                     int64_t row0, int64_t row1)
{
    const int taps = s->kh * s->kw;
    int64_t *off = malloc((size_t)taps * sizeof(int64_t));
    int32_t *acc = malloc((size_t)(s->out_width * pixel_stride) * sizeof(int32_t));
    if (!off || !acc) {
        free(off);
        free(acc);
        return -1;
    }
    for (int t = 0; t < taps; t++)
        off[t] = ((int64_t)(t / s->kw) * s->dilation_h * padded_width
                  + (int64_t)(t % s->kw) * s->dilation_w) * pixel_stride;
    for (int64_t oy = row0; oy < row1; oy++) {
        dw_row_portable(s, pixel_stride, x + oy * s->stride_h * padded_width * pixel_stride, off,
                        w, acc);
        qg_epilogue(p, acc, pixel_stride, 1, oy * s->out_width, s->out_width, 0, channels);
    }
    free(off);
    free(acc);
    return 0;
}
