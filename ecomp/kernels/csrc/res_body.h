/* One copy of the residual networks' pass with the images in the lanes (included by resnet.c once
 * per vector width).
 *
 * Before inclusion: vec_ops.h's vector operations, KFN(name) naming this copy's functions, NFMAX
 * the most filters broadcast at a time (NFMAX x 4 accumulators and four inputs fit the
 * registers), and lanes_body.h (its copies in and out).
 *
 * A map holds VW images with the images innermost: channel c of pixel (y, x) at
 * ((y * wp + x) * c_n + c) * VW, wp the padded width; the maps a convolution writes have a border
 * of one zero pixel, which the next 3x3 convolution reads as its padding. */

/* Filters f0 .. f0 + NF - 1 of convolution `cv` on output cells c0 .. c1 - 1 (cells numbered row
 * by row), four cells at a time (the last four repeating the last cell): each lane's dot product
 * summed k = 0 .. K - 1 in torch's (c, ky, kx) order with one rounding per step, then the bias,
 * the shortcut's value where there is one, and the ReLU where asked. */
#define KFN_CELLS(NF)                                                                                          \
    static void KFN(cells_##NF)(const ResConv *cv, int64_t f0, int64_t c0, int64_t c1) {                      \
        const int64_t K = cv->K, st = cv->stride, off = cv->src_border - cv->pad;                             \
        const float *w = cv->w + f0 * K;                                                                       \
        for (int64_t cell = c0; cell < c1; cell += 4) {                                                        \
            const float *x[4];                                                                                 \
            int64_t o[4];                                                                                      \
            for (int p = 0; p < 4; p++) {                                                                      \
                const int64_t c = cell + p < c1 ? cell + p : c1 - 1, y = c / cv->wo, xx = c % cv->wo;           \
                x[p] = cv->src + ((y * st + off) * cv->src_wp + xx * st + off) * cv->cin * VW;                  \
                o[p] = (((y + 1) * (cv->wo + 2) + xx + 1) * cv->cout + f0) * VW;                                \
            }                                                                                                  \
            VEC a[NF][4];                                                                                      \
            for (int i = 0; i < NF; i++)                                                                       \
                for (int p = 0; p < 4; p++) a[i][p] = VZERO;                                                   \
            for (int64_t k = 0; k < K; k++) {                                                                  \
                const int64_t d = cv->koff[k];                                                                 \
                VEC xv[4];                                                                                     \
                for (int p = 0; p < 4; p++) xv[p] = VLOAD(x[p] + d);                                           \
                for (int i = 0; i < NF; i++) {                                                                 \
                    const VEC wv = VSET1(w[i * K + k]);                                                        \
                    for (int p = 0; p < 4; p++) a[i][p] = VFMA(xv[p], wv, a[i][p]);                            \
                }                                                                                              \
            }                                                                                                  \
            const int np = c1 - cell < 4 ? (int)(c1 - cell) : 4;                                               \
            for (int p = 0; p < np; p++)                                                                       \
                for (int i = 0; i < NF; i++) {                                                                 \
                    VEC v = VADD(a[i][p], VSET1(cv->b[f0 + i]));                                               \
                    if (cv->add) v = VADD(v, VLOAD(cv->add + o[p] + i * VW));                                  \
                    if (cv->relu) v = VMAX(VZERO, v);            /* a NaN stays NaN, as torch's */      \
                    VSTORE(cv->dst + o[p] + i * VW, v);                                                        \
                }                                                                                              \
        }                                                                                                      \
    }
KFN_CELLS(1)
KFN_CELLS(2)
KFN_CELLS(3)
KFN_CELLS(4)
KFN_CELLS(5)
KFN_CELLS(6)
#undef KFN_CELLS

/* The whole convolution: its output's border zeroed, then a few rows of cells at a time (their
 * inputs stay in the cache while every block of filters reads them), filters NFMAX at a time in
 * blocks of even sizes. */
