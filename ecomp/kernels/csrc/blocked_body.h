/* One copy of the blocked products (included by blocked.c once per vector width).
 *
 * Before inclusion: KFN(name) names this copy's functions; VEC is the vector type, VW its floats,
 * GR the rows a tile takes at a time and NVMAX the most vectors of columns (GR x NVMAX accumulators
 * and NVMAX + 1 operands fit the registers; AVX-512's 6 x 4 ran the linear stages 1.1x faster than 8 x 2),
 * VZERO, VSET1(x), VLOAD(p), VFMA(a, b, c) (a * b + c, rounded once), VADD, VMAX, VLOAD_N(src, n)
 * and VSTORE_N(dst, v, n) the first n <= VW lanes (the others zero) loaded or stored. */

/* Rows i0 .. i0 + GR - 1 of `a` (na rows, ld apart; rows past the last repeat it, only rows < na
 * are stored) against columns j0 .. j0 + NV * VW - 1 of the packed block `bt` (kb rows of npad
 * columns), summed from the block's first term to its last with one rounding per step, then
 * stored into row i, column j of `g` (ldg apart; columns < nc) or, where `first` is 0, added to
 * what is there (one rounding); `relu`: the stored values' maximum with 0. Term k of a row is
 * its float k, or with `perm` its float perm[k]. */
#define KFN_TILE(NV)                                                                                          \
    static void KFN(tile_##NV)(const float *a, const int32_t *perm, int64_t ld, int64_t na, const float *bt,  \
                               int64_t npad, int64_t kb, int64_t i0, int64_t j0, int64_t nc, float *g,        \
                               int64_t ldg, int first, int relu) {                                            \
        const float *r[GR];                                                                                   \
        for (int q = 0; q < GR; q++) r[q] = a + (i0 + q < na ? i0 + q : na - 1) * ld;                         \
        VEC acc[GR][NV];                                                                                      \
        for (int q = 0; q < GR; q++)                                                                          \
            for (int v = 0; v < NV; v++) acc[q][v] = VZERO;                                                   \
        const float *b = bt + j0;                                                                             \
        for (int64_t k = 0; k < kb; k++, b += npad) {                                                         \
            VEC bv[NV];                                                                                       \
            for (int v = 0; v < NV; v++) bv[v] = VLOAD(b + v * VW);                                           \
            const int64_t kk = perm ? perm[k] : k;                                                            \
            for (int q = 0; q < GR; q++) {                                                                    \
                const VEC av = VSET1(r[q][kk]);                                                               \
                for (int v = 0; v < NV; v++) acc[q][v] = VFMA(av, bv[v], acc[q][v]);                          \
            }                                                                                                 \
        }                                                                                                     \
        for (int q = 0; q < GR && i0 + q < na; q++)                                                           \
            for (int v = 0; v < NV; v++) {                                                                    \
                const int64_t j = j0 + v * VW;                                                                \
                if (j >= nc) break;                                                                           \
                float *dst = g + (i0 + q) * ldg + j;                                                          \
                const int cnt = nc - j < VW ? (int)(nc - j) : VW;                                             \
                VEC s = acc[q][v];                                                                            \
                if (!first) s = VADD(VLOAD_N(dst, cnt), s);                                                   \
                if (relu) s = VMAX(s, VZERO);                                                                 \
                VSTORE_N(dst, s, cnt);                                                                        \
            }                                                                                                 \
    }
KFN_TILE(1)
KFN_TILE(2)
#if NVMAX > 2
KFN_TILE(3)
KFN_TILE(4)
#endif
#undef KFN_TILE

/* Terms k0 .. k0 + kn - 1 of `count` rows of `src` (ld apart) transposed into bt (kn rows of
 * npad: bt[k][j] = src[j][k0 + k], zero from column count on). With TRANSPOSE16 (a 16 x 16
 * transpose in registers, AVX-512), whole 16 x 16 squares move that way, the rest one by one. */
static void KFN(pack)(const float *src, int64_t ld, int64_t count, int64_t k0, int64_t kn, int64_t npad, float *bt) {
    int64_t j0 = 0;
#ifdef TRANSPOSE16
    for (; j0 + 16 <= count; j0 += 16) {
        int64_t k = 0;
        for (; k + 16 <= kn; k += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (j0 + i) * ld + k0 + k);
            TRANSPOSE16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(bt + (k + i) * npad + j0, r[i]);
        }
        for (; k < kn; k++)
            for (int i = 0; i < 16; i++) bt[k * npad + j0 + i] = src[(j0 + i) * ld + k0 + k];
    }
