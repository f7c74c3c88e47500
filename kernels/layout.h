/* Layout changes of uint8 activations that the GEMM's operands need. */
#ifndef GRAPHOPT_LAYOUT_H
#define GRAPHOPT_LAYOUT_H

#include <stdint.h>

/* x[channels][pixels] (an NCHW image) to out[pixels][channels] (channels-last). */
void channels_last_u8(const uint8_t *x, int64_t channels, int64_t pixels, uint8_t *out);

#endif
