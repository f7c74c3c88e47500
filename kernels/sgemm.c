/* float32 micro-kernels (AVX-512 FMA and portable C), B packing (strided and im2col), and the
 * blocking loops of one tile. Each ISA-specific function carries its own target attribute; the file
 * is compiled for baseline x86-64 so that one build runs anywhere and the run-time check picks the
 * path (DESIGN.md, "Kernels"). */
#include "sgemm.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

/* K block. A slab (kc x MR floats, read by broadcasts) stays in the 32 KiB L1 while the B panels
 * of the tile (kc x 32 floats each) stream from L2: 384 x 12 x 4 = 18 KiB of A. Reductions up to
 * 512 run in one block, so the common products (K = 27 .. 512) never reload C; longer ones are cut
 * into even blocks of at most 384, whose partial sums go through C. Measured against the 3x3
 * convolutions of resnet18 and PP-OCR and bert's products: blocks of 256, one block up to 1200, and
 * slabs of at most 8 rows (SG_MR_TARGET) were all equal or 1-4% slower. */
#ifndef SG_KC_MAX
#define SG_KC_MAX 384
#endif
#ifndef SG_KC_SINGLE
#define SG_KC_SINGLE 512
#endif
#ifndef SG_MR_TARGET
#define SG_MR_TARGET 12
#endif

int64_t sg_kc(int64_t k)
{
    if (k <= SG_KC_SINGLE)
        return k < 1 ? 1 : k;
    const int64_t blocks = (k + SG_KC_MAX - 1) / SG_KC_MAX;
    return (k + blocks - 1) / blocks;
}

/* 12 rows x 2 zmm = 24 accumulators: Zen 4 retires one 512-bit FMA per cycle with a 4-cycle
 * latency, so anything above 4 independent chains keeps the pipe full; the wider the slab, the
 * fewer times B is read. A product whose M is not a multiple of 12 gets the most even slabs
 * (M = 16: 2 x 8; 32: 11 + 11 + 10; 64: 11 x 5 + 9), and up to 14 rows fit in one slab. */
int sg_choose_mr(int64_t m)
{
    if (m <= SG_MAX_MR)
        return (int)(m < 1 ? 1 : m);
    const int64_t slabs = (m + SG_MR_TARGET - 1) / SG_MR_TARGET;
    return (int)((m + slabs - 1) / slabs);
}

