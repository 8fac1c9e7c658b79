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
 * the shortcut's value where there is one, and the ReLU where asked. P: the weights and biases
 * are P networks' interleaved (float q of each group of P is network q's) and repeat over the
 * lanes, lane l holding network l % P's image (a task of P networks' last few images). */
#define KFN_CELLS(NF, P)                                                                                       \
    static void KFN(cells_##NF##_##P)(const ResConv *cv, int64_t f0, int64_t c0, int64_t c1) {                \
        const int64_t K = cv->K, st = cv->stride, off = cv->src_border - cv->pad;                             \
        const float *w = cv->w + f0 * K * P;                                                                   \
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
                    const VEC wv = VBC##P(w + (i * K + k) * P);                                                \
                    for (int p = 0; p < 4; p++) a[i][p] = VFMA(xv[p], wv, a[i][p]);                            \
                }                                                                                              \
            }                                                                                                  \
            const int np = c1 - cell < 4 ? (int)(c1 - cell) : 4;                                               \
            for (int p = 0; p < np; p++)                                                                       \
                for (int i = 0; i < NF; i++) {                                                                 \
                    VEC v = VADD(a[i][p], VBC##P(cv->b + (f0 + i) * P));                                       \
                    if (cv->add) v = VADD(v, VLOAD(cv->add + o[p] + i * VW));                                  \
                    if (cv->relu) v = VMAX(VZERO, v);            /* a NaN stays NaN, as torch's */      \
                    VSTORE(cv->dst + o[p] + i * VW, v);                                                        \
                }                                                                                              \
        }                                                                                                      \
    }
