// The per-block steps of the online-softmax loop, as one table of function
// pointers per element type and ISA. The loops (attention_loop.cpp,
// weights_loop.cpp) see only this table: an ISA is a kernels/<isa>.cpp
// compiled with its own flags plus a row in dispatch.cpp.
//
// Score tiles are kept transposed, keys by query rows: st[j * ld + i] holds
// the score of query row i against key j. Every softmax step is then a
// vertical (lane-wise) operation over a block of rows, with no horizontal
// reductions, the keys are read straight from the caller's array (no
// packing), and only the small block of queries is packed, once per work
// item, as qt[e * ld + i]. `rows` in a transposed tile is padded to a
// multiple of row_multiple; the padding rows hold zeros.
//
// Sizes are in elements; every last dim has unit stride.
#pragma once

#include <cstdint>

#include "dotattn/dotattn.hpp"

namespace dotattn::kernels {

// Rows of a key or value operand stored as float16, bfloat16 or int8, for
// the widen step. Strides are in elements of the row's and the scales' own
// types.
// The rows a kernel may prefetch beyond those it reads: `rows` rows from
// its first, evenly spaced, then `next_rows` more from `next` (with their
// scales from next_scale) at the same spacing: the next page of a paged
// cache, so that prefetching runs on across pages as it does through
// contiguous rows.
struct RowsAhead {
  std::int64_t rows = 0;
  const void* next = nullptr;
  std::int64_t next_rows = 0;
  const float* next_scale = nullptr;
};

struct StoredRows {
  DType dtype = DType::float16;
  const void* data = nullptr;  // row 0
  std::int64_t stride = 0;
  const float* scale = nullptr;  // int8: the scales of row 0
  std::int64_t scale_stride = 0;
  std::int64_t group = 0;
  std::int64_t cols = 0;  // elements per row
  RowsAhead ahead;  // what a kernel may prefetch
};

// How far ahead the few-rows (decoding) kernels prefetch the keys and
// values they stream from memory, in bytes of the rows as stored, so that
// a 2-byte or 1-byte format keeps as much in flight as float32 (the
// hardware prefetchers stop at each 4 KiB page). Measured on Zen 3, one
// core, float32, E = Ev = 128, K and V far larger than the caches: keys
// read at 7.8 GB/s without and 13 to 14.6 with 6 to 24 keys (3 to 12 KiB)
// ahead; values at 8.8 without and 11 to 12.5 with 8 or 16 (4 or 8 KiB)
// ahead (a plain streaming read: 12 GB/s).
constexpr std::int64_t kKeyBytesAhead = 6144, kValueBytesAhead = 8192;

template <class T>
struct BlockKernels {
  const char* name;            // "<isa>", reported by show_config()
  std::int64_t row_multiple;   // transposed tiles' rows are a multiple of this

  // st[j][i] = scale * sum_e qt[e][i] * k[j * k_stride + e] for j < keys and
  // i < rows (a multiple of row_multiple); the sum runs over e in order.
  void (*score_tile)(const T* qt, std::int64_t qt_ld, std::int64_t rows, const T* k,
                     std::int64_t k_stride, std::int64_t keys, std::int64_t E, T scale, T* st,
                     std::int64_t st_ld);

  // The same scores for a few rows (at most dot_rows, as when decoding),
  // from queries packed row by row, q[i * q_ld + e]: dot products along E,
  // which keep every vector lane busy where a transposed tile would leave
  // most of them idle. Rows rows..st_ld of st are left alone.
  std::int64_t dot_rows;
  // k_ahead: the rows of k the kernel may prefetch (k_ahead.rows >= keys).
  void (*score_rows)(const T* q, std::int64_t q_ld, std::int64_t rows, const T* k,
                     std::int64_t k_stride, const RowsAhead& k_ahead, std::int64_t keys,
                     std::int64_t E, T scale, T* st, std::int64_t st_ld);

  // m[i] = max_j st[j][i], -inf for keys == 0, NaN if any st[j][i] is NaN.
  void (*block_max)(const T* st, std::int64_t st_ld, std::int64_t keys, std::int64_t rows, T* m);

  // st[j][i] = exp(st[j][i] - m[i]) in place, l[i] = sum_j st[j][i]; returns
  // the smallest weight of the tile, NaN weights aside. Callers pass
  // m[i] >= every st[j][i] (or NaN), so the exponent is <= 0.
  T (*exp_sum)(T* st, std::int64_t st_ld, std::int64_t keys, std::int64_t rows, const T* m, T* l);

  // The score adjustments between the score tile and the mask, over a
  // transposed tile (rows a multiple of row_multiple).
  // soft_cap: st[j][i] = cap * tanh(st[j][i] / cap).
  void (*soft_cap)(T* st, std::int64_t st_ld, std::int64_t keys, std::int64_t rows, T cap);
  // add_distance_bias (ALiBi): st[j][i] += slope[i] * |position[i] - (j0 + j)|.
  void (*add_distance_bias)(T* st, std::int64_t st_ld, std::int64_t keys, std::int64_t rows,
                            const T* slope, const T* position, std::int64_t j0);

  // acc[i][:Ev] *= a[i] for i < rows (rows with a[i] == 1 are left alone;
  // rows with a[i] == 0 become zeros, even where they held inf or NaN).
  void (*scale_rows)(T* acc, std::int64_t acc_ld, std::int64_t rows, std::int64_t Ev, const T* a);

  // acc[i][e] += sum_j pt[j][i] * v[j * v_stride + e] for i < rows (any
  // count), e < Ev. A zero weight times inf or NaN makes NaN here, which
  // accumulate_values (online_softmax.hpp) takes care of. v_ahead as
  // score_rows' k_ahead.
  void (*pv_accumulate)(const T* pt, std::int64_t pt_ld, std::int64_t rows, std::int64_t keys,
                        const T* v, std::int64_t v_stride, const RowsAhead& v_ahead,
                        std::int64_t Ev, T* acc, std::int64_t acc_ld);

  // K/V formats other than T (float32 tables only; null for float64). Each
  // stored element is widened in registers: float16 and bfloat16 exactly,
  // int8 to data * scale, rounded once.
  //
  // widen: dst[r * cols + c] = element c of row r of src, for r < rows and
  // c < cols; the step before the many-rows kernels, which then read dst.
  void (*widen)(const StoredRows& src, std::int64_t rows, std::int64_t cols, T* dst) = nullptr;
  // score_rows and pv_accumulate reading stored rows straight from memory,
  // widened as they are loaded (for few rows: decoding).
  void (*score_rows_stored)(const T* q, std::int64_t q_ld, std::int64_t rows, const StoredRows& k,
                            std::int64_t keys, std::int64_t E, T scale, T* st,
                            std::int64_t st_ld) = nullptr;
  void (*pv_accumulate_stored)(const T* pt, std::int64_t pt_ld, std::int64_t rows,
                               std::int64_t keys, const StoredRows& v, std::int64_t Ev, T* acc,
                               std::int64_t acc_ld) = nullptr;
};

// The table the loops use now: float32 follows the ISA chosen in
// dispatch.cpp; float64 always runs the portable kernels.
template <class T>
const BlockKernels<T>& selected();

}  // namespace dotattn::kernels
