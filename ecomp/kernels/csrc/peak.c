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

#pragma GCC push_options
#pragma GCC target("avx512f")
CHAINS_FN(vchains_avx512, __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps)
static float chains_avx512(int64_t steps) { return _mm512_reduce_add_ps(vchains_avx512(steps)); }
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
CHAINS_FN(vchains_avx2, __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps)
static float chains_avx2(int64_t steps) {
    float out[8];
    _mm256_storeu_ps(out, vchains_avx2(steps));
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
