/* Fused t-SNE similarity kernels for ecomp.kernels.native (loaded with ctypes, compiled on first
 * use). See tsne_body.h for the arithmetic and ecomp/kernels/native.py for the contract; the
 * PyTorch path in ecomp/kernels/tsne_torch.py computes the same quantities and is their test
 * oracle.
 *
 * Every entry point works on the point sets [m0, m1) with `nthreads` threads, each with its
 * own scratch, taking sets as it finishes others; a set's arithmetic does not depend on
 * which thread does it. Threads come from OpenMP when built with -fopenmp: loaded into a
 * process where PyTorch's libgomp.so.1 is already loaded, this library binds to that same
 * runtime, so its threads are PyTorch's (two runtimes would spin against each other on
 * the same cores).
 * Without OpenMP the range runs serially and ecomp.kernels.native splits it over Python
 * threads. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Scratch of calibrate_set: distances and exponentials of two rows, each padded to whole
 * vectors, and the squared norms. */
#define CAL_WORK_FLOATS(n) (5 * (size_t)(n) + 32)
/* Scratch of gram_set: w feature rows of the set padded to whole 16-point panels, and one more. */
#define GRAM_PAD(n, w) ((size_t)(w) * ((((size_t)(n) + 15) & ~(size_t)15)) + 16)

#define KFN(name) name##_base
#include "tsne_body.h"
#undef KFN

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ECOMP_HAVE_AVX2 1
#include <immintrin.h>

int ecomp_conv_block(void);     /* conv.c: 16 where AVX-512F runs here (and is not forced off) */

#pragma GCC push_options
#pragma GCC target("avx512f")
/* gram_set's products on AVX-512 (what the AVX2 copy's gram_set hands over where it runs): rows
 * i0 .. i0 + 5 of the padded set (w rows of np points, see gram_set) against up to four vectors of
 * 16 points, each entry the same plain sum over the features in order, one fused multiply-add per
 * step, as the AVX2 copy's 8-float vectors make it: the same bits, twice the lanes. */
#define GRAM_TILE(NV)                                                                                        \
    static void gram_tile_##NV(const float *pad, int np, int w, int n, int i0, int j0, float *g) {           \
        __m512 acc[6][NV];                                                                                   \
        for (int r = 0; r < 6; r++)                                                                          \
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();                                    \
        for (int f = 0; f < w; f++) {                                                                        \
            const float *row = pad + (size_t)f * np;                                                         \
            __m512 b[NV];                                                                                    \
            for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_ps(row + j0 + 16 * v);                          \
            for (int r = 0; r < 6; r++) {                                                                    \
                const __m512 x = _mm512_set1_ps(row[i0 + r]);                                                \
                for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);                \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < 6 && i0 + r < n; r++)                                                            \
            for (int v = 0; v < NV && j0 + 16 * v < n; v++) {                                                \
                const int j = j0 + 16 * v, cnt = n - j < 16 ? n - j : 16;                                    \
                _mm512_mask_storeu_ps(g + (size_t)(i0 + r) * n + j, (__mmask16)((1u << cnt) - 1), acc[r][v]); \
            }                                                                                                \
    }
GRAM_TILE(1)
GRAM_TILE(2)
GRAM_TILE(3)
GRAM_TILE(4)
#undef GRAM_TILE

/* The blocks of gram_set on and above the diagonal (the same blocks: rows six at a time, columns
 * from the 16-point panel of the first row on); 0 where AVX-512 does not run here. */
