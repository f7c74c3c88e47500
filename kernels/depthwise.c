/* Depthwise convolution: a GEMM does not fit (K = KH*KW, N = 1 per group), so each output
 * accumulates KH*KW shifted inputs, scaled by one weight each. Inner loops have no bounds test,
 * so they vectorize, and the functions are cloned per ISA so that they do on every machine. */
#include "depthwise.h"

#include <stdlib.h>
#include <string.h>

/* Outputs x in [lo, hi) whose tap x * stride + offset falls inside [0, width). */
static void valid_run(int64_t out_width, int64_t width, int stride, int64_t offset, int64_t *lo,
                      int64_t *hi)
{
    *lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    *hi = width - 1 - offset < 0 ? 0 : (width - 1 - offset) / stride + 1;
    if (*hi > out_width)
        *hi = out_width;
    if (*lo > *hi)
        *lo = *hi;
}

#define DW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* Stride 1: pad the plane with the zero point (a padded tap then adds zp * w, removed at the
 * end with zp * sum(w)) and treat it as one flat row of Hp * Wp pixels, so that each tap is a
 * single run of OH * Wp multiply-adds instead of OH runs of OW (56 wide: too short for 16 lanes).
 * The Wp - OW columns past the output's width are computed and dropped. Returns -1 if the
 * scratch cannot be allocated. */
DW_CLONES static int dw_plane_unit_stride(const dw_shape *s, const uint8_t *x, int32_t zero_point,
                                          const int8_t *w, int32_t *out)
{
    const int64_t hp = s->out_height + (int64_t)(s->kh - 1) * s->dilation_h;
    const int64_t wp = s->out_width + (int64_t)(s->kw - 1) * s->dilation_w;
    const int64_t slack = (int64_t)(s->kw - 1) * s->dilation_w; /* last row's dropped columns */
    const int64_t run = s->out_height * wp;
    uint8_t *padded = malloc((size_t)(hp * wp + slack));
    int32_t *acc = malloc((size_t)run * sizeof(int32_t));
    if (!padded || !acc) {
        free(padded);
        free(acc);
        return -1;
    }
    memset(padded, zero_point, (size_t)(hp * wp + slack));
    /* Input columns that land inside the padded width (a negative end pad drops some). */
    const int64_t x0 = s->pad_left < 0 ? -s->pad_left : 0;
    const int64_t x1 = s->width < wp - s->pad_left ? s->width : wp - s->pad_left;
    for (int64_t y = 0; y < s->height && x1 > x0; y++) {
        const int64_t py = y + s->pad_top;
        if (py >= 0 && py < hp)
            memcpy(padded + py * wp + x0 + s->pad_left, x + y * s->width + x0, (size_t)(x1 - x0));
    }
    int32_t weight_sum = 0;
    for (int64_t p = 0; p < run; p++)
        acc[p] = 0;
    for (int i = 0; i < s->kh; i++) {
        for (int j = 0; j < s->kw; j++) {
            const int32_t weight = w[i * s->kw + j];
            const uint8_t *restrict src = padded + (int64_t)i * s->dilation_h * wp
                                          + (int64_t)j * s->dilation_w;
            int32_t *restrict dst = acc;
            weight_sum += weight;
            for (int64_t p = 0; p < run; p++)
                dst[p] += (int32_t)src[p] * weight;
        }
    }
    const int32_t correction = zero_point * weight_sum;
    for (int64_t y = 0; y < s->out_height; y++)
        for (int64_t xo = 0; xo < s->out_width; xo++)
            out[y * s->out_width + xo] = acc[y * wp + xo] - correction;
    free(padded);
    free(acc);
    return 0;
}

DW_CLONES static void dw_plane_strided(const dw_shape *s, const uint8_t *x, int32_t zero_point, const int8_t *w,
              int32_t *out)
{
    const int64_t ow = s->out_width;
    const int sw = s->stride_w;
    for (int64_t y = 0; y < s->out_height; y++) {
        int32_t *restrict o = out + y * ow;
        for (int64_t i = 0; i < ow; i++)
            o[i] = 0;
        for (int i = 0; i < s->kh; i++) {
            const int64_t iy = y * s->stride_h - s->pad_top + (int64_t)i * s->dilation_h;
            if (iy < 0 || iy >= s->height)
                continue;
            const uint8_t *restrict row = x + iy * s->width;
            for (int j = 0; j < s->kw; j++) {
                const int32_t weight = w[i * s->kw + j];
                const int64_t offset = (int64_t)j * s->dilation_w - s->pad_left;
                int64_t lo, hi;
                valid_run(ow, s->width, sw, offset, &lo, &hi);
                if (sw == 1) {
                    const uint8_t *restrict r = row + offset;
                    for (int64_t xo = lo; xo < hi; xo++)
                        o[xo] += ((int32_t)r[xo] - zero_point) * weight;
                } else {
                    for (int64_t xo = lo; xo < hi; xo++)
                        o[xo] += ((int32_t)row[xo * sw + offset] - zero_point) * weight;
                }
            }
        }
    }
}

int dw_plane(const dw_shape *s, const uint8_t *x, int32_t zero_point, const int8_t *w,
             int32_t *out)
{
    if (s->stride_h == 1 && s->stride_w == 1)
        return dw_plane_unit_stride(s, x, zero_point, w, out);
    dw_plane_strided(s, x, zero_point, w, out);
    return 0;
}
