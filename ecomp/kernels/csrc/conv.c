/* A convolutional population's convolution stages, one pass each (loaded with ctypes by
 * ecomp.kernels.native): convolution, max-pool, bias and ReLU of every individual's filters,
 * written as pooled maps.
 *
 * The PyTorch path (ecomp/kernels/conv_forward.py) builds the first stage's patches for every
 * image, multiplies them with the filters in one GEMM per block of images and pools the
 * product; a later stage is oneDNN's grouped convolution followed by the pooling. With 25- to
 * 150-value dot products and a few dozen filters both read their operands from memory, run at
 * a third of the machine's rate, and the pooling reads their output again. Here each image is
 * read where it is (or, where the stage pads, copied once into a zero-bordered buffer that
 * stays in the first-level cache), each pooled pixel's window positions are computed in
 * registers and only the pooled maps are written.
 *
 * Two passes: the filters in the vectors' lanes (every filter of a group on each image: groups of
 * many filters, or few images), or the images in the lanes (conv_pool_lanes: an individual's few
 * filters, each broadcast, on a vector's worth of images at a time that tile transposes copy in
 * and out), which keeps every lane busy where an individual has fewer filters than a vector.
 *
 * Each output's dot product is accumulated k = 0 .. K - 1 with one rounding per step (fused
 * multiply-add), in the order the path it replaces sums: (c, ky, kx) for the patches' GEMM,
 * (ky, kx, c) for oneDNN's channels-last convolution, which then adds the bias. On the CPUs
 * measured both libraries sum that way, so the bits are theirs (tests/test_native.py and
 * tests/test_cnn.py compare within a tolerance, as any other machine may round differently).
 *
 * Vector copies only (AVX-512F, else AVX2 + FMA); without them, or with the library forced to its
 * baseline copy, the entry point returns -1 and the caller takes the PyTorch path. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int ecomp_isa(void);     /* tsne.c: 1 where the vector copies run (AVX2 + FMA, not forced to baseline) */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#include "transpose.h"
#define ECOMP_CONV_VECTOR 1

#pragma GCC push_options
#pragma GCC target("avx512f")
#define VEC_AVX512
#include "vec_ops.h"
#define KFN(name) name##_avx512
#define NC1 2
#define NC2 2
#define NFMAX 6
#define VSTORE_N(d, s, n) \
    _mm512_mask_storeu_ps(d, (__mmask16)((1u << (n)) - 1), _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), s))
#include "conv_body.h"
#include "vec_done.h"
#undef KFN
#undef NC1
#undef NC2
#undef NFMAX
#undef VSTORE_N
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define VEC_AVX2
#include "vec_ops.h"
#define KFN(name) name##_avx2
#define NC1 2
#define NC2 1
#define NFMAX 3
#define VSTORE_N(d, s, n) do {                                                                    \
        const __m256i m_ = _mm256_loadu_si256((const __m256i *)(lane_masks + 8 - (n)));           \
        _mm256_maskstore_ps(d, m_, _mm256_maskload_ps(s, m_));                                   \
    } while (0)
#include "conv_body.h"
#pragma GCC pop_options

/* Floats per vector of the copy that runs here: 16 (AVX-512F), 8 (AVX2 + FMA), 0 (none: the
 * caller takes the PyTorch path). The filters and biases handed in are padded to a multiple
 * of it. */
static int force_avx2 = 0;
int ecomp_conv_block(void) {
    if (!ecomp_isa()) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && !force_avx2 ? 16 : 8;
}

/* Run the AVX2 copy from now on where the AVX-512 one would run (ECOMP_KERNEL_ISA=avx2: the tests'
 * way to reach both copies on one machine). */
void ecomp_conv_force_avx2(void) { force_avx2 = 1; }
#else
#define ECOMP_CONV_VECTOR 0
int ecomp_conv_block(void) { return 0; }
void ecomp_conv_force_avx2(void) {}
#endif

