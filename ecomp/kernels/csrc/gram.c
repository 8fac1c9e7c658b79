/* Gram matrices of wide point sets (a convolutional stage's flattened maps: a thousand features
 * and more per point), loaded with ctypes by ecomp.native.
 *
 * The similarity compares every child's point sets with its parent's through their Gram
 * matrices. For wide sets these came from torch's batched GEMM, which computes both triangles
 * of a symmetric product. Here only the upper triangle is computed (half the products), and it
 * is mirrored: a Gram entry's terms a[i][k] * a[j][k] are the same products in the same order
 * either way round, so the two triangles are equal bit for bit.
 *
 * Each entry is summed the way the GEMM library on this machine sums it, so that the bits stay
 * the library's: in blocks of `kb` terms (each block from its first term to its last with one
 * rounding per step, fused multiply-add), the blocks' sums added in order, one rounding each.
 * Which kb the library uses is found by the caller, by comparing with it on the same shape
 * (ecomp.native.gram_block); where none reproduces it the caller keeps the library's product.
 *
 * Vector copies only (AVX-512F, else AVX2 + FMA); without them the entry point returns -1. */
#include <stdint.h>
#include <stdlib.h>

int ecomp_conv_block(void);    /* conv.c: the vector width that runs here (16, 8, or 0: none) */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define ECOMP_GRAM_VECTOR 1

#pragma GCC push_options
#pragma GCC target("avx512f")
#define KFN(name) name##_avx512
#define VEC __m512
#define VW 16
#define GR 8
#define VZERO _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VLOAD_N(s, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), s)
#define VSTORE_N(d, v, n) _mm512_mask_storeu_ps(d, (__mmask16)((1u << (n)) - 1), v)
#include "gram_body.h"
#undef KFN
#undef VEC
#undef VW
#undef GR
#undef VZERO
#undef VSET1
#undef VLOAD
#undef VFMA
#undef VADD
#undef VLOAD_N
#undef VSTORE_N
#pragma GCC pop_options

/* -1 in the first n of eight lanes from gram_masks + 8 - n: AVX2's masks for n floats */
static const int32_t gram_masks[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define KFN(name) name##_avx2
#define VEC __m256
#define VW 8
#define GR 4
#define VZERO _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#define GRAM_MASK(n) _mm256_loadu_si256((const __m256i *)(gram_masks + 8 - (n)))
#define VLOAD_N(s, n) _mm256_maskload_ps(s, GRAM_MASK(n))
#define VSTORE_N(d, v, n) _mm256_maskstore_ps(d, GRAM_MASK(n), v)
#include "gram_body.h"
#pragma GCC pop_options
#endif

/* Gram matrices of sets [m0, m1): set m has n points of width[m] features, point i's at
 * addr[m] + 4 * i * ld[m] bytes (unit stride); g[m] (n x n) = A A^T summed in blocks of kb[m]
 * terms (see above). Sets go to `nthreads` OpenMP threads. Returns 0, or -1 where no vector
 * copy runs here or memory ran out (nothing is then promised of g). */
int ecomp_gram_blocked(const int64_t *addr, const int64_t *ld, const int32_t *width, const int64_t *kb, int64_t n,
                       float *g, int64_t m0, int64_t m1, int nthreads) {
#if ECOMP_GRAM_VECTOR
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
        float *bt = malloc(sizeof(float) * npad * (size_t)most);
        failed += !bt;
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
