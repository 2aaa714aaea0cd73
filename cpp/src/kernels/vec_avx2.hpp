// The vector type of the AVX2 + FMA + F16C kernels: 8 floats in a __m256.
// Only kernels/avx2.cpp includes this, compiled with -mavx2 -mfma -mf16c.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "dotattn/dotattn.hpp"

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
  // exp_sum exponentiates this many keys' vectors at once, their steps
  // interleaved (exp of K registers), in the order it then adds them.
  // Measured on Zen 1, one thread, a 96 x 64 tile: 8.58 us one at a time,
  // 7.57 us four at once; the rest is throughput (two FMA pipes, each
  // 256-bit operation split in two), not latency.
  static constexpr int kExpAtOnce = 4;
  // fma_peak's chains: 12 of the 16 registers (16 spilled), more than the
  // 4-cycle latency times 2 FMA pipes of Zen and Intel cores.
  static constexpr int kPeakChains = 12;

  // Measured on Zen 3 (also the portable set's):
  // - row_block 96, a whole number of the score and P·V tiles: 2% faster
  //   than 64 on the prefill shape.
  // - key_block_bytes 64 KiB: prefill, 2 threads, 147 GFLOP/s at 64 KiB,
  //   135 at 128, 131 at 192.
  // - key_bytes_ahead, value_bytes_ahead: one core, float32, E = Ev = 128,
  //   K and V far larger than the caches: keys read at 7.8 GB/s without
  //   prefetching and 13 to 14.6 with 6 to 24 keys (3 to 12 KiB) ahead;
  //   values at 8.8 without and 11 to 12.5 with 8 or 16 (4 or 8 KiB) ahead
  //   (a plain streaming read: 12 GB/s). The hardware prefetchers stop at
  //   each 4 KiB page. The short ends of those ranges serve a paged cache
  //   best: on Zen 4, 2 threads, cold float16 decode over pages of 16
  //   tokens at random ran at 0.92x of contiguous with 6 and 8 KiB and 0.99x
  //   with 3 and 4 KiB (the mean of 3 runs each), contiguous alike.
  // - value_chunk_bytes 2 KiB: 2 threads, cold, decode shapes with E = 128,
  //   % of the streaming read bandwidth: float32 74-81% with 4 rows (2 KiB)
  //   against 64-66% with 16; float16 49-66% with 4 rows, 55-67% with 8
  //   (2 KiB); int8 25-34% with 4, 28-36% with 8 and 16 (2 KiB).
  // - decode_key_block_bytes: key_block_bytes' 64 KiB, as before the two
  //   were told apart. (On Zen 5, an AVX-512 CPU, 512 KiB measured
  //   0.96-1.16x for this set; not measured on an AVX2-only CPU.)
  static constexpr Tuning kTuning{96, 64 * 1024, 64 * 1024, 512, 3072, 4096, 2048};

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
  // Lane i: the sum of x[i]'s lanes. A tree over all 8 at once: 21
  // instructions where 8 horizontal sums apart take 48. Within each
  // 128-bit half, lanes 2 apart are added, then 1 apart; then the halves.
  static R sums(const R (&x)[N]) {
    R pairs[4], quads[2];
    for (int i = 0; i < 4; ++i)
      pairs[i] = _mm256_add_ps(_mm256_unpacklo_ps(x[2 * i], x[2 * i + 1]),
                               _mm256_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
      quads[i] = _mm256_add_ps(_mm256_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0x44),
                               _mm256_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0xEE));
    return _mm256_add_ps(_mm256_permute2f128_ps(quads[0], quads[1], 0x20),
                         _mm256_permute2f128_ps(quads[0], quads[1], 0x31));
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
