// The vector type of the AVX2 + FMA + F16C kernels: 8 floats in a __m256.
// Only kernels/avx2.cpp includes this, compiled with -mavx2 -mfma -mf16c.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace dotattn::kernels {

struct VecAvx2F32 {
  using T = float;
  using R = __m256;
  static constexpr std::int64_t N = 8;
  // 12 accumulators each, leaving 4 of the 16 registers for the loaded
  // vectors, the broadcast and the scale. Measured on Zen 3 (one core,
  // E = 64, 64 rows x 256 keys): score 4 x 3 at 94 GFLOP/s against 59 for
  // 6 x 2, whose extra register spilled; P·V 6 x 2 at 83 against 55 for
  // 3 x 4.
  static constexpr int kScoreKeys = 4, kScoreRowVecs = 3;
  static constexpr int kPvRows = 6, kPvColVecs = 2;
  // Dot-product score tile for few rows: 12 accumulators, 3 keys loaded.
  static constexpr int kDotRows = 4, kDotKeys = 3;

  static R zero() { return _mm256_setzero_ps(); }
  static R set1(T x) { return _mm256_set1_ps(x); }
  static R load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, R x) { _mm256_storeu_ps(p, x); }
  static __m256i first(std::int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R load_partial(const T* p, std::int64_t n) { return _mm256_maskload_ps(p, first(n)); }
  static void store_partial(T* p, R x, std::int64_t n) { _mm256_maskstore_ps(p, first(n), x); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  // maxps returns its second operand when either is NaN; keep a NaN in a.
  static R max_nan(R a, R b) {
    return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  static R low_bits_as_exponent(R t) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
  }
  static T reduce_add(R x) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  static __m128i load_bytes16(const void* p) {
    return _mm_loadu_si128(static_cast<const __m128i*>(p));
  }
  static R from_f16(const std::uint16_t* p) { return _mm256_cvtph_ps(load_bytes16(p)); }
  static R from_bf16(const std::uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load_bytes16(p)), 16));
  }
  static R from_i8(const std::int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(
        static_cast<const void*>(p)))));
  }
  template <int K>
  static void exp(R (&x)[K]);
  static R tanh(R x);
};

}  // namespace dotattn::kernels
