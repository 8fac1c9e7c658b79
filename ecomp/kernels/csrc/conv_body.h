/* One copy of the fused convolution (included by conv.c once per vector width).
 *
 * Before inclusion: KFN(name) names this copy's functions; VEC is the vector type, VW its floats,
 * NC1 / NC2 how many cells a block of one / two vectors takes at a time (four accumulators per
 * cell and vector: 8 of AVX2's 16 registers; 8 or 16 of AVX-512's 32, where 12 for one vector
 * was slower), and VZERO, VSET1(x), VLOAD(p), VSTORE(p, v), VFMA(a, b, c) (a * b + c, rounded once),
 * VMAX, VADD its operations, VSTORE_N(dst, src, n) a copy of n <= VW floats by masked moves. */

/* NC cells at once for the channel block at `w` (NV vectors; the filters' rows fpad apart): for
 * each cell, the maximum over its window positions (four at a time, the last four repeating
 * their last position, which leaves the maximum as it is) of the positions' dot products, each
 * summed from k = 0 to K - 1 with one rounding per step, then the bias and the ReLU, stored
 * (nc_f channels, from channel blk0 * split + at0 of the blocks of `split` channels, split_ld
 * apart). Cells past the last repeat the last one. `xp` is the image (zero-padded where the
 * stage pads), `pos` the cells' window positions (npos per cell) as offsets into it, `koff`
 * each k's offset from a position. */
#define KFN_PASS(NC, NV)                                                                                       \
    static void KFN(pass_##NC##_##NV)(const float *xp, const int64_t *koff, int64_t K, const float *w,           \
                                      int64_t fpad, const float *b, const int64_t *pos, int64_t npos,           \
                                      int64_t cells, int64_t ld_y, int64_t ld_x, int64_t pw, int64_t nc_f,      \
                                      int64_t blk0, int64_t at0, int64_t split, int64_t split_ld, float *o) {   \
        for (int64_t cell = 0; cell < cells; cell += NC) {                                                     \
            int64_t cs[NC];                                                                                    \
            for (int c = 0; c < NC; c++) cs[c] = cell + c < cells ? cell + c : cells - 1;                      \
            VEC m[NC][NV];                                                                                     \
            for (int c = 0; c < NC; c++)                                                                       \
                for (int v = 0; v < NV; v++) m[c][v] = VZERO;                                                  \
            for (int64_t q = 0; q < npos; q += 4) {                                                            \
                const float *x[4 * NC];                                                                        \
                for (int c = 0; c < NC; c++)                                                                   \
                    for (int r = 0; r < 4; r++) x[4 * c + r] = xp + pos[cs[c] * npos + (q + r < npos ? q + r : npos - 1)]; \
                VEC a[4 * NC][NV];                                                                             \
                for (int p = 0; p < 4 * NC; p++)                                                               \
                    for (int v = 0; v < NV; v++) a[p][v] = VZERO;                                              \
                const float *wk = w;                                                                           \
                for (int64_t k = 0; k < K; k++, wk += fpad) {                                                  \
                    const int64_t d = koff[k];                                                                 \
                    VEC wv[NV];                                                                                \
                    for (int v = 0; v < NV; v++) wv[v] = VLOAD(wk + v * VW);                                   \
                    for (int p = 0; p < 4 * NC; p++) {                                                         \
                        const VEC xv = VSET1(x[p][d]);                                                         \
                        for (int v = 0; v < NV; v++) a[p][v] = VFMA(xv, wv[v], a[p][v]);                       \
                    }                                                                                          \
                }                                                                                              \
                for (int c = 0; c < NC; c++)                                                                   \
                    for (int v = 0; v < NV; v++) {                                                             \
                        const VEC g = VMAX(VMAX(a[4 * c][v], a[4 * c + 1][v]), VMAX(a[4 * c + 2][v], a[4 * c + 3][v])); \
                        m[c][v] = q == 0 ? g : VMAX(m[c][v], g);                                               \
                    }                                                                                          \
            }                                                                                                  \
            for (int c = 0; c < NC && (c == 0 || cs[c] != cs[c - 1]); c++) {                                  \
                float r[NV * VW];                                                                              \
                for (int v = 0; v < NV; v++) VSTORE(r + v * VW, VMAX(VADD(m[c][v], VLOAD(b + v * VW)), VZERO)); \
                float *oc = o + (cs[c] / pw) * ld_y + (cs[c] % pw) * ld_x;                                     \
                for (int64_t ch = 0, blk = blk0, at = at0; ch < nc_f;) {      /* runs of one block each */     \
                    const int64_t run = split - at < nc_f - ch ? split - at : nc_f - ch;                        \
                    float *dst = oc + blk * split_ld + at;                                                     \
                    for (int64_t s = 0; s < run; s += VW) VSTORE_N(dst + s, r + ch + s, run - s < VW ? run - s : VW); \
                    ch += run;                                                                                 \
                    at += run;                                                                                 \
                    if (at == split) at = 0, blk++;                                                            \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
    }
#define KFN_PASS_X(NC, NV) KFN_PASS(NC, NV)
KFN_PASS_X(NC1, 1)
KFN_PASS_X(NC2, 2)
#undef KFN_PASS_X
#undef KFN_PASS
#define KFN_CALL(NC, NV) KFN(pass_##NC##_##NV)
#define KFN_PASS_OF(NC, NV) KFN_CALL(NC, NV)

/* One image's (one group's) pooled maps, block of channels by block: two vectors at a time, the
 * last block of one vector. `wt` the filters (K rows of fpad channels), `b` the biases (fpad),
 * `o` the cells' outputs (f channels each; rows ld_y, cells ld_x apart; channel c at
 * (c / split) * split_ld + c % split). */
static void KFN(conv_pool_image)(const float *xp, const int64_t *koff, int64_t K, const float *wt, int64_t fpad,
                                 const float *b, int64_t f, const int64_t *pos, int64_t npos, int64_t cells,
                                 int64_t ld_y, int64_t ld_x, int64_t pw, int64_t split, int64_t split_ld, float *o) {
    for (int64_t c0 = 0; c0 < fpad;) {
        const int nv = fpad - c0 >= 2 * VW ? 2 : 1;
        const int64_t nc_f = f - c0 < nv * VW ? f - c0 : nv * VW;        /* channels of the block */
        const int64_t blk0 = c0 / split, at0 = c0 % split;               /* where its first one goes */
        if (nv == 2)
            KFN_PASS_OF(NC2, 2)(xp, koff, K, wt + c0, fpad, b + c0, pos, npos, cells, ld_y, ld_x, pw, nc_f, blk0, at0,
                                split, split_ld, o);
        else
            KFN_PASS_OF(NC1, 1)(xp, koff, K, wt + c0, fpad, b + c0, pos, npos, cells, ld_y, ld_x, pw, nc_f, blk0, at0,
                                split, split_ld, o);
        c0 += nv * VW;
    }
}
#undef KFN_PASS_OF
#undef KFN_CALL
