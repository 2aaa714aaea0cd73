// The softmax of query rows, in the forms the loops need.
//
// Online (attention): each block of scores is folded into every row's
// running max m, the sum l of exp(score - m), and the accumulator acc of
// exp(score - m) * value; a new max rescales l and acc by exp(m_old - m).
// Key ranges computed apart (split-K) are merged the same way.
//
// Whole row (attention_weights): the row is in memory, so it is normalised
// in place.
//
// Edge cases, the same in all of them and in dotattn.reference: a row that
// sees no key (m == -inf) gets zeros and an LSE of -inf; a NaN or +inf score
// makes the whole row NaN; a zero weight contributes nothing, not even the
// NaN of 0 * inf.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// The running softmax state of a tile's rows: m, l (tile_rows each) and acc
// (rows x Ev), plus room for the per-block values.
template <class T>
struct RowState {
  T* m;
  T* l;
  T* acc;
  T* block_max;  // tile_rows each
  T* block_sum;
  T* alpha;
};

// Folds the transposed score tile st (keys x tile_rows) into the state and
// leaves the block's weights exp(s - m) in st, ready for the P·V step.
// Returns the block's smallest weight. have_max: s.block_max holds the
// block's row maxima already (MaskedScores::compute found them).
template <class T>
T fold_block(const kernels::BlockKernels<T>& kern, T* st, std::int64_t keys,
                std::int64_t tile_rows, std::int64_t rows, std::int64_t Ev, const RowState<T>& s,
                bool have_max = false) {
  if (!have_max) kern.block_max(st, tile_rows, keys, tile_rows, s.block_max);
  for (std::int64_t i = 0; i < tile_rows; ++i) {
    const T m_new = nan_max(s.m[i], s.block_max[i]);
    const bool nothing_seen = m_new == kNegInf<T>;
    // A NaN or +inf score makes the row NaN; the kernels' exp does not carry
    // NaN, so alpha does.
    const bool poisoned = std::isnan(m_new) || m_new == -kNegInf<T>;
    // While a row has seen nothing, its scores are -inf: exp(-inf - 0) = 0
    // where exp(-inf - -inf) would be NaN.
    s.alpha[i] = poisoned       ? std::numeric_limits<T>::quiet_NaN()
                 : nothing_seen || m_new == s.m[i] ? T(1)
                                                   : std::exp(s.m[i] - m_new);
    s.block_max[i] = nothing_seen ? T(0) : m_new;
    s.m[i] = m_new;
  }
  const T smallest = kern.exp_sum(st, tile_rows, keys, tile_rows, s.block_max, s.block_sum);
  for (std::int64_t i = 0; i < tile_rows; ++i) s.l[i] = s.l[i] * s.alpha[i] + s.block_sum[i];
  kern.scale_rows(s.acc, Ev, rows, Ev, s.alpha);
  return smallest;
}

template <class T>
bool all_finite(const T* x, std::int64_t n) {
  bool finite = true;
  for (std::int64_t i = 0; i < n; ++i) finite &= std::abs(x[i]) <= std::numeric_limits<T>::max();
  return finite;
}

template <class T>
bool all_finite_rows(const T* x, std::int64_t rows, std::int64_t stride, std::int64_t cols) {
  bool finite = true;
  for (std::int64_t r = 0; r < rows; ++r) finite &= all_finite(x + r * stride, cols);
  return finite;
}

