/* Channels-last transposition in 16 x 16 byte blocks: four rounds of SSE2 unpacks (baseline
 * x86-64, no target attribute needed) instead of 256 scalar byte moves; numpy's own transpose
 * copy of a 256-channel 56 x 56 image took longer than the 1x1 convolution's GEMM. */
#include "layout.h"

#include <emmintrin.h>
#include <string.h>

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

void transpose_u8(const uint8_t *src, int64_t rows, int64_t cols, int64_t src_rs, uint8_t *dst,
                  int64_t dst_rs)
{
    if (rows < 16 && cols >= 16) {
        /* Few channels (a 3- or 8-channel image, an 8-channel output): 16 pixels at a time
         * through one 16 x 16 block whose missing rows are left as they are, then rows bytes
         * per pixel; the byte loop below took half of a 3-channel stem convolution. */
        uint8_t in[16 * 16] = {0}, out[16 * 16];
        for (int64_t c = 0; c < cols; c += 16) {
            const int64_t c0 = c + 16 <= cols ? c : cols - 16;
            for (int64_t r = 0; r < rows; r++)
                memcpy(in + r * 16, src + r * src_rs + c0, 16);
            transpose_16x16(in, 16, out, 16);
            for (int64_t i = 0; i < 16; i++)
                memcpy(dst + (c0 + i) * dst_rs, out + i * 16, (size_t)rows);
        }
        return;
    }
    if (cols < 16 && rows >= 16) {
        /* The transposed case (an epilogue writing an 8-channel NCHW output): 16 rows of cols
         * bytes into one block, out as cols rows of 16 bytes. */
        uint8_t in[16 * 16] = {0}, out[16 * 16];
        for (int64_t r = 0; r < rows; r += 16) {
            const int64_t r0 = r + 16 <= rows ? r : rows - 16;
            for (int64_t i = 0; i < 16; i++)
                memcpy(in + i * 16, src + (r0 + i) * src_rs, (size_t)cols);
            transpose_16x16(in, 16, out, 16);
            for (int64_t c = 0; c < cols; c++)
                memcpy(dst + c * dst_rs + r0, out + c * 16, 16);
        }
        return;
    }
    if (rows < 16 || cols < 16) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                dst[c * dst_rs + r] = src[r * src_rs + c];
        return;
    }
    /* Ragged edges: the last block of each direction is moved back to end at the edge and
     * overlaps its neighbour, which rewrites the same bytes. */
    for (int64_t r = 0; r < rows; r += 16) {
        const int64_t r0 = r + 16 <= rows ? r : rows - 16;
        for (int64_t c = 0; c < cols; c += 16) {
            const int64_t c0 = c + 16 <= cols ? c : cols - 16;
            transpose_16x16(src + r0 * src_rs + c0, src_rs, dst + c0 * dst_rs + r0, dst_rs);
        }
    }
}

static void interleave4_16(const uint8_t *c0, const uint8_t *c1, const uint8_t *c2,
                           const uint8_t *c3, uint8_t *dst);

/* Image rows [y0, y1) of a narrow image (width < 16, 16+ channels and pixels) to their padded
 * places: 16 consecutive pixels of the flattened rows at a time through one 16 x 16 block, each
 * pixel's 16 channels then stored where its row puts it. Row by row, transpose_u8 went through
 * partial blocks, with a copy of variable length per channel and per pixel. */
static void pad_narrow_rows(const pad_shape *s, const uint8_t *x, uint8_t *out, int64_t y0,
                            int64_t y1)
{
    const int64_t plane = s->height * s->width, p0 = y0 * s->width, p1 = y1 * s->width;
    uint8_t block[16 * 16];
    for (int64_t c = 0; c < s->channels; c += 16) {
        const int64_t c0 = c + 16 <= s->channels ? c : s->channels - 16;
        for (int64_t p = p0; p < p1; p += 16) {
            /* The last blocks of each direction move back to end at the edge. */
            const int64_t q = p + 16 <= p1 ? p : p1 - 16;
            transpose_16x16(x + c0 * plane + q, plane, block, 16);
            int64_t y = q / s->width, col = q % s->width;
            for (int i = 0; i < 16; i++) {
                const int64_t at = (y + s->top) * s->padded_width + s->left + col;
                memcpy(out + at * s->pixel_stride + c0, block + i * 16, 16);
                if (++col == s->width) {
                    col = 0;
                    y++;
                }
            }
        }
    }
}

