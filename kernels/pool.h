/* 2-D max pooling of NCHW planes: float32, uint8 or int8, any kernel, stride, dilation and
 * padding (ONNX MaxPool; the caller gives the output size, ceil_mode included).
 *
 * Padded positions never win: they read as the type's lowest value (-inf, 0, -128), and a window
 * wholly in the padding gives that value. A float32 window holding a NaN gives NaN.
 *
 * AVX-512 (for bytes also BW and VBMI): per output row and block of output columns, the
 * vertical maxima of the window rows go into two vectors (masked loads: columns outside the
 * image read the lowest value), then each kernel column is one two-vector permute (vpermt2b /
 * vpermt2ps) that picks every stride-th lane, and the block's output is the max of those. No
 * scratch, no padded copy. A window wider than two vectors (rare) and CPUs without these
 * extensions take the portable path: the vertical maxima into a padded row, then plain loops. */
#ifndef GRAPHOPT_POOL_H
#define GRAPHOPT_POOL_H

#include <stdint.h>

enum { MXP_F32 = 0, MXP_U8 = 1, MXP_I8 = 2 };
enum { MXP_ISA_PORTABLE = 0, MXP_ISA_AVX512 = 1 };

typedef struct {
    int64_t height, width, out_height, out_width;
    int kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
    int dtype;  /* MXP_F32, MXP_U8, MXP_I8 */
} mxp_shape;

/* Whether this CPU runs the AVX-512 kernels: AVX-512F (float32); uint8 and int8 also need BW and
 * VBMI, and without them take the portable path. */
int mxp_avx512_supported(void);

/* Planes [p0, p1) of x[P][H][W] into y[P][OH][OW]. isa: MXP_ISA_*. Returns 0, or -1 when the
 * portable path's padded row cannot be allocated. */
int mxp_planes(const mxp_shape *s, const void *x, void *y, int64_t p0, int64_t p1, int isa);

#endif