static void KFN(conv)(const ResConv *cv) {
    const int64_t wp = cv->wo + 2, pix = cv->cout * VW, cells = cv->ho * cv->wo;
    memset(cv->dst, 0, sizeof(float) * (size_t)(wp * pix));
    memset(cv->dst + (cv->ho + 1) * wp * pix, 0, sizeof(float) * (size_t)(wp * pix));
    for (int64_t y = 1; y <= cv->ho; y++) {
        memset(cv->dst + y * wp * pix, 0, sizeof(float) * (size_t)pix);
        memset(cv->dst + (y * wp + wp - 1) * pix, 0, sizeof(float) * (size_t)pix);
    }
    const int64_t chunk = cv->wo >= 32 ? cv->wo : (32 / cv->wo) * cv->wo;
    for (int64_t c0 = 0; c0 < cells; c0 += chunk) {
        const int64_t c1 = cells - c0 < chunk ? cells : c0 + chunk;
        for (int64_t f0 = 0, left = (cv->cout + NFMAX - 1) / NFMAX; f0 < cv->cout; left--) {
            const int64_t nf = (cv->cout - f0 + left - 1) / left;
            switch (nf) {
            case 1: KFN(cells_1)(cv, f0, c0, c1); break;
            case 2: KFN(cells_2)(cv, f0, c0, c1); break;
            case 3: KFN(cells_3)(cv, f0, c0, c1); break;
            case 4: KFN(cells_4)(cv, f0, c0, c1); break;
            case 5: KFN(cells_5)(cv, f0, c0, c1); break;
            default: KFN(cells_6)(cv, f0, c0, c1); break;
            }
            f0 += nf;
        }
    }
}

/* Map `m` (h x w cells of c channels, border 1) max-pooled 3x3 with stride 2 and padding 1 into
 * `out` ((h - 1) / 2 + 1 x (w - 1) / 2 + 1 cells, border 1 zeroed): the border stands for the
 * padding, exactly, as the maps come out of a ReLU (no value below zero) and every window holds
 * a pixel of the map. A NaN in a window makes its maximum NaN, as torch's does. */
static void KFN(max_pool)(const float *m, int64_t h, int64_t w, int64_t c, float *out) {
    const int64_t ho = (h - 1) / 2 + 1, wo = (w - 1) / 2 + 1, pix = c * VW;
    memset(out, 0, sizeof(float) * (size_t)((ho + 2) * (wo + 2) * pix));
    for (int64_t y = 0; y < ho; y++)
        for (int64_t x = 0; x < wo; x++) {
            float *o = out + ((y + 1) * (wo + 2) + x + 1) * pix;
            for (int64_t e = 0; e < pix; e += VW) {
                VEC v = VLOAD(m + ((2 * y) * (w + 2) + 2 * x) * pix + e);
                for (int64_t dy = 0; dy < 3; dy++)
                    for (int64_t dx = 0; dx < 3; dx++)
                        v = VMAXN(v, VLOAD(m + ((2 * y + dy) * (w + 2) + 2 * x + dx) * pix + e));
                VSTORE(o + e, v);
            }
        }
}

/* Map `m` (h x w cells of c channels, border 1): each lane's channel means into `mean` (c vectors). */
static void KFN(means)(const float *m, int64_t h, int64_t w, int64_t c, float *mean) {
    for (int64_t ch = 0; ch < c; ch++) VSTORE(mean + ch * VW, VZERO);
    for (int64_t y = 0; y < h; y++)
        for (int64_t xx = 0; xx < w; xx++) {
            const float *p = m + ((y + 1) * (w + 2) + xx + 1) * c * VW;
            for (int64_t ch = 0; ch < c; ch++) VSTORE(mean + ch * VW, VADD(VLOAD(mean + ch * VW), VLOAD(p + ch * VW)));
        }
    const VEC s = VSET1(1.0f / (float)(h * w));
    for (int64_t ch = 0; ch < c; ch++) VSTORE(mean + ch * VW, VMUL(VLOAD(mean + ch * VW), s));
}

/* A block's output (map `m`, h x w cells of c channels) as each image's features, rows `ld` floats
 * apart in `out`: flat in (y, x, c) order by tile transposes, or (mean_features) the channels' means. */
static void KFN(features_out)(const float *m, int64_t h, int64_t w, int64_t c, int64_t ni, int mean_features,
                              float *scratch, float *out, int64_t ld) {
    if (mean_features) {
        KFN(means)(m, h, w, c, scratch);
        for (int64_t l = 0; l < ni; l++)
            for (int64_t ch = 0; ch < c; ch++) out[l * ld + ch] = scratch[ch * VW + l];
        return;
    }
    for (int64_t y = 0; y < h; y++)         /* a row's cells' channels, VW lanes each */
        KFN(lanes_out)(m + ((y + 1) * (w + 2) + 1) * c * VW, w * c, ni, out + y * w * c, ld);
}

/* Layer l of network j (`width` its channels, `wp` and `bp` its weights' and biases' addresses) as
 * `cv`: a convolution from map `src` (h x w cells, border sb) into `dst`, adding `add` where not
 * NULL, then the ReLU where `relu`. `cv->koff` is room for its offsets. */
