// The vector type of the AVX-512 kernels: 16 floats in a __m512, tails
// through mask registers. Only kernels/avx512.cpp includes this, compiled
// with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace dotattn::kernels {

struct VecAvx512F32 {
  using T = float;
  using R = __m512;
  static constexpr std::int64_t N = 16;
  // 24 accumulators + 2 loaded vectors + 1 broadcast of the 32 registers.
  static constexpr int kScoreKeys = 12, kScoreRowVecs = 2;
  static constexpr int kPvRows = 12, kPvColVecs = 2;

  static R zero() { return _mm512_setzero_ps(); }
  static R set1(T x) { return _mm512_set1_ps(x); }
  static R load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, R x) { _mm512_storeu_ps(p, x); }
  static __mmask16 first(std::int64_t n) {
    return static_cast<__mmask16>((1u << static_cast<unsigned>(n)) - 1u);
  }
  static R load_partial(const T* p, std::int64_t n) { return _mm512_maskz_loadu_ps(first(n), p); }
  static void store_partial(T* p, R x, std::int64_t n) { _mm512_mask_storeu_ps(p, first(n), x); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  // vmaxps returns its second operand when either is NaN; keep a NaN in a.
  static R max_nan(R a, R b) {
    return _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
  }
  static __mmask16 below(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static R zero_where(__mmask16 mask, R x) { return _mm512_maskz_mov_ps(_knot_mask16(mask), x); }
  static R round(R x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // 2^n for whole n in [-126, 127].
  static R pow2i(R n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static R exp(R x);
};

}  // namespace dotattn::kernels
