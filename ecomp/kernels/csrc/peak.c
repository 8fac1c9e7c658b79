/* The machine's fused multiply-add ceiling: no float32 product on this CPU can run faster than
 * its vector units retire FMAs. The benchmarks (benchmarks/rates.py) quote it beside the rates the
 * libraries reach, so that a floor drawn from it ("these FLOPs need at least this long here") is a
 * bound, not an estimate.
 *
 * Each thread runs CHAINS independent chains of a = a * m + c on full vectors: more chains than an
 * FMA's latency times the FMA units (4 x 2 on the CPUs met), so the units never wait, and nothing
 * touches memory. m < 1 and c > 0 keep every value near 1: no overflow, no subnormals. */
#include <stdint.h>

int ecomp_conv_block(void);    /* conv.c: the vector width that runs here (16, 8, or 0: none) */

#define CHAINS 12

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define ECOMP_PEAK_VECTOR 1

/* The chains of one copy, summed into one vector: VEC its type, SET1, FMA and ADD its operations. */
#define CHAINS_FN(NAME, VEC, SET1, FMA, ADD)                                   \
    static VEC NAME(int64_t steps) {                                           \
        const VEC m = SET1(0.999f), c = SET1(0.001f);                          \
        VEC a[CHAINS];                                                         \
        for (int j = 0; j < CHAINS; j++) a[j] = SET1((float)j);                \
        for (int64_t s = 0; s < steps; s++)                                    \
            for (int j = 0; j < CHAINS; j++) a[j] = FMA(a[j], m, c);           \
        for (int j = 1; j < CHAINS; j++) a[0] = ADD(a[0], a[j]);               \
        return a[0];                                                           \
    }

/* The fused convolution's inner loops alone (conv_body.h), on data that stays in the first-level
 * cache: what its register blocking can reach on this CPU before any memory, pooling or store
 * costs. One step is one term k of the dot products (k cycles over 25, a 5 x 5 window); a
 * thread runs `reps` passes of 25 steps. Shapes:
 *   0 "first": two vectors of filters by eight window positions (the first stage's block): per
 *     step 2 vector loads, 8 broadcasts, 16 FMAs;
 *   1 "later": one vector of filters by eight positions (a stage of at most one vector of
 *     filters per individual with the filters in the lanes): 1 load, 8 broadcasts, 8 FMAs;
 *   2 "images": a vector of images by four positions and six filters (the images-in-lanes pass,
 *     conv_body.h's KFN(lanes_6), every stage of a one-architecture population's run): 4 loads,
 *     6 broadcasts, 24 FMAs.
 * Inputs are the multiples of 1/8 and 1/4 set below, so the sums are exact (the test checks
 * them). */
#define SHAPE_IMG 16                                  /* the image: 16 x 16 values (x VW lanes for "images") */
static float shape_x[SHAPE_IMG * SHAPE_IMG * 16] __attribute__((aligned(64)));
static float shape_w[25 * 32] __attribute__((aligned(64)));
static int64_t shape_koff[25];
static void shape_init(void) {
    for (int i = 0; i < SHAPE_IMG * SHAPE_IMG * 16; i++) shape_x[i] = (float)(i % 7) * 0.125f;
    for (int i = 0; i < 25 * 32; i++) shape_w[i] = (float)(i % 5) * 0.25f;
    for (int k = 0; k < 25; k++) shape_koff[k] = (k / 5) * SHAPE_IMG + k % 5;
}
static const int64_t shape_pos[8] = {0, 1, SHAPE_IMG, SHAPE_IMG + 1, 2, 3, SHAPE_IMG + 2, SHAPE_IMG + 3};

