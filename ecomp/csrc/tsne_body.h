/* The per-matrix t-SNE kernels, included twice by tsne.c: once for the baseline
 * instruction set and once (x86-64, GCC) for AVX2 + FMA. KFN(name) gives each copy
 * its own names. Everything here is plain C; the loops marked `omp simd` are the
 * ones the compiler vectorises (-fopenmp-simd, no -ffast-math: IEEE semantics,
 * only the marked reductions are reordered).
 *
 * Layouts (float32, row-major, contiguous):
 *   gram  (N, N)  Gram matrix <x_i, x_j> of one point set
 *   cond  (N, N)  Gaussian conditionals, row i over j != i, 0 on the diagonal
 *   p     (N, N)  joint probabilities, max((c + c^T) / sum, eps), eps on the diagonal
 */

/* e^x for x in [-80, 0] (callers clamp): x = n ln2 + r, |r| <= ln2 / 2, e^r by its
 * Taylor series to r^7 (truncation below 1e-8 relative), 2^n put in the exponent. */
static inline float KFN(exp_neg)(float x) {
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   /* round to nearest */
    float r = x - n * 0.693145751953125f;                                 /* Cody-Waite: ln2 hi */
    r = r - n * 1.428606765330187e-06f;                                   /*             ln2 lo */
    float p = 1.9841269841e-4f;                                           /* 1/7! */
    p = p * r + 1.3888888889e-3f;
    p = p * r + 8.3333333333e-3f;
    p = p * r + 4.1666666667e-2f;
    p = p * r + 1.6666666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* log x for normal x > 0: x = 2^e m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) with
 * s = (m - 1) / (m + 1), |s| <= 0.1716, series to s^9 (truncation below 1e-9). */
static inline float KFN(log_pos)(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    int32_t e = ((bits >> 23) & 0xff) - 127;
    int32_t mb = (bits & 0x007fffff) | 0x3f800000;
    float m;
    memcpy(&m, &mb, sizeof m);
    int big = m > 1.41421356237f;
    m = big ? m * 0.5f : m;
    e = big ? e + 1 : e;
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float t = 0.11111111111f;
    t = t * s2 + 0.14285714286f;
    t = t * s2 + 0.2f;
    t = t * s2 + 0.33333333333f;
    t = t * s2 + 1.0f;
    return (float)e * 0.69314718056f + 2.0f * s * t;
}

/* Gram matrix of one set of n points with w features, read in place: point j, feature f
 * at a[j * ld + f] (points are rows, trans = 0) or a[f * ld + j] (points are columns,
 * trans = 1). The set is first copied into pad as (w, np) with np = n rounded up to 16
 * and zeros beyond n; then 6 x 16 blocks of G = pad^T pad on and above the diagonal
 * blocks, 12 vector accumulators each; the rest of G is mirrored. pad: w * np + 16 floats.
 * Each entry is a plain sum over f in order of a product, whatever the blocking. */
typedef float KFN(v8) __attribute__((vector_size(32)));

static void KFN(gram_set)(const float *a, int64_t ld, int trans, int w, int n, float *g, float *pad) {
    const int np = (n + 15) & ~15;
    if (trans) {
        for (int f = 0; f < w; f++) memcpy(pad + (size_t)f * np, a + (size_t)f * ld, sizeof(float) * (size_t)n);
    } else {                                                       /* transpose: read rows, write columns */
        for (int j = 0; j < n; j++) {
            const float *src = a + (size_t)j * ld;
            for (int f = 0; f < w; f++) pad[(size_t)f * np + j] = src[f];
        }
    }
    for (int f = 0; f < w; f++)
        for (int j = n; j < np; j++) pad[(size_t)f * np + j] = 0.0f;
    for (int j = 0; j < 16; j++) pad[(size_t)w * np + j] = 0.0f;   /* rows i0 + r past np read here */
    for (int i0 = 0; i0 < n; i0 += 6) {
        for (int j0 = (i0 / 16) * 16; j0 < n; j0 += 16) {
            KFN(v8) acc[6][2];
            for (int r = 0; r < 6; r++) acc[r][0] = acc[r][1] = (KFN(v8)){0.0f};
            for (int f = 0; f < w; f++) {
                const float *row = pad + (size_t)f * np;
                KFN(v8) b0, b1;
                memcpy(&b0, row + j0, sizeof b0);
                memcpy(&b1, row + j0 + 8, sizeof b1);
                for (int r = 0; r < 6; r++) {
                    const float x = row[i0 + r];
                    acc[r][0] += x * b0;
                    acc[r][1] += x * b1;
                }
            }
            const int m = n - j0 < 16 ? n - j0 : 16;
            for (int r = 0; r < 6 && i0 + r < n; r++) {
                float *dst = g + (size_t)(i0 + r) * n + j0;
                if (m == 16) {                                     /* two plain vector stores */
                    memcpy(dst, &acc[r][0], sizeof acc[r][0]);
                    memcpy(dst + 8, &acc[r][1], sizeof acc[r][1]);
                } else {
                    float out[16];
                    memcpy(out, acc[r], sizeof out);
                    for (int j = 0; j < m; j++) dst[j] = out[j];
                }
            }
        }
    }
    for (int i = 0; i < n; i++) {                                  /* mirror what was skipped */
        const int start = ((i / 6) * 6 / 16) * 16;
        for (int j = 0; j < start; j++) g[(size_t)i * n + j] = g[(size_t)j * n + i];
    }
}

