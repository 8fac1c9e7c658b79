/* The vector operations of one copy of the lanes kernels (conv.c, resnet.c): define VEC_AVX512 or
 * VEC_AVX2, then include this under that copy's target options; vec_done.h undefines it all.
 * VEC is the vector type and VW its floats; VZERO, VSET1(x), VLOAD(p), VSTORE(p, v),
 * VFMA(a, b, c) (a * b + c, rounded once), VMAX, VADD, VMUL its operations (VMAX(a, b) is b
 * where either is NaN, as the instruction is; VMAXN(a, b) NaN where either is), VBC1/2/4(p) the
 * 1, 2 or 4 floats at p repeated over the lanes, VPERM(v, idx) lane l of v taken from lane idx[l]
 * (idx: VW int32), VTILE its VW x VW tile copy (transpose.h). */
#if defined(VEC_AVX512)
#define VEC __m512
#define VW 16
#define VZERO _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VMAXN(a, b) _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a)
#define VBC1(p) _mm512_set1_ps(*(p))
#define VBC2(p) _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_load_sd((const double *)(p))))
#define VBC4(p) _mm512_broadcast_f32x4(_mm_loadu_ps(p))
#define VPERM(v, idx) _mm512_permutexvar_ps(_mm512_loadu_si512(idx), v)
#define VTILE tile_avx512
#elif defined(VEC_AVX2)
#define VEC __m256
#define VW 8
#define VZERO _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VMAXN(a, b) _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q))
#define VBC1(p) _mm256_set1_ps(*(p))
#define VBC2(p) _mm256_castpd_ps(_mm256_broadcast_sd((const double *)(p)))
#define VBC4(p) _mm256_broadcast_ps((const __m128 *)(p))
#define VPERM(v, idx) _mm256_permutevar8x32_ps(v, _mm256_loadu_si256((const __m256i *)(idx)))
#define VTILE tile_avx2
#endif
