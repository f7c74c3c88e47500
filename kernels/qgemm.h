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

#include <stdint.h>

enum { QG_ISA_GENERIC = 0, QG_ISA_AVX2 = 1, QG_ISA_VNNI = 2, QG_ISA_AMX = 3 };
enum { QG_OUT_INT32 = 0, QG_OUT_UINT8 = 1, QG_OUT_FLOAT32 = 2 };

/* Rows of M per tile: a multiple of every path's MR (6 for VNNI, 4 for AVX2 and generic), and
 * MC x KC bytes of A (144 KiB) stay resident in the 1 MiB L2 while the tile's B panels stream
 * past it. */
#define QG_MC 144
/* Columns per tile granule: the widest micro-kernel (VNNI, 4 panels of 16). Tiles are multiples. */
#define QG_NC_GRANULE 64

typedef struct {
    int isa;
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
    int64_t nc;                 /* columns per tile, a multiple of QG_NC_GRANULE */
} qg_args;

int qg_cpu_supports(int isa);
int qg_mr(int isa);
void qg_pack_a(int isa, const uint8_t *a, int64_t rs, int64_t cs, int64_t m, int64_t k,
               uint8_t *apack, int64_t slab);
int64_t qg_tile_count(const qg_args *p);
/* Returns 0, or -1 when the tile's scratch buffer could not be allocated. */
int qg_tile(const qg_args *p, int64_t tile);
/* Applies the epilogue to raw sums acc (row i, col j at acc[i * rs + j * cs]) for rows
 * [m0, m0 + mc) and columns [n0, n0 + nc); used by the tiles and by the depthwise convolution. */
void qg_epilogue(const qg_args *p, const int32_t *acc, int64_t rs, int64_t cs,
                 int64_t m0, int64_t mc, int64_t n0, int64_t nc);

#endif
