/* A population of residual networks' forward pass, each network on a vector's worth of images at a
 * time with the images in the vectors' lanes (loaded with ctypes by ecomp.kernels.res_native).
 *
 * Why: oneDNN runs an individual's convolutions of 4 to 64 channels at about 0.4 of this CPU's
 * FMA ceiling (benchmarks/README.md): with the filters in the lanes, a vector holds at most one
 * individual's few filters and its loop waits on broadcasts. Here each lane is an image, every
 * filter weight is broadcast once for four output cells, and the inner loop is the fused
 * convolution's images-in-lanes loop (conv.c), which runs at the ceiling. A network runs whole on
 * its images (the stem and its max-pooling where it has one, every basic block with its shortcut
 * and ReLUs, global average pooling, the classifier), its maps staying in the thread's buffers:
 * no map goes to memory between layers, only each block's output, copied out by tile transposes
 * as the similarity reads it.
 *
 * Each output is summed k = 0 .. K - 1 over torch's (c, ky, kx) order with fused multiply-adds,
 * then the bias, the shortcut and the ReLU: not oneDNN's order, so the values agree with
 * res_forward's PyTorch paths within float rounding (tests/test_res_native.py), bit for bit
 * between this file's two vector copies.
 *
 * Vector copies only (AVX-512F, else AVX2 + FMA): without them the entry point returns -1 and the
 * caller takes the PyTorch path. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int ecomp_conv_block(void);     /* conv.c: floats per vector of the copy that runs here, 0 for none */

/* The population and its outputs, as ecomp_resnet_forward takes them. */
typedef struct {
    const float *x;               /* (n, cin * H * W): the images, NCHW rows */
    int64_t n, cin, H, W;
    int64_t stem_pool;            /* 3: torchvision's 3x3 stride-2 max-pooling after the stem; 0: none */
    int64_t nl;                   /* layers: the stem, every block's convolutions, the classifier */
    const int64_t *conv;          /* per layer: kernel, stride, padding (the classifier: 0, 1, 0) */
    int64_t nb;                   /* blocks */
    const int64_t *blocks;        /* per block: its conv1, conv2 and projection layer (-1: the identity) */
    const int64_t *width;         /* per network and layer: out and in channels (the classifier: classes, in) */
    const int64_t *wptr, *bptr;   /* per network and layer: its weight (torch's (out, in, k, k)) and bias */
    const int64_t *feat;          /* per network and block: where its (n, features) rows go (0: nowhere) */
    int64_t mean_features;        /* 0: flat features in (y, x, c) order; 1: the channels' means */
    float *logits;                /* (networks, n, classes) */
} ResNetDesc;

/* What one thread's step does: networks js[0 .. P - 1] (P of 1, 2 or 4, of one architecture) on
 * images i0 .. i0 + ni - 1, lane l holding image l / P of network l % P. P > 1 fills the lanes
 * a batch's last few images would leave empty (100 images are six vectors of 16 and four). */
typedef struct {
    const int64_t *js;
    int64_t P, i0, ni;
} ResTask;

/* One convolution on the thread's maps (res_body.h's KFN(conv)). */
typedef struct {
    const float *src;             /* input map, border src_border, padded width src_wp, cin channels */
    int64_t src_wp, src_border, cin;
    float *dst;                   /* output map, ho x wo cells of cout channels, border 1 */
    const float *add;             /* NULL, or a map shaped as dst added before the ReLU (the shortcut) */
    int64_t ho, wo, cout, k, stride, pad, K;
    const float *w, *b;
    int64_t *koff;                /* term k's offset from a window's first input */
    int relu;
    int64_t P;                    /* networks interleaved in the lanes (KFN_CELLS' P) */
} ResConv;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#include "transpose.h"
#define ECOMP_RES_VECTOR 1

#pragma GCC push_options
#pragma GCC target("avx512f")
#define VEC_AVX512
#include "vec_ops.h"
#define KFN(name) name##_avx512
#define NFMAX 6
#include "lanes_body.h"
#include "res_body.h"
#include "vec_done.h"
#undef KFN
#undef NFMAX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define VEC_AVX2
#include "vec_ops.h"
#define KFN(name) name##_avx2
#define NFMAX 3
#include "lanes_body.h"
#include "res_body.h"
#pragma GCC pop_options
#else
#define ECOMP_RES_VECTOR 0
#endif

/* The largest map (floats per lane, border included), convolution (terms) and layer (channels)
 * of any network of d, for the threads' buffers: the stem, then each block's convolutions, walked
 * as KFN(network) walks them. */
