/* uint8 x int8 -> int32 GEMM with a fused requantizing epilogue (BLIS structure).
 *
 * B (weights) is packed once by pack_weights_vnni into panels of 16 output columns,
 * [ceil(N/16)][K4][16][4] with K4 = ceil(K/4); every ISA path reads that same layout.
 * A (activations) is read in place when it is row-major with K a multiple of 4 (vpdpbusd
 * broadcasts 4 consecutive bytes of a row); otherwise it is packed per call into slabs of MR rows,
 * [ceil(M/MR)][K4][MR][4], which also pads K.
 * The work is cut into tiles of MC rows x NC columns; the Cython driver hands tiles to threads.
 */
#ifndef GRAPHOPT_QGEMM_H
#define GRAPHOPT_QGEMM_H

#include <immintrin.h>
#include <stdint.h>

enum { QG_ISA_GENERIC = 0, QG_ISA_AVX2 = 1, QG_ISA_VNNI = 2, QG_ISA_AMX = 3 };
enum { QG_OUT_INT32 = 0, QG_OUT_UINT8 = 1, QG_OUT_FLOAT32 = 2 };

/* Rows of M per tile: a multiple of every micro-kernel's MR (1, 2, 6, 8 for VNNI, 4 for AVX2
 * and generic), and MC x KC bytes of A (144 KiB) stay resident in the 1 MiB L2 while the tile's
 * B panels stream past it. */
#define QG_MC 144
/* Columns per tile granule: the widest micro-kernel (VNNI, 4 panels of 16). Tiles are multiples. */
#define QG_NC_GRANULE 64

typedef struct {
    int isa;
    int mr, npanels;            /* micro-kernel shape (rows x 16-column panels): see qg_shape */
    int64_t m, n, k4;           /* k4 = ceil(K/4): groups of 4 along the reduction */
    const uint8_t *apack;       /* packed A (see qg_pack_a), or NULL to read a in place */
    const uint8_t *a;           /* row-major A with K a multiple of 4, read when apack is NULL */
    int64_t a_rs;               /* its row stride in bytes */
    const int8_t *bpack;        /* packed B, [ceil(n/16)][k4][16][4] */
    const int32_t *col_sums;    /* [n]: sum over K of each column of B */
    int32_t a_zero_point;
    const int32_t *bias;        /* [n] (zeros when the caller has none) */
    const float *mult;          /* [n]: per-channel multiplier (float and uint8 outputs) */
    int out_kind;               /* QG_OUT_* */
    void *out;                  /* element (r, c) at out[r * out_rs + c * out_cs] */
    int64_t out_rs, out_cs;     /* strides in elements */
    int32_t relu;               /* int32 output: clamp at 0 */
    float lo, hi;               /* float output: clamp bounds; uint8: quantized bounds */
    int32_t out_zero_point;
    int64_t nc;                 /* columns per tile, a multiple of 16 (GEMM: of QG_NC_GRANULE) */
} qg_args;

/* An implicit-GEMM convolution: A is never materialised. GEMM row p (an output pixel) lies in
 * virtual row p / row_len, column p % row_len; its tap t reads k4 / taps groups of 4 channels at
 * x + (p / row_len) * in_row_stride + (p % row_len) * in_px_stride + tap_off[t]. With stride 1
 * the virtual rows are as wide as the padded input (in_row_stride = row_len * in_px_stride), so
 * every slab of MR rows is evenly spaced, even across rows; the columns past out_width are
 * computed and dropped. Otherwise row_len = out_width and slabs stop at the end of a row. */
typedef struct {
    const uint8_t *x;           /* zero-point-padded channels-last image */
    int64_t row_len, out_width; /* GEMM rows per virtual row; real output columns per row */
    int64_t in_row_stride, in_px_stride;
    int taps;
    const int64_t *tap_off;     /* [taps], bytes */
} qg_conv;

/* The same convolution transposed, for stride 1 on the VNNI path: GEMM rows are the output
 * channels, with w (int8, [rows][k4 * 4], taps in order, each tap's channels padded to 4s)
 * broadcast 4 bytes at a time; columns are virtual pixels (row_len = padded width) of an image
 * in planes of 4 channels: pixel p of channels 4g..4g+3 at x + g * plane_stride + 4 * p, and
 * tap t plus pixel p at 4 * p + tap_off[t]. The sums come out pixel-contiguous, as NCHW
 * stores them. p->m = output channels, p->n = virtual pixels; the epilogue still sees
 * [pixels, channels] (out_rs = 1). */
