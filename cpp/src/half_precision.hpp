// float16 and bfloat16 one element at a time, in portable code: the query,
// an additive mask and the results of a call whose query is 16-bit are
// widened or narrowed here (a row at a time, next to the work of that row),
// and the scalar kernels widen K and V with the same functions. Only code
// compiled for the baseline CPU may include this (the shared sources and
// kernels/scalar.cpp): an inline function built with an ISA's flags could be
// the one copy the linker keeps.
#pragma once

#include <cstdint>
#include <cstring>

#include "dotattn/dotattn.hpp"

namespace dotattn::detail {

inline std::uint32_t float_bits(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

inline float bits_as_float(std::uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// Exact: the exponent and mantissa moved into a float's place and the
// exponent rebiased by a multiplication by 2^112, exact for normal and
// subnormal values alike, with no branch (no F16C at the baseline).
inline float float16_value(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16, rest = (h & 0x7fffu) << 13;
  const std::uint32_t inf_or_nan = rest >= 0x0f800000u ? 0x7f800000u : 0u;
  const float magnitude = inf_or_nan ? bits_as_float(rest | inf_or_nan) : bits_as_float(rest) * 0x1p112f;
  return bits_as_float(float_bits(magnitude) | sign);
}

inline float bfloat16_value(std::uint16_t h) { return bits_as_float(std::uint32_t(h) << 16); }

// Rounded to nearest, ties to even, as NumPy's astype and F16C's vcvtps2ph
// do: beyond 65504 (from 65520 on) to inf, below 2^-14 to a subnormal, NaN
// to a quiet NaN of the same sign.
inline std::uint16_t to_float16(float x) {
  const std::uint32_t bits = float_bits(x);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t a = bits & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // 65520 and up
  if (a >= 0x38800000u) {  // a normal float16: rebias the exponent by -112, round off 13 bits
    const std::uint32_t rebiased = a - 0x38000000u;
    return static_cast<std::uint16_t>(sign | ((rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13));
  }
  const int exponent = static_cast<int>(a >> 23);
  if (exponent < 102) return sign;  // under 2^-25: rounds to zero
  // A subnormal float16 counts units of 2^-24: the mantissa with its
  // leading bit, shifted right by 126 - exponent (14 to 24 bits), rounded.
  const std::uint32_t mantissa = (a & 0x7fffffu) | 0x800000u;
  const int shift = 126 - exponent;
  std::uint32_t units = mantissa >> shift;
  const std::uint32_t rest = mantissa & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (units & 1u))) ++units;
  return static_cast<std::uint16_t>(sign | units);
}

// Rounded to nearest, ties to even (as ml_dtypes); NaN stays a quiet NaN.
inline std::uint16_t to_bfloat16(float x) {
  const std::uint32_t bits = float_bits(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  return static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// Element i of a float array of `dtype` (float32, float64, float16 or
// bfloat16), as T.
template <class T>
T element_as(DType dtype, const void* data, std::int64_t i) {
  switch (dtype) {
    case DType::float16: return static_cast<T>(float16_value(static_cast<const std::uint16_t*>(data)[i]));
    case DType::bfloat16: return static_cast<T>(bfloat16_value(static_cast<const std::uint16_t*>(data)[i]));
    case DType::float64: return static_cast<T>(static_cast<const double*>(data)[i]);
    default: return static_cast<T>(static_cast<const float*>(data)[i]);
  }
}

// dst[0..n) = src[0..n) in `dtype`: T itself, or float16 / bfloat16 from a
// float32 src, rounded to nearest even.
template <class T>
void store_row(const T* src, std::int64_t n, DType dtype, void* dst) {
  if (dtype == dtype_of<T>::value) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
    return;
  }
  auto* out = static_cast<std::uint16_t*>(dst);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto x = static_cast<float>(src[i]);
    out[i] = dtype == DType::float16 ? to_float16(x) : to_bfloat16(x);
  }
}

}  // namespace dotattn::detail
