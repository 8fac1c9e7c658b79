/* One copy of the blocked Gram kernel (included by gram.c once per vector width).
 *
 * Before inclusion: KFN(name) names this copy's functions; VEC is the vector type, VW its floats,
 * GR the rows a tile takes at a time (GR x 2 accumulators and 2 + 1 operands fit the registers),
 * VZERO, VSET1(x), VLOAD(p), VFMA(a, b, c) (a * b + c, rounded once), VADD, VLOAD_N(src, n) and
 * VSTORE_N(dst, v, n) the first n <= VW lanes (the others zero) loaded or stored. */

/* Rows i0 .. i0 + GR - 1 (rows past the last repeat it; only rows < n are stored) against
 * columns j0 .. j0 + NV * VW - 1 of the packed block `bt` (kb rows of npad points), summed from
 * the block's first term to its last with one rounding per step, then stored into `g` (n x n) or,
 * where `first` is 0, added to what is there (one rounding). */
#define KFN_TILE(NV)                                                                                          \
    static void KFN(tile_##NV)(const float *a, int64_t ld, int64_t n, const float *bt, int64_t npad,          \
                               int64_t kb, int64_t i0, int64_t j0, int first, float *g) {                     \
        const float *r[GR];                                                                                   \
        for (int q = 0; q < GR; q++) r[q] = a + (i0 + q < n ? i0 + q : n - 1) * ld;                           \
        VEC acc[GR][NV];                                                                                      \
        for (int q = 0; q < GR; q++)                                                                          \
            for (int v = 0; v < NV; v++) acc[q][v] = VZERO;                                                   \
        const float *b = bt + j0;                                                                             \
        for (int64_t k = 0; k < kb; k++, b += npad) {                                                         \
            VEC bv[NV];                                                                                       \
            for (int v = 0; v < NV; v++) bv[v] = VLOAD(b + v * VW);                                           \
            for (int q = 0; q < GR; q++) {                                                                    \
                const VEC av = VSET1(r[q][k]);                                                                \
                for (int v = 0; v < NV; v++) acc[q][v] = VFMA(av, bv[v], acc[q][v]);                          \
            }                                                                                                 \
        }                                                                                                     \
        for (int q = 0; q < GR && i0 + q < n; q++)                                                            \
            for (int v = 0; v < NV; v++) {                                                                    \
                const int64_t j = j0 + v * VW;                                                                \
                if (j >= n) break;                                                                            \
                float *dst = g + (i0 + q) * n + j;                                                            \
                const int cnt = n - j < VW ? (int)(n - j) : VW;                                               \
                VEC s = acc[q][v];                                                                            \
                if (!first) s = VADD(VLOAD_N(dst, cnt), s);                                                   \
                VSTORE_N(dst, s, cnt);                                                                        \
            }                                                                                                 \
    }
KFN_TILE(1)
KFN_TILE(2)
#undef KFN_TILE

/* One set's Gram (n points of width w, point i's features at a + i * ld, unit stride) into g:
 * the upper triangle by tiles, block of kb terms by block, then mirrored. `bt` holds kb x npad
 * floats (npad = n rounded up to VW). */
static void KFN(gram_blocked)(const float *a, int64_t ld, int64_t w, int64_t n, int64_t kb, float *bt, float *g) {
    const int64_t npad = (n + VW - 1) / VW * VW;
    for (int64_t k0 = 0; k0 < w; k0 += kb) {
        const int64_t kn = w - k0 < kb ? w - k0 : kb;
        for (int64_t j = 0; j < npad; j++) {                 /* the block transposed: bt[k][j] = a[j][k0 + k] */
            const float *src = a + j * ld + k0;
            for (int64_t k = 0; k < kn; k++) bt[k * npad + j] = j < n ? src[k] : 0.0f;
        }
        for (int64_t i0 = 0; i0 < n; i0 += GR)
            for (int64_t j0 = i0 / VW * VW; j0 < npad;) {
                const int nv = npad - j0 >= 2 * VW ? 2 : 1;
                if (nv == 2) KFN(tile_2)(a + k0, ld, n, bt, npad, kn, i0, j0, k0 == 0, g);
                else KFN(tile_1)(a + k0, ld, n, bt, npad, kn, i0, j0, k0 == 0, g);
                j0 += nv * VW;
            }
    }
    for (int64_t i = 1; i < n; i++)
        for (int64_t j = 0; j < i; j++) g[i * n + j] = g[j * n + i];
}
