/* Fused t-SNE similarity kernels for ecomp.native (loaded with ctypes, compiled on first
 * use). See tsne_body.h for the arithmetic and ecomp/native.py for the contract; the
 * PyTorch path in ecomp/similarity.py computes the same quantities and is their test oracle.
 *
 * Callers split the sets [0, M) across threads; each call allocates its own scratch. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KFN(name) name##_base
#include "tsne_body.h"
#undef KFN

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ECOMP_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define KFN(name) name##_avx2
#include "tsne_body.h"
#undef KFN
#pragma GCC pop_options
static int use_avx2(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
}
#else
#define ECOMP_HAVE_AVX2 0
static int use_avx2(void) { return 0; }
#endif

/* Which instruction set the kernels run with: 1 AVX2 + FMA, 0 baseline. */
int ecomp_isa(void) { return use_avx2(); }

int ecomp_abi_version(void) { return 1; }

/* Returns the number of rows that did not converge, or -1 if scratch could not be allocated. */
int ecomp_conditionals(const float *gram, int n, const double *guess, double target, double tol,
                       int max_iter, float *cond, double *bm, int64_t m0, int64_t m1) {
    float *work = malloc(sizeof(float) * 3 * (size_t)n);
    if (!work) return -1;
    int bad;
#if ECOMP_HAVE_AVX2
    if (use_avx2())
        bad = conditionals_avx2(gram, n, guess, target, tol, max_iter, cond, bm, m0, m1, work);
    else
#endif
        bad = conditionals_base(gram, n, guess, target, tol, max_iter, cond, bm, m0, m1, work);
    free(work);
    return bad;
}

/* Joint probabilities of the conditionals of sets [m0, m1) (both (M, N, N)). */
void ecomp_joint(const float *cond, int n, float *p, int64_t m0, int64_t m1) {
    const size_t nn = (size_t)n * n;
    for (int64_t m = m0; m < m1; m++) {
#if ECOMP_HAVE_AVX2
        if (use_avx2()) { joint_set_avx2(cond + m * nn, n, p + m * nn); continue; }
#endif
        joint_set_base(cond + m * nn, n, p + m * nn);
    }
}

/* KL(P_parent || Q_child) of sets [m0, m1); see similarity in tsne_body.h. */
int ecomp_similarity(const float *gram, int n, const float *p, const double *guess, const int64_t *parent,
                     double target, double tol, int max_iter, double *kl, int64_t m0, int64_t m1) {
    float *work = malloc(sizeof(float) * (3 * (size_t)n + 2 * (size_t)n * n));
    if (!work) return -1;
    int bad;
#if ECOMP_HAVE_AVX2
    if (use_avx2())
        bad = similarity_avx2(gram, n, p, guess, parent, target, tol, max_iter, kl, m0, m1, work);
    else
#endif
        bad = similarity_base(gram, n, p, guess, parent, target, tol, max_iter, kl, m0, m1, work);
    free(work);
    return bad;
}

/* ex = e^-x (x clamped to <= 80), lg = log x (x > 0 normal): the kernels' own approximations. */
void ecomp_exp_log(const float *x, float *ex, float *lg, int64_t n) {
#if ECOMP_HAVE_AVX2
    if (use_avx2()) { exp_log_avx2(x, ex, lg, n); return; }
#endif
    exp_log_base(x, ex, lg, n);
}
