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

/* log x for normal x > 0: x = 2^e m, m in [sqrt(1/2), sqrt(2)), f = m - 1, log m = f - f^2 / 2
 * + f^3 P(f) with the degree-8 minimax P of Cephes' logf (relative error near 1e-7), and
 * e ln2 added in two parts. No division, so it vectorises at full speed. log 1 = 0 exactly. */
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
    const float f = m - 1.0f, f2 = f * f, fe = (float)e;
    float p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    float y = f2 * f * p + fe * -2.12194440e-4f;       /* ln2 = 0.693359375 - 2.12194440e-4 */
    y = y - 0.5f * f2;
    return (f + y) + fe * 0.693359375f;
}

typedef float KFN(v8) __attribute__((vector_size(32)));
typedef int32_t KFN(v8i) __attribute__((vector_size(32)));

/* e^x on 8 lanes, x in [-80, 0] (callers clamp): x = n ln2 + r, |r| <= ln2 / 2, e^r by its
 * Taylor series to r^7 (truncation below 1e-8 relative), 2^n put in the exponent. */
static inline KFN(v8) KFN(exp_neg8)(KFN(v8) x) {
    KFN(v8) n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    KFN(v8) r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    KFN(v8) p = r * 1.9841269841e-4f + 1.3888888889e-3f;
    p = p * r + 8.3333333333e-3f;
    p = p * r + 4.1666666667e-2f;
    p = p * r + 1.6666666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    KFN(v8i) bits = (__builtin_convertvector(n, KFN(v8i)) + 127) << 23;
    return p * (KFN(v8))bits;
}

typedef float KFN(v4) __attribute__((vector_size(16)));

/* The lanes' sum: halves added as vectors, then pairs. */
static inline float KFN(hsum8)(KFN(v8) v) {
    KFN(v4) lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (const char *)&v + sizeof lo, sizeof hi);
    lo += hi;
    return (lo[0] + lo[2]) + (lo[1] + lo[3]);
}

/* Gram matrix of one set of n points with w features, read in place: point j, feature f
 * at a[j * ld + f] (points are rows, trans = 0) or a[f * ld + j] (points are columns,
 * trans = 1). The set is first copied into pad as (w, np) with np = n rounded up to 16
 * and zeros beyond n; then 6 x 16 blocks of G = pad^T pad on and above the diagonal
 * blocks, 12 vector accumulators each (6 x 8 in a last panel of at most 8 columns: for
 * n = 100 that panel holds 4 of 16); the rest of G is mirrored. pad: GRAM_PAD(n, w) floats.
 * Each entry is a plain sum over f in order of a product, whatever the blocking.
 * centred != NULL: every feature is first centred over the n points (its mean summed in double,
 * subtracted in float: linear CKA's centred Gram), and *centred = n * sum of the squared means. */
