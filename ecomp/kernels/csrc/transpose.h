/* In-register transposes of a square of vectors, for conv.c, resnet.c and blocked.c: r[i], row i of the
 * square, becomes its column i. The 16 x 16: 4 x 4 blocks within each 128-bit lane by unpacks
 * and shuffles, then the lanes by two rounds of 128-bit shuffles; the 8 x 8 likewise with one
 * round. Each includer compiles them under its own target options. */
#ifndef ECOMP_TRANSPOSE_H
#define ECOMP_TRANSPOSE_H
#include <immintrin.h>
#include <stdint.h>

__attribute__((target("avx512f"))) static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 8; i++) {
        const int a = (i / 4) * 8 + i % 4;
        t[a] = _mm512_shuffle_f32x4(r[a], r[a + 4], 0x88);
        t[a + 4] = _mm512_shuffle_f32x4(r[a], r[a + 4], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

__attribute__((target("avx2"))) static inline void transpose8(__m256 r[8]) {
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; i++) r[i] = t[i];
}
/* -1 in the first n of eight lanes from lane_masks + 8 - n: AVX2's masks for n floats */
static const int32_t lane_masks[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* Tile copies by these transposes (conv.c's and resnet.c's VTILE): dst[j * ldd + i] = src[i * lds + j]
 * for a 16 x 16 tile: rows i < nr of src are read (their first nc floats; the rest, and rows from
 * nr on, read as zero), rows j < ns of dst are written (their first ms floats). */
__attribute__((target("avx512f"))) static inline void tile_avx512(const float *src, int64_t lds, int nr, int nc,
                                                                  float *dst, int64_t ldd, int ns, int ms) {
    const __mmask16 lm = (__mmask16)((1u << nc) - 1), sm = (__mmask16)((1u << ms) - 1);
    __m512 r[16];
    for (int i = 0; i < 16; i++) r[i] = i < nr ? _mm512_maskz_loadu_ps(lm, src + i * lds) : _mm512_setzero_ps();
    transpose16(r);
    for (int j = 0; j < ns; j++) _mm512_mask_storeu_ps(dst + j * ldd, sm, r[j]);
}

/* the 8 x 8 copy (as tile_avx512) */
__attribute__((target("avx2"))) static inline void tile_avx2(const float *src, int64_t lds, int nr, int nc,
                                                             float *dst, int64_t ldd, int ns, int ms) {
    const __m256i lm = _mm256_loadu_si256((const __m256i *)(lane_masks + 8 - nc));
    const __m256i sm = _mm256_loadu_si256((const __m256i *)(lane_masks + 8 - ms));
    __m256 r[8];
    for (int i = 0; i < 8; i++) r[i] = i < nr ? _mm256_maskload_ps(src + i * lds, lm) : _mm256_setzero_ps();
    transpose8(r);
    for (int j = 0; j < ns; j++) _mm256_maskstore_ps(dst + j * ldd, sm, r[j]);
}
#endif
