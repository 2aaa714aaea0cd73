// Portable block kernels, compiled for baseline x86-64 (or any CPU): plain
// loops written so the compiler can vectorise them without reassociating a
// sum, which keeps every result independent of the vector width.
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/scalar.hpp"

namespace dotattn::kernels::scalar {
namespace {

// Columns of the score tile kept in registers while the dot products run:
// 64 bytes, four SSE registers.
template <class T>
constexpr std::int64_t kScoreColumns = 64 / sizeof(T);

template <class T>
void pack_keys(const T* k, std::int64_t k_stride, std::int64_t keys, std::int64_t E, T* kp,
               std::int64_t kp_stride) {
  for (std::int64_t e = 0; e < E; ++e) {
    T* row = kp + e * kp_stride;
    for (std::int64_t j = 0; j < keys; ++j) row[j] = k[j * k_stride + e];
    for (std::int64_t j = keys; j < kp_stride; ++j) row[j] = T(0);
  }
}

template <class T>
void score_tile(const T* q, std::int64_t q_stride, std::int64_t rows, const T* kp,
                std::int64_t kp_stride, std::int64_t keys, std::int64_t E, T scale, T* s,
                std::int64_t s_stride) {
  constexpr std::int64_t W = kScoreColumns<T>;
  for (std::int64_t i = 0; i < rows; ++i) {
    const T* __restrict qi = q + i * q_stride;
    T* __restrict si = s + i * s_stride;
    for (std::int64_t j0 = 0; j0 < keys; j0 += W) {
      T dot[W] = {};
      for (std::int64_t e = 0; e < E; ++e) {
        const T qe = qi[e];
        const T* __restrict kj = kp + e * kp_stride + j0;
        for (std::int64_t w = 0; w < W; ++w) dot[w] += qe * kj[w];
      }
      const std::int64_t n = keys - j0 < W ? keys - j0 : W;
      for (std::int64_t w = 0; w < n; ++w) si[j0 + w] = scale * dot[w];
    }
  }
}

template <class T>
T row_max(const T* x, std::int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (std::int64_t j = 0; j < n; ++j)
    if (x[j] > m || std::isnan(x[j])) {
      m = x[j];
      if (std::isnan(m)) break;
    }
  return m;
}

template <class T>
T exp_sum(T* x, std::int64_t n, T m) {
  T sum = T(0);
  for (std::int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    sum += x[j];
  }
  return sum;
}

template <class T>
void rescale(T* __restrict x, std::int64_t n, T a) {
  for (std::int64_t j = 0; j < n; ++j) x[j] *= a;
}

template <class T>
void pv_accumulate(const T* p, std::int64_t p_stride, std::int64_t rows, std::int64_t keys,
                   const T* v, std::int64_t v_stride, std::int64_t Ev, T* acc,
                   std::int64_t acc_stride) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const T* __restrict pi = p + i * p_stride;
    T* __restrict ai = acc + i * acc_stride;
    for (std::int64_t j = 0; j < keys; ++j) {
      const T pij = pi[j];
      if (pij == T(0)) continue;
      const T* __restrict vj = v + j * v_stride;
      for (std::int64_t e = 0; e < Ev; ++e) ai[e] += pij * vj[e];
    }
  }
}

template <class T>
constexpr BlockKernels<T> table() {
  return {"scalar",   &pack_keys<T>, kScoreColumns<T>, &score_tile<T>,
          &row_max<T>, &exp_sum<T>,  &rescale<T>,      &pv_accumulate<T>};
}

}  // namespace

const BlockKernels<float> f32 = table<float>();
const BlockKernels<double> f64 = table<double>();

}  // namespace dotattn::kernels::scalar
