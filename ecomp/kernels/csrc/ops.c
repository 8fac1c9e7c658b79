/* Crossover for ecomp.core.recombination (loaded with ctypes by ecomp.kernels.native).
 *
 * Child j of a crossover is its bulk parent's layer with the top-left c x c block and the
 * first c biases taken from its donor parent. The PyTorch fallback in
 * ecomp/core/recombination.py copies the bulk parent and then assigns the block; here each
 * child is written in one pass, every byte once, and the children of a layer are shared
 * out over threads. Plain copies: the results are bit for bit those of the fallback. */
#include <stdint.h>
#include <string.h>

/* With `stream`, copies of whole rows go straight to memory (non-temporal stores) where the
 * CPU has AVX: a generation's first layers are tens of MB, written once and read by the next
 * forward pass long after they would have left the cache, so reading the destination lines
 * in first (what a cached store does) only costs bandwidth. Only for memory already touched
 * (the recycled first-layer buffers): on fresh pages each fault clears the page through the
 * cache and streaming stores then run several times slower than plain ones. Same bytes
 * either way. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx"))) static void stream_copy_avx(float *dst, const float *src, size_t n) {
    size_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 31); i++) dst[i] = src[i];
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    for (; i < n; i++) dst[i] = src[i];
}
static void stream_copy(float *dst, const float *src, size_t n, int stream) {
    static int avx = -1;
    if (avx < 0) {
        __builtin_cpu_init();
        avx = __builtin_cpu_supports("avx");
    }
    if (stream && avx && n >= 64) stream_copy_avx(dst, src, n);
    else memcpy(dst, src, sizeof(float) * n);
}
static void stream_fence(void) { _mm_sfence(); }
#else
static void stream_copy(float *dst, const float *src, size_t n, int stream) {
    (void)stream;
    memcpy(dst, src, sizeof(float) * n);
}
static void stream_fence(void) {}
#endif

/* dst[r, :c] = src[r, :c] for r < rows, rows dst_ld and src_ld floats apart. */
static void copy_block(float *dst, int64_t dst_ld, const float *src, int64_t src_ld, int64_t rows, int64_t c) {
    for (int64_t r = 0; r < rows; r++) memcpy(dst + r * dst_ld, src + r * src_ld, sizeof(float) * (size_t)c);
}

/* For each child j < n (addresses as integers; weights row-major with contiguous rows of
 * cols[j] floats for the child and its bulk parent and dcols[j] for the donor, c = cut[j] rows
 * and k = ccut[j] columns of the donor's block, ccut NULL: k = c):
 *   child_w[r] = donor_w[r, :k] ++ bulk_w[r, k:]  for r < c,  bulk_w[r]  for c <= r < rows[j];
 *   child_b    = donor_b[:c] ++ bulk_b[c:rows[j]].
 * A rectangular block is a network's layer whose inputs are wider than one column each (a
 * convolution's channel spans k x k columns of its flattened filters). Children must not
 * overlap their parents; `stream`: see stream_copy. Children go to `nthreads` OpenMP threads,
 * interleaved (neighbouring children have similar sizes). */
void ecomp_recombine(int64_t n, const int64_t *child_w, const int64_t *child_b, const int64_t *bulk_w,
                     const int64_t *bulk_b, const int64_t *donor_w, const int64_t *donor_b,
                     const int64_t *rows, const int64_t *cols, const int64_t *dcols, const int64_t *cut,
                     const int64_t *ccut, int stream, int nthreads) {
    #pragma omp parallel for schedule(static, 1) num_threads(nthreads) if (nthreads > 1)
    for (int64_t j = 0; j < n; j++) {
        float *w = (float *)(intptr_t)child_w[j], *b = (float *)(intptr_t)child_b[j];
        const float *sw = (const float *)(intptr_t)bulk_w[j], *sb = (const float *)(intptr_t)bulk_b[j];
        const float *dw = (const float *)(intptr_t)donor_w[j], *db = (const float *)(intptr_t)donor_b[j];
        const int64_t c = cut[j], cc = ccut ? ccut[j] : c, k = cols[j], m = rows[j];
        copy_block(w, k, dw, dcols[j], c, cc);                /* the donor's block */
        copy_block(w + cc, k, sw + cc, k, c, k - cc);         /* the rest of those rows */
        stream_copy(w + c * k, sw + c * k, (size_t)((m - c) * k), stream);
        memcpy(b, db, sizeof(float) * (size_t)c);
        memcpy(b + c, sb + c, sizeof(float) * (size_t)(m - c));
    }
    stream_fence();                                   /* the streamed stores are visible to all */
}

