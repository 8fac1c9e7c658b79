/* The images-in-lanes loop of the fused convolution and the tile copies in and out of that layout
 * (included by conv_body.h, for conv.c's conv_pool_lanes, and by resnet.c before res_body.h,
 * once per vector width, after vec_ops.h and with KFN defined).
 *
 * Images in lanes (each group has a few filters, fewer than a vector or two, as an individual of a
 * population's run has: conv_body.h's filters-in-lanes pass would leave lanes empty and wait on its
 * broadcasts). `t` holds
 * VW images' padded maps with the images innermost: (y, x, c, lane) at ((y * Wp + x) * cin + c) * VW;
 * `koff` and `pos` are offsets into it. For each cell and each of NF filters (`w` their column
 * in rows of fpad, `b` their biases): the maximum over the window positions (four at a time, as
 * conv_body.h's) of each lane's dot product, summed k = 0 .. K - 1 with one rounding per step, then the
 * bias and the ReLU; stored as r[(cell * f + filter) * VW + lane]. Per lane, the very operations
 * of conv_body.h's filters-in-lanes pass. */
#define KFN_LANES(NF)                                                                                          \
    static void KFN(lanes_##NF)(const float *t, const int64_t *koff, int64_t K, const float *w, int64_t fpad,    \
                                const float *b, const int64_t *pos, int64_t npos, int64_t cells, int64_t f,     \
                                float *r) {                                                                    \
        for (int64_t cell = 0; cell < cells; cell++) {                                                         \
            float *rc = r + cell * f * VW;                                                                     \
            for (int64_t q = 0; q < npos; q += 4) {                                                            \
                const float *x[4];                                                                             \
                for (int p = 0; p < 4; p++) x[p] = t + pos[cell * npos + (q + p < npos ? q + p : npos - 1)];    \
                VEC a[NF][4];                                                                                  \
                for (int i = 0; i < NF; i++)                                                                   \
                    for (int p = 0; p < 4; p++) a[i][p] = VZERO;                                               \
                const float *wk = w;                                                                           \
                for (int64_t k = 0; k < K; k++, wk += fpad) {                                                  \
                    const int64_t d = koff[k];                                                                 \
                    VEC xv[4];                                                                                 \
                    for (int p = 0; p < 4; p++) xv[p] = VLOAD(x[p] + d);                                       \
                    for (int i = 0; i < NF; i++) {                                                             \
                        const VEC wv = VSET1(wk[i]);                                                           \
                        for (int p = 0; p < 4; p++) a[i][p] = VFMA(xv[p], wv, a[i][p]);                        \
                    }                                                                                          \
                }                                                                                              \
                for (int i = 0; i < NF; i++) {             /* the window's maximum so far, in r */            \
                    const VEC g = VMAX(VMAX(a[i][0], a[i][1]), VMAX(a[i][2], a[i][3]));                         \
                    VSTORE(rc + i * VW, q == 0 ? g : VMAX(VLOAD(rc + i * VW), g));                              \
                }                                                                                              \
            }                                                                                                  \
            for (int i = 0; i < NF; i++)                                                                       \
                VSTORE(rc + i * VW, VMAX(VADD(VLOAD(rc + i * VW), VSET1(b[i])), VZERO));                        \
        }                                                                                                      \
    }
KFN_LANES(1)
KFN_LANES(2)
KFN_LANES(3)
KFN_LANES(4)
KFN_LANES(5)
KFN_LANES(6)
#undef KFN_LANES

/* Images 0 .. ni - 1 of `x` (NCHW rows `row` floats apart: cin channels of H x W) into map `t`
 * with the images innermost and a border of `pad` zero pixels, (y, x, c, lane) at
 * (((y + pad) * (W + 2 pad) + x + pad) * cin + c) * VW, by tile transposes (a row of one channel at
 * a time); lanes from ni on are zero. */
static void KFN(images_in)(const float *x, int64_t row, int64_t cin, int64_t H, int64_t W, int64_t ni, int64_t pad,
                           float *t) {
    const int64_t wp = W + 2 * pad;
    memset(t, 0, sizeof(float) * (size_t)((H + 2 * pad) * wp * cin * VW));
    for (int64_t c = 0; c < cin; c++)
        for (int64_t y = 0; y < H; y++)
            for (int64_t e = 0; e < W; e += VW) {
                const int nc = W - e < VW ? (int)(W - e) : VW;
                VTILE(x + (c * H + y) * W + e, row, (int)ni, nc, t + (((y + pad) * wp + pad + e) * cin + c) * VW,
                      cin * VW, nc, VW);
            }
}

/* `count` vectors of lanes (src[e * VW + lane]) out as the first ni lanes' rows: out[lane * ld + e]. */
static void KFN(lanes_out)(const float *src, int64_t count, int64_t ni, float *out, int64_t ld) {
    for (int64_t e = 0; e < count; e += VW) {
        const int nr = count - e < VW ? (int)(count - e) : VW;
        VTILE(src + e * VW, VW, nr, (int)ni, out + e, ld, (int)ni, nr);
    }
}
