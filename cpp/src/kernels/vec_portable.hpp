// The vector type of the portable kernels, in GCC/Clang vector extensions:
// the compiler lowers it to whatever the baseline target has (SSE2 on
// x86-64). 64 bytes wide, like AVX-512, so the same tile shapes and tails
// that the AVX-512 kernels take are exercised on every machine.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "dotattn/dotattn.hpp"
#include "half_precision.hpp"  // baseline code only: scalar.cpp alone includes this file

namespace dotattn::kernels {

template <class Elem, class Int>
struct VecPortable {
  using T = Elem;
  typedef T R __attribute__((vector_size(64)));
  typedef Int M __attribute__((vector_size(64)));
  static constexpr std::int64_t N = 64 / sizeof(T);
  // Small tiles: 16 SSE registers hold only four 64-byte vectors.
  static constexpr int kScoreKeys = 2, kScoreRowVecs = 1;
  static constexpr int kPvRows = 2, kPvColVecs = 1;
  static constexpr int kDotRows = 2, kDotKeys = 1;
  static constexpr int kExpAtOnce = 4;
  static constexpr int kPeakChains = 4;  // each a 64-byte vector: 4 SSE2 registers
  // The AVX2 set's (vec_avx2.hpp): the portable set serves correctness.
  static constexpr Tuning kTuning{96, 64 * 1024, 64 * 1024, 512, 3072, 4096, 2048};

  static R zero() { return R{}; }
  static R set1(T x) { return R{} + x; }
  static R load(const T* p) {
    R x;
    std::memcpy(&x, p, sizeof x);
    return x;
  }
  static void store(T* p, R x) { std::memcpy(p, &x, sizeof x); }
  static R load_partial(const T* p, std::int64_t n) {
    R x{};
    for (std::int64_t i = 0; i < n; ++i) x[i] = p[i];
    return x;
  }
  static void store_partial(T* p, R x, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) p[i] = x[i];
  }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R fmadd(R a, R b, R c) { return a * b + c; }
  static R div(R a, R b) { return a / b; }
  static R min(R a, R b) { return a < b ? a : b; }
  static R max(R a, R b) { return a > b ? a : b; }
  static R max_nan(R a, R b) { return (a > b || a != a) ? a : b; }
  static R low_bits_as_exponent(R t) {
    M bits;
    std::memcpy(&bits, &t, sizeof bits);
    bits <<= 23;
    R x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
  }
  // Lane i: the sum of x[i]'s lanes, in the AVX-512 set's order (within
  // each 4 lanes, lanes 2 apart, then 1 apart; then the groups of 4
  // pairwise), so that for float32 the two sets' few-rows scores agree bit
  // for bit.
  static R sums(const R (&x)[N]) {
    static_assert(N % 4 == 0 && ((N / 4) & (N / 4 - 1)) == 0, "N / 4 groups, a power of two");
    R out;
    for (std::int64_t i = 0; i < N; ++i) {
      T group[N / 4];
      for (std::int64_t g = 0; g < N / 4; ++g) {
        const T* lane = &x[i][0] + 4 * g;
        group[g] = (lane[0] + lane[2]) + (lane[1] + lane[3]);
      }
      for (std::int64_t width = N / 4; width > 1; width /= 2)
        for (std::int64_t g = 0; g < width / 2; ++g) group[g] = group[2 * g] + group[2 * g + 1];
      out[i] = group[0];
    }
    return out;
  }
  // The stored formats, widened one element at a time by the portable
  // conversions the shared code uses (half_precision.hpp).
  static R from_f16(const std::uint16_t* p) {
    R x;
    for (std::int64_t i = 0; i < N; ++i) x[i] = static_cast<T>(detail::float16_value(p[i]));
    return x;
  }
  static R from_bf16(const std::uint16_t* p) {
    R x;
    for (std::int64_t i = 0; i < N; ++i) x[i] = static_cast<T>(detail::bfloat16_value(p[i]));
    return x;
  }
  static R from_i8(const std::int8_t* p) {
    R x;
    for (std::int64_t i = 0; i < N; ++i) x[i] = static_cast<T>(p[i]);
    return x;
  }
  template <int K>
  static void exp(R (&x)[K]);
  static R tanh(R x);
};

}  // namespace dotattn::kernels