/* Its micro-kernel: 8 output channels x 3 panels (48 pixels); 64 channels are 8 whole slabs.
 * uint8 output is requantized in the micro-kernel where virtual rows have QG_T_FUSED_ROW
 * pixels or more (a panel then spans at most two). */
#define QG_T_MR 8
#define QG_T_NP 3
#define QG_T_FUSED_ROW 16

typedef struct {
    const uint8_t *x;
    int64_t plane_stride;
    const int8_t *w;
    int64_t row_len, out_width;
    int taps;
    const int64_t *tap_off;
} qg_conv_t;

/* Runs fn(ctx, i) for i in [0, n) on up to `threads` threads: the caller and a persistent pool
 * of workers, which take indices one at a time. The caller waits only for the indices a worker
 * has actually taken: a worker that wakes late (its core busy with another process) finds
 * nothing left and costs nothing, where an OpenMP region's closing barrier waited for it.
 * Concurrent callers (other Python threads) run their loop alone. Returns 1 if any call
 * returned nonzero, else 0. */
typedef int (*qg_task_fn)(void *ctx, int64_t i);
int qg_parallel_for(int threads, int64_t n, qg_task_fn fn, void *ctx);

int qg_cpu_supports(int isa);
/* The micro-kernel shape (rows x 16-column panels) for a product with m rows. */
void qg_shape(int isa, int64_t m, int *mr, int *npanels);
void qg_pack_a(int mr, const uint8_t *a, int64_t rs, int64_t cs, int64_t m, int64_t k,
               uint8_t *apack, int64_t slab);
int64_t qg_tile_count(const qg_args *p);
/* Returns 0, or -1 when the tile's scratch buffer could not be allocated. */
int qg_tile(const qg_args *p, int64_t tile);
/* The same with mc rows per tile (a multiple of p->mr) instead of QG_MC. */
int64_t qg_tile_count_mc(const qg_args *p, int64_t mc);
int qg_tile_mc(const qg_args *p, int64_t mc, int64_t tile);
/* The same with kc groups of 4 along the reduction per cache block instead of 256. */
int qg_tile_mc_kc(const qg_args *p, int64_t mc, int64_t kc, int64_t tile);
/* One tile of an implicit-GEMM convolution (p->m = virtual rows x row_len); same return. */
int qg_conv_tile(const qg_args *p, const qg_conv *cv, int64_t tile);
/* The same with mc rows per tile (a multiple of p->mr, or of cv->row_len) instead of QG_MC. */
int qg_conv_tile_mc(const qg_args *p, const qg_conv *cv, int64_t mc, int64_t tile);
int qg_conv_t_tile(const qg_args *p, const qg_conv_t *cv, int64_t tile);
/* Applies the epilogue to raw sums acc (row i, col j at acc[i * rs + j * cs]) for rows
 * [m0, m0 + mc) and columns [n0, n0 + nc); used by the tiles and by the depthwise convolution. */
void qg_epilogue(const qg_args *p, const int32_t *acc, int64_t rs, int64_t cs,
                 int64_t m0, int64_t mc, int64_t n0, int64_t nc);

/* The uint8 epilogue's arithmetic on 16 corrected int32 sums (y = sum - a_zero_point * col_sum
 * + bias), AVX-512: v = float32(y) * mult, clamped to the quantized bounds relative to the zero
 * point, rounded half to even (cvtps2dq under the default MXCSR, like round_half_even), plus the
 * zero point; the lanes stay int32, for vpmovusdb to store. */
static inline __attribute__((target("avx512f"))) __m512i
qg_requantize16(__m512i y, __m512 mult, __m512 lo_rel, __m512 hi_rel, __m512i zp)
{
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(y), mult);
    v = _mm512_min_ps(_mm512_max_ps(v, lo_rel), hi_rel);
    return _mm512_add_epi32(_mm512_cvtps_epi32(v), zp);
}

#endif
