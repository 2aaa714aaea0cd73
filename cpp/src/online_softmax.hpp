// The softmax of one query row, in the two forms the loops need.
//
// Online (attention): blocks of scores are folded in one at a time into the
// row's running max m, the sum l of exp(score - m), and the accumulator acc
// of exp(score - m) * value. A new max rescales l and acc by exp(m_old - m).
//
// Whole row (attention_weights): the row is in memory, so it is normalised
// in place.
//
// Edge cases, the same in both and in dotattn.reference: a row that sees no
// key (m == -inf) gets zeros and an LSE of -inf; a NaN or +inf score makes
// the whole row NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/kernels.hpp"

namespace dotattn::detail {

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// max(a, b) that keeps a NaN from either side.
template <class T>
T nan_max(T a, T b) {
  return (b > a || std::isnan(b)) ? b : a;
}

// Folds the scores s[0..keys) into (m, l, acc[0..Ev)) and leaves the block's
// weights exp(s - m) in s, ready for the P·V step.
template <class T>
void fold_scores(const kernels::BlockKernels<T>& kern, T* s, std::int64_t keys, T& m, T& l,
                 T* acc, std::int64_t Ev) {
  const T m_new = nan_max(m, kern.row_max(s, keys));
  if (m_new == kNegInf<T>) {  // nothing visible yet: exp(-inf - -inf) must not make NaN
    std::fill(s, s + keys, T(0));
    return;
  }
  const T alpha = std::exp(m - m_new);  // 0 while m is still -inf
  l = l * alpha + kern.exp_sum(s, keys, m_new);
  if (alpha != T(1)) kern.rescale(acc, Ev, alpha);
  m = m_new;
}

// out = acc / l and lse = m + log(l) once every block is folded in.
template <class T>
void finish_row(T m, T l, const T* acc, std::int64_t Ev, T* out, T* lse) {
  if (m == kNegInf<T>) {
    std::fill(out, out + Ev, T(0));
    if (lse) *lse = kNegInf<T>;
    return;
  }
  const T inv = T(1) / l;
  for (std::int64_t e = 0; e < Ev; ++e) out[e] = acc[e] * inv;
  if (lse) *lse = m + std::log(l);
}

// Replaces row[0..n) by softmax(row[0..visible)) followed by zeros: the keys
// from `visible` on are cut off by the causal rule.
template <class T>
void softmax_row(const kernels::BlockKernels<T>& kern, T* row, std::int64_t visible,
                 std::int64_t n) {
  const T m = kern.row_max(row, visible);
  if (m == kNegInf<T>) {
    std::fill(row, row + n, T(0));
    return;
  }
  const T sum = kern.exp_sum(row, visible, m);
  kern.rescale(row, visible, T(1) / sum);
  std::fill(row + visible, row + n, std::isnan(sum) ? sum : T(0));
}

}  // namespace dotattn::detail