/* Crossover in place, for a population of one architecture (every individual's layer is
 * `rows` x `cols` at slot s: weights w + s * rows * cols, biases b + s * rows). Child j is
 * stored at slot[j]; its bulk parent is at source[j] and its donor at donor[j]; c = cut[j].
 * A child whose slot is its bulk parent's (source[j] == slot[j]) keeps that storage and only
 * has its donor block written: that is most children (a parent picked k times as bulk leaves
 * its slot to the first of them), so most of a generation's bytes are never moved. The others
 * get the bulk parent's layer copied into a slot that no child reads from as bulk (the caller
 * checks this and that the slots are a permutation). Three threaded phases:
 *   1. every donor block (and its c biases) into scratch (sum of c * c + c floats), before
 *      anything is written: donors' slots are overwritten below;
 *   2. the copies for children not in place (their sources are only written in phase 3);
 *   3. every child's block from scratch.
 * The result is bit for bit that of ecomp_recombine into separate storage. */
void ecomp_recombine_inplace(int64_t n, int64_t w_addr, int64_t b_addr, int64_t rows, int64_t cols,
                             const int64_t *slot, const int64_t *source, const int64_t *donor,
                             const int64_t *cut, int64_t scratch_addr, const int64_t *scratch_off,
                             int stream, int nthreads) {
    float *w = (float *)(intptr_t)w_addr, *b = (float *)(intptr_t)b_addr;
    float *scratch = (float *)(intptr_t)scratch_addr;
    const size_t lw = (size_t)(rows * cols);
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        #pragma omp for schedule(static, 1)
        for (int64_t j = 0; j < n; j++) {
            const int64_t c = cut[j];
            const float *dw = w + (size_t)donor[j] * lw;
            float *s = scratch + scratch_off[j];
            copy_block(s, c, dw, cols, c, c);
            memcpy(s + c * c, b + (size_t)(donor[j] * rows), sizeof(float) * (size_t)c);
        }
        #pragma omp for schedule(static, 1) nowait
        for (int64_t j = 0; j < n; j++) {
            if (source[j] == slot[j]) continue;
            stream_copy(w + (size_t)slot[j] * lw, w + (size_t)source[j] * lw, lw, stream);
            memcpy(b + (size_t)(slot[j] * rows), b + (size_t)(source[j] * rows), sizeof(float) * (size_t)rows);
        }
        stream_fence();                               /* each thread's streamed stores, then */
        #pragma omp barrier                           /* all copies are done before phase 3 */
        #pragma omp for schedule(static, 1)
        for (int64_t j = 0; j < n; j++) {
            const int64_t c = cut[j];
            float *cw = w + (size_t)slot[j] * lw;
            const float *s = scratch + scratch_off[j];
            copy_block(cw, cols, s, c, c, c);
            memcpy(b + (size_t)(slot[j] * rows), s + c * c, sizeof(float) * (size_t)c);
        }
    }
}

/* The per-individual runs of a map whose rows hold g individuals' c values each:
 *   dst[j, r, :c] = src[r * src_ld + j * c : ... + c]   for j < g, r < rows
 * (dst is g contiguous blocks of rows x c floats; src rows are src_ld floats apart). A
 * convolutional population's channels-last maps regrouped per individual for the similarity:
 * runs of 3 or 5 channels, where torch's strided copy moves a float at a time. Rows go to
 * `nthreads` OpenMP threads in blocks, each block read once from src, while it is in cache,
 * into every individual's block. Plain copies: bit for bit those of torch. */
void ecomp_gather_runs(int64_t dst_addr, int64_t src_addr, int64_t rows, int64_t src_ld, int64_t g, int64_t c,
                       int nthreads) {
    float *dst = (float *)(intptr_t)dst_addr;
    const float *src = (const float *)(intptr_t)src_addr;
    const int64_t block = 64;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
        const int64_t r1 = r0 + block < rows ? r0 + block : rows;
        for (int64_t j = 0; j < g; j++) {
            float *d = dst + (j * rows + r0) * c;
            const float *s = src + r0 * src_ld + j * c;
            for (int64_t r = r0; r < r1; r++, d += c, s += src_ld)
                for (int64_t k = 0; k < c; k++) d[k] = s[k];
        }
    }
}
