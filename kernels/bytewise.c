/* Elementwise kernels on uint8 tensors (see bytewise.h), AVX-512 where the CPU has it and the
 * same arithmetic one value at a time elsewhere.
 *
 * QLinearAdd: 16 values a step. The fused multiply-adds are explicit (fmaf, _mm512_fmadd_ps):
 * the build's -ffp-contract=off forbids the compiler to make its own.
 * Table lookup: 64 values a step, the 256-byte table in four registers, two vpermi2b (VBMI)
 * and a blend on the index's top bit. */
#include "bytewise.h"

#include <math.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define BYTEWISE_X86 1
#define ADD_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define LOOKUP_TARGET __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#endif

static inline uint8_t add_one(uint8_t a, uint8_t b, float ratio_a, float ratio_b, float fixed) {
    float v = rintf(fmaf((float)a, ratio_a, fmaf((float)b, ratio_b, fixed)));
    return (uint8_t)fminf(fmaxf(v, 0.0f), 255.0f);
}

static void run_portable(const uint8_t *a, const uint8_t *b, uint8_t *out, int64_t n, float ratio_a,
                         float ratio_b, float fixed) {
    for (int64_t i = 0; i < n; i++)
        out[i] = add_one(a[i], b[i], ratio_a, ratio_b, fixed);
}

#ifdef BYTEWISE_X86
ADD_TARGET static void run_avx512(const uint8_t *a, const uint8_t *b, uint8_t *out, int64_t n,
                                   float ratio_a, float ratio_b, float fixed) {
    const __m512 ra = _mm512_set1_ps(ratio_a), rb = _mm512_set1_ps(ratio_b), f = _mm512_set1_ps(fixed);
    const __m512 low = _mm512_setzero_ps(), high = _mm512_set1_ps(255.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 keep = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(keep, a + i)));
        __m512 y = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(keep, b + i)));
        __m512 v = _mm512_fmadd_ps(x, ra, _mm512_fmadd_ps(y, rb, f));
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, low), high);
        _mm_mask_storeu_epi8(out + i, keep, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
}

static int avx512_ok(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
    }
    return known;
}

LOOKUP_TARGET static void lookup_vbmi(const uint8_t *x, const uint8_t *table, uint8_t *out, int64_t n) {
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
    const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    for (int64_t i = 0; i < n; i += 64) {
        __mmask64 keep = n - i >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (n - i)) - 1;
        __m512i index = _mm512_maskz_loadu_epi8(keep, x + i);
        __m512i low = _mm512_permutex2var_epi8(t0, index, t1), high = _mm512_permutex2var_epi8(t2, index, t3);
        __m512i value = _mm512_mask_blend_epi8(_mm512_movepi8_mask(index), low, high);
        _mm512_mask_storeu_epi8(out + i, keep, value);
    }
}

static int vbmi_ok(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vbmi");
    }
    return known;
}
#endif

void bytes_lookup(const uint8_t *x, const uint8_t *table, uint8_t *out, int64_t n) {
#ifdef BYTEWISE_X86
    if (vbmi_ok()) {
        lookup_vbmi(x, table, out, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        out[i] = table[x[i]];
}

void qadd_rows(const uint8_t *a, int64_t a_step, const uint8_t *b, int64_t b_step, uint8_t *out,
               int64_t rows, int64_t n, float ratio_a, float ratio_b, float fixed) {
    void (*run)(const uint8_t *, const uint8_t *, uint8_t *, int64_t, float, float, float) = run_portable;
#ifdef BYTEWISE_X86
    if (avx512_ok())
        run = run_avx512;
#endif
    for (int64_t r = 0; r < rows; r++)
        run(a + r * a_step, b + r * b_step, out + r * n, n, ratio_a, ratio_b, fixed);
}
