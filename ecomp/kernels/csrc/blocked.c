/* Products summed in the GEMM library's order, loaded with ctypes by ecomp.kernels.native: the
 * Gram matrices of wide point sets (a convolutional stage's flattened maps, a thousand features
 * and more per point) and a population's linear stages (each individual's rows times its
 * weights, plus its biases, then the ReLU).
 *
 * Gram matrices came from torch's batched GEMM, which computes both triangles of a symmetric
 * product. Here only the upper triangle is computed (half the products), and it is mirrored: a
 * Gram entry's terms a[i][k] * a[j][k] are the same products in the same order either way round,
 * so the two triangles are equal bit for bit. The linear stages came from torch's baddbmm and a
 * ReLU pass over its output; here the ReLU is applied as the sums are stored.
 *
 * Each entry is summed the way the GEMM library on this machine sums it, so that the bits stay
 * the library's: in blocks of `kb` terms (each block from its first term to its last with one
 * rounding per step, fused multiply-add), the blocks' sums added in order, one rounding each, to
 * the first block's sum (Grams) or to the bias (linear stages). Which kb the library uses at a
 * shape is found by the caller, by comparing with it on that shape (ecomp.kernels.blocked.gram_block,
 * linear_block); where none reproduces it the caller keeps the library's product.
 *
 * Vector copies only (AVX-512F, else AVX2 + FMA); without them the entry points return -1. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int ecomp_conv_block(void);    /* conv.c: the vector width that runs here (16, 8, or 0: none) */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#include "transpose.h"
#define ECOMP_BLOCKED_VECTOR 1

#pragma GCC push_options
#pragma GCC target("avx512f")
#define TRANSPOSE16(r) transpose16(r)
#define KFN(name) name##_avx512
#define VEC __m512
#define VW 16
#define GR 6
#define NVMAX 4
#define VZERO _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VLOAD_N(s, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), s)
#define VSTORE_N(d, v, n) _mm512_mask_storeu_ps(d, (__mmask16)((1u << (n)) - 1), v)
#include "blocked_body.h"
#undef KFN
#undef VEC
#undef VW
#undef GR
#undef NVMAX
#undef VZERO
#undef VSET1
#undef VLOAD
#undef VFMA
#undef VADD
#undef VMAX
#undef VLOAD_N
#undef VSTORE_N
#undef TRANSPOSE16
#pragma GCC pop_options