static int gram_tiles_avx512(const float *pad, int np, int w, int n, float *g) {
    if (ecomp_conv_block() != 16) return 0;
    for (int i0 = 0; i0 < n; i0 += 6)
        for (int j0 = (i0 / 16) * 16; j0 < n;) {
            const int left = (np - j0) / 16, nv = left < 4 ? left : 4;
            switch (nv) {
            case 1: gram_tile_1(pad, np, w, n, i0, j0, g); break;
            case 2: gram_tile_2(pad, np, w, n, i0, j0, g); break;
            case 3: gram_tile_3(pad, np, w, n, i0, j0, g); break;
            default: gram_tile_4(pad, np, w, n, i0, j0, g); break;
            }
            j0 += 16 * nv;
        }
    return 1;
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define KFN(name) name##_avx2
#define GRAM_WIDE_TILES(pad, np, w, n, g) gram_tiles_avx512(pad, np, w, n, g)
#include "tsne_body.h"
#undef GRAM_WIDE_TILES
#undef KFN
#pragma GCC pop_options
static int force_base = 0;
static int use_avx2(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached && !force_base;
}
#else
#define ECOMP_HAVE_AVX2 0
static int use_avx2(void) { return 0; }
#endif

/* Which instruction set the kernels run with: 1 AVX2 + FMA, 0 baseline. */
int ecomp_isa(void) { return use_avx2(); }

/* Run the baseline copy of every kernel from now on, whatever the CPU supports (ECOMP_KERNEL_ISA=baseline:
 * the tests' way to reach both copies on one machine). There is no way up: the AVX2 copy runs only
 * where the CPU has it. */
void ecomp_force_baseline(void) {
#if ECOMP_HAVE_AVX2
    (void)use_avx2();
    force_base = 1;
#endif
}

int ecomp_abi_version(void) { return 22; }

/* 1 if built with OpenMP (the entry points then use `nthreads` threads themselves). */
int ecomp_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Sets are handed out to the threads a few at a time as they finish (OpenMP's dynamic
 * schedule): a set's cost varies with its width and its search, and a static split left
 * one core waiting at the end of every call. Each set's arithmetic is the same whichever
 * thread does it. */
#define SETS_PER_GRAB 4

static int64_t max_width(const int32_t *width, int64_t m0, int64_t m1) {
    int64_t w = 1;
    for (int64_t m = m0; m < m1; m++) w = width[m] > w ? width[m] : w;
    return w;
}

#if ECOMP_HAVE_AVX2
#define DISPATCH(fn, ...) (use_avx2() ? fn##_avx2(__VA_ARGS__) : fn##_base(__VA_ARGS__))
#else
#define DISPATCH(fn, ...) fn##_base(__VA_ARGS__)
#endif

/* Gram (M, N, N) -> conditionals (M, N, N) and beta * mean distance (M, N) (bm may be NULL),
 * starting from guess (M, N) (may be NULL). Returns the number of rows that did not
 * converge, or -1 if scratch could not be allocated. */
int ecomp_conditionals(const float *gram, int n, const double *guess, double target, double tol,
                       int max_iter, float *cond, double *bm, int64_t m0, int64_t m1, int nthreads) {
    int bad = 0, failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(+:bad, failed)
    {
        float *work = malloc(sizeof(float) * CAL_WORK_FLOATS(n));
        const size_t nn = (size_t)n * n;
        failed += !work;
        #pragma omp for schedule(dynamic, SETS_PER_GRAB)
        for (int64_t m = m0; m < m1; m++)
            if (work) bad += DISPATCH(calibrate_set, gram + m * nn, n, guess ? guess + m * n : NULL, target, tol,
                                      max_iter, cond + m * nn, bm ? bm + m * n : NULL, work);
        free(work);
    }
    return failed ? -1 : bad;
}

/* Joint probabilities of the conditionals of sets [m0, m1) (both (M, N, N)). */
int ecomp_joint(const float *cond, int n, float *p, int64_t m0, int64_t m1, int nthreads) {
    const size_t nn = (size_t)n * n;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        #pragma omp for schedule(dynamic, SETS_PER_GRAB)
        for (int64_t m = m0; m < m1; m++) DISPATCH(joint_set, cond + m * nn, n, p + m * nn);
    }
    return 0;
}

/* KL(P_parent || Q_child) of sets [m0, m1) given as activations: address of point 0 feature 0,
 * ld, trans and width per set; see similarity_set in tsne_body.h. */
int ecomp_similarity_acts(const int64_t *addr, const int64_t *ld, const int32_t *trans, const int32_t *width,
                          int n, const float *p, const double *guess, const int64_t *parent, double target,
                          double tol, int max_iter, double *kl, int64_t m0, int64_t m1, int nthreads) {
    const size_t w = (size_t)max_width(width, m0, m1), nn = (size_t)n * n;
    int bad = 0, failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(+:bad, failed)
    {
        float *work = malloc(sizeof(float) * (CAL_WORK_FLOATS(n) + 2 * nn + (size_t)n + GRAM_PAD(n, w)));
        failed += !work;
        #pragma omp for schedule(dynamic, SETS_PER_GRAB)
        for (int64_t m = m0; m < m1; m++)
            if (work) kl[m] = DISPATCH(similarity_set, addr, ld, trans, width, n, p, guess, parent, target, tol,
                                       max_iter, m, work, &bad);
        free(work);
    }
    return failed ? -1 : bad;
}

/* KL(P_parent || Q_child) of sets [m0, m1) given as Gram matrices (M, N, N): what
 * ecomp_similarity_acts computes after its own Gram, for Grams made elsewhere (a BLAS product
 * of wide activations). */
int ecomp_similarity_grams(const float *gram, int n, const float *p, const double *guess, const int64_t *parent,
                           double target, double tol, int max_iter, double *kl, int64_t m0, int64_t m1,
                           int nthreads) {
    const size_t nn = (size_t)n * n;
    int bad = 0, failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(+:bad, failed)
    {
        float *work = malloc(sizeof(float) * (CAL_WORK_FLOATS(n) + nn + (size_t)n));
        failed += !work;
        #pragma omp for schedule(dynamic, SETS_PER_GRAB)
        for (int64_t m = m0; m < m1; m++)
            if (work) kl[m] = DISPATCH(similarity_gram, gram + m * nn, n, p, guess, parent[m], target, tol,
                                       max_iter, work, &bad);
        free(work);
    }
    return failed ? -1 : bad;
}

/* Gram matrices (M, N, N) of sets [m0, m1) given as activations. */
int ecomp_grams_acts(const int64_t *addr, const int64_t *ld, const int32_t *trans, const int32_t *width, int n,
                     float *g, double *centred, int64_t m0, int64_t m1, int nthreads) {
    const size_t w = (size_t)max_width(width, m0, m1), nn = (size_t)n * n;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(+:failed)
    {
        float *pad = malloc(sizeof(float) * GRAM_PAD(n, w));
        failed += !pad;
        #pragma omp for schedule(dynamic, SETS_PER_GRAB)
        for (int64_t m = m0; m < m1; m++)
            if (pad)
                DISPATCH(gram_set, (const float *)(intptr_t)addr[m], ld[m], trans[m], width[m], n, g + m * nn, pad,
                         centred ? centred + m : NULL);
        free(pad);
    }
    return failed ? -1 : 0;
}

/* ex = e^-x (x clamped to <= 80), lg = log x (x > 0 normal): the kernels' own approximations. */
void ecomp_exp_log(const float *x, float *ex, float *lg, int64_t n) {
    DISPATCH(exp_log, x, ex, lg, n);
}
