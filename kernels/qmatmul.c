/* Products of two uint8 activations: (a - za) @ (b - zb) over a batch, requantized to uint8 or
 * scaled to float32 (attention's Q.K^T and P.V in a quantized transformer).
 *
 * VNNI's vpdpbusd multiplies uint8 by int8, four products per int32 lane. b is uint8, so it
 * goes in as b' = b - 128 (an int8), and the identity
 *     sum_t (a - za)(b - zb) = sum_t a b' + (128 - zb) sum_t a - za sum_t (b - zb)
 * turns the product into one VNNI GEMM plus a row and a column correction, all in exact int32
 * (the result does not depend on the order of addition). Neither operand is a constant, so b is
 * packed on every call into VNNI's layout (four consecutive t of a column in one int32 lane):
 * cheap at attention's sizes. a is read in place, four bytes of a row at a time.
 */
#include "qmatmul.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QMM_X86 1
#define QMM_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#endif

enum { ROWS = 6, COLS = 32 };  /* the register tile: 6 rows x 2 vectors of 16 int32 */

int qmm_supported(void) {
#ifdef QMM_X86
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    }
    return known;
#else
    return 0;
#endif
}

#ifdef QMM_X86
/* Packed b: quad p of column j at bp[(p * np + j) * 4], bytes b[4p + i][j] - 128 (int8); zeros
 * past k and past n. colsum[j] = sum_t b'[t][j] over t < k. */

/* b with unit column stride: four rows, 16 columns at a time, interleaved by byte unpacks. */
QMM_TARGET static void pack_rows(const uint8_t *b, int64_t b_row, int64_t k, int64_t n, int64_t np,
                                 int8_t *bp) {
    const __m128i flip = _mm_set1_epi8((char)0x80);
    for (int64_t t = 0; t < k; t += 4) {
        int8_t *dst = bp + t * np;
        for (int64_t j = 0; j < np; j += 16) {
            __mmask16 keep = n - j >= 16 ? 0xFFFF : n > j ? (__mmask16)((1u << (n - j)) - 1) : 0;
            __m128i r[4];
            for (int i = 0; i < 4; i++)  /* rows past k, columns past n: b' = 0 */
                r[i] = t + i < k ? _mm_maskz_mov_epi8(keep, _mm_xor_si128(
                                       _mm_maskz_loadu_epi8(keep, b + (t + i) * b_row + j), flip))
                                 : _mm_setzero_si128();
            __m128i lo01 = _mm_unpacklo_epi8(r[0], r[1]), hi01 = _mm_unpackhi_epi8(r[0], r[1]);
            __m128i lo23 = _mm_unpacklo_epi8(r[2], r[3]), hi23 = _mm_unpackhi_epi8(r[2], r[3]);
            _mm_storeu_si128((__m128i *)(dst + 4 * j), _mm_unpacklo_epi16(lo01, lo23));
            _mm_storeu_si128((__m128i *)(dst + 4 * j + 16), _mm_unpackhi_epi16(lo01, lo23));
            _mm_storeu_si128((__m128i *)(dst + 4 * j + 32), _mm_unpacklo_epi16(hi01, hi23));
            _mm_storeu_si128((__m128i *)(dst + 4 * j + 48), _mm_unpackhi_epi16(hi01, hi23));
        }
    }
}

/* b with unit row stride (a transposed view, Kᵀ): a quad of column j is four contiguous bytes
 * of its memory, so 16 columns' quads are one gather. */
