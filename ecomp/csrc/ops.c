/* Crossover copies for ecomp.recombination (loaded with ctypes by ecomp.native).
 *
 * Child j of a crossover is its bulk parent's layer with the top-left c x c block and the
 * first c biases taken from its donor parent. The PyTorch fallback in
 * ecomp/recombination.py does the same with two slice assignments per layer and child;
 * here one call does every child of a layer. Plain copies: the results are bit for bit
 * those of the fallback. */
#include <stdint.h>
#include <string.h>

/* For each child j < n (addresses as integers; weights row-major, contiguous rows of
 * `cols[j]` floats for the child and its bulk parent, `donor_cols[j]` for the donor):
 * if copy_bulk, child_w = bulk_w (rows[j] x cols[j]) and child_b = bulk_b (rows[j]);
 * then child_w[:c, :c] = donor_w[:c, :c] and child_b[:c] = donor_b[:c] with c = cut[j]. */
void ecomp_crossover(int64_t n, const int64_t *child_w, const int64_t *child_b, const int64_t *bulk_w,
                     const int64_t *bulk_b, const int64_t *donor_w, const int64_t *donor_b,
                     const int64_t *rows, const int64_t *cols, const int64_t *donor_cols,
                     const int64_t *cut, int copy_bulk) {
    for (int64_t j = 0; j < n; j++) {
        float *w = (float *)(intptr_t)child_w[j], *b = (float *)(intptr_t)child_b[j];
        const float *dw = (const float *)(intptr_t)donor_w[j], *db = (const float *)(intptr_t)donor_b[j];
        if (copy_bulk) {
            memcpy(w, (const float *)(intptr_t)bulk_w[j], sizeof(float) * (size_t)(rows[j] * cols[j]));
            memcpy(b, (const float *)(intptr_t)bulk_b[j], sizeof(float) * (size_t)rows[j]);
        }
        const int64_t c = cut[j];
        for (int64_t r = 0; r < c; r++)
            memcpy(w + r * cols[j], dw + r * donor_cols[j], sizeof(float) * (size_t)c);
        memcpy(b, db, sizeof(float) * (size_t)c);
    }
}