/* One point set: Gram -> conditionals with perplexity exp(target) per row.
 * Row i: t_j = |x_j|^2 - 2 <x_i, x_j> (j != i), d_j = t_j - min t (the shift leaves the
 * conditional unchanged), then the safeguarded Halley iteration of
 * similarity.calibrate on beta, started from guess[i] / mean(d) when that is finite and
 * positive (guess: beta * mean distance of a similar point set), else from the
 * second-order expansion. Writes cond and, if bm is not NULL, beta * mean(d) per row.
 * work: 3 (N - 1) floats. Returns the number of rows that hit max_iter unconverged. */
static int KFN(calibrate_set)(const float *gram, int n, const double *guess, double target, double tol,
                              int max_iter, float *cond, double *bm, float *work) {
    const int k = n - 1;
    float *d = work, *e = work + k, *sq = work + 2 * k;   /* sq: n floats (work has 3k >= n + k) */
    int unconverged = 0;
    for (int j = 0; j < n; j++) sq[j] = gram[(size_t)j * n + j];
    for (int i = 0; i < n; i++) {
        const float *g = gram + (size_t)i * n;
        for (int j = 0; j < i; j++) d[j] = sq[j] - 2.0f * g[j];
        for (int j = i + 1; j < n; j++) d[j - 1] = sq[j] - 2.0f * g[j];
        float mn = d[0];
        #pragma omp simd reduction(min:mn)
        for (int j = 1; j < k; j++) mn = d[j] < mn ? d[j] : mn;
        float s0 = 0.0f, s00 = 0.0f;
        #pragma omp simd reduction(+:s0, s00)
        for (int j = 0; j < k; j++) {
            float v = d[j] - mn;
            d[j] = v;
            s0 += v;
            s00 += v * v;
        }
        double mean0 = (double)s0 / k;
        double var0 = (double)s00 / k - mean0 * mean0;
        var0 = var0 > 0.0 ? var0 : 0.0;
        double gap = log((double)k) - target;
        gap = gap > 1e-3 ? gap : 1e-3;
        double beta = sqrt(2.0 * gap / (var0 > 1e-30 ? var0 : 1e-30));
        if (guess) {
            double b = guess[i] / mean0;
            if (isfinite(b) && b > 0.0) beta = b;
        }
        double lo = 0.0, hi = INFINITY;
        double z = 1.0;
        int done = 0;
        for (int it = 0; it < max_iter && !done; it++) {
            const float nb = (float)(-beta);
            float sz = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            #pragma omp simd reduction(+:sz, s1, s2, s3)
            for (int j = 0; j < k; j++) {
                float x = nb * d[j];
                x = x < -80.0f ? -80.0f : x;
                float v = KFN(exp_neg)(x);
                e[j] = v;
                float t = v * d[j];
                sz += v;
                s1 += t;
                t *= d[j];
                s2 += t;
                s3 += t * d[j];
            }
            z = sz;
            double m1 = s1 / z, m2 = s2 / z, m3 = s3 / z;
            double var = m2 - m1 * m1;
            var = var > 0.0 ? var : 0.0;
            double diff = log(z) + beta * m1 - target;
            if (fabs(diff) <= tol || var * beta * beta <= 1e-12) { done = 1; break; }
            if (diff > 0) lo = beta; else hi = beta;                  /* H decreases in beta */
            double d1 = -beta * var;
            double d2 = -var + beta * (m3 - 3.0 * m1 * m2 + 2.0 * m1 * m1 * m1);
            double step = beta - 2.0 * diff * d1 / (2.0 * d1 * d1 - diff * d2);
            if (it == max_iter - 1) break;                              /* keep the exponentials of beta */
            beta = (step > lo && step < hi) ? step : (isinf(hi) ? beta * 2.0 : (lo + hi) / 2.0);
        }
        unconverged += !done;
        const float inv = (float)(1.0 / z);
        float *c = cond + (size_t)i * n;
        for (int j = 0; j < i; j++) c[j] = e[j] * inv;
        c[i] = 0.0f;
        for (int j = i + 1; j < n; j++) c[j] = e[j - 1] * inv;
        if (bm) bm[i] = beta * mean0;
    }
    return unconverged;
}