#if ECOMP_CONV_VECTOR
/* ecomp_conv_pool's pass with the images in lanes (conv_body.h's KFN(lanes_task)): for each
 * group and each block of vw images, the images' maps are copied into a zero-bordered buffer of
 * the thread's with the images innermost, every filter of the group runs on them, and the
 * results are copied out image by image. Same operations per output as the pass below. */
static int conv_pool_lanes(const float *x, const int64_t *xs, int64_t n, int64_t g, int64_t cin, int64_t H, int64_t W,
                           const float *wt, const float *b, int64_t f, int64_t fpad, int64_t k, int64_t pad,
                           int64_t stride, int64_t p, int64_t order, float *out, const int64_t *os, int nthreads,
                           int vw) {
    const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad, K = cin * k * k;
    const int64_t Ho = (Hp - k) / stride + 1, Wo = (Wp - k) / stride + 1, ph = Ho / p, pw = Wo / p;
    const int64_t npos = p * p, cells = ph * pw, nv = (n + vw - 1) / vw;
    int64_t *koff = malloc(sizeof(int64_t) * (size_t)(K + cells * npos));
    if (!koff) return -1;
    int64_t *pos = koff + K;
    for (int64_t ky = 0; ky < k; ky++)
        for (int64_t kx = 0; kx < k; kx++)
            for (int64_t c = 0; c < cin; c++)
                koff[order == 0 ? (c * k + ky) * k + kx : (ky * k + kx) * cin + c] = ((ky * Wp + kx) * cin + c) * vw;
    for (int64_t y = 0; y < ph; y++)
        for (int64_t xx = 0; xx < pw; xx++)
            for (int64_t dy = 0; dy < p; dy++)
                for (int64_t dx = 0; dx < p; dx++)
                    pos[(y * pw + xx) * npos + dy * p + dx] = (((y * p + dy) * stride) * Wp + (xx * p + dx) * stride) * cin * vw;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *t = calloc((size_t)(Hp * Wp * cin * vw), sizeof(float));     /* the border stays zero */
        float *r = malloc(sizeof(float) * (size_t)(cells * f * vw));
        if (!t || !r) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < g * nv; task++) {
            if (!t || !r) continue;
            const int64_t j = task / nv, i0 = task % nv * vw, ni = n - i0 < vw ? n - i0 : vw;
            if (vw == 16) lanes_task_avx512(x, xs, j, i0, ni, cin, H, W, pad, t, koff, K, wt + j * K * fpad, fpad,
                                            b + j * fpad, f, pos, npos, cells, pw, r, out, os);
            else lanes_task_avx2(x, xs, j, i0, ni, cin, H, W, pad, t, koff, K, wt + j * K * fpad, fpad, b + j * fpad,
                                 f, pos, npos, cells, pw, r, out, os);
        }
        free(r);
        free(t);
    }
    free(koff);
    return failed ? -1 : 0;
}
#endif

/* The filters as ecomp_conv_pool (and the linear stages) read them: for each of g groups, src's
 * f rows of K floats (row i: filter i's terms in summation order) transposed into dst's K rows of
 * fpad floats (fpad a multiple of the vector width here, >= f), zero from column f on; by tile
 * transposes, groups shared among `nthreads` OpenMP threads. Returns 0, or -1 where no vector copy
 * runs here (nothing written). */
int ecomp_pad_transpose(int64_t src_addr, int64_t g, int64_t f, int64_t K, int64_t fpad, int64_t dst_addr,
                        int nthreads) {
#if ECOMP_CONV_VECTOR
    const int vw = ecomp_conv_block();
    if (vw == 0 || fpad % vw || fpad < f) return -1;
    const float *src = (const float *)(intptr_t)src_addr;
    float *dst = (float *)(intptr_t)dst_addr;
    #pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && g * f * K >= (1 << 16)) schedule(static)
    for (int64_t j = 0; j < g; j++)
        for (int64_t f0 = 0; f0 < fpad; f0 += vw)
            for (int64_t k0 = 0; k0 < K; k0 += vw) {
                const int nr = f - f0 <= 0 ? 0 : (f - f0 < vw ? (int)(f - f0) : vw);
                const int nc = K - k0 < vw ? (int)(K - k0) : vw;
                const float *s = src + (j * f + f0) * K + k0;
                float *d = dst + (j * K + k0) * fpad + f0;
                if (vw == 16) tile_avx512(s, K, nr, nc, d, fpad, nc, 16);
                else tile_avx2(s, K, nr, nc, d, fpad, nc, 8);
            }
    return 0;
#else
    (void)src_addr; (void)g; (void)f; (void)K; (void)fpad; (void)dst_addr; (void)nthreads;
    return -1;
#endif
}

