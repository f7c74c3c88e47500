/* fp32 depthwise 2-D convolution, NCHW: one KH x KW filter per channel (group == C == OC).
 *
 * The vector lanes are 16 consecutive outputs of a row. The input is read where it lies (no
 * padded copy): rows above or below the image read a zero row, and a block of columns that
 * reaches into the left or right padding loads with a lane mask (masked-out lanes read zero and
 * do not fault). Stride 2 loads 32 inputs and keeps the even (or odd) lanes with one permute.
 * Bias and the activation (none, relu, clip) are applied as each block is stored. The portable
 * path (no AVX-512) copies each plane into a zero-padded buffer and runs plain loops. */
#ifndef GRAPHOPT_DWCONV_F32_H
#define GRAPHOPT_DWCONV_F32_H

#include <stdint.h>

enum { DWF_ACT_NONE = 0, DWF_ACT_RELU = 1, DWF_ACT_CLIP = 2 };
enum { DWF_ISA_PORTABLE = 0, DWF_ISA_AVX512 = 1 };

typedef struct {
    int64_t channels, height, width, out_height, out_width;
    int kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
    int activation;  /* DWF_ACT_* */
    float lo, hi;    /* clip bounds (relu: lo = 0) */
} dwf_shape;

/* Whether this CPU runs the AVX-512 kernels. */
int dwf_avx512_supported(void);

/* Planes [p0, p1) of x[N][C][H][W] (plane p is image p / C, channel p % C) into
 * y[N][C][OH][OW]; w[C][KH][KW], bias[C] or NULL. isa: DWF_ISA_*. Returns 0, or -1 when the
 * scratch (row pointers and a zero row; the portable path's padded plane) cannot be allocated. */
int dwf_planes(const dwf_shape *s, const float *x, const float *w, const float *bias, float *y,
               int64_t p0, int64_t p1, int isa);

#endif