#define SHAPES_FN(NAME, VEC, VW, SET1, LOAD, FMA, ADD, ZERO)                                           \
    static VEC NAME(int shape, int64_t reps) {                                                      \
        VEC a[24];                                                                                   \
        for (int j = 0; j < 24; j++) a[j] = ZERO;                                                    \
        if (shape == 0)                                                                              \
            for (int64_t r = 0; r < reps; r++) {                                                     \
                const float *x = shape_x + (r & 7);                                                  \
                for (int k = 0; k < 25; k++) {                                                       \
                    const float *xk = x + shape_koff[k];                                             \
                    const VEC w0 = LOAD(shape_w + k * 2 * VW), w1 = LOAD(shape_w + k * 2 * VW + VW);   \
                    for (int p = 0; p < 8; p++) {                                                    \
                        const VEC v = SET1(xk[shape_pos[p]]);                                        \
                        a[2 * p] = FMA(v, w0, a[2 * p]);                                             \
                        a[2 * p + 1] = FMA(v, w1, a[2 * p + 1]);                                     \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
        else if (shape == 1)                                                                         \
            for (int64_t r = 0; r < reps; r++) {                                                     \
                const float *x = shape_x + (r & 7);                                                  \
                for (int k = 0; k < 25; k++) {                                                       \
                    const float *xk = x + shape_koff[k];                                             \
                    const VEC w0 = LOAD(shape_w + k * VW);                                           \
                    for (int p = 0; p < 8; p++) a[p] = FMA(SET1(xk[shape_pos[p]]), w0, a[p]);        \
                }                                                                                    \
            }                                                                                        \
        else                                                                                         \
            for (int64_t r = 0; r < reps; r++) {                                                     \
                const float *x = shape_x + (r & 7) * VW;                                             \
                for (int k = 0; k < 25; k++) {                                                       \
                    const float *xk = x + shape_koff[k] * VW;                                        \
                    VEC v[4];                                                                        \
                    for (int p = 0; p < 4; p++) v[p] = LOAD(xk + shape_pos[p] * VW);                 \
                    for (int f = 0; f < 6; f++) {                                                    \
                        const VEC w = SET1(shape_w[k * 6 + f]);                                      \
                        for (int p = 0; p < 4; p++) a[4 * f + p] = FMA(v[p], w, a[4 * f + p]);       \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
        for (int j = 1; j < 24; j++) a[0] = ADD(a[0], a[j]);                                         \
        return a[0];                                                                                 \
    }

#pragma GCC push_options
#pragma GCC target("avx512f")
CHAINS_FN(vchains_avx512, __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps)
static float chains_avx512(int64_t steps) { return _mm512_reduce_add_ps(vchains_avx512(steps)); }
SHAPES_FN(vshapes_avx512, __m512, 16, _mm512_set1_ps, _mm512_load_ps, _mm512_fmadd_ps, _mm512_add_ps,
          _mm512_setzero_ps())
static float shapes_avx512(int shape, int64_t reps) { return _mm512_reduce_add_ps(vshapes_avx512(shape, reps)); }
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
CHAINS_FN(vchains_avx2, __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps)
static float chains_avx2(int64_t steps) {
    float out[8];
    _mm256_storeu_ps(out, vchains_avx2(steps));
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}
SHAPES_FN(vshapes_avx2, __m256, 8, _mm256_set1_ps, _mm256_load_ps, _mm256_fmadd_ps, _mm256_add_ps,
          _mm256_setzero_ps())
static float shapes_avx2(int shape, int64_t reps) {
    float out[8];
    _mm256_storeu_ps(out, vshapes_avx2(shape, reps));
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}
#pragma GCC pop_options
#else
#define ECOMP_PEAK_VECTOR 0
#endif

/* `steps` rounds of CHAINS vector FMAs on each of `nthreads` OpenMP threads: that is
 * nthreads * steps * CHAINS * width * 2 FLOPs, `width` being the return value (16 or 8 floats;
 * 0 where no vector copy runs here, and nothing was done). The chains' sum goes to *sink, so the
 * compiler cannot drop them. */
int ecomp_fma_peak(int64_t steps, int nthreads, float *sink) {
#if ECOMP_PEAK_VECTOR
    const int vw = ecomp_conv_block();
    if (vw == 0) return 0;
    float total = 0.0f;
    #pragma omp parallel num_threads(nthreads) reduction(+:total)
    total += vw == 16 ? chains_avx512(steps) : chains_avx2(steps);
    *sink = total;
    return vw;
#else
    (void)steps; (void)nthreads; *sink = 0.0f;
    return 0;
#endif
}

/* `reps` passes of the inner loop `shape` (see SHAPES_FN) on each of `nthreads` threads: that is
 * nthreads * reps * 25 * fmas * width * 2 FLOPs, fmas = 16, 8, 24 for shapes 0, 1, 2 and `width`
 * the return value (0 where no vector copy runs here, or the shape is unknown: nothing done). The
 * accumulators' sum over all lanes goes to *sink. */
int ecomp_fma_shape(int shape, int64_t reps, int nthreads, float *sink) {
#if ECOMP_PEAK_VECTOR
    const int vw = ecomp_conv_block();
    if (vw == 0 || shape < 0 || shape > 2) return 0;
    shape_init();
    float total = 0.0f;
    #pragma omp parallel num_threads(nthreads) reduction(+:total)
    total += vw == 16 ? shapes_avx512(shape, reps) : shapes_avx2(shape, reps);
    *sink = total;
    return vw;
#else
    (void)shape; (void)reps; (void)nthreads; *sink = 0.0f;
    return 0;
#endif
}
