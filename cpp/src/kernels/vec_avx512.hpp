// The vector type of the AVX-512 kernels: 16 floats in a __m512, tails
// through mask registers. Only kernels/avx512.cpp includes this, compiled
// with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma, and, for the
// test-only set avx512_emulated, kernels/avx512_emulated.cpp, compiled with
// AVX2 flags only, which defines DOTATTN_AVX512_EMULATED and includes
// SIMDe's intrinsics first: there the type is
// dotattn::kernels::emulated::VecAvx512F32, a type of its own, so that
// BlockKernelsFor<> of it is another instantiation, with other symbols,
// than the native one (two definitions of one, one per ISA, would break the
// ODR).
#pragma once

#ifndef DOTATTN_AVX512_EMULATED
#include <immintrin.h>
#endif

#include <cstdint>

#include "dotattn/dotattn.hpp"

#ifdef DOTATTN_AVX512_EMULATED
namespace dotattn::kernels::emulated {
#else
namespace dotattn::kernels {
#endif

struct VecAvx512F32 {
  using T = float;
  using R = __m512;
  static constexpr std::int64_t N = 16;
  // 24 accumulators + 2 loaded vectors + 1 broadcast of the 32 registers.
  static constexpr int kScoreKeys = 12, kScoreRowVecs = 2;
  static constexpr int kPvRows = 12, kPvColVecs = 2;
  // Dot-product score tile for few rows: 16 accumulators, added by one tree
  // (sums), 4 keys loaded. Cold decode on Zen 5, 2 threads, against 4 x 6
  // (24 accumulators, 2 trees): the same within the noise (float32
  // 0.93-0.99x of avx2 either way, bfloat16 0.95-1.13x).
  static constexpr int kDotRows = 4, kDotKeys = 4;
  // exp_sum's keys at once (vec_avx2.hpp): 8 measured no faster than 4
  // on Zen 5 (4.1-4.2 G scores/s, python -m dotattn bench --kernels).
  static constexpr int kExpAtOnce = 4;
  // fma_peak's chains: 16 of the 32 registers, twice the 4-cycle latency
  // times 2 FMA pipes of Zen 4/5 and Sapphire Rapids.
  static constexpr int kPeakChains = 16;
  // Measured on Zen 5 (2 threads; python -m dotattn tune, then the winners
  // side by side, 5 alternating rounds):
  // - row_block 64 and key_block_bytes 128 KiB (144 keys at E = 64, 84 at
  //   128) against avx2's 96 and 64 KiB: prefill 1.24x, causal 1.11x, long
  //   1.10x; 48 or 192 rows, 96, 192 or 256 KiB no better (within 3%) or
  //   worse (long at 192 rows: 0.90x).
  // - The decoding parameters: every candidate within 2-5% of avx2's
  //   values, and differently in two sweeps an hour apart: noise, so
  //   avx2's are kept. min_split_keys 2048 measured 1.05x on 2 threads,
  //   but a quarter of the work items would leave a 16-core machine idle
  //   on the decode shape.
  // - decode_key_block_bytes 512 KiB (480 keys at E = 128, within a split
  //   range) against 128 KiB: cold decode, decode_b8, decode_long 1.02-1.06x
  //   float32, 1.04-1.05x bfloat16, 1.02-1.06x int8 (15 cold calls each,
  //   alternating in one process); 256 KiB 0.94-1.08x.
  static constexpr Tuning kTuning{64, 128 * 1024, 512 * 1024, 512, 3072, 4096, 2048};

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
  // Lane i: the sum of x[i]'s lanes. A tree over all 16 at once: 45
  // instructions where 16 horizontal sums apart take 128. Within each
  // 128-bit lane, lanes 2 apart are added, then 1 apart; then the 128-bit
  // lanes, 1 apart and 2 apart.
  static R sums(const R (&x)[N]) {
    R pairs[8], quads[4], halves[2];
    for (int i = 0; i < 8; ++i)
      pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]),
                               _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 4; ++i)
      quads[i] = _mm512_add_ps(_mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0x44),
                               _mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; ++i)
      halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                                _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88),
                         _mm512_shuffle_f32x4(halves[0], halves[1], 0xDD));
  }
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

}  // namespace dotattn::kernels(::emulated)
