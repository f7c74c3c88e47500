#ifndef GRAPHOPT_QMATMUL_H
#define GRAPHOPT_QMATMUL_H

#include <stdint.h>

/* What becomes of an int32 sum: with a uint8 output, clamp(rint(float(acc) * mult) + zero_point,
 * low, high) in float32; with a float32 output, float(acc) * scale. */
typedef struct {
    float mult, zero_point, low, high, scale;
} qmm_epilogue;

/* For s < batch: out[s] = epilogue((a[s] - za) @ (b[s] - zb)), a[s] m x k with rows a_row bytes
 * apart (contiguous along k), b[s] k x n with any strides (b_row, b_col). Exactly one of q
 * (uint8, [batch][m][n]) and f (float32, same shape) is not NULL. Returns -1 when out of memory,
 * -2 when the CPU lacks AVX-512 VNNI (see qmm_supported). */
int qmm_u8u8(const uint8_t *a, int64_t a_batch, int64_t a_row, int32_t za,
             const uint8_t *b, int64_t b_batch, int64_t b_row, int64_t b_col, int32_t zb,
             int64_t batch, int64_t m, int64_t k, int64_t n, const qmm_epilogue *e, uint8_t *q, float *f);

/* Whether this CPU runs qmm_u8u8 (AVX-512 F/BW/VL/VNNI). */
int qmm_supported(void);

#endif
