/* One copy of the fused convolution (included by conv.c once per vector width).
 *
 * Before inclusion: KFN(name) names this copy's functions; VEC is the vector type, VW its floats,
 * and VZERO, VSET1(x), VLOAD(p), VSTORE(p, v), VFMA(a, b, c) (a * b + c, rounded once), VMAX,
 * VADD its operations, VSTORE_N(dst, src, n) a copy of n <= VW floats by masked moves. */

/* Eight accumulators, enough to keep both FMA units busy through their latency: four window
 * positions of each of NC cells (1 or 2) for NV = 2 / NC vectors of channels. Each dot product
 * is summed from k = 0 to K - 1 with one rounding per step; m[c][v] gets the maximum over cell
 * c's four positions. `x[4 * c + q]` points at cell c's q-th position in the padded image,
 * `koff` holds each k's offset from it, `w` the filters from the block's first channel (rows
 * fpad apart). */
#define KFN_WINDOWS(NC, NV)                                                                        \
    static inline void KFN(windows_##NC)(const float *const *x, const int64_t *koff, int64_t K,     \
                                         const float *w, int64_t fpad, VEC m[NC][NV]) {             \
        VEC a[4 * NC][NV];                                                                         \
        for (int p = 0; p < 4 * NC; p++)                                                           \
            for (int v = 0; v < NV; v++) a[p][v] = VZERO;                                          \
        for (int64_t k = 0; k < K; k++, w += fpad) {                                               \
            const int64_t d = koff[k];                                                             \
            VEC wv[NV];                                                                            \
            for (int v = 0; v < NV; v++) wv[v] = VLOAD(w + v * VW);                                \
            for (int p = 0; p < 4 * NC; p++) {                                                     \
                const VEC xv = VSET1(x[p][d]);                                                     \
                for (int v = 0; v < NV; v++) a[p][v] = VFMA(xv, wv[v], a[p][v]);                   \
            }                                                                                      \
        }                                                                                          \
        for (int c = 0; c < NC; c++)                                                               \
            for (int v = 0; v < NV; v++)                                                           \
                m[c][v] = VMAX(VMAX(a[4 * c][v], a[4 * c + 1][v]), VMAX(a[4 * c + 2][v], a[4 * c + 3][v])); \
    }
KFN_WINDOWS(1, 2)
KFN_WINDOWS(2, 1)
#undef KFN_WINDOWS

/* One image's (one group's) pooled maps: for every pooled cell and block of channels, the
 * maximum over the cell's window positions (four at a time; the last four repeat their last
 * position, which leaves the maximum as it is), then the bias, then the ReLU. Blocks of two
 * vectors take one cell at a time, a last block of one vector two cells (the last cell of an
 * odd count with itself). `xp` is the image (zero-padded where the stage pads), `pos` the cells' window positions
 * (npos per cell) as offsets into it, `wt` the filters (K rows of fpad channels), `b` the
 * biases (fpad), `o` the cells' outputs (f channels each; rows ld_y, cells ld_x apart; channel c
 * at (c / split) * split_ld + c % split). */
static void KFN(conv_pool_image)(const float *xp, const int64_t *koff, int64_t K, const float *wt, int64_t fpad,
                                 const float *b, int64_t f, const int64_t *pos, int64_t npos, int64_t cells,
                                 int64_t ld_y, int64_t ld_x, int64_t pw, int64_t split, int64_t split_ld, float *o) {
    for (int64_t c0 = 0; c0 < fpad;) {
        const int nv = fpad - c0 >= 2 * VW ? 2 : 1, nc = 2 / nv;
        const int64_t nc_f = f - c0 < nv * VW ? f - c0 : nv * VW;        /* channels of the block */
        const int64_t blk0 = c0 / split, at0 = c0 % split;               /* where its first one goes */
        for (int64_t cell = 0; cell < cells; cell += nc) {
            int64_t cs[2] = {cell, cell + 1 < cells ? cell + 1 : cell};
            VEC m[2][2] = {{VZERO, VZERO}, {VZERO, VZERO}};
            for (int64_t q = 0; q < npos; q += 4) {
                const float *x[8];
                for (int c = 0; c < nc; c++)
                    for (int r = 0; r < 4; r++) x[4 * c + r] = xp + pos[cs[c] * npos + (q + r < npos ? q + r : npos - 1)];
                VEC g[2][2] = {{VZERO, VZERO}, {VZERO, VZERO}};
                if (nv == 2) KFN(windows_1)(x, koff, K, wt + c0, fpad, (VEC(*)[2])g);
                else {
                    VEC g1[2][1];
                    KFN(windows_2)(x, koff, K, wt + c0, fpad, g1);
                    g[0][0] = g1[0][0];
                    g[1][0] = g1[1][0];
                }
                for (int c = 0; c < nc; c++)
                    for (int v = 0; v < nv; v++) m[c][v] = q == 0 ? g[c][v] : VMAX(m[c][v], g[c][v]);
            }
            for (int c = 0; c < nc; c++) {
                float r[2 * VW];
                for (int v = 0; v < nv; v++) VSTORE(r + v * VW, VMAX(VADD(m[c][v], VLOAD(b + c0 + v * VW)), VZERO));
                float *oc = o + (cs[c] / pw) * ld_y + (cs[c] % pw) * ld_x;
                for (int64_t ch = 0, blk = blk0, at = at0; ch < nc_f;) {      /* runs of one block each */
                    const int64_t run = split - at < nc_f - ch ? split - at : nc_f - ch;
                    float *dst = oc + blk * split_ld + at;
                    for (int64_t q = 0; q < run; q += VW) VSTORE_N(dst + q, r + ch + q, run - q < VW ? run - q : VW);
                    ch += run;
                    at += run;
                    if (at == split) at = 0, blk++;
                }
            }
        }
        c0 += nv * VW;
    }
}
