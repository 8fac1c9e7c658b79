/* One copy of the fused convolution (included by conv.c once per vector width).
 *
 * Before inclusion: vec_ops.h's vector operations; KFN(name) names this copy's functions, NC1 /
 * NC2 how many cells a block of one / two vectors takes at a time (four accumulators per cell and
 * vector: 8 of AVX2's 16 registers; 8 or 16 of AVX-512's 32, where 12 for one vector was
 * slower), VSTORE_N(dst, src, n) a copy of n <= VW floats by masked moves, NFMAX the most filters
 * the images-in-lanes pass broadcasts at a time (NFMAX x 4 accumulators and four inputs fit the
 * registers). */

/* NC cells at once for the channel block at `w` (NV vectors; the filters' rows fpad apart): for
 * each cell, the maximum over its window positions (four at a time, the last four repeating
 * their last position, which leaves the maximum as it is) of the positions' dot products, each
 * summed from k = 0 to K - 1 with one rounding per step, then the bias and the ReLU, stored as
 * the cell's channels c0 .. c0 + nc_f - 1. Cells past the last repeat the last one. `xp` is the
 * image (zero-padded where the stage pads), `pos` the cells' window positions (npos per cell) as
 * offsets into it, `koff` each k's offset from a position. */
#define KFN_PASS(NC, NV)                                                                                       \
    static void KFN(pass_##NC##_##NV)(const float *xp, const int64_t *koff, int64_t K, const float *w,           \
                                      int64_t fpad, const float *b, const int64_t *pos, int64_t npos,           \
                                      int64_t cells, int64_t ld_y, int64_t ld_x, int64_t pw, int64_t nc_f,      \
                                      int64_t c0, float *o) {                                                   \
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
                float *dst = o + (cs[c] / pw) * ld_y + (cs[c] % pw) * ld_x + c0;                               \
                for (int64_t s = 0; s < nc_f; s += VW) VSTORE_N(dst + s, r + s, nc_f - s < VW ? nc_f - s : VW);  \
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
 * `o` the cells' outputs (f channels each; rows ld_y, cells ld_x apart). */
static void KFN(conv_pool_image)(const float *xp, const int64_t *koff, int64_t K, const float *wt, int64_t fpad,
                                 const float *b, int64_t f, const int64_t *pos, int64_t npos, int64_t cells,
                                 int64_t ld_y, int64_t ld_x, int64_t pw, float *o) {
    for (int64_t c0 = 0; c0 < fpad;) {
        const int nv = fpad - c0 >= 2 * VW ? 2 : 1;
        const int64_t nc_f = f - c0 < nv * VW ? f - c0 : nv * VW;        /* channels of the block */
        if (nv == 2)
            KFN_PASS_OF(NC2, 2)(xp, koff, K, wt + c0, fpad, b + c0, pos, npos, cells, ld_y, ld_x, pw, nc_f, c0, o);
        else
            KFN_PASS_OF(NC1, 1)(xp, koff, K, wt + c0, fpad, b + c0, pos, npos, cells, ld_y, ld_x, pw, nc_f, c0, o);
        c0 += nv * VW;
    }
}
#undef KFN_PASS_OF
#undef KFN_CALL

#include "lanes_body.h"

/* Group j's pass on images i0 .. i0 + ni - 1 (ni <= VW): their maps (x, strides xs as
 * ecomp_conv_pool's) copied into `t` images innermost, every filter run NFMAX at a time (the
 * registers: NF x 4 accumulators and four inputs), the results `r` copied out image by image
 * (out, os as ecomp_conv_pool's). The copies are VTILE's tile transposes where
 * a map's row and an image's pooled maps are contiguous, element by element elsewhere. */
static void KFN(lanes_task)(const float *x, const int64_t *xs, int64_t j, int64_t i0, int64_t ni, int64_t cin,
                            int64_t H, int64_t W, int64_t pad, float *t, const int64_t *koff, int64_t K,
                            const float *w, int64_t fpad, const float *b, int64_t f, const int64_t *pos, int64_t npos,
                            int64_t cells, int64_t pw, float *r, float *out, const int64_t *os) {
    const int64_t Wp = W + 2 * pad, row = W * cin;
    const float *x0 = x + i0 * xs[0] + j * xs[1];
    for (int64_t y = 0; y < H; y++) {
        float *d = t + ((y + pad) * Wp + pad) * cin * VW;
        if ((cin == 1 || xs[2] == 1) && xs[4] == cin)     /* a row of the map is W * cin floats in a row */
            for (int64_t e = 0; e < row; e += VW) {
                const int nc = row - e < VW ? (int)(row - e) : VW;
                VTILE(x0 + y * xs[3] + e, xs[0], (int)ni, nc, d + e * VW, VW, nc, VW);
            }
        else
            for (int64_t l = 0; l < ni; l++)
                for (int64_t xx = 0; xx < W; xx++)
                    for (int64_t c = 0; c < cin; c++) d[(xx * cin + c) * VW + l] = x0[l * xs[0] + y * xs[3] + xx * xs[4] + c * xs[2]];
    }
    /* a few cells at a time (about 128 outputs per image), each chunk's results stored while the
     * next one is computed: stored all at once, the lines of a large output wait for memory one
     * after the other and the FMAs wait for them */
    float *o = out + j * os[0] + i0 * os[1];
    const int tiled = os[3] == f && os[2] == pw * f;
    const int64_t chunk = f >= 128 ? 1 : 128 / f;
    for (int64_t c0 = 0; c0 < cells; c0 += chunk) {
        const int64_t nc = cells - c0 < chunk ? cells - c0 : chunk;
        float *rc = r + c0 * f * VW;
        for (int64_t f0 = 0, left = (f + NFMAX - 1) / NFMAX; f0 < f; left--) {    /* blocks of even sizes */
            const int64_t nf = (f - f0 + left - 1) / left;
            const float *wf = w + f0, *bf = b + f0;
            const int64_t *pc = pos + c0 * npos;
            float *rf = rc + f0 * VW;
            switch (nf) {
            case 1: KFN(lanes_1)(t, koff, K, wf, fpad, bf, pc, npos, nc, f, rf); break;
            case 2: KFN(lanes_2)(t, koff, K, wf, fpad, bf, pc, npos, nc, f, rf); break;
            case 3: KFN(lanes_3)(t, koff, K, wf, fpad, bf, pc, npos, nc, f, rf); break;
            case 4: KFN(lanes_4)(t, koff, K, wf, fpad, bf, pc, npos, nc, f, rf); break;
            case 5: KFN(lanes_5)(t, koff, K, wf, fpad, bf, pc, npos, nc, f, rf); break;
            default: KFN(lanes_6)(t, koff, K, wf, fpad, bf, pc, npos, nc, f, rf); break;
            }
            f0 += nf;
        }
        if (tiled)
            for (int64_t e = c0 * f; e < (c0 + nc) * f; e += VW) {
                const int nr = (c0 + nc) * f - e < VW ? (int)((c0 + nc) * f - e) : VW;
                VTILE(r + e * VW, VW, nr, VW, o + e, os[1], (int)ni, nr);
            }
        else
            for (int64_t l = 0; l < ni; l++)
                for (int64_t cell = c0; cell < c0 + nc; cell++) {
                    float *oc = o + l * os[1] + (cell / pw) * os[2] + (cell % pw) * os[3];
                    for (int64_t c = 0; c < f; c++) oc[c] = r[(cell * f + c) * VW + l];
                }
    }
}