static void grow(int64_t *max, int64_t v) { if (v > *max) *max = v; }
static void sizes(const ResNetDesc *d, int64_t nets, int64_t *map, int64_t *terms, int64_t *chans) {
    const int64_t *c = d->conv, pad0 = c[2];
    *map = (d->H + 2 * pad0) * (d->W + 2 * pad0) * d->cin, *terms = 0, *chans = 0;
    for (int64_t j = 0; j < nets; j++) {
        const int64_t *width = d->width + j * d->nl * 2;
        for (int64_t l = 0; l < d->nl; l++) {
            grow(chans, width[2 * l]);
            grow(chans, width[2 * l + 1]);
            grow(terms, width[2 * l + 1] * c[3 * l] * c[3 * l]);
        }
        int64_t h = (d->H + 2 * pad0 - c[0]) / c[1] + 1, w = (d->W + 2 * pad0 - c[0]) / c[1] + 1;
        grow(map, (h + 2) * (w + 2) * width[0]);
        if (d->stem_pool) h = (h - 1) / 2 + 1, w = (w - 1) / 2 + 1;
        for (int64_t blk = 0; blk < d->nb; blk++) {
            const int64_t i1 = d->blocks[3 * blk], i2 = d->blocks[3 * blk + 1], s = c[3 * i1 + 1];
            h = (h + 2 - 3) / s + 1, w = (w + 2 - 3) / s + 1;          /* 3x3, padding 1: every block's outputs */
            grow(map, (h + 2) * (w + 2) * width[2 * i1]);
            grow(map, (h + 2) * (w + 2) * width[2 * i2]);
        }
    }
}

/* For every network j (nets of them) and image i of the batch: logits[j, i] and each block's
 * output features (ResNetDesc above describes the arguments). `tasks` (ntasks rows of js[0..3], i0,
 * ni, P: ResTask) go to `nthreads` OpenMP threads, one at a time as threads come free (networks
 * differ in size); `pack` floats of a thread's buffer hold a task's P networks' weights. Every
 * output is computed the same way whichever thread or task takes it. Returns 0, or -1 where no
 * vector copy runs here or memory ran out (nothing is then promised of the outputs). */
int ecomp_resnet_forward(int64_t x_addr, int64_t n, int64_t cin, int64_t H, int64_t W, int64_t stem_pool,
                         int64_t nets, int64_t nl, const int64_t *conv, int64_t nb, const int64_t *blocks,
                         const int64_t *width, const int64_t *wptr, const int64_t *bptr, const int64_t *feat,
                         int64_t mean_features, int64_t logits_addr, const int64_t *tasks, int64_t ntasks,
                         int64_t pack, int nthreads) {
#if ECOMP_RES_VECTOR
    const int vw = ecomp_conv_block();
    if (vw == 0 || n < 1 || nets < 1) return -1;
    const ResNetDesc d = {(const float *)(intptr_t)x_addr, n, cin, H, W, stem_pool, nl, conv, nb, blocks, width,
                          wptr, bptr, feat, mean_features, (float *)(intptr_t)logits_addr};
    int64_t map, terms, chans;
    sizes(&d, nets, &map, &terms, &chans);
    const int64_t classes = width[2 * (nl - 1)];
    for (int64_t t = 0; t < ntasks; t++) {
        const int64_t P = tasks[7 * t + 6], ni = tasks[7 * t + 5];
        if ((P != 1 && P != 2 && P != 4) || ni < 1 || ni * P > vw || tasks[7 * t + 4] + ni > n) return -1;
    }
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *buf = malloc(sizeof(float) * (size_t)((6 * map + chans + classes) * vw + pack));
        int64_t *koff = malloc(sizeof(int64_t) * (size_t)(terms > 0 ? terms : 1));
        const float **ptrs = malloc(sizeof(float *) * (size_t)(2 * nl));
        if (!buf || !koff || !ptrs) {
            #pragma omp atomic write
            failed = 1;
        }
        float *slots[6];
        for (int s = 0; s < 6; s++) slots[s] = buf ? buf + s * map * vw : NULL;
        float *scratch = buf ? buf + 6 * map * vw : NULL, *packed = buf ? scratch + (chans + classes) * vw : NULL;
        #pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; t++) {
            if (!buf || !koff || !ptrs) continue;
            const int64_t *row = tasks + 7 * t;
            const ResTask task = {row, row[6], row[4], row[5]};
            if (vw == 16) network_avx512(&d, &task, slots, koff, scratch, packed, ptrs, ptrs + nl);
            else network_avx2(&d, &task, slots, koff, scratch, packed, ptrs, ptrs + nl);
        }
        free(ptrs);
        free(koff);
        free(buf);
    }
    return failed ? -1 : 0;
#else
    (void)x_addr; (void)n; (void)cin; (void)H; (void)W; (void)stem_pool; (void)nets; (void)nl; (void)conv; (void)nb;
    (void)blocks; (void)width; (void)wptr; (void)bptr; (void)feat; (void)mean_features; (void)logits_addr;
    (void)tasks; (void)ntasks; (void)pack; (void)nthreads;
    return -1;
#endif
}