#endif
    for (int64_t j = j0; j < npad; j++) {
        const float *s = src + j * ld + k0;
        for (int64_t k = 0; k < kn; k++) bt[k * npad + j] = j < count ? s[k] : 0.0f;
    }
}

/* Rows of `a` (na rows, ld apart; `perm` as for a tile) times the packed block bt into g (ldg apart,
 * nc columns), tile by tile; `upper`: a Gram's upper triangle, each group of rows from its own
 * first row's column on (so its vectors start off the VW grid, and the last may read up to VW
 * floats past bt's last row: room the caller leaves). A tile's column only sets which lane an
 * entry's sum runs in, not its order, so the bits do not depend on where tiles start. */
static void KFN(tiles)(const float *a, const int32_t *perm, int64_t ld, int64_t na, const float *bt, int64_t npad,
                       int64_t kn, int64_t nc, float *g, int64_t ldg, int first, int relu, int upper) {
    for (int64_t i0 = 0; i0 < na; i0 += GR)
        for (int64_t j0 = upper ? i0 : 0; j0 < (upper ? nc : npad);) {
            const int64_t left = upper ? (nc - j0 + VW - 1) / VW : (npad - j0) / VW;   /* vectors to go */
            const int nv = left >= NVMAX ? NVMAX : (int)left;
            switch (nv) {
            case 1: KFN(tile_1)(a, perm, ld, na, bt, npad, kn, i0, j0, nc, g, ldg, first, relu); break;
#if NVMAX > 2
            case 3: KFN(tile_3)(a, perm, ld, na, bt, npad, kn, i0, j0, nc, g, ldg, first, relu); break;
            case 4: KFN(tile_4)(a, perm, ld, na, bt, npad, kn, i0, j0, nc, g, ldg, first, relu); break;
#endif
            default: KFN(tile_2)(a, perm, ld, na, bt, npad, kn, i0, j0, nc, g, ldg, first, relu); break;
            }
            j0 += nv * VW;
        }
}

/* One set's Gram (n points of width w, point i's features at a + i * ld, unit stride) into g:
 * the upper triangle, block of kb terms by block, then mirrored. `bt` holds kb x npad floats
 * (npad = n rounded up to VW) and VW more: a tile starting off the VW grid reads up to VW floats
 * past the block's last row, into lanes whose sums are not stored. */
static void KFN(gram_blocked)(const float *a, int64_t ld, int64_t w, int64_t n, int64_t kb, float *bt, float *g) {
    const int64_t npad = (n + VW - 1) / VW * VW;
    for (int64_t k0 = 0; k0 < w; k0 += kb) {
        const int64_t kn = w - k0 < kb ? w - k0 : kb;
        KFN(pack)(a, ld, n, k0, kn, npad, bt);
        KFN(tiles)(a + k0, NULL, ld, n, bt, npad, kn, n, g, n, k0 == 0, 0, 1);
    }
    for (int64_t i = 1; i < n; i++)
        for (int64_t j = 0; j < i; j++) g[i * n + j] = g[j * n + i];
}

/* One individual's linear stage: out (n x f) = b + h (n x K, rows ld apart) w, where wt (K x fpad) is
 * its weights transposed (row k: each output's k-th weight, zero from f on): the bias first,
 * then each block of kb terms' sums added in order (one rounding each); `relu`: the maximum with
 * 0 at the last store. `perm` (or NULL): term k of a row of h is its float perm[k]. */
static void KFN(linear_blocked)(const float *h, const int32_t *perm, int64_t ld, int64_t n, int64_t K, const float *wt,
                                int64_t fpad, const float *b, int64_t f, int64_t kb, int relu, float *out) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < f; j++) out[i * f + j] = b[j];
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
        const int64_t kn = K - k0 < kb ? K - k0 : kb;
        KFN(tiles)(perm ? h : h + k0, perm ? perm + k0 : NULL, ld, n, wt + k0 * fpad, fpad, kn, f, out, f, 0,
                   relu && k0 + kn >= K, 0);
    }
}
