#ifndef GRAPHOPT_BYTEWISE_H
#define GRAPHOPT_BYTEWISE_H

#include <stdint.h>

/* uint8 a + b requantized as onnxruntime's QLinearAdd: per element
 *     out = clamp(rint(fma(a, ratio_a, fma(b, ratio_b, fixed))), 0, 255)
 * in float32, over `rows` rows of n values; a_step / b_step: elements between the rows of a / b
 * (n, or 0 for a row repeated under every row of the other: a bias, a mask). */
void qadd_rows(const uint8_t *a, int64_t a_step, const uint8_t *b, int64_t b_step, uint8_t *out,
               int64_t rows, int64_t n, float ratio_a, float ratio_b, float fixed);

/* out[i] = table[x[i]] for i < n: a uint8 -> uint8 function of one quantized value (a composed
 * DequantizeLinear -> activation -> QuantizeLinear). */
void bytes_lookup(const uint8_t *x, const uint8_t *table, uint8_t *out, int64_t n);

#endif