QMM_TARGET static void pack_columns(const uint8_t *b, int64_t b_col, int64_t k, int64_t n, int64_t np,
                                    int8_t *bp) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int64_t j = 0; j < np; j += 16) {
        __mmask16 keep = n - j >= 16 ? 0xFFFF : n > j ? (__mmask16)((1u << (n - j)) - 1) : 0;
        __m512i index = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int32_t)b_col));
        for (int64_t t = 0; t < k; t += 4) {
            __m512i quads;
            if (k - t >= 4) {
                quads = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), keep, index, b + j * b_col + t, 1);
                quads = _mm512_maskz_xor_epi32(keep, quads, flip);
            } else {  /* the last, partial quad: bytes past k are 0 */
                __mmask64 bytes = (__mmask64)0;
                for (int l = 0; l < 16; l++)
                    if (keep >> l & 1)
                        bytes |= (__mmask64)((1u << (k - t)) - 1) << (4 * l);
                uint8_t tail[64] = {0};
                for (int l = 0; l < 16; l++)
                    for (int i = 0; l + j < n && i < k - t; i++)
                        tail[4 * l + i] = b[(j + l) * b_col + t + i];
                quads = _mm512_maskz_xor_epi32(keep, _mm512_maskz_loadu_epi8(bytes, tail), flip);
                quads = _mm512_maskz_mov_epi8(bytes, quads);
            }
            _mm512_storeu_si512(bp + (t * np + 4 * j), quads);
        }
    }
}

/* colsum[j] = sum_t b'[t][j]: vpdpbusd of ones with each packed quad. */
QMM_TARGET static void column_sums(const int8_t *bp, int64_t quads, int64_t np, int32_t *colsum) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t j = 0; j < np; j += 16) {
        __m512i sum = _mm512_setzero_si512();
        for (int64_t p = 0; p < quads; p++)
            sum = _mm512_dpbusd_epi32(sum, ones, _mm512_loadu_si512(bp + (p * np + j) * 4));
        _mm512_storeu_si512(colsum + j, sum);
    }
}

/* The sums of a tile: `rows` (a constant where inlined, so that the accumulators stay in
 * registers) rows of a times 32 packed columns. */
QMM_TARGET static inline __attribute__((always_inline)) void tile_sums(
        const uint8_t *a, int64_t a_row, const int8_t *bcol, int64_t quads, int64_t np, int rows,
        __m512i acc[ROWS][2]) {
    for (int r = 0; r < rows; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int64_t p = 0; p < quads; p++) {
        const int8_t *brow = bcol + p * np * 4;
        __m512i b0 = _mm512_loadu_si512(brow), b1 = _mm512_loadu_si512(brow + 64);
        for (int r = 0; r < rows; r++) {
            int32_t quad;
            memcpy(&quad, a + r * a_row + 4 * p, sizeof quad);
            __m512i av = _mm512_set1_epi32(quad);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
        }
    }
}

/* The int32 result of a tile (corrections added), then the epilogue, stored. */
QMM_TARGET static inline void store_tile(__m512i acc[ROWS][2], int rows, int vectors, __mmask16 mask,
                                         const int32_t *rowterm, const int32_t *colterm,
                                         const qmm_epilogue *e, uint8_t *q, float *f, int64_t n) {
    const __m512 mult = _mm512_set1_ps(e->mult), zp = _mm512_set1_ps(e->zero_point);
    const __m512 low = _mm512_set1_ps(e->low), high = _mm512_set1_ps(e->high), scale = _mm512_set1_ps(e->scale);
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vectors; v++) {
            __mmask16 keep = v == vectors - 1 ? mask : (__mmask16)0xFFFF;
            __m512i sums = _mm512_add_epi32(acc[r][v], _mm512_set1_epi32(rowterm[r]));
            __m512 x = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, _mm512_loadu_si512(colterm + 16 * v)));
            if (q) {
                x = _mm512_roundscale_ps(_mm512_mul_ps(x, mult), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                x = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(x, zp), low), high);
                _mm512_mask_cvtusepi32_storeu_epi8(q + r * n + 16 * v, keep, _mm512_cvtps_epi32(x));
            } else {
                _mm512_mask_storeu_ps(f + r * n + 16 * v, keep, _mm512_mul_ps(x, scale));
            }
        }
}

