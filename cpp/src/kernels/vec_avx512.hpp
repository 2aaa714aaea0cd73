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
  // Dot-product score tile for few rows: 24 accumulators, 6 keys loaded.
  static constexpr int kDotRows = 4, kDotKeys = 6;

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
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  // vmaxps returns its second operand when either is NaN; keep a NaN in a.
  static R max_nan(R a, R b) {
    return _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
  }
  static R low_bits_as_exponent(R t) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23));
  }
  static T reduce_add(R x) { return _mm512_reduce_add_ps(x); }
  static R from_f16(const std::uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(static_cast<const void*>(p))));
  }
  static R from_bf16(const std::uint16_t* p) {
    const __m256i bits = _mm256_loadu_si256(static_cast<const __m256i*>(static_cast<const void*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static R from_i8(const std::int8_t* p) {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(static_cast<const __m128i*>(static_cast<const void*>(p)))));
  }
  template <int K>
  static void exp(R (&x)[K]);
  static R tanh(R x);
};

}  // namespace dotattn::kernels