/* What ecomp_conv_pool's vectors hold for `n` images and groups of `f` filters, left to choose: 1
 * the images, where a group has fewer filters than two vectors hold and the images fill more of
 * the lanes than the filters do, weighed by the two inner loops' rates (rates.py --shapes: the
 * images' at the FMA ceiling, a later stage's filters at about 0.75 of it, as their broadcasts
 * wait on the loads): every stage of a population's run of one architecture, a few filters per
 * individual on 100 images. 0 the filters (groups of two vectors of filters and more, or few
 * images). */
int ecomp_conv_lanes(int64_t n, int64_t f) {
    const int64_t vw = ecomp_conv_block();
    if (vw == 0 || n < 1 || f < 1) return 0;
    const int64_t nv = (n + vw - 1) / vw, fpad = (f + vw - 1) / vw * vw;
    return f < 2 * vw && 4 * n * fpad >= 3 * nv * vw * f;
}

/* For every image i and group j (g groups of cin input and f output channels):
 *   out[j, i, y', x', c] = max(0, b[j, c] + max over the p x p window of conv(x[i, group j], w[j, c])[y, x])
 * x: image i's channel c of group j, pixel (y, x) at i * xs[0] + j * xs[1] + c * xs[2] + y * xs[3] + x * xs[4];
 * wt (g, K, fpad): each group's filters, row k the k-th term of the sum (order 0: (c, ky, kx), as
 * the patches' GEMM sums; order 1: (ky, kx, c), as oneDNN's channels-last convolution sums), zero
 * columns from f on; b (g, fpad); out at j * os[0] + i * os[1] + y' * os[2] + x' * os[3] + c.
 * Tasks (a group and a vector's worth of images, or a group and an image) go to `nthreads`
 * OpenMP threads. `lanes`: 1 the images in the vectors' lanes (conv_pool_lanes), 0 the filters,
 * -1 whichever fills them better; the same operations per output either way, so the same bits.
 * Returns 0, or -1 where no vector copy runs here (or memory ran out: nothing is then promised
 * of out). */