int sg_cpu_supports(int isa)
{
    __builtin_cpu_init();
    switch (isa) {
    case SG_ISA_GENERIC: return 1;
    case SG_ISA_AVX512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    default: return 0;
    }
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

typedef struct {
    int accumulate;      /* add C's partial sums of the previous K blocks */
    int last;            /* the last K block: bias and clamp, then C holds the result */
    int bias_mode;
    const float *bias;   /* ROW: bias of the slab's first row; COL: of the panel's first column */
    int clamp;
    float lo, hi;
} sg_epi;

/* Micro-kernel: C[rows, cols] (cols <= 32) from A (i, k) at a[i * a_rs + k * a_ks] and B row k at
 * b + k * b_rs, or at b + koff[k] in the instantiations with offsets (the shifted convolution,
 * whose rows are taps of a padded image). */
typedef void (*ukr_fn)(int64_t kc, const float *a, int64_t a_rs, int64_t a_ks, const float *b,
                       int64_t b_rs, const int64_t *koff, float *c, int64_t c_rs, int cols,
                       const sg_epi *e);

/* ---- AVX-512 ------------------------------------------------------------------------------- */

#define SG_TARGET __attribute__((target("avx512f,fma")))

/* Named accumulators, not an array (GCC keeps an array of vectors in memory); mr and nv are
 * constants in each instantiation, so the guards fold away. */
#define SG_EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
#define SG_INIT(i) __m512 c##i##_0 = _mm512_setzero_ps(), c##i##_1 = _mm512_setzero_ps();
#define SG_FMA(i)                                                                                \
    if ((i) < mr) {                                                                              \
        const __m512 av = _mm512_set1_ps(ak[(i) * a_rs]);                                        \
        c##i##_0 = _mm512_fmadd_ps(av, b0, c##i##_0);                                            \
        if (nv == 2)                                                                             \
            c##i##_1 = _mm512_fmadd_ps(av, b1, c##i##_1);                                        \
    }
#define SG_STORE(i)                                                                              \
    if ((i) < mr) {                                                                              \
        float *cr = c + (i) * c_rs;                                                              \
        if (e->accumulate) {                                                                     \
            c##i##_0 = _mm512_add_ps(c##i##_0, _mm512_maskz_loadu_ps(m0, cr));                   \
            if (nv == 2)                                                                         \
                c##i##_1 = _mm512_add_ps(c##i##_1, _mm512_maskz_loadu_ps(m1, cr + 16));          \
        }                                                                                        \
        if (e->last) {                                                                           \
            if (e->bias_mode == SG_BIAS_ROW) {                                                   \
                const __m512 bv = _mm512_set1_ps(e->bias[i]);                                    \
                c##i##_0 = _mm512_add_ps(c##i##_0, bv);                                          \
                c##i##_1 = _mm512_add_ps(c##i##_1, bv);                                          \
            } else if (e->bias_mode == SG_BIAS_COL) {                                            \
                c##i##_0 = _mm512_add_ps(c##i##_0, bc0);                                         \
                c##i##_1 = _mm512_add_ps(c##i##_1, bc1);                                         \
            }                                                                                    \
            if (e->clamp) {                                                                      \
                /* max(lo, v) returns v when v is NaN (vmaxps returns its second operand) */     \
                c##i##_0 = _mm512_min_ps(hi, _mm512_max_ps(lo, c##i##_0));                       \
                c##i##_1 = _mm512_min_ps(hi, _mm512_max_ps(lo, c##i##_1));                       \
            }                                                                                    \
        }                                                                                        \
        _mm512_mask_storeu_ps(cr, m0, c##i##_0);                                                 \
        if (nv == 2)                                                                             \
            _mm512_mask_storeu_ps(cr + 16, m1, c##i##_1);                                        \
    }

static inline __attribute__((always_inline)) SG_TARGET void
avx512_ukr(const int mr, const int nv, const int full, const int off, int64_t kc, const float *a,
           int64_t a_rs, int64_t a_ks, const float *b, int64_t b_rs, const int64_t *koff, float *c,
           int64_t c_rs, int cols, const sg_epi *e)
{
    /* Masked loads and stores for a partial panel (a direct B's last panel may end at the end of
     * its buffer). A full panel (full, a constant per instantiation) has constant all-ones masks,
     * which the compiler drops: plain loads made the hot loop 4-7% faster than masked ones. */
    if (full)
        cols = SG_NR;
    const __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    const __mmask16 m1 = cols >= 32 ? 0xffff : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
    SG_EACH(SG_INIT)
    for (int64_t k = 0; k < kc; k++) {
        const float *ak = a + k * a_ks;
        const float *bk = off ? b + koff[k] : b + k * b_rs;
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, bk);
        const __m512 b1 = nv == 2 ? _mm512_maskz_loadu_ps(m1, bk + 16) : _mm512_setzero_ps();
        SG_EACH(SG_FMA)
    }
    __m512 bc0 = _mm512_setzero_ps(), bc1 = _mm512_setzero_ps();
    if (e->last && e->bias_mode == SG_BIAS_COL) {
        bc0 = _mm512_maskz_loadu_ps(m0, e->bias);
        bc1 = _mm512_maskz_loadu_ps(m1, e->bias + 16);
    }
    const __m512 lo = _mm512_set1_ps(e->lo), hi = _mm512_set1_ps(e->hi);
    SG_EACH(SG_STORE)
}

/* W_: 0 = up to 16 columns (one zmm), 1 = 17 to 31, 2 = a full panel of 32. */
#define SG_UKR(MR_, W_, OFF_)                                                                     \
    static SG_TARGET void avx512_ukr_##MR_##_##W_##_##OFF_(                                       \
        int64_t kc, const float *a, int64_t a_rs, int64_t a_ks, const float *b, int64_t b_rs,     \
        const int64_t *koff, float *c, int64_t c_rs, int cols, const sg_epi *e)                   \
    {                                                                                             \
        avx512_ukr(MR_, (W_) ? 2 : 1, (W_) == 2, OFF_, kc, a, a_rs, a_ks, b, b_rs, koff, c, c_rs, \
                   cols, e);                                                                      \
    }
#define SG_UKR_BOTH(MR_)                                                                          \
    SG_UKR(MR_, 0, 0) SG_UKR(MR_, 1, 0) SG_UKR(MR_, 2, 0)                                         \
    SG_UKR(MR_, 0, 1) SG_UKR(MR_, 1, 1) SG_UKR(MR_, 2, 1)
SG_UKR_BOTH(1) SG_UKR_BOTH(2) SG_UKR_BOTH(3) SG_UKR_BOTH(4) SG_UKR_BOTH(5) SG_UKR_BOTH(6)
SG_UKR_BOTH(7) SG_UKR_BOTH(8) SG_UKR_BOTH(9) SG_UKR_BOTH(10) SG_UKR_BOTH(11) SG_UKR_BOTH(12)
SG_UKR_BOTH(13) SG_UKR_BOTH(14)
#define SG_ROW(MR_)                                                                               \
    { { avx512_ukr_##MR_##_0_0, avx512_ukr_##MR_##_1_0, avx512_ukr_##MR_##_2_0 },                 \
      { avx512_ukr_##MR_##_0_1, avx512_ukr_##MR_##_1_1, avx512_ukr_##MR_##_2_1 } }
/* [rows - 1][with offsets][width class: see width_class] */
static const ukr_fn avx512_table[SG_MAX_MR][2][3] = {
    SG_ROW(1), SG_ROW(2), SG_ROW(3), SG_ROW(4), SG_ROW(5), SG_ROW(6), SG_ROW(7),
    SG_ROW(8), SG_ROW(9), SG_ROW(10), SG_ROW(11), SG_ROW(12), SG_ROW(13), SG_ROW(14),
};

static inline int width_class(int cols) { return cols == SG_NR ? 2 : cols > 16; }

/* ---- portable C ---------------------------------------------------------------------------- */

static void generic_ukr(int mr, int64_t kc, const float *a, int64_t a_rs, int64_t a_ks,
                        const float *b, int64_t b_rs, const int64_t *koff, float *c, int64_t c_rs,
                        int cols, const sg_epi *e)
{
    float acc[SG_MAX_MR][SG_NR];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = koff ? b + koff[k] : b + k * b_rs;
        for (int i = 0; i < mr; i++) {
            const float av = a[i * a_rs + k * a_ks];
            for (int j = 0; j < cols; j++)
                acc[i][j] += av * bk[j];
        }
    }
    for (int i = 0; i < mr; i++) {
        float *cr = c + i * c_rs;
        for (int j = 0; j < cols; j++) {
            float v = acc[i][j];
            if (e->accumulate)
                v += cr[j];
            if (e->last) {
                if (e->bias_mode == SG_BIAS_ROW)
                    v += e->bias[i];
                else if (e->bias_mode == SG_BIAS_COL)
                    v += e->bias[j];
                if (e->clamp) {
                    v = v < e->lo ? e->lo : v;
                    v = v > e->hi ? e->hi : v;
                }
            }
            cr[j] = v;
        }
    }
}

/* ---- packing ------------------------------------------------------------------------------- */

/* Panels of 32 columns, [kcb][32] each, panel p at dst + p * kcb * 32; columns past n are zero
 * (they are never stored, but garbage could be a denormal, which slows FMAs). */

static inline __attribute__((always_inline)) void
pack_strided_body(const float *b, int64_t ks, int64_t ns, int64_t kcb, int64_t ncols, float *dst)
{
    const int64_t npan = (ncols + SG_NR - 1) / SG_NR;
    for (int64_t p = 0; p < npan; p++) {
        float *d = dst + p * kcb * SG_NR;
        const int64_t j0 = p * SG_NR, cols = min64(SG_NR, ncols - j0);
        if (ns == 1) {
            for (int64_t k = 0; k < kcb; k++) {
                const float *s = b + k * ks + j0;
                for (int64_t j = 0; j < cols; j++)
                    d[k * SG_NR + j] = s[j];
                for (int64_t j = cols; j < SG_NR; j++)
                    d[k * SG_NR + j] = 0.0f;
            }
        } else {
            /* a transposed B: read each column's run along K contiguously when ks == 1 */
            for (int64_t j = 0; j < SG_NR; j++) {
                if (j < cols) {
                    const float *s = b + (j0 + j) * ns;
                    for (int64_t k = 0; k < kcb; k++)
                        d[k * SG_NR + j] = s[k * ks];
                } else {
                    for (int64_t k = 0; k < kcb; k++)
                        d[k * SG_NR + j] = 0.0f;
                }
            }
        }
    }
}

/* `count` floats of one packed row from src at element stride sw (src NULL: zeros). Inlined into
 * each ISA's packer, where the loops vectorize at that path's width. */
static inline __attribute__((always_inline)) void
put_row(float *d, int64_t count, const float *src, int64_t sw)
{
    if (!src) {
        for (int64_t t = 0; t < count; t++)
            d[t] = 0.0f;
    } else if (sw == 1) {
        for (int64_t t = 0; t < count; t++)
            d[t] = src[t];
    } else if (sw == 2) {
        for (int64_t t = 0; t < count; t++)
            d[t] = src[2 * t];
    } else {
        for (int64_t t = 0; t < count; t++)
            d[t] = src[t * sw];
    }
}

/* One output row's share of a tile: pixels (oy, ox0 .. ox1) at local column l. The list depends
 * on the tile only, not on the K row, so it is computed once per tile and K block. */
typedef struct {
    int64_t oy, ox0, ox1, l;
} sg_seg;

/* The im2col block is packed row-major, [kcb][ld] with ld = the tile's panels x 32 + SG_IM2COL_PAD
 * (the micro-kernel reads panel p at column 32 p, row stride ld), not in panel-major [kcb][32]
 * blocks: each (K row, output row) segment is then one contiguous run instead of pieces cut at
 * every 32 columns. Measured on resnet's / PP-OCR's 3x3 layers: 3-7% faster than panel-major.
 * The pad keeps rows from landing 1 KiB apart (a 256-column tile), where the B rows the
 * micro-kernel walks down would all map to the same few L1 sets: without it, 64 -> 64 channels at
 * 56x56 ran 50% slower. */
#define SG_IM2COL_PAD 16

/* im2col on the fly: rows k0 .. k0 + kcb of cols[C*KH*KW, OH*OW] (row (c, ki, kj), column (oy,
 * ox) = x[c][oy*sh - ph + ki*dh][ox*sw - pw + kj*dw], zero outside the image), columns n0 .. n1.
 * Each (row, output row) segment is cut into at most three runs (left padding, the span inside
 * the image, right padding), so the per-element work is a plain copy; no division runs per
 * element or per segment. Columns from n1 to the end of the last panel are zero. */
#define SG_DEFINE_PACK_IM2COL(NAME, ATTR)                                                         \
    static ATTR void NAME(const sg_args *p, const float *x, int64_t k0, int64_t kcb, int64_t n0,  \
                          int64_t n1, float *dst, int64_t ld)                                     \
    {                                                                                             \
        const int64_t ow = p->ow, sw = p->sw, iw = p->iw, ih = p->ih, kw = p->kw;                 \
        const int64_t ncols = n1 - n0, npan = (ncols + SG_NR - 1) / SG_NR;                        \
        sg_seg segs[SG_NC_MAX + 1];                                                               \
        int nseg = 0;                                                                             \
        for (int64_t j = n0; j < n1;) {                                                           \
            const int64_t oy = j / ow, ox0 = j % ow, ox1 = min64(ow, ox0 + (n1 - j));             \
            segs[nseg].oy = oy;                                                                   \
            segs[nseg].ox0 = ox0;                                                                 \
            segs[nseg].ox1 = ox1;                                                                 \
            segs[nseg].l = j - n0;                                                                \
            nseg++;                                                                               \
            j += ox1 - ox0;                                                                       \
        }                                                                                         \
        const int64_t area = p->kh * kw;                                                          \
        int64_t ch = k0 / area, ki = (k0 % area) / kw, kj = k0 % kw;                              \
        for (int64_t kk = 0; kk < kcb; kk++) {                                                    \
            const float *plane = x + ch * ih * iw;                                                \
            const int64_t yoff = ki * p->dh - p->ph, xoff = kj * p->dw - p->pw;                   \
            /* output columns whose input column ox * sw + xoff lies in [0, iw): [oxlo, oxhi) */  \
            int64_t oxlo = xoff >= 0 ? 0 : (-xoff + sw - 1) / sw;                                 \
            int64_t oxhi = iw - 1 - xoff >= 0 ? (iw - 1 - xoff) / sw + 1 : 0;                     \
            oxhi = min64(oxhi, ow);                                                               \
            oxlo = min64(oxlo, oxhi);                                                             \
            float *drow = dst + kk * ld;                                                          \
            for (int s = 0; s < nseg; s++) {                                                      \
                const int64_t ox0 = segs[s].ox0, ox1 = segs[s].ox1, l = segs[s].l;                \
                const int64_t iy = segs[s].oy * p->sh + yoff;                                     \
                const int64_t a = ox0 > oxlo ? ox0 : oxlo, b = ox1 < oxhi ? ox1 : oxhi;           \
                if (iy < 0 || iy >= ih || a >= b) {                                               \
                    put_row(drow + l, ox1 - ox0, NULL, sw);                                       \
                } else {                                                                          \
                    const float *row = plane + iy * iw + xoff;                                    \
                    put_row(drow + l, a - ox0, NULL, sw);                                         \
                    put_row(drow + l + (a - ox0), b - a, row + a * sw, sw);                       \
                    put_row(drow + l + (b - ox0), ox1 - b, NULL, sw);                             \
                }                                                                                 \
            }                                                                                     \
            put_row(drow + ncols, npan * SG_NR - ncols, NULL, sw);                                \
            if (++kj == kw) {                                                                     \
                kj = 0;                                                                           \
                if (++ki == p->kh) {                                                              \
                    ki = 0;                                                                       \
                    ch++;                                                                         \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

/* The packers cloned per ISA so that their copy loops vectorize at the path's width. */
static SG_TARGET void pack_strided_avx512(const float *b, int64_t ks, int64_t ns, int64_t kcb,
                                          int64_t ncols, float *dst)
{
    pack_strided_body(b, ks, ns, kcb, ncols, dst);
}
static void pack_strided_generic(const float *b, int64_t ks, int64_t ns, int64_t kcb,
                                 int64_t ncols, float *dst)
{
    pack_strided_body(b, ks, ns, kcb, ncols, dst);
}
SG_DEFINE_PACK_IM2COL(pack_im2col_avx512, SG_TARGET)
SG_DEFINE_PACK_IM2COL(pack_im2col_generic, )

int64_t sg_packed_size(int64_t k, int64_t n)
{
    return (k < 1 ? 1 : k) * ((n + SG_NR - 1) / SG_NR) * SG_NR;
}

/* Per K block (sg_kc), all the panels of N: block starting at k0 holds npan panels of kcb x 32,
 * at dst + k0 * npan * 32 + p * kcb * 32. */
void sg_pack_b(const float *b, int64_t ks, int64_t ns, int64_t k, int64_t n, float *dst)
{
    const int64_t kc = sg_kc(k), npan = (n + SG_NR - 1) / SG_NR;
    const int avx = sg_cpu_supports(SG_ISA_AVX512);
    for (int64_t k0 = 0; k0 < k; k0 += kc) {
        const int64_t kcb = min64(kc, k - k0);
        if (avx)
            pack_strided_avx512(b + k0 * ks, ks, ns, kcb, n, dst + k0 * npan * SG_NR);
        else
            pack_strided_generic(b + k0 * ks, ks, ns, kcb, n, dst + k0 * npan * SG_NR);
    }
}

int64_t sg_packed_a_size(int64_t m, int64_t k, int mr)
{
    return ((m + mr - 1) / mr) * mr * (k < 1 ? 1 : k);
}

/* Per K block (kc), the slabs of mr rows, each [kcb][mr] (rows past m zero): block k0 at
 * dst + k0 * mpad, slab s at + s * kcb * mr, so a micro-kernel reads its A as one sequential
 * run instead of mr rows K floats apart (a 512 x 4608 conv weight read in place streamed 12
 * rows 18 KiB apart from memory per slab). */
void sg_pack_a(const float *a, int64_t rs, int64_t ks, int64_t m, int64_t k, int mr, int64_t kc,
               float *dst)
{
    const int64_t slabs = (m + mr - 1) / mr, mpad = slabs * mr;
    for (int64_t k0 = 0; k0 < k; k0 += kc) {
        const int64_t kcb = min64(kc, k - k0);
        for (int64_t sl = 0; sl < slabs; sl++) {
            float *d = dst + k0 * mpad + sl * kcb * mr;
            for (int64_t kk = 0; kk < kcb; kk++)
                for (int i = 0; i < mr; i++) {
                    const int64_t row = sl * mr + i;
                    d[kk * mr + i] = row < m ? a[row * rs + (k0 + kk) * ks] : 0.0f;
                }
        }
    }
}

/* A slab's start and strides: packed (sg_pack_a) or in place. */
static inline const float *a_slab(const sg_args *p, const float *a, int64_t i0, int64_t k0,
                                  int64_t kcb, int64_t *a_rs, int64_t *a_ks)
{
    if (p->apack) {
        *a_rs = 1;
        *a_ks = p->mr;
        return p->apack + k0 * ((p->m + p->mr - 1) / p->mr) * p->mr + (i0 / p->mr) * kcb * p->mr;
    }
    *a_rs = p->a_rs;
    *a_ks = p->a_ks;
    return a + i0 * p->a_rs + k0 * p->a_ks;
}

/* ---- tiles --------------------------------------------------------------------------------- */

/* Each thread keeps one scratch buffer for its packed B block, grown on demand and reused by
 * every later tile and call: a fresh malloc of a few hundred KiB is an mmap whose pages fault
 * in on every tile. */
static __thread float *tl_buf;
static __thread int64_t tl_cap;

static float *scratch(int64_t floats)
{
    if (floats > tl_cap) {
        free(tl_buf);
        const size_t bytes = (size_t)((floats * 4 + 63) / 64 * 64);
        tl_buf = aligned_alloc(64, bytes);
        tl_cap = tl_buf ? floats : 0;
    }
    return tl_buf;
}

int64_t sg_tile_count(const sg_args *p)
{
    const int64_t cols = p->b_mode == SG_B_SHIFTED ? p->oh : p->n;
    const int64_t mt = (p->m + p->mc - 1) / p->mc, nt = (cols + p->nc - 1) / p->nc;
    return p->batch * mt * nt;
}

/* ---- the shifted convolution (stride 1) ----------------------------------------------------
 * A tile is nc whole output rows [oy0, oy1) of one image. Per K block (whole channels), the input
 * rows those output rows read are copied once, zero-padded to the padded width wp, into
 * [channel][row][wp] (channel stride cs): over a padded row, output pixel (oy, ox) of tap (ki, kj)
 * reads element (oy - oy0 + ki*dh) * wp + ox + kj*dw, so with "virtual" columns v = (oy - oy0) *
 * wp + ox every tap of every channel is one contiguous run of the buffer, starting at koff[k]. The
 * micro-kernel walks K through that offset table; no im2col matrix is built (im2col copies each
 * input element KH*KW times, which cost 40% of a 96 -> 24 channel 3x3 convolution). The virtual
 * columns with ox >= ow (wp - ow per row) are computed into a scratch C and dropped when the
 * tile's rows are copied out. */
static int shifted_tile(const sg_args *p, int64_t tile)
{
    const int64_t mt = (p->m + p->mc - 1) / p->mc, nt = (p->oh + p->nc - 1) / p->nc;
    const int64_t bi = tile / (mt * nt), r = tile % (mt * nt), ni = r / mt, mi = r % mt;
    const int64_t m0 = mi * p->mc, m1 = min64(p->m, m0 + p->mc);
    const int64_t oy0 = ni * p->nc, oy1 = min64(p->oh, oy0 + p->nc), rows = oy1 - oy0;
    const int64_t wp = p->wp, ow = p->ow, taps = p->kh * p->kw;
    const int64_t nv = rows * wp, npan = (nv + SG_NR - 1) / SG_NR;
    const int64_t ldcv = npan * SG_NR + SG_IM2COL_PAD;
    /* every tap reads up to (kh-1)*dh rows and (kw-1)*dw columns past its virtual column */
    const int64_t reach = (p->kh - 1) * p->dh * wp + (p->kw - 1) * p->dw;
    const int64_t in_rows = rows + (p->kh - 1) * p->dh;
    const int64_t cs = (npan * SG_NR + reach + 15) / 16 * 16 + SG_IM2COL_PAD;
    const int64_t cpb = p->kc / taps; /* channels per K block */
    const int mr = p->mr, avx = p->isa == SG_ISA_AVX512;
    if (p->kc > SG_SHIFTED_MAX_KC)
        return 2;
    float *buf = scratch(cpb * cs + (m1 - m0) * ldcv);
    if (!buf)
        return 1;
    float *cscr = buf + cpb * cs;
    int64_t koff[SG_SHIFTED_MAX_KC];
    const float *a = p->a + bi * p->a_bs;
    const float *x = p->b + bi * p->b_bs;
    int64_t k0 = 0;
    do {
        const int64_t kcb = min64(p->kc, p->k - k0), c0 = k0 / taps, nch = kcb / taps;
        for (int64_t c = 0; c < nch; c++) {
            const float *plane = x + (c0 + c) * p->ih * p->iw;
            float *d = buf + c * cs;
            for (int64_t rr = 0; rr < in_rows; rr++, d += wp) {
                const int64_t iy = oy0 + rr - p->ph;
                if (iy < 0 || iy >= p->ih) {
                    memset(d, 0, (size_t)wp * 4);
                } else {
                    const int64_t right = wp - p->pw - p->iw;
                    memset(d, 0, (size_t)p->pw * 4);
                    memcpy(d + p->pw, plane + iy * p->iw, (size_t)p->iw * 4);
                    if (right > 0)
                        memset(d + p->pw + p->iw, 0, (size_t)right * 4);
                }
            }
            memset(d, 0, (size_t)(cs - in_rows * wp) * 4);
        }
        for (int64_t k = 0; k < kcb; k++) {
            const int64_t t = k % taps;
            koff[k] = (k / taps) * cs + (t / p->kw) * p->dh * wp + (t % p->kw) * p->dw;
        }
        sg_epi e = {k0 > 0, k0 + kcb >= p->k, p->bias_mode, NULL, p->clamp, p->lo, p->hi};
        for (int64_t i0 = m0; i0 < m1; i0 += mr) {
            const int nrows = (int)min64(mr, m1 - i0);
            int64_t a_rs, a_ks;
            const float *ai = a_slab(p, a, i0, k0, kcb, &a_rs, &a_ks);
            e.bias = p->bias_mode == SG_BIAS_ROW ? p->bias + i0 : NULL;
            for (int64_t pj = 0; pj < npan; pj++) {
                const int cols = (int)min64(SG_NR, nv - pj * SG_NR);
                float *cij = cscr + (i0 - m0) * ldcv + pj * SG_NR;
                if (avx)
                    avx512_table[nrows - 1][1][width_class(cols)](
                        kcb, ai, a_rs, a_ks, buf + pj * SG_NR, 0, koff, cij, ldcv, cols, &e);
                else
                    generic_ukr(nrows, kcb, ai, a_rs, a_ks, buf + pj * SG_NR, 0, koff, cij, ldcv,
                                cols, &e);
            }
        }
        k0 += kcb;
    } while (k0 < p->k);
    float *c = p->c + bi * p->c_bs;
    for (int64_t i = m0; i < m1; i++)
        for (int64_t rr = 0; rr < rows; rr++)
            memcpy(c + i * p->c_rs + (oy0 + rr) * ow, cscr + (i - m0) * ldcv + rr * wp,
                   (size_t)ow * 4);
    return 0;
}

int sg_tile(const sg_args *p, int64_t tile)
{
    if (p->b_mode == SG_B_SHIFTED)
        return shifted_tile(p, tile);
    const int64_t mt = (p->m + p->mc - 1) / p->mc, nt = (p->n + p->nc - 1) / p->nc;
    const int64_t bi = tile / (mt * nt), r = tile % (mt * nt), ni = r / mt, mi = r % mt;
    const int64_t m0 = mi * p->mc, m1 = min64(p->m, m0 + p->mc);
    const int64_t n0 = ni * p->nc, n1 = min64(p->n, n0 + p->nc);
    const int64_t ncols = n1 - n0, npan = (ncols + SG_NR - 1) / SG_NR;
    const int64_t npan_all = (p->n + SG_NR - 1) / SG_NR;
    const int mr = p->mr, avx = p->isa == SG_ISA_AVX512;
    const int packs = p->b_mode == SG_B_STRIDED || p->b_mode == SG_B_IM2COL;
    float *buf = NULL;
    if (p->b_mode == SG_B_IM2COL && p->nc > SG_NC_MAX)
        return 2;
    if (packs) {
        buf = scratch(p->kc * (npan * SG_NR + SG_IM2COL_PAD));
        if (!buf)
            return 1;
    }
    const float *a = p->a + bi * p->a_bs;
    float *c = p->c + bi * p->c_bs;
    const float *bsrc = p->b ? p->b + bi * p->b_bs : NULL;
    int64_t k0 = 0;
    do {
        const int64_t kcb = min64(p->kc, p->k - k0);
        const float *blk;
        int64_t b_rs, b_ps; /* B row stride, panel stride */
        if (p->b_mode == SG_B_DIRECT) {
            blk = bsrc + k0 * p->b_ks + n0;
            b_rs = p->b_ks;
            b_ps = SG_NR;
        } else if (p->b_mode == SG_B_PACKED) {
            blk = p->bpack + k0 * npan_all * SG_NR + (n0 / SG_NR) * kcb * SG_NR;
            b_rs = SG_NR;
            b_ps = kcb * SG_NR;
        } else {
            if (p->b_mode == SG_B_STRIDED) {
                const float *s = bsrc + k0 * p->b_ks + n0 * p->b_ns;
                if (avx)
                    pack_strided_avx512(s, p->b_ks, p->b_ns, kcb, ncols, buf);
                else
                    pack_strided_generic(s, p->b_ks, p->b_ns, kcb, ncols, buf);
                blk = buf;
                b_rs = SG_NR;
                b_ps = kcb * SG_NR;
            } else {
                const int64_t ld = npan * SG_NR + SG_IM2COL_PAD;
                if (avx)
                    pack_im2col_avx512(p, bsrc, k0, kcb, n0, n1, buf, ld);
                else
                    pack_im2col_generic(p, bsrc, k0, kcb, n0, n1, buf, ld);
                blk = buf;
                b_rs = ld;
                b_ps = SG_NR;
            }
        }
        sg_epi e = {k0 > 0, k0 + kcb >= p->k, p->bias_mode, NULL, p->clamp, p->lo, p->hi};
        for (int64_t i0 = m0; i0 < m1; i0 += mr) {
            const int rows = (int)min64(mr, m1 - i0);
            int64_t a_rs, a_ks;
            const float *ai = a_slab(p, a, i0, k0, kcb, &a_rs, &a_ks);
            for (int64_t pj = 0; pj < npan; pj++) {
                const int64_t j = n0 + pj * SG_NR;
                const int cols = (int)min64(SG_NR, n1 - j);
                e.bias = p->bias_mode == SG_BIAS_ROW ? p->bias + i0
                         : p->bias_mode == SG_BIAS_COL ? p->bias + j : NULL;
                float *cij = c + i0 * p->c_rs + j;
                if (avx)
                    avx512_table[rows - 1][0][width_class(cols)](
                        kcb, ai, a_rs, a_ks, blk + pj * b_ps, b_rs, NULL, cij, p->c_rs, cols, &e);
                else
                    generic_ukr(rows, kcb, ai, a_rs, a_ks, blk + pj * b_ps, b_rs, NULL, cij,
                                p->c_rs, cols, &e);
            }
        }
        k0 += kcb;
    } while (k0 < p->k);
    return 0;
}
