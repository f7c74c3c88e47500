/* Depthwise 2-D convolution: a GEMM does not fit (K = KH*KW, N = 1 per group). Two kernels:
 * one that reads the NCHW planes directly with AVX-512 VBMI byte permutes, and portable loops
 * over a zero-point-padded channels-last image for other CPUs and geometries. Both leave the
 * requantization to qgemm's epilogue. */
#ifndef GRAPHOPT_DEPTHWISE_H
#define GRAPHOPT_DEPTHWISE_H

#include <stdint.h>

#include "qgemm.h"

typedef struct {
    int64_t height, width, out_height, out_width;
    int kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
} dw_shape;

/* ---- planar, AVX-512 VBMI ---- */

/* Taps per int8 quad of the weights: vpdpbusd sums 4 products per int32 lane. */
#define DW_QUAD 4

/* Whether this CPU can run dw_planes_vbmi, and whether it fits the geometry: 16 outputs of a
 * row read their taps from one 64-byte load, so 15 * stride_w + (kw - 1) * dilation_w < 64. */
int dw_vbmi_supported(void);
int dw_vbmi_fits(const dw_shape *s);

/* Channels [c0, c1) of one image x[C][H][W]: quads[c][kh][ceil(kw/4)] holds each row's taps 4
 * at a time (int8, zero past kw) as int32. Each plane's raw sums sum_t x * w, with padded taps
 * read as zero_point, go through p's epilogue (p->col_sums[c] = sum of channel c's weights, so
 * that it removes zero_point * sum(w)), output pixel i of channel c as GEMM row i, column c.
 * Returns 0, or -1 when a plane's scratch cannot be allocated. */
int dw_planes_vbmi(const dw_shape *s, const uint8_t *x, const int32_t *quads, const qg_args *p,
                   int64_t c0, int64_t c1);

/* ---- channels-last, portable ---- */

/* Output rows [row0, row1) of one image from x, the image padded with zero points to
 * [height + pads][padded_width][pixel_stride] channels-last; w[taps][pixel_stride] int32. Sums
 * go through p's epilogue as above (GEMM row oy * out_width + ox, column c). Returns 0 or -1. */
int dw_rows_portable(const dw_shape *s, int64_t channels, int64_t padded_width,
                     int64_t pixel_stride, const uint8_t *x, const int32_t *w, const qg_args *p,
                     int64_t row0, int64_t row1);

#endif