/* (c + c^T) into sym (N, N); returns its sum (float32 sums of rows, added in double). */
static double KFN(symmetric_sum)(const float *cond, int n, float *sym) {
    const int B = 32;                                         /* transpose in tiles */
    for (int i0 = 0; i0 < n; i0 += B)
        for (int j0 = 0; j0 < n; j0 += B)
            for (int i = i0; i < i0 + B && i < n; i++)
                for (int j = j0; j < j0 + B && j < n; j++)
                    sym[(size_t)i * n + j] = cond[(size_t)j * n + i];
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        float *s = sym + (size_t)i * n;
        const float *c = cond + (size_t)i * n;
        float row = 0.0f;
        #pragma omp simd reduction(+:row)
        for (int j = 0; j < n; j++) {
            s[j] = c[j] + s[j];
            row += s[j];
        }
        total += row;
    }
    return total;
}

#define KL_EPS 2.220446049250313e-16f                          /* double machine epsilon */

/* Joint probabilities of one set's conditionals: max((c + c^T) / sum, eps). */
static void KFN(joint_set)(const float *cond, int n, float *p) {
    double total = KFN(symmetric_sum)(cond, n, p);
    const float tot = (float)(total > 2.220446049250313e-16 ? total : 2.220446049250313e-16);
    #pragma omp simd
    for (size_t j = 0; j < (size_t)n * n; j++) {
        float q = p[j] / tot;
        p[j] = q > KL_EPS ? q : KL_EPS;
    }
}

/* KL(P || Q) = sum p log(p / q) over all entries (the diagonal adds eps log 1 = 0), with Q
 * the joint of cond, computed exactly as joint_set does: a child identical to the parent
 * gives exactly 0. sym: N * N floats of scratch. */
static double KFN(kl_set)(const float *cond, const float *p, int n, float *sym) {
    double total = KFN(symmetric_sum)(cond, n, sym);
    const float tot = (float)(total > 2.220446049250313e-16 ? total : 2.220446049250313e-16);
    double kl = 0.0;
    for (int i = 0; i < n; i++) {
        const float *pr = p + (size_t)i * n;
        const float *sr = sym + (size_t)i * n;
        float row = 0.0f;
        #pragma omp simd reduction(+:row)
        for (int j = 0; j < n; j++) {
            float q = sr[j] / tot;
            q = q > KL_EPS ? q : KL_EPS;
            row += pr[j] * KFN(log_pos)(pr[j] / q);
        }
        kl += row;
    }
    return kl;
}

/* Sets [m0, m1) of `gram` (M, N, N): conditionals into cond (M, N, N), beta * mean distance
 * into bm (M, N) if not NULL; guess (M, N) or NULL. */
static int KFN(conditionals)(const float *gram, int n, const double *guess, double target, double tol,
                             int max_iter, float *cond, double *bm, int64_t m0, int64_t m1, float *work) {
    int bad = 0;
    const size_t nn = (size_t)n * n;
    for (int64_t m = m0; m < m1; m++)
        bad += KFN(calibrate_set)(gram + m * nn, n, guess ? guess + m * n : NULL, target, tol, max_iter,
                                  cond + m * nn, bm ? bm + m * n : NULL, work);
    return bad;
}

/* Elementwise, for the tests: the two approximations above against the C library's. */
static void KFN(exp_log)(const float *x, float *ex, float *lg, int64_t n) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        ex[i] = KFN(exp_neg)(-v < -80.0f ? -80.0f : -v);
        lg[i] = KFN(log_pos)(v);
    }
}

/* Sets [m0, m1) given as activations (see gram_set: address, ld, trans, width per set)
 * against parent joints p (Q, N, N): Gram, conditionals and KL per set without leaving
 * the cache. work: 3 N + 3 N * N + max width * (np + 1) + 16 floats. */
static int KFN(similarity_acts)(const int64_t *addr, const int64_t *ld, const int32_t *trans,
                                const int32_t *width, int n, const float *p, const double *guess,
                                const int64_t *parent, double target, double tol, int max_iter,
                                double *kl, int64_t m0, int64_t m1, float *work) {
    int bad = 0;
    const size_t nn = (size_t)n * n;
    float *cond = work + 3 * (size_t)n, *sym = cond + nn, *g = sym + nn, *pad = g + nn;
    for (int64_t m = m0; m < m1; m++) {
        const int64_t q = parent[m];
        KFN(gram_set)((const float *)(intptr_t)addr[m], ld[m], trans[m], width[m], n, g, pad);
        bad += KFN(calibrate_set)(g, n, guess ? guess + q * n : NULL, target, tol, max_iter, cond, NULL, work);
        kl[m] = KFN(kl_set)(cond, p + q * nn, n, sym);
    }
    return bad;
}

/* Gram matrices of sets [m0, m1) given as activations, into g (M, N, N). */
static void KFN(grams_acts)(const int64_t *addr, const int64_t *ld, const int32_t *trans, const int32_t *width,
                            int n, float *g, int64_t m0, int64_t m1, float *pad) {
    for (int64_t m = m0; m < m1; m++)
        KFN(gram_set)((const float *)(intptr_t)addr[m], ld[m], trans[m], width[m], n, g + m * (size_t)n * n, pad);
}
