/* float32 GEMM C[M, N] = A[M, K] . B[K, N] with a fused epilogue (BLIS structure), and the
 * implicit-GEMM 2-D convolution built on it.
 *
 * The micro-kernel computes MR rows x 32 columns (two zmm of 16 floats): A is read in place at
 * any strides (one broadcast per row and k, so it is never packed), B a row of 32 floats per k
 * from one of four sources:
 *   SG_B_DIRECT  a row-major matrix with unit column stride, read in place (its last panel
 *                through masked loads);
 *   SG_B_PACKED  prepacked once (sg_pack_b): per K block, panels of 32 columns, [kc][32] each;
 *   SG_B_STRIDED any strided matrix, packed per tile into the same panel layout;
 *   SG_B_IM2COL  a convolution's virtual column matrix cols[C*KH*KW, OH*OW], gathered per tile
 *                from the NCHW image straight into panels (zeros for padding), never
 *                materialised as a whole.
 *   SG_B_SHIFTED the same convolution at stride 1: per tile of whole output rows, the input rows
 *                are copied once, zero-padded, and each K row (a tap of a channel) is read at an
 *                offset into them (see shifted_tile in sgemm.c); kc is a multiple of KH*KW and nc
 *                counts output rows.
 * The work is cut into tiles (batch x MC rows x NC columns); the Cython driver hands the tiles to
 * the worker pool (qg_parallel_for, through kernels/_workers.pxi). The epilogue (previous K blocks' partial sums, bias per row or per column,
 * ReLU / clip) runs in registers before the single store of each C element's last K block.
 */
#ifndef GRAPHOPT_SGEMM_H
#define GRAPHOPT_SGEMM_H

#include <stdint.h>

enum { SG_ISA_GENERIC = 0, SG_ISA_AVX512 = 1 };
enum { SG_B_DIRECT = 0, SG_B_PACKED = 1, SG_B_STRIDED = 2, SG_B_IM2COL = 3, SG_B_SHIFTED = 4 };
enum { SG_BIAS_NONE = 0, SG_BIAS_ROW = 1, SG_BIAS_COL = 2 };

/* Columns per micro-kernel panel (2 zmm). Prepacked B and tiles are laid out in these units. */
#define SG_NR 32
/* Largest micro-kernel height: MR x 2 accumulators + 2 B + 1 broadcast of the 32 zmm. */
#define SG_MAX_MR 14
/* Columns per tile at most (the im2col packer keeps a list of the tile's output-row segments). */
#define SG_NC_MAX 256
/* The shifted convolution's K block at most (its offset table lives on the stack). */
#define SG_SHIFTED_MAX_KC 1024

typedef struct {
    int isa;
    int64_t m, n, k, batch;
    int mr;                      /* micro-kernel rows (sg_choose_mr) */
    int64_t kc;                  /* K block (sg_kc): one pass of the micro-kernel */
    int64_t mc, nc;              /* tile: rows (multiple of mr) x columns (multiple of SG_NR) */
    /* A: element (i, k) of batch b at a[b * a_bs + i * a_rs + k * a_ks] */
    const float *a;
    int64_t a_bs, a_rs, a_ks;
    const float *apack;          /* or A packed by sg_pack_a with this mr and kc (then a unused) */
    /* B */
    int b_mode;
    const float *b;              /* DIRECT / STRIDED: (k, j) at b[b_bs * batch + k * b_ks + j * b_ns] */
    int64_t b_bs, b_ks, b_ns;
    const float *bpack;          /* PACKED */
    /* IM2COL: batch item b's image at x + b * b_bs, [C][H][W] contiguous; K = C*KH*KW ordered
     * (c, kh, kw) like a reshaped ONNX weight; N = OH*OW pixels row-major. */
    int64_t ch, ih, iw, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
    int64_t wp;                  /* SHIFTED: padded width (iw + left + right padding) */
    /* C: (i, j) of batch b at c[b * c_bs + i * c_rs + j] */
    float *c;
    int64_t c_bs, c_rs;
    int bias_mode;
    const float *bias;           /* [m] (ROW) or [n] (COL) */
    int clamp;                   /* apply lo/hi */
    float lo, hi;
} sg_args;

int sg_cpu_supports(int isa);
/* Micro-kernel rows for a product with m rows: m itself up to SG_MAX_MR, else the most even split
 * into slabs of at most 12. */
int sg_choose_mr(int64_t m);
/* K block for a reduction of k: all of it up to 512, else even blocks of at most 384. */
int64_t sg_kc(int64_t k);
/* Floats that sg_pack_b writes for a [k, n] matrix. */
int64_t sg_packed_size(int64_t k, int64_t n);
/* Packs B (element (k, j) at b[k * ks + j * ns]) into the SG_B_PACKED layout, zero-padded. */
void sg_pack_b(const float *b, int64_t ks, int64_t ns, int64_t k, int64_t n, float *dst);
/* Floats that sg_pack_a writes for an [m, k] A in slabs of mr rows. */
int64_t sg_packed_a_size(int64_t m, int64_t k, int mr);
/* Packs A (element (i, k) at a[i * rs + k * ks]) into slabs of mr rows per K block of kc. */
void sg_pack_a(const float *a, int64_t rs, int64_t ks, int64_t m, int64_t k, int mr, int64_t kc,
               float *dst);
/* Tiles of the product (batch x row chunks x column chunks). */
int64_t sg_tile_count(const sg_args *p);
/* Runs one tile; nonzero: a scratch buffer could not be allocated (1), a block too large (2). */
int sg_tile(const sg_args *p, int64_t tile);

#endif