void pad_channels_last_rows(const pad_shape *s, const uint8_t *x, uint8_t zero_point,
                            uint8_t *out, int64_t row0, int64_t row1)
{
    /* 1 to 4 channels at 4 bytes a pixel (an RGB stem): 16 pixels at a time, the missing
     * channels as zero points (their weights are zero). */
    const int quad = s->channels <= 4 && s->pixel_stride == 4 && s->width >= 16;
    const int64_t y0 = row0 - s->top > 0 ? row0 - s->top : 0;
    const int64_t y1 = row1 - s->top < s->height ? row1 - s->top : s->height;
    const int narrow = !quad && s->width < 16 && s->channels >= 16 && (y1 - y0) * s->width >= 16;
    if (narrow)
        pad_narrow_rows(s, x, out, y0, y1);
    uint8_t fill[16];
    memset(fill, zero_point, sizeof fill);
    const int64_t row_bytes = s->padded_width * s->pixel_stride;
    for (int64_t py = row0; py < row1; py++) {
        uint8_t *row = out + py * row_bytes;
        const int64_t y = py - s->top;
        if (y < 0 || y >= s->height) {
            memset(row, zero_point, (size_t)row_bytes);
            continue;
        }
        memset(row, zero_point, (size_t)(s->left * s->pixel_stride));
        if (quad) {
            const int64_t plane = s->height * s->width;
            const uint8_t *c[4];
            for (int k = 0; k < 4; k++)
                c[k] = k < s->channels ? x + k * plane + y * s->width : NULL;
            for (int64_t px = 0; px < s->width; px += 16) {
                const int64_t at = px + 16 <= s->width ? px : s->width - 16;
                interleave4_16(c[0] + at, c[1] ? c[1] + at : fill, c[2] ? c[2] + at : fill,
                               c[3] ? c[3] + at : fill, row + (s->left + at) * 4);
            }
        } else if (!narrow) {
            transpose_u8(x + y * s->width, s->channels, s->width, s->height * s->width,
                         row + s->left * s->pixel_stride, s->pixel_stride);
        }
        memset(row + (s->left + s->width) * s->pixel_stride, zero_point,
               (size_t)((s->padded_width - s->left - s->width) * s->pixel_stride));
    }
}

/* Four channel rows of 16 pixels each into 16 pixels of 4 channel bytes: two rounds of SSE2
 * unpacks (bytes, then pairs of bytes). */
static void interleave4_16(const uint8_t *c0, const uint8_t *c1, const uint8_t *c2,
                           const uint8_t *c3, uint8_t *dst)
{
    const __m128i a = _mm_loadu_si128((const __m128i *)c0), b = _mm_loadu_si128((const __m128i *)c1);
    const __m128i c = _mm_loadu_si128((const __m128i *)c2), d = _mm_loadu_si128((const __m128i *)c3);
    const __m128i ab_lo = _mm_unpacklo_epi8(a, b), ab_hi = _mm_unpackhi_epi8(a, b);
    const __m128i cd_lo = _mm_unpacklo_epi8(c, d), cd_hi = _mm_unpackhi_epi8(c, d);
    _mm_storeu_si128((__m128i *)dst, _mm_unpacklo_epi16(ab_lo, cd_lo));
    _mm_storeu_si128((__m128i *)(dst + 16), _mm_unpackhi_epi16(ab_lo, cd_lo));
    _mm_storeu_si128((__m128i *)(dst + 32), _mm_unpacklo_epi16(ab_hi, cd_hi));
    _mm_storeu_si128((__m128i *)(dst + 48), _mm_unpackhi_epi16(ab_hi, cd_hi));
}

void pad_c4_planes(const pad_shape *s, const uint8_t *x, uint8_t zero_point, uint8_t *out,
                   int64_t plane_stride, int64_t g0, int64_t g1)
{
    const int64_t plane = s->height * s->width, row_bytes = s->padded_width * 4;
    const int64_t right = (s->padded_width - s->left - s->width) * 4;
    for (int64_t g = g0; g < g1; g++) {
        uint8_t *dst = out + g * plane_stride;
        const int whole = 4 * g + 3 < s->channels;
        /* Only the border when all 4 channels exist; the last, partial group's missing
         * channels read as zero points too (their weights are zero anyway). */
        if (whole)
            memset(dst, zero_point, (size_t)(s->top * row_bytes));
        else
            memset(dst, zero_point, (size_t)plane_stride);
        for (int64_t y = 0; y < s->height; y++) {
            uint8_t *row = dst + (y + s->top) * row_bytes;
            const uint8_t *src = x + 4 * g * plane + y * s->width;
            int64_t px = 0;
            if (whole) {
                memset(row, zero_point, (size_t)(s->left * 4));
                memset(row + (s->left + s->width) * 4, zero_point, (size_t)right);
                for (; px < s->width && s->width >= 16; px += 16) {
                    /* The last block moves back to end at the edge, rewriting a few pixels. */
                    const int64_t at = px + 16 <= s->width ? px : s->width - 16;
                    interleave4_16(src + at, src + plane + at, src + 2 * plane + at,
                                   src + 3 * plane + at, row + (s->left + at) * 4);
                }
            }
            for (; px < s->width; px++)
                for (int k = 0; k < 4 && 4 * g + k < s->channels; k++)
                    row[(s->left + px) * 4 + k] = src[k * plane + px];
        }
        if (whole) {
            const int64_t done = (s->top + s->height) * row_bytes;
            memset(dst + done, zero_point, (size_t)(plane_stride - done));
        }
    }
}

void im2col_rows(const uint8_t *img, const int64_t *tap_off, int taps, int64_t c4,
                 int64_t out_width, int64_t in_row_stride, int64_t in_px_stride, uint8_t *dst,
                 int64_t p0, int64_t p1)
{
    const int64_t k = taps * c4;
    for (int64_t p = p0; p < p1; p++) {
        const uint8_t *src = img + (p / out_width) * in_row_stride + (p % out_width) * in_px_stride;
        uint8_t *row = dst + p * k;
        for (int t = 0; t < taps; t++)
            memcpy(row + t * c4, src + tap_off[t], (size_t)c4);
    }
}
