/* Layout changes of uint8 activations that the GEMM's operands need. */
#ifndef GRAPHOPT_LAYOUT_H
#define GRAPHOPT_LAYOUT_H

#include <stdint.h>

/* src[r][c] (rows x cols, row stride src_rs) to dst[c][r] (row stride dst_rs). */
void transpose_u8(const uint8_t *src, int64_t rows, int64_t cols, int64_t src_rs, uint8_t *dst,
                  int64_t dst_rs);

/* An image x[channels][height][width] as channels-last rows of padded_width pixels,
 * pixel_stride >= channels bytes apart, with top / left rows / columns of zero_point before it and
 * enough after it to fill padded_width (channel bytes past `channels` are left as they are). */
typedef struct {
    int64_t channels, height, width, top, left, padded_width, pixel_stride;
} pad_shape;

/* Padded rows [row0, row1) of out (row py holds input row py - top, or zero points). */
void pad_channels_last_rows(const pad_shape *s, const uint8_t *x, uint8_t zero_point,
                            uint8_t *out, int64_t row0, int64_t row1);

/* Groups [g0, g1) of 4 channels as planes of padded_width-pixel rows x 4 channel bytes, group
 * g at out + g * plane_stride: input pixel (y, x) at padded row y + top, column x + left;
 * everything else in the plane (padding, missing channels of the last group, the tail) is
 * zero_point. */
void pad_c4_planes(const pad_shape *s, const uint8_t *x, uint8_t zero_point, uint8_t *out,
                   int64_t plane_stride, int64_t g0, int64_t g1);

/* Output pixels [p0, p1) of a convolution as rows of an explicit im2col matrix: row p (output
 * pixel p / out_width, p % out_width) holds, tap after tap, the c4 channel bytes of the padded
 * channels-last image at img + (p / out_width) * in_row_stride + (p % out_width) * in_px_stride
 * + tap_off[t]; rows are taps * c4 bytes long, at dst + p * taps * c4. */
void im2col_rows(const uint8_t *img, const int64_t *tap_off, int taps, int64_t c4,
                 int64_t out_width, int64_t in_row_stride, int64_t in_px_stride, uint8_t *dst,
                 int64_t p0, int64_t p1);

#endif