/* One batch entry: a [m][k], rows a_row apart, each readable to a multiple of 4 bytes. */
QMM_TARGET static void product(const uint8_t *a, int64_t a_row, const int8_t *bp,
                               const int32_t *colterm, int32_t row_factor, int64_t m, int64_t k, int64_t n,
                               int64_t np, const qmm_epilogue *e, uint8_t *q, float *f) {
    int64_t quads = (k + 3) / 4;
    int32_t rowterm[ROWS];
    __m512i acc[ROWS][2];
    for (int64_t i0 = 0; i0 < m; i0 += ROWS) {
        int rows = m - i0 < ROWS ? (int)(m - i0) : ROWS;
        const uint8_t *at = a + i0 * a_row;
        for (int r = 0; r < rows; r++) {  /* (128 - zb) * sum_t a[i][t] */
            __m512i sum = _mm512_setzero_si512();
            for (int64_t t = 0; t < k; t += 64) {
                __mmask64 keep = k - t >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (k - t)) - 1;
                sum = _mm512_add_epi64(sum, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(keep, at + r * a_row + t),
                                                            _mm512_setzero_si512()));
            }
            rowterm[r] = row_factor * (int32_t)_mm512_reduce_add_epi64(sum);
        }
        for (int64_t j0 = 0; j0 < n; j0 += COLS) {
            int64_t cols = n - j0 < COLS ? n - j0 : COLS;
            int vectors = (int)((cols + 15) / 16);
            __mmask16 mask = (__mmask16)(cols % 16 ? (1u << (cols % 16)) - 1 : 0xFFFF);
            const int8_t *bcol = bp + j0 * 4;
            switch (rows) {
            case 6: tile_sums(at, a_row, bcol, quads, np, 6, acc); break;
            case 5: tile_sums(at, a_row, bcol, quads, np, 5, acc); break;
            case 4: tile_sums(at, a_row, bcol, quads, np, 4, acc); break;
            case 3: tile_sums(at, a_row, bcol, quads, np, 3, acc); break;
            case 2: tile_sums(at, a_row, bcol, quads, np, 2, acc); break;
            default: tile_sums(at, a_row, bcol, quads, np, 1, acc); break;
            }
            store_tile(acc, rows, vectors, mask, rowterm, colterm + j0, e, q ? q + i0 * n + j0 : NULL,
                       f ? f + i0 * n + j0 : NULL, n);
        }
    }
}
#endif

int qmm_u8u8(const uint8_t *a, int64_t a_batch, int64_t a_row, int32_t za,
             const uint8_t *b, int64_t b_batch, int64_t b_row, int64_t b_col, int32_t zb,
             int64_t batch, int64_t m, int64_t k, int64_t n, const qmm_epilogue *e, uint8_t *q, float *f) {
    if (!qmm_supported())
        return -2;
#ifdef QMM_X86
    int64_t quads = (k + 3) / 4, kp = quads * 4, np = (n + COLS - 1) / COLS * COLS;
    int64_t a_copy = k % 4 ? m * kp : 0;  /* rows whose last quad would read past them */
    int8_t *bp = aligned_alloc(64, (size_t)((kp * np + a_copy + np * 4 + 63) / 64 * 64));
    if (!bp)
        return -1;
    int32_t *colterm = (int32_t *)(bp + kp * np);
    uint8_t *ap = (uint8_t *)(colterm + np);
    for (int64_t s = 0; s < batch; s++) {
        const uint8_t *as = a + s * a_batch, *bs = b + s * b_batch;
        int64_t row = a_row;
        if (a_copy) {
            memset(ap, 0, (size_t)a_copy);
            for (int64_t i = 0; i < m; i++)
                memcpy(ap + i * kp, as + i * a_row, (size_t)k);
            as = ap, row = kp;
        }
        if (b_col == 1)
            pack_rows(bs, b_row, k, n, np, bp);
        else
            pack_columns(bs, b_col, k, n, np, bp);
        column_sums(bp, quads, np, colterm);
        for (int64_t j = 0; j < np; j++)  /* za * sum_t (b - zb) = za * (sum_t b' + k (128 - zb)) */
            colterm[j] = za * (colterm[j] + (int32_t)k * (128 - zb));
        product(as, row, bp, colterm, 128 - zb, m, k, n, np, e, q ? q + s * m * n : NULL,
                f ? f + s * m * n : NULL);
    }
    free(bp);
#endif
    return 0;
}
