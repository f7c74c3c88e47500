/* Depthwise 2-D convolution sums: one uint8 input plane against its own int8 filter. */
#ifndef GRAPHOPT_DEPTHWISE_H
#define GRAPHOPT_DEPTHWISE_H

#include <stdint.h>

typedef struct {
    int64_t height, width, out_height, out_width;
    int kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
} dw_shape;

/* out[y, x] = sum over taps inside the input of (x - zero_point) * w; padded taps add nothing.
 * Returns 0, or -1 when scratch memory could not be allocated. */
int dw_plane(const dw_shape *s, const uint8_t *x, int32_t zero_point, const int8_t *w,
              int32_t *out);

#endif