int ecomp_conv_pool(int64_t x_addr, const int64_t *xs, int64_t n, int64_t g, int64_t cin, int64_t H, int64_t W,
                    int64_t wt_addr, int64_t b_addr, int64_t f, int64_t fpad, int64_t k, int64_t pad, int64_t stride,
                    int64_t p, int64_t order, int64_t out_addr, const int64_t *os, int64_t lanes, int nthreads) {
#if ECOMP_CONV_VECTOR
    const int vw = ecomp_conv_block();
    if (vw == 0 || fpad % vw != 0 || fpad < f) return -1;
    const float *x = (const float *)(intptr_t)x_addr, *wt = (const float *)(intptr_t)wt_addr;
    const float *b = (const float *)(intptr_t)b_addr;
    float *out = (float *)(intptr_t)out_addr;
    if (lanes == 1 || (lanes < 0 && ecomp_conv_lanes(n, f) == 1))
        return conv_pool_lanes(x, xs, n, g, cin, H, W, wt, b, f, fpad, k, pad, stride, p, order, out, os, nthreads,
                               vw);
    const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad, K = cin * k * k;
    const int64_t Ho = (Hp - k) / stride + 1, Wo = (Wp - k) / stride + 1, ph = Ho / p, pw = Wo / p;
    const int64_t npos = p * p, cells = ph * pw;
    int64_t *koff = malloc(sizeof(int64_t) * (size_t)(K + cells * npos));
    if (!koff) return -1;
    int64_t *pos = koff + K;
    /* Unpadded, the image is read where it is; padded, from a zero-bordered copy (Hp, Wp, cin). */
    const int direct = pad == 0;
    const int64_t sy = direct ? xs[3] : Wp * cin, sx = direct ? xs[4] : cin, sc = direct ? xs[2] : 1;
    for (int64_t c = 0; c < cin; c++)
        for (int64_t ky = 0; ky < k; ky++)
            for (int64_t kx = 0; kx < k; kx++)
                koff[order == 0 ? (c * k + ky) * k + kx : (ky * k + kx) * cin + c] = ky * sy + kx * sx + c * sc;
    for (int64_t y = 0; y < ph; y++)
        for (int64_t xx = 0; xx < pw; xx++)
            for (int64_t dy = 0; dy < p; dy++)
                for (int64_t dx = 0; dx < p; dx++)
                    pos[(y * pw + xx) * npos + dy * p + dx] = ((y * p + dy) * stride) * sy + ((xx * p + dx) * stride) * sx;
    /* One group whose image's maps are one run in `out` (cells x f floats): each image's maps are
     * made in a buffer of the thread's, then copied out at once. The kernel's stores are a few
     * floats per cell and block of channels; made straight into `out`, a large map that is not
     * in the cache, each one waits for its line to be read in (the stage ran at about 0.6 of the
     * rate it reaches on a map left in the cache). The buffer (at most a few hundred KB) stays in
     * the thread's cache and the copy is sequential. Same values. */
    const int staged = g == 1 && os[3] == f && os[2] == pw * f;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *xp = direct ? NULL : calloc((size_t)(Hp * Wp * cin), sizeof(float));     /* the border stays zero */
        float *stage = staged ? malloc(sizeof(float) * (size_t)(cells * f)) : NULL;      /* NULL: straight into out */
        if (!direct && !xp) {
            #pragma omp atomic write
            failed = 1;
        }
        /* group by group, image after image: a group's filters stay in the cache, and where the
         * maps are each group's own block (as the run's later stages have them) the images are read
         * one after the other */
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < n * g; t++) {
            if (!direct && !xp) continue;
            const int64_t i = t % n, j = t / n;
            const float *xi = x + i * xs[0] + j * xs[1];
            if (!direct)
                for (int64_t y = 0; y < H; y++) {
                    float *d = xp + ((y + pad) * Wp + pad) * cin;
                    const float *s = xi + y * xs[3];
                    if (cin == 1 && xs[4] == 1) memcpy(d, s, sizeof(float) * (size_t)W);
                    else
                        for (int64_t xx = 0; xx < W; xx++, d += cin)
                            for (int64_t c = 0; c < cin; c++) d[c] = s[xx * xs[4] + c * xs[2]];
                }
            const float *img = direct ? xi : xp;
            float *o = out + j * os[0] + i * os[1];
            /* where the maps go: `o` as the caller lays them out, or the buffer */
            float *dst = stage ? stage : o;
            const int64_t ly = stage ? pw * f : os[2], lx = stage ? f : os[3];
            if (vw == 16) conv_pool_image_avx512(img, koff, K, wt + j * K * fpad, fpad, b + j * fpad, f, pos, npos, cells,
                                                 ly, lx, pw, dst);
            else conv_pool_image_avx2(img, koff, K, wt + j * K * fpad, fpad, b + j * fpad, f, pos, npos, cells,
                                      ly, lx, pw, dst);
            if (stage) memcpy(o, stage, sizeof(float) * (size_t)(cells * f));
        }
        free(stage);
        free(xp);
    }
    free(koff);
    return failed ? -1 : 0;
#else
    (void)x_addr; (void)xs; (void)n; (void)g; (void)cin; (void)H; (void)W; (void)wt_addr; (void)b_addr; (void)f;
    (void)fpad; (void)k; (void)pad; (void)stride; (void)p; (void)order; (void)out_addr; (void)os; (void)lanes;
    (void)nthreads;
    return -1;
#endif
}
