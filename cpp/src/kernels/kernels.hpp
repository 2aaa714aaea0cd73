// The per-block steps of the online-softmax loop, as one table of function
// pointers per element type and ISA. The loop (cpp/src/attention_forward.cpp)
// sees only this table, so an ISA adds a kernels/<isa>.cpp compiled with its
// own flags and a row in dispatch.cpp, and the loop does not change.
//
// Shapes are in elements; strides are row strides (the last dim is unit
// stride everywhere).
#pragma once

#include <cstdint>

namespace dotattn::kernels {

template <class T>
struct BlockKernels {
  const char* name;  // "<isa>", reported by show_config()

  // The key block packed for score_tile: kp[e * kp_stride + j] = k[j][e] for
  // j < keys, zero for keys <= j < kp_stride. kp_stride is a multiple of
  // score_columns.
  void (*pack_keys)(const T* k, std::int64_t k_stride, std::int64_t keys, std::int64_t E, T* kp,
                    std::int64_t kp_stride);
  std::int64_t score_columns;

  // s[i][j] = scale * sum_e q[i][e] * k[j][e] for i < rows, j < keys; the sum
  // runs over e in order, so a score does not depend on the tile it is in.
  void (*score_tile)(const T* q, std::int64_t q_stride, std::int64_t rows, const T* kp,
                     std::int64_t kp_stride, std::int64_t keys, std::int64_t E, T scale, T* s,
                     std::int64_t s_stride);

  // The largest of x[0..n) (-inf for n == 0); NaN if any element is NaN.
  T (*row_max)(const T* x, std::int64_t n);

  // x[j] = exp(x[j] - m) in place; returns the sum of the new x[j].
  T (*exp_sum)(T* x, std::int64_t n, T m);

  // x[j] *= a.
  void (*rescale)(T* x, std::int64_t n, T a);

  // acc[i][e] += sum_j p[i][j] * v[j][e] for i < rows, e < Ev, j < keys in
  // order. Terms with p[i][j] == 0 are skipped, not multiplied: a value a row
  // gives no weight (a masked key) never reaches it, not even as NaN.
  void (*pv_accumulate)(const T* p, std::int64_t p_stride, std::int64_t rows, std::int64_t keys,
                        const T* v, std::int64_t v_stride, std::int64_t Ev, T* acc,
                        std::int64_t acc_stride);
};

// The best table this CPU runs, chosen once.
template <class T>
const BlockKernels<T>& selected();

}  // namespace dotattn::kernels
