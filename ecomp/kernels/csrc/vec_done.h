/* Undefines what vec_ops.h defined, for the next copy. */
#undef VEC
#undef VW
#undef VZERO
#undef VSET1
#undef VLOAD
#undef VSTORE
#undef VFMA
#undef VMAX
#undef VADD
#undef VMUL
#undef VMAXN
#undef VTILE
#undef VEC_AVX512
#undef VEC_AVX2