static void KFN(gram_set)(const float *a, int64_t ld, int trans, int w, int n, float *g, float *pad,
                          double *centred) {
    const int np = (n + 15) & ~15;
    if (trans) {
        for (int f = 0; f < w; f++) memcpy(pad + (size_t)f * np, a + (size_t)f * ld, sizeof(float) * (size_t)n);
    } else {                                                       /* transpose: read rows, write columns */
        for (int j = 0; j < n; j++) {
            const float *src = a + (size_t)j * ld;
            for (int f = 0; f < w; f++) pad[(size_t)f * np + j] = src[f];
        }
    }
    if (centred) {
        double energy = 0.0;
        for (int f = 0; f < w; f++) {
            float *row = pad + (size_t)f * np;
            double sum = 0.0;
            for (int j = 0; j < n; j++) sum += row[j];
            const float mean = (float)(sum / n);
            for (int j = 0; j < n; j++) row[j] -= mean;
            energy += (double)mean * mean;
        }
        *centred = energy * n;
    }
    for (int f = 0; f < w; f++)
        for (int j = n; j < np; j++) pad[(size_t)f * np + j] = 0.0f;
    for (int j = 0; j < 16; j++) pad[(size_t)w * np + j] = 0.0f;   /* rows i0 + r past np read here */
#ifdef GRAM_WIDE_TILES
    if (!GRAM_WIDE_TILES(pad, np, w, n, g))                        /* else 16-float vectors, same sums */
#endif
    for (int i0 = 0; i0 < n; i0 += 6) {
        for (int j0 = (i0 / 16) * 16; j0 < n; j0 += 16) {
            const int m = n - j0 < 16 ? n - j0 : 16;
            if (m <= 8) {                                          /* last panel, at most 8 columns: */
                KFN(v8) acc[6];                                    /* 6 x 8 blocks, half the products */
                for (int r = 0; r < 6; r++) acc[r] = (KFN(v8)){0.0f};
                for (int f = 0; f < w; f++) {
                    const float *row = pad + (size_t)f * np;
                    KFN(v8) b0;
                    memcpy(&b0, row + j0, sizeof b0);
                    for (int r = 0; r < 6; r++) acc[r] += row[i0 + r] * b0;
                }
                for (int r = 0; r < 6 && i0 + r < n; r++)
                    for (int j = 0; j < m; j++) g[(size_t)(i0 + r) * n + j0 + j] = acc[r][j];
                continue;
            }
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

/* The perplexity search of one row: its state between evaluations. */
typedef struct {
    double beta, lo, hi, z, mean0;
    int it, done;
} KFN(row_search);

/* Row i of a set: t_j = |x_j|^2 - 2 <x_i, x_j> (j != i), d_j = t_j - min t (the shift leaves the
 * conditional unchanged), padded with zeros to kp; the start beta: guess[i] / mean(d) when
 * that is finite and positive (guess: beta * mean distance of a similar point set), else the
 * second-order expansion. */
static void KFN(row_start)(const float *gram, const float *sq, int n, int i, int kp, const double *guess,
                           double target, float *d, KFN(row_search) *st) {
    const int k = n - 1;
    const float *g = gram + (size_t)i * n;
    float mn = INFINITY;
    #pragma omp simd reduction(min:mn)
    for (int j = 0; j < i; j++) {
        d[j] = sq[j] - 2.0f * g[j];
        mn = d[j] < mn ? d[j] : mn;
    }
    #pragma omp simd reduction(min:mn)
    for (int j = i + 1; j < n; j++) {
        d[j - 1] = sq[j] - 2.0f * g[j];
        mn = d[j - 1] < mn ? d[j - 1] : mn;
    }
    float s0 = 0.0f, s00 = 0.0f;
    #pragma omp simd reduction(+:s0, s00)
    for (int j = 0; j < k; j++) {
        float v = d[j] - mn;
        d[j] = v;
        s0 += v;
        s00 += v * v;
    }
    for (int j = k; j < kp; j++) d[j] = 0.0f;
    const double mean0 = (double)s0 / k;
    double beta = guess ? guess[i] / mean0 : NAN;
    if (!(isfinite(beta) && beta > 0.0)) {                   /* no usable guess: the expansion */
        double var0 = (double)s00 / k - mean0 * mean0;
        var0 = var0 > 0.0 ? var0 : 0.0;
        double gap = log((double)k) - target;
        gap = gap > 1e-3 ? gap : 1e-3;
        beta = sqrt(2.0 * gap / (var0 > 1e-30 ? var0 : 1e-30));
    }
    *st = (KFN(row_search)){.beta = beta, .lo = 0.0, .hi = INFINITY, .z = 1.0, .mean0 = mean0, .it = 0, .done = 0};
}

/* One evaluation at -nb = beta: e = exp(-beta d) (0 in the padding) and the sums Z, sum e d,
 * sum e d^2, sum e d^3. */
#define KFN_EVAL_LANE(D, E, NB, J, LAST, VZ, V1, V2, V3) do {                             \
        KFN(v8) dj_, x_;                                                                  \
        memcpy(&dj_, (D) + (J), sizeof dj_);                                              \
        x_ = (NB) * dj_;                                                                  \
        KFN(v8i) low_ = x_ < -80.0f;                  /* clamp: e^-80 is far below eps */ \
        x_ = (KFN(v8))((low_ & (KFN(v8i))((KFN(v8)){0.0f} - 80.0f)) | (~low_ & (KFN(v8i))x_)); \
        KFN(v8) v_ = KFN(exp_neg8)(x_);                                                   \
        if ((J) + 8 == kp) v_ = (KFN(v8))((KFN(v8i))v_ & (LAST));                         \
        memcpy((E) + (J), &v_, sizeof v_);                                                \
        KFN(v8) t_ = v_ * dj_;                                                            \
        VZ += v_;                                                                         \
        V1 += t_;                                                                         \
        t_ *= dj_;                                                                        \
        V2 += t_;                                                                         \
        V3 += t_ * dj_;                                                                   \
    } while (0)

static inline void KFN(eval_row)(const float *d, float *e, double beta, int kp, KFN(v8i) last, float sums[4]) {
    const float nb = (float)(-beta);
    KFN(v8) vz = {0.0f}, v1 = {0.0f}, v2 = {0.0f}, v3 = {0.0f};
    for (int j = 0; j < kp; j += 8) KFN_EVAL_LANE(d, e, nb, j, last, vz, v1, v2, v3);
    sums[0] = KFN(hsum8)(vz), sums[1] = KFN(hsum8)(v1), sums[2] = KFN(hsum8)(v2), sums[3] = KFN(hsum8)(v3);
}

/* Two rows' evaluations in one loop: the same arithmetic as eval_row on each, interleaved so
 * that one row's long exp and sum chains run while the other's wait (one row alone leaves the
 * core mostly waiting on latency). */
static inline void KFN(eval_rows2)(const float *da, float *ea, double beta_a, const float *db, float *eb,
                                   double beta_b, int kp, KFN(v8i) last, float sa[4], float sb[4]) {
    const float na = (float)(-beta_a), nb = (float)(-beta_b);
    KFN(v8) az = {0.0f}, a1 = {0.0f}, a2 = {0.0f}, a3 = {0.0f};
    KFN(v8) bz = {0.0f}, b1 = {0.0f}, b2 = {0.0f}, b3 = {0.0f};
    for (int j = 0; j < kp; j += 8) {
        KFN_EVAL_LANE(da, ea, na, j, last, az, a1, a2, a3);
        KFN_EVAL_LANE(db, eb, nb, j, last, bz, b1, b2, b3);
    }
    sa[0] = KFN(hsum8)(az), sa[1] = KFN(hsum8)(a1), sa[2] = KFN(hsum8)(a2), sa[3] = KFN(hsum8)(a3);
    sb[0] = KFN(hsum8)(bz), sb[1] = KFN(hsum8)(b1), sb[2] = KFN(hsum8)(b2), sb[3] = KFN(hsum8)(b3);
}

/* After an evaluation at st->beta with sums (Z, sum e d, sum e d^2, sum e d^3): converged
 * (|H - target| <= tol, or a flat row) or out of iterations -> 1, the exponentials of beta
 * stay; else the safeguarded Halley step of similarity.calibrate on beta -> 0. */
static inline int KFN(row_step)(KFN(row_search) *st, const float sums[4], double target, double tol,
                                int max_iter) {
    const double beta = st->beta, z = sums[0], iz = 1.0 / z;
    st->z = z;
    double m1 = sums[1] * iz, m2 = sums[2] * iz, m3 = sums[3] * iz;
    double var = m2 - m1 * m1;
    var = var > 0.0 ? var : 0.0;
    double diff = log(z) + beta * m1 - target;
    if (fabs(diff) <= tol || var * beta * beta <= 1e-12) { st->done = 1; return 1; }
    if (diff > 0) st->lo = beta; else st->hi = beta;                 /* H decreases in beta */
    double d1 = -beta * var;
    double d2 = -var + beta * (m3 - 3.0 * m1 * m2 + 2.0 * m1 * m1 * m1);
    double step = beta - 2.0 * diff * d1 / (2.0 * d1 * d1 - diff * d2);
    if (st->it == max_iter - 1) return 1;                            /* keep the exponentials of beta */
    st->it++;
    st->beta = (step > st->lo && step < st->hi) ? step : (isinf(st->hi) ? beta * 2.0 : (st->lo + st->hi) / 2.0);
    return 0;
}

static inline void KFN(row_finish)(const KFN(row_search) *st, const float *e, int n, int i, float *cond,
                                   double *bm) {
    const float inv = (float)(1.0 / st->z);
    float *c = cond + (size_t)i * n;
    for (int j = 0; j < i; j++) c[j] = e[j] * inv;
    c[i] = 0.0f;
    for (int j = i + 1; j < n; j++) c[j] = e[j - 1] * inv;
    if (bm) bm[i] = st->beta * st->mean0;
}

/* One point set: Gram -> conditionals with perplexity exp(target) per row (row_start, then
 * evaluations and row_step until done), two rows at a time. Writes cond and, if bm is not
 * NULL, beta * mean(d) per row. work: CAL_WORK_FLOATS(N) floats. Returns the number of rows
 * that hit max_iter unconverged. */
static int KFN(calibrate_set)(const float *gram, int n, const double *guess, double target, double tol,
                              int max_iter, float *cond, double *bm, float *work) {
    const int k = n - 1, kp = (k + 7) & ~7;                /* rows padded to whole vectors */
    float *da = work, *ea = da + kp, *db = ea + kp, *eb = db + kp, *sq = eb + kp;
    KFN(v8i) last = {0};                                   /* lanes of the last vector that hold entries */
    for (int l = 0; l < 8; l++) last[l] = kp - 8 + l < k ? -1 : 0;
    int unconverged = 0;
    for (int j = 0; j < n; j++) sq[j] = gram[(size_t)j * n + j];
    for (int i = 0; i < n; i += 2) {
        KFN(row_search) a, b;
        float sa[4], sb[4];
        int fa = 0, fb = i + 1 >= n;
        KFN(row_start)(gram, sq, n, i, kp, guess, target, da, &a);
        if (!fb) KFN(row_start)(gram, sq, n, i + 1, kp, guess, target, db, &b);
        while (!fa && !fb) {
            KFN(eval_rows2)(da, ea, a.beta, db, eb, b.beta, kp, last, sa, sb);
            fa = KFN(row_step)(&a, sa, target, tol, max_iter);
            fb = KFN(row_step)(&b, sb, target, tol, max_iter);
        }
        while (!fa) {
            KFN(eval_row)(da, ea, a.beta, kp, last, sa);
            fa = KFN(row_step)(&a, sa, target, tol, max_iter);
        }
        KFN(row_finish)(&a, ea, n, i, cond, bm);
        unconverged += !a.done;
        if (i + 1 < n) {
            while (!fb) {
                KFN(eval_row)(db, eb, b.beta, kp, last, sb);
                fb = KFN(row_step)(&b, sb, target, tol, max_iter);
            }
            KFN(row_finish)(&b, eb, n, i + 1, cond, bm);
            unconverged += !b.done;
        }
    }
    return unconverged;
}

/* The sum of the conditionals (float32 sums of rows, added in double); (c + c^T) sums to twice it. */
static double KFN(cond_total)(const float *cond, int n) {
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *c = cond + (size_t)i * n;
        float row = 0.0f;
        #pragma omp simd reduction(+:row)
        for (int j = 0; j < n; j++) row += c[j];
        total += row;
    }
    return total;
}

#define KL_EPS 2.220446049250313e-16f                          /* double machine epsilon */

/* 1 / max(2 total, eps), the scale of (c + c^T) in the joint (a product is cheaper than a
 * division per entry; joint_set and kl_set both use it, so they stay bit for bit alike). */
static inline float KFN(inverse_total)(const float *cond, int n) {
    const double total = 2.0 * KFN(cond_total)(cond, n);
    return (float)(1.0 / (total > 2.220446049250313e-16 ? total : 2.220446049250313e-16));
}

/* Joint probabilities of one set's conditionals: max((c + c^T) / sum, eps). */
static void KFN(joint_set)(const float *cond, int n, float *p) {
    const float itot = KFN(inverse_total)(cond, n);
    const int B = 32;                                         /* c^T in tiles */
    for (int i0 = 0; i0 < n; i0 += B)
        for (int j0 = 0; j0 < n; j0 += B)
            for (int i = i0; i < i0 + B && i < n; i++)
                for (int j = j0; j < j0 + B && j < n; j++)
                    p[(size_t)i * n + j] = cond[(size_t)j * n + i];
    #pragma omp simd
    for (size_t j = 0; j < (size_t)n * n; j++) {
        float q = (cond[j] + p[j]) * itot;
        p[j] = q > KL_EPS ? q : KL_EPS;
    }
}

/* KL(P || Q) = sum p log(p / q) over all entries, with Q the joint of cond, computed exactly as
 * joint_set does: a child identical to the parent gives exactly 0. P and Q are symmetric and
 * their diagonals are both eps (log 1 = 0), so this is twice the sum over j > i: half the
 * logs, and only the column below each row to gather. col: N floats of scratch. */
static double KFN(kl_set)(const float *cond, const float *p, int n, float *col) {
    const float itot = KFN(inverse_total)(cond, n);
    double kl = 0.0;
    for (int i = 0; i + 1 < n; i++) {
        const int m = n - 1 - i;                              /* j = i + 1 .. n - 1 */
        const float *cr = cond + (size_t)i * n + i + 1, *pr = p + (size_t)i * n + i + 1;
        for (int t = 0; t < m; t++) col[t] = cond[(size_t)(i + 1 + t) * n + i];   /* c[j][i] */
        float row = 0.0f;
        #pragma omp simd reduction(+:row)
        for (int t = 0; t < m; t++) {
            float q = (cr[t] + col[t]) * itot;
            q = q > KL_EPS ? q : KL_EPS;
            row += pr[t] * KFN(log_pos)(pr[t] / q);
        }
        kl += row;
    }
    return 2.0 * kl;
}

/* Elementwise, for the tests: the two approximations above against the C library's. */
static void KFN(exp_log)(const float *x, float *ex, float *lg, int64_t n) {
    for (int64_t i0 = 0; i0 < n; i0 += 8) {
        KFN(v8) v = {0.0f};
        const int m = n - i0 < 8 ? (int)(n - i0) : 8;
        for (int l = 0; l < m; l++) v[l] = -x[i0 + l] < -80.0f ? -80.0f : -x[i0 + l];
        v = KFN(exp_neg8)(v);
        for (int l = 0; l < m; l++) {
            ex[i0 + l] = v[l];
            lg[i0 + l] = KFN(log_pos)(x[i0 + l]);
        }
    }
}

/* Set m given as activations (see gram_set: address, ld, trans, width per set) against its
 * parent's joint p[parent[m]] (p: (Q, N, N)): Gram, conditionals and KL without leaving the
 * cache; returns the KL and adds the unconverged rows to *bad.
 * work: CAL_WORK_FLOATS(N) + 2 N * N + N + GRAM_PAD floats (see tsne.c). */
static double KFN(similarity_set)(const int64_t *addr, const int64_t *ld, const int32_t *trans,
                                  const int32_t *width, int n, const float *p, const double *guess,
                                  const int64_t *parent, double target, double tol, int max_iter, int64_t m,
                                  float *work, int *bad) {
    const size_t nn = (size_t)n * n;
    float *cond = work + CAL_WORK_FLOATS(n), *g = cond + nn, *col = g + nn, *pad = col + n;
    const int64_t q = parent[m];
    KFN(gram_set)((const float *)(intptr_t)addr[m], ld[m], trans[m], width[m], n, g, pad, NULL);
    *bad += KFN(calibrate_set)(g, n, guess ? guess + q * n : NULL, target, tol, max_iter, cond, NULL, work);
    return KFN(kl_set)(cond, p + q * nn, n, col);
}

/* The same from a Gram matrix g made elsewhere, against parent set q.
 * work: CAL_WORK_FLOATS(N) + N * N + N floats (see tsne.c). */
static double KFN(similarity_gram)(const float *g, int n, const float *p, const double *guess, int64_t q,
                                   double target, double tol, int max_iter, float *work, int *bad) {
    const size_t nn = (size_t)n * n;
    float *cond = work + CAL_WORK_FLOATS(n), *col = cond + nn;
    *bad += KFN(calibrate_set)(g, n, guess ? guess + q * n : NULL, target, tol, max_iter, cond, NULL, work);
    return KFN(kl_set)(cond, p + q * nn, n, col);
}
