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
#include <string>

#include "dotattn/dotattn.hpp"

namespace dotattn::kernels {

// Where row j of a key or value operand lies, in elements from its row 0:
// j * stride, or, in a paged cache, row j % page_rows of page
// pages[j / page_rows], pages being page_stride elements apart. The
// few-rows kernels read rows through it, so that they stream a paged cache
// across its pages as they stream contiguous rows.
struct RowMap {
  std::int64_t stride = 0;
  const std::int32_t* pages = nullptr;
  std::int64_t page_rows = 0, page_stride = 0;
  int page_shift = -1;  // log2(page_rows) where it is a power of two: no division

  // Inlined always: the kernels' prefetching finds rows through it many
  // times a page, and GCC 12 kept it out of line, a call that spilled every
  // vector register.
  [[gnu::always_inline]] std::int64_t page_of(std::int64_t j) const {
    return page_shift >= 0 ? j >> page_shift : j / page_rows;
  }
  [[gnu::always_inline]] std::int64_t offset(std::int64_t j) const {
    if (!pages) return j * stride;
    const std::int64_t page = page_of(j);
    return pages[page] * page_stride + (j - page * page_rows) * stride;
  }
  // The end of the run of rows from j0 (before `end`) that lie evenly
  // spaced by `stride`: the rest of j0's page, or all of them.
  std::int64_t run_end(std::int64_t j0, std::int64_t end) const {
    if (!pages) return end;
    const std::int64_t page_end = (page_of(j0) + 1) * page_rows;
    return page_end < end ? page_end : end;
  }
};

// Rows of a key or value operand as stored: in the type the kernels compute
// in, or as float16, bfloat16 or int8 with its scales (one per `group`
// elements of a row, laid out as scale_rows says), widened in registers.
// The kernels' row j is row first + j of the maps; the count rows from
// first exist, as far as a kernel may prefetch.
//
// The few-rows kernels also take the rows of several key/value heads at
// once (heads > 1: decoding a paged cache), head h's rows head_stride
// elements after head 0's (its scales scale_head_stride after), and read
// them page by page, each page's heads in turn: in vLLM's layout a page's
// heads lie one after another, and one head's part of a page (2 to 8 KiB)
// read alone, pages apart, streams slower (tiling.hpp, choose_blocking).
struct StoredRows {
  DType dtype = DType::float32;
  const void* data = nullptr;  // row 0 of the maps
  RowMap rows;
  std::int64_t first = 0;
  std::int64_t count = 0;
  const float* scale = nullptr;  // int8: the scales of row 0
  RowMap scale_rows;
  std::int64_t group = 0;
  std::int64_t cols = 0;  // elements per row
  std::int64_t heads = 1, head_stride = 0, scale_head_stride = 0;
};

// count rows of `cols` elements, `stride` apart, in place.
inline StoredRows rows_at(DType dtype, const void* data, std::int64_t stride, std::int64_t count,
                          std::int64_t cols) {
  StoredRows r;
  r.dtype = dtype;
  r.data = data;
  r.rows.stride = stride;
  r.count = count;
  r.cols = cols;
  return r;
}

template <class T>
struct BlockKernels {
  const char* name;            // "<isa>", reported by show_config()
  std::int64_t row_multiple;   // transposed tiles' rows are a multiple of this
  std::int64_t key_multiple;   // score_tile's keys at once: key blocks are a multiple of this

  // st[j][i] = scale * sum_e qt[e][i] * k[j * k_stride + e] for j < keys and
  // i < rows (a multiple of row_multiple); the sum runs over e in order.
  // With row_max, also row_max[i] = max(row_max[i], max_j st[j][i]), NaN if
  // any is NaN: block_max's result for a tile nothing changes after it,
  // found while the scores are in registers instead of in a pass of its own.
  void (*score_tile)(const T* qt, std::int64_t qt_ld, std::int64_t rows, const T* k,
                     std::int64_t k_stride, std::int64_t keys, std::int64_t E, T scale, T* st,
                     std::int64_t st_ld, T* row_max);

  // The same scores for a few rows (at most dot_rows, as when decoding),
  // from queries packed row by row, q[i * q_ld + e]: dot products along E,
  // which keep every vector lane busy where a transposed tile would leave
  // most of them idle. Rows rows..st_ld of st are left alone.
  std::int64_t dot_rows;
  // The keys are read as stored (k.count >= keys), widened as they are
  // loaded. With k.heads > 1, rows is per head: head h's rows are q's rows
  // from h * rows (st's from h * rows), scored against head h's keys.
  void (*score_rows)(const T* q, std::int64_t q_ld, std::int64_t rows, const StoredRows& k,
                     std::int64_t keys, std::int64_t E, T scale, T* st, std::int64_t st_ld);

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
  // accumulate_values (online_softmax.hpp) takes care of. The values are
  // read as stored, as score_rows reads the keys; with v.heads > 1, head
  // h's rows are pt's from h * rows and acc's from h * rows.
  void (*pv_accumulate)(const T* pt, std::int64_t pt_ld, std::int64_t rows, std::int64_t keys,
                        const StoredRows& v, std::int64_t Ev, T* acc, std::int64_t acc_ld);

  // K/V formats other than T are float32 tables' only (float64 reads its
  // own type). Each stored element is widened in registers: float16 and
  // bfloat16 exactly, int8 to data * scale, rounded once.
  //
  // widen: dst[r * cols + c] = element c of row r of src, for r < rows and
  // c < cols; the step before the many-rows kernels, which then read dst.
  void (*widen)(const StoredRows& src, std::int64_t rows, std::int64_t cols, T* dst) = nullptr;

  // For kernel_rates(): `iterations` rounds of independent FMAs on
  // registers alone; returns the FLOPs of one round.
  std::int64_t (*fma_peak)(std::int64_t iterations) = nullptr;

  // The set's parameters (dotattn::Tuning), read by the loops' blocking
  // and by the few-rows kernels at each call; set_tuning() changes them.
  Tuning* tuning = nullptr;
};

// The table the loops use now: float32 follows the ISA chosen in
// dispatch.cpp; float64 always runs the portable kernels.
template <class T>
const BlockKernels<T>& selected();

// The float32 table of the kernel set `name`, which this CPU must run
// (else argument_error, naming `who`).
const BlockKernels<float>& table_named(const std::string& name, const char* who);

}  // namespace dotattn::kernels
