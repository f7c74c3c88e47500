/* Channels-last transposition in 16 x 16 byte blocks: four rounds of SSE2 unpacks (baseline
 * x86-64, no target attribute needed) instead of 256 scalar byte moves; numpy's own transpose
 * copy of a 256-channel 56 x 56 image took longer than the 1x1 convolution's GEMM. */
#include "layout.h"

#include <emmintrin.h>

/* src: 16 rows (channels) of 16 bytes (pixels), row stride ss; dst: 16 rows (pixels) of 16
 * bytes (channels), row stride ds. Each round interleaves twice as many channels per pixel:
 * 2 (epi8), 4 (epi16), 8 (epi32), 16 (epi64). */
static void transpose_16x16(const uint8_t *src, int64_t ss, uint8_t *dst, int64_t ds)
{
    __m128i rows[16], pairs[16], quads[16], octets[16];
    for (int i = 0; i < 16; i++)
        rows[i] = _mm_loadu_si128((const __m128i *)(src + i * ss));
    /* pairs[2k + h]: channels 2k, 2k+1 for pixels 8h .. 8h+7 */
    for (int k = 0; k < 8; k++) {
        pairs[2 * k] = _mm_unpacklo_epi8(rows[2 * k], rows[2 * k + 1]);
        pairs[2 * k + 1] = _mm_unpackhi_epi8(rows[2 * k], rows[2 * k + 1]);
    }
    /* quads[4g + q]: channels 4g .. 4g+3 for pixels 4q .. 4q+3 */
    for (int g = 0; g < 4; g++)
        for (int h = 0; h < 2; h++) {
            const __m128i a = pairs[4 * g + h], b = pairs[4 * g + 2 + h];
            quads[4 * g + 2 * h] = _mm_unpacklo_epi16(a, b);
            quads[4 * g + 2 * h + 1] = _mm_unpackhi_epi16(a, b);
        }
    /* octets[8e + o]: channels 8e .. 8e+7 for pixels 2o, 2o+1 */
    for (int e = 0; e < 2; e++)
        for (int q = 0; q < 4; q++) {
            const __m128i a = quads[8 * e + q], b = quads[8 * e + 4 + q];
            octets[8 * e + 2 * q] = _mm_unpacklo_epi32(a, b);
            octets[8 * e + 2 * q + 1] = _mm_unpackhi_epi32(a, b);
        }
    /* pixel 2o, 2o+1: all 16 channels */
    for (int o = 0; o < 8; o++) {
        _mm_storeu_si128((__m128i *)(dst + (2 * o) * ds), _mm_unpacklo_epi64(octets[o], octets[8 + o]));
        _mm_storeu_si128((__m128i *)(dst + (2 * o + 1) * ds),
                         _mm_unpackhi_epi64(octets[o], octets[8 + o]));
    }
}

void channels_last_u8(const uint8_t *x, int64_t channels, int64_t pixels, uint8_t *out)
{
    const int64_t c_full = channels / 16 * 16, p_full = pixels / 16 * 16;
    for (int64_t c = 0; c < c_full; c += 16)
        for (int64_t p = 0; p < p_full; p += 16)
            transpose_16x16(x + c * pixels + p, pixels, out + p * channels + c, channels);
    for (int64_t c = 0; c < channels; c++) {
        /* The ragged right edge (pixels past the last block), then the bottom rows of channels. */
        for (int64_t p = c < c_full ? p_full : 0; p < pixels; p++)
            out[p * channels + c] = x[c * pixels + p];
    }
}