// The P·V step. The fast kernel multiplies every weight, zeros included, so
// an inf or NaN value with zero weight (a masked slot of a KV cache holding
// garbage) would poison the row as 0 * inf. A block with a zero weight
// (smallest_weight == 0: masked keys, or exp underflow) and a non-finite
// value therefore keeps a copy of acc, and if anything in acc became inf or
// NaN it is redone: the kernel runs on the values with their non-finite
// entries zeroed (which leaves every other sum exactly as it was), and the
// non-finite entries are then added where their weight is nonzero. clean_v
// holds keys x Ev; values: data, stride and count (OperandRows::Rows).
template <class T, class Rows>
void accumulate_values(const kernels::BlockKernels<T>& kern, const T* pt, std::int64_t pt_ld,
                       std::int64_t rows, std::int64_t keys, const Rows& values, std::int64_t Ev,
                       T smallest_weight, T* acc, T* saved, T* clean_v) {
  const T* v = values.data;
  const std::int64_t v_stride = values.stride;
  const kernels::StoredRows in_place =
      kernels::rows_at(dtype_of<T>::value, v, v_stride, values.count, Ev);
  if (smallest_weight > T(0) || all_finite_rows(v, keys, v_stride, Ev))
    return kern.pv_accumulate(pt, pt_ld, rows, keys, in_place, Ev, acc, Ev);
  const auto bytes = static_cast<std::size_t>(rows * Ev) * sizeof(T);
  std::memcpy(saved, acc, bytes);
  kern.pv_accumulate(pt, pt_ld, rows, keys, in_place, Ev, acc, Ev);
  if (all_finite(acc, rows * Ev)) return;

  std::memcpy(acc, saved, bytes);
  for (std::int64_t j = 0; j < keys; ++j)
    for (std::int64_t e = 0; e < Ev; ++e) {
      const T x = v[j * v_stride + e];
      clean_v[j * Ev + e] = all_finite(&x, 1) ? x : T(0);
    }
  kern.pv_accumulate(pt, pt_ld, rows, keys, kernels::rows_at(dtype_of<T>::value, clean_v, Ev, keys, Ev),
                     Ev, acc, Ev);
  for (std::int64_t j = 0; j < keys; ++j)
    for (std::int64_t e = 0; e < Ev; ++e) {
      const T x = v[j * v_stride + e];
      if (all_finite(&x, 1)) continue;
      for (std::int64_t i = 0; i < rows; ++i)
        if (pt[j * pt_ld + i] != T(0)) acc[i * Ev + e] += pt[j * pt_ld + i] * x;
    }
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

// One row's state from the states of its key ranges, merged in order:
// range r holds m[r * stride], l[r * stride], acc + r * acc_stride; the
// merged m_all, l_all and acc_all (Ev) are ready for finish_row.
template <class T>
void merge_ranges(std::int64_t ranges, const T* m, const T* l, std::int64_t stride, const T* acc,
                  std::int64_t acc_stride, std::int64_t Ev, T& m_all, T& l_all, T* acc_all) {
  m_all = kNegInf<T>;
  for (std::int64_t r = 0; r < ranges; ++r) m_all = nan_max(m_all, m[r * stride]);
  l_all = T(0);
  std::fill(acc_all, acc_all + Ev, T(0));
  if (m_all == kNegInf<T>) return;
  for (std::int64_t r = 0; r < ranges; ++r) {
    const T w = std::exp(m[r * stride] - m_all);
    if (w == T(0)) continue;
    l_all += w * l[r * stride];
    for (std::int64_t e = 0; e < Ev; ++e) acc_all[e] += w * acc[r * acc_stride + e];
  }
}

// An attention sink: one more logit in the row's softmax, with no value.
// A row that saw no key ends with zeros and an LSE of the sink.
template <class T>
void add_sink(T sink, T& m, T& l, T* acc, std::int64_t Ev) {
  const T m_new = nan_max(m, sink);
  if (m_new == m) {
    l += std::exp(sink - m);
    return;
  }
  const T alpha = m == kNegInf<T> ? T(0) : std::exp(m - m_new);
  l = l * alpha + std::exp(sink - m_new);
  for (std::int64_t e = 0; e < Ev; ++e) acc[e] = alpha == T(0) ? T(0) : acc[e] * alpha;
  m = m_new;
}

// Replaces row[0..n) by softmax(row[begin..end)) (with the sink, -inf if
// none, in the denominator) and zeros outside [begin, end): the keys the
// causal rule and the window hide.
template <class T>
void softmax_row(T* row, std::int64_t begin, std::int64_t end, std::int64_t n, T sink) {
  T m = sink;
  for (std::int64_t j = begin; j < end; ++j) m = nan_max(m, row[j]);
  std::fill(row, row + begin, T(0));
  if (m == kNegInf<T> || end <= begin) {
    std::fill(row + begin, row + n, T(0));
    return;
  }
  // Summed in double: a float32 sum of thousands of equal weights (a sink
  // above every score) rounds to 1e-5 relative, the whole tolerance.
  double total = std::exp(static_cast<double>(sink) - m);
  for (std::int64_t j = begin; j < end; ++j) total += row[j] = std::exp(row[j] - m);
  const T sum = static_cast<T>(total);
  const T inv = T(1) / sum;
  for (std::int64_t j = begin; j < end; ++j) row[j] *= inv;
  std::fill(row + end, row + n, std::isnan(sum) ? sum : T(0));
  if (std::isnan(sum)) std::fill(row, row + begin, sum);
}

}  // namespace dotattn::detail