static void KFN(layer)(ResConv *cv, const int64_t *conv, const int64_t *width, const int64_t *wp, const int64_t *bp,
                       int64_t l, const float *src, int64_t h, int64_t w, int64_t sb, float *dst, const float *add,
                       int relu) {
    const int64_t k = conv[3 * l], cin = width[2 * l + 1], swp = w + 2 * sb;
    int64_t *koff = cv->koff;
    cv->src = src, cv->src_wp = swp, cv->src_border = sb, cv->cin = cin, cv->cout = width[2 * l];
    cv->k = k, cv->stride = conv[3 * l + 1], cv->pad = conv[3 * l + 2], cv->K = cin * k * k;
    cv->ho = (h + 2 * cv->pad - k) / cv->stride + 1, cv->wo = (w + 2 * cv->pad - k) / cv->stride + 1;
    for (int64_t c = 0; c < cin; c++)
        for (int64_t y = 0; y < k; y++)
            for (int64_t x = 0; x < k; x++) koff[(c * k + y) * k + x] = ((y * swp + x) * cin + c) * VW;
    cv->w = (const float *)(intptr_t)wp[l], cv->b = (const float *)(intptr_t)bp[l];
    cv->dst = dst, cv->add = add, cv->relu = relu;
    KFN(conv)(cv);
}

/* Network j on images i0 .. i0 + ni - 1: its maps in the thread's five `slots` (the images, then
 * four maps), `koff` room for the longest convolution's offsets, `scratch` room for the widest
 * layer's channel vectors and the classes' logits. */
static void KFN(network)(const ResNetDesc *d, int64_t j, int64_t i0, int64_t ni, float *const *slots, int64_t *koff,
                         float *scratch) {
    const int64_t *conv = d->conv, *width = d->width + j * d->nl * 2;
    const int64_t *wp = d->wptr + j * d->nl, *bp = d->bptr + j * d->nl;
    ResConv cv;
    cv.koff = koff;
    const int64_t pad0 = conv[2];
    KFN(images_in)(d->x + i0 * d->cin * d->H * d->W, d->cin * d->H * d->W, d->cin, d->H, d->W, ni, pad0, slots[0]);
    float *h = slots[1], *inner = slots[2], *proj = slots[3], *out = slots[4];
    KFN(layer)(&cv, conv, width, wp, bp, 0, slots[0], d->H, d->W, pad0, h, NULL, 1);
    int64_t hh = cv.ho, hw = cv.wo, hc = cv.cout;
    if (d->stem_pool) {                              /* torchvision's 3x3 max-pooling, stride 2, padding 1 */
        KFN(max_pool)(h, hh, hw, hc, inner);
        float *t = h;
        h = inner, inner = t;
        hh = (hh - 1) / 2 + 1, hw = (hw - 1) / 2 + 1;
    }
    for (int64_t blk = 0; blk < d->nb; blk++) {
        const int64_t i1 = d->blocks[3 * blk], i2 = d->blocks[3 * blk + 1], ip = d->blocks[3 * blk + 2];
        const float *add = h;
        if (ip >= 0) {
            KFN(layer)(&cv, conv, width, wp, bp, ip, h, hh, hw, 1, proj, NULL, 0);
            add = proj;
        }
        KFN(layer)(&cv, conv, width, wp, bp, i1, h, hh, hw, 1, inner, NULL, 1);
        KFN(layer)(&cv, conv, width, wp, bp, i2, inner, cv.ho, cv.wo, 1, out, add, 1);
        float *t = h;
        h = out, out = t;
        hh = cv.ho, hw = cv.wo, hc = cv.cout;
        if (d->feat[j * d->nb + blk]) {
            const int64_t ld = d->mean_features ? hc : hh * hw * hc;
            KFN(features_out)(h, hh, hw, hc, ni, (int)d->mean_features, scratch,
                              (float *)(intptr_t)d->feat[j * d->nb + blk] + i0 * ld, ld);
        }
    }
    /* global average pooling, then the classifier: each class's logit per lane, summed over the
     * channels in order */
    const int64_t lc = d->nl - 1, classes = width[2 * lc];
    const float *fw = (const float *)(intptr_t)wp[lc], *fb = (const float *)(intptr_t)bp[lc];
    KFN(means)(h, hh, hw, hc, scratch);
    float *r = scratch + hc * VW;
    for (int64_t cls = 0; cls < classes; cls++) {
        VEC a = VSET1(fb[cls]);
        for (int64_t ch = 0; ch < hc; ch++) a = VFMA(VSET1(fw[cls * hc + ch]), VLOAD(scratch + ch * VW), a);
        VSTORE(r + cls * VW, a);
    }
    for (int64_t l = 0; l < ni; l++)
        for (int64_t cls = 0; cls < classes; cls++) d->logits[(j * d->n + i0 + l) * classes + cls] = r[cls * VW + l];
}