KFN_CELLS(1, 1)
KFN_CELLS(2, 1)
KFN_CELLS(3, 1)
KFN_CELLS(4, 1)
KFN_CELLS(5, 1)
KFN_CELLS(6, 1)
KFN_CELLS(1, 2)
KFN_CELLS(2, 2)
KFN_CELLS(3, 2)
KFN_CELLS(4, 2)
KFN_CELLS(5, 2)
KFN_CELLS(6, 2)
KFN_CELLS(1, 4)
KFN_CELLS(2, 4)
KFN_CELLS(3, 4)
KFN_CELLS(4, 4)
KFN_CELLS(5, 4)
KFN_CELLS(6, 4)
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
            #define RES_CELLS(P) switch (nf) {                                                                 \
                case 1: KFN(cells_1_##P)(cv, f0, c0, c1); break;                                               \
                case 2: KFN(cells_2_##P)(cv, f0, c0, c1); break;                                               \
                case 3: KFN(cells_3_##P)(cv, f0, c0, c1); break;                                               \
                case 4: KFN(cells_4_##P)(cv, f0, c0, c1); break;                                               \
                case 5: KFN(cells_5_##P)(cv, f0, c0, c1); break;                                               \
                default: KFN(cells_6_##P)(cv, f0, c0, c1); break;                                              \
                }
            if (cv->P == 4) RES_CELLS(4)
            else if (cv->P == 2) RES_CELLS(2)
            else RES_CELLS(1)
            #undef RES_CELLS
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

/* Lanes of P interleaved networks' images (lane l: image l / P of network l % P; P = 1: the
 * images themselves) from lanes 0 .. ni - 1 of each of `count` vectors, in place. */
static void KFN(spread)(float *m, int64_t count, int64_t ni, int64_t P) {
    int32_t idx[VW];
    for (int l = 0; l < VW; l++) idx[l] = l < ni * P ? (int32_t)(l / P) : VW - 1;      /* lane VW - 1: zero */
    for (int64_t e = 0; e < count; e++) VSTORE(m + e * VW, VPERM(VLOAD(m + e * VW), idx));
}

/* A block's output (map `m`, h x w cells of c channels) as each of the task's P networks' images'
 * features, network q's rows `ld` floats apart from out[q]: flat in (y, x, c) order by tile
 * transposes (through `row`, where P > 1, network q's lanes gathered first), or
 * (mean_features) the channels' means. */
static void KFN(features_out)(const float *m, int64_t h, int64_t w, int64_t c, int64_t ni, int64_t P,
                              int mean_features, float *scratch, float *row, float *const *out, int64_t ld) {
    if (mean_features) {
        KFN(means)(m, h, w, c, scratch);
        for (int64_t q = 0; q < P; q++)
            for (int64_t l = 0; l < ni; l++)
                for (int64_t ch = 0; ch < c; ch++) out[q][l * ld + ch] = scratch[ch * VW + l * P + q];
        return;
    }
    for (int64_t y = 0; y < h; y++) {       /* a row's cells' channels, VW lanes each */
        const float *src = m + ((y + 1) * (w + 2) + 1) * c * VW;
        for (int64_t q = 0; q < P; q++) {
            if (P > 1) {
                int32_t idx[VW];
                for (int l = 0; l < VW; l++) idx[l] = l < ni ? (int32_t)(l * P + q) : 0;
                for (int64_t e = 0; e < w * c; e++) VSTORE(row + e * VW, VPERM(VLOAD(src + e * VW), idx));
            }
            KFN(lanes_out)(P > 1 ? row : src, w * c, ni, out[q] + y * w * c, ld);
        }
    }
}

static inline VEC KFN(bcast)(const float *p, int64_t P) { return P == 4 ? VBC4(p) : P == 2 ? VBC2(p) : VBC1(p); }

/* Layer l (`width` its channels, `lw` and `lb` its weights and biases, P networks' interleaved) as
 * `cv`: a convolution from map `src` (h x w cells, border sb) into `dst`, adding `add` where not
 * NULL, then the ReLU where `relu`. `cv->koff` is room for its offsets. */
static void KFN(layer)(ResConv *cv, const int64_t *conv, const int64_t *width, const float *const *lw,
                       const float *const *lb, int64_t l, const float *src, int64_t h, int64_t w, int64_t sb,
                       float *dst, const float *add, int relu) {
    const int64_t k = conv[3 * l], cin = width[2 * l + 1], swp = w + 2 * sb;
    int64_t *koff = cv->koff;
    cv->src = src, cv->src_wp = swp, cv->src_border = sb, cv->cin = cin, cv->cout = width[2 * l];
    cv->k = k, cv->stride = conv[3 * l + 1], cv->pad = conv[3 * l + 2], cv->K = cin * k * k;
    cv->ho = (h + 2 * cv->pad - k) / cv->stride + 1, cv->wo = (w + 2 * cv->pad - k) / cv->stride + 1;
    for (int64_t c = 0; c < cin; c++)
        for (int64_t y = 0; y < k; y++)
            for (int64_t x = 0; x < k; x++) koff[(c * k + y) * k + x] = ((y * swp + x) * cin + c) * VW;
    cv->w = lw[l], cv->b = lb[l];
    cv->dst = dst, cv->add = add, cv->relu = relu;
    KFN(conv)(cv);
}

/* Task `t` (networks t->js[0 .. P - 1], of one architecture, on images i0 .. i0 + ni - 1): its
 * maps in the thread's six `slots` (the images, four maps, a row of features), `koff` room for
 * the longest convolution's offsets, `scratch` room for the widest layer's channel vectors and
 * the classes' logits, `pack` room for P networks' weights interleaved, `lw` and `lb` for 2 nl
 * pointers. */
static void KFN(network)(const ResNetDesc *d, const ResTask *t, float *const *slots, int64_t *koff, float *scratch,
                         float *pack, const float **lw, const float **lb) {
    const int64_t P = t->P, i0 = t->i0, ni = t->ni, nl = d->nl;
    const int64_t *conv = d->conv, *width = d->width + t->js[0] * nl * 2;
    for (int64_t l = 0; l < nl; l++) {
        const float *w0 = (const float *)(intptr_t)d->wptr[t->js[0] * nl + l];
        const float *b0 = (const float *)(intptr_t)d->bptr[t->js[0] * nl + l];
        if (P == 1) {
            lw[l] = w0, lb[l] = b0;
            continue;
        }
        const int64_t k = conv[3 * l] ? conv[3 * l] : 1, nw = width[2 * l] * width[2 * l + 1] * k * k;
        float *pw = pack, *pb = pack + nw * P;
        for (int64_t q = 0; q < P; q++) {
            const float *wq = (const float *)(intptr_t)d->wptr[t->js[q] * nl + l];
            const float *bq = (const float *)(intptr_t)d->bptr[t->js[q] * nl + l];
            for (int64_t e = 0; e < nw; e++) pw[e * P + q] = wq[e];
            for (int64_t e = 0; e < width[2 * l]; e++) pb[e * P + q] = bq[e];
        }
        lw[l] = pw, lb[l] = pb;
        pack += (nw + width[2 * l]) * P;
    }
    ResConv cv;
    cv.koff = koff, cv.P = P;
    const int64_t pad0 = conv[2], row = d->cin * d->H * d->W;
    KFN(images_in)(d->x + i0 * row, row, d->cin, d->H, d->W, ni, pad0, slots[0]);
    if (P > 1) KFN(spread)(slots[0], (d->H + 2 * pad0) * (d->W + 2 * pad0) * d->cin, ni, P);
    float *h = slots[1], *inner = slots[2], *proj = slots[3], *out = slots[4];
    KFN(layer)(&cv, conv, width, lw, lb, 0, slots[0], d->H, d->W, pad0, h, NULL, 1);
    int64_t hh = cv.ho, hw = cv.wo, hc = cv.cout;
    if (d->stem_pool) {                              /* torchvision's 3x3 max-pooling, stride 2, padding 1 */
        KFN(max_pool)(h, hh, hw, hc, inner);
        float *tmp = h;
        h = inner, inner = tmp;
        hh = (hh - 1) / 2 + 1, hw = (hw - 1) / 2 + 1;
    }
    for (int64_t blk = 0; blk < d->nb; blk++) {
        const int64_t i1 = d->blocks[3 * blk], i2 = d->blocks[3 * blk + 1], ip = d->blocks[3 * blk + 2];
        const float *add = h;
        if (ip >= 0) {
            KFN(layer)(&cv, conv, width, lw, lb, ip, h, hh, hw, 1, proj, NULL, 0);
            add = proj;
        }
        KFN(layer)(&cv, conv, width, lw, lb, i1, h, hh, hw, 1, inner, NULL, 1);
        KFN(layer)(&cv, conv, width, lw, lb, i2, inner, cv.ho, cv.wo, 1, out, add, 1);
        float *tmp = h;
        h = out, out = tmp;
        hh = cv.ho, hw = cv.wo, hc = cv.cout;
        if (d->feat[t->js[0] * d->nb + blk]) {
            const int64_t ld = d->mean_features ? hc : hh * hw * hc;
            float *dst[4];
            for (int64_t q = 0; q < P; q++) dst[q] = (float *)(intptr_t)d->feat[t->js[q] * d->nb + blk] + i0 * ld;
            KFN(features_out)(h, hh, hw, hc, ni, P, (int)d->mean_features, scratch, slots[5], dst, ld);
        }
    }
    /* global average pooling, then the classifier: each class's logit per lane, summed over the
     * channels in order */
    const int64_t lc = nl - 1, classes = width[2 * lc];
    KFN(means)(h, hh, hw, hc, scratch);
    float *r = scratch + hc * VW;
    for (int64_t cls = 0; cls < classes; cls++) {
        VEC a = KFN(bcast)(lb[lc] + cls * P, P);
        for (int64_t ch = 0; ch < hc; ch++)
            a = VFMA(KFN(bcast)(lw[lc] + (cls * hc + ch) * P, P), VLOAD(scratch + ch * VW), a);
        VSTORE(r + cls * VW, a);
    }
    for (int64_t q = 0; q < P; q++)
        for (int64_t l = 0; l < ni; l++)
            for (int64_t cls = 0; cls < classes; cls++)
                d->logits[(t->js[q] * d->n + i0 + l) * classes + cls] = r[cls * VW + l * P + q];
}