/* -1 in the first n of eight lanes from gram_masks + 8 - n: AVX2's masks for n floats */
static const int32_t gram_masks[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define KFN(name) name##_avx2
#define VEC __m256
#define VW 8
#define GR 4
#define NVMAX 2
#define VZERO _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define GRAM_MASK(n) _mm256_loadu_si256((const __m256i *)(gram_masks + 8 - (n)))
#define VLOAD_N(s, n) _mm256_maskload_ps(s, GRAM_MASK(n))
#define VSTORE_N(d, v, n) _mm256_maskstore_ps(d, GRAM_MASK(n), v)
#include "blocked_body.h"
#pragma GCC pop_options
#endif

/* Gram matrices of sets [m0, m1): set m has n points of width[m] features, point i's at
 * addr[m] + 4 * i * ld[m] bytes (unit stride); g[m] (n x n) = A A^T summed in blocks of kb[m]
 * terms (see above). Sets go to `nthreads` OpenMP threads. Returns 0, or -1 where no vector
 * copy runs here or memory ran out (nothing is then promised of g). */
int ecomp_gram_blocked(const int64_t *addr, const int64_t *ld, const int32_t *width, const int64_t *kb, int64_t n,
                       float *g, int64_t m0, int64_t m1, int nthreads) {
#if ECOMP_BLOCKED_VECTOR
    const int vw = ecomp_conv_block();
    if (vw == 0 || n < 1) return -1;
    int64_t most = 1;
    for (int64_t m = m0; m < m1; m++) {                      /* the longest block any set takes */
        const int64_t b = kb[m] < width[m] ? kb[m] : width[m];
        most = b > most ? b : most;
    }
    const size_t npad = (size_t)((n + 15) / 16 * 16), nn = (size_t)(n * n);
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(+:failed)
    {
        float *bt = malloc(sizeof(float) * (npad * (size_t)most + 16));   /* + what tiles read past it */
        failed += !bt;
        if (bt) memset(bt, 0, sizeof(float) * (npad * (size_t)most + 16));    /* nothing read is undefined */
        #pragma omp for schedule(dynamic, 4)
        for (int64_t m = m0; m < m1; m++) {
            if (!bt) continue;
            const float *a = (const float *)(intptr_t)addr[m];
            if (vw == 16) gram_blocked_avx512(a, ld[m], width[m], n, kb[m], bt, g + m * nn);
            else gram_blocked_avx2(a, ld[m], width[m], n, kb[m], bt, g + m * nn);
        }
        free(bt);
    }
    return failed ? -1 : 0;
#else
    (void)addr; (void)ld; (void)width; (void)kb; (void)n; (void)g; (void)m0; (void)m1; (void)nthreads;
    return -1;
#endif
}

/* Linear stages of individuals [m0, m1): out[m] (n x f) = b[m] + h[m] w[m]^T, h[m] (n x K) at
 * h_addr + 4 * m * h_step bytes with rows ld floats apart (unit stride); the weights transposed
 * and padded, wt (M, K, fpad) (row k: each output's k-th weight, zero from f on), b (M, fpad), out
 * (M, n, f) contiguous; summed in blocks of kb terms (see above); `relu`: then max(0, .). perm_addr
 * (or 0): K int32, term k of a row being its float perm[k] (a flattened map read in its memory's
 * order, summed in the order of the flattening it stands for). Individuals (or, where they are
 * few, blocks of their rows) go to `nthreads` OpenMP threads. Returns 0, or -1 where no vector
 * copy runs here or fpad is not a whole number of its vectors. */
int ecomp_linear_blocked(int64_t h_addr, int64_t h_step, int64_t ld, int64_t n, int64_t K, int64_t perm_addr,
                         int64_t wt_addr, int64_t b_addr, int64_t f, int64_t fpad, int64_t kb, int relu, int64_t out_addr,
                         int64_t m0, int64_t m1, int nthreads) {
#if ECOMP_BLOCKED_VECTOR
    const int vw = ecomp_conv_block();
    if (vw == 0 || n < 1 || K < 1 || f < 1 || kb < 1 || fpad < f || fpad % vw) return -1;
    const float *h = (const float *)(intptr_t)h_addr, *wt = (const float *)(intptr_t)wt_addr;
    const float *b = (const float *)(intptr_t)b_addr;
    const int32_t *perm = (const int32_t *)(intptr_t)perm_addr;
    float *out = (float *)(intptr_t)out_addr;
    /* fewer individuals than two per thread (a population of many architectures runs each
     * alone): their rows in blocks of a multiple of 12 (whole tiles of either copy's 6 or 4 rows),
     * a few per thread; each output's sum is the same whatever rows share its task */
    const int64_t rb = m1 - m0 >= 2 * nthreads ? n : ((n + 2 * nthreads - 1) / (2 * nthreads) + 11) / 12 * 12;
    const int64_t nb = (n + rb - 1) / rb;
    #pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
    for (int64_t t = 0; t < (m1 - m0) * nb; t++) {
        const int64_t m = m0 + t / nb, r0 = t % nb * rb, rn = n - r0 < rb ? n - r0 : rb;
        const float *hm = h + m * h_step + r0 * ld;
        float *om = out + m * n * f + r0 * f;
        if (vw == 16) linear_blocked_avx512(hm, perm, ld, rn, K, wt + m * K * fpad, fpad, b + m * fpad, f, kb, relu, om);
        else linear_blocked_avx2(hm, perm, ld, rn, K, wt + m * K * fpad, fpad, b + m * fpad, f, kb, relu, om);
    }
    return 0;
#else
    (void)h_addr; (void)h_step; (void)ld; (void)n; (void)K; (void)perm_addr; (void)wt_addr; (void)b_addr; (void)f; (void)fpad; (void)kb;
    (void)relu; (void)out_addr; (void)m0; (void)m1; (void)nthreads;
    return -1;
#endif
}
