// The plain-data description of one checked call: every operand as a
// (batch..., head, row, col) layout with element strides, the sizes, the
// mask and the scale. check.cpp builds it; the loops read nothing else.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "dotattn/dotattn.hpp"
#include "kernels/kernels.hpp"

namespace dotattn::detail {

// Bytes per element.
inline std::int64_t stored_size(DType dtype) {
  switch (dtype) {
    case DType::float64:
    case DType::int64: return 8;
    case DType::float16:
    case DType::bfloat16: return 2;
    case DType::int8:
    case DType::boolean: return 1;
    case DType::float32:
    case DType::int32: return 4;
  }
  return 4;
}

struct Layout {
  const void* data = nullptr;
  Dims batch;  // one stride per dim of Problem::batch_shape
  std::int64_t head = 0;
  std::int64_t row = 0;
  std::int64_t col = 1;
  // A paged KV cache: row j is row j % page_size of page pages[j /
  // page_size], which starts page_stride elements after the previous one.
  // page_shift: log2(page_size) where it is a power of two, else -1.
  const std::int32_t* pages = nullptr;
  std::int64_t page_size = 0, page_stride = 0;
  int page_shift = -1;

  // Where the rows lie, from the start of their head.
  kernels::RowMap map() const { return {row, pages, page_size, page_stride, page_shift}; }
  // Element offset of row j, from the start of its head.
  std::int64_t row_offset(std::int64_t j) const { return map().offset(j); }
};

// Where row r of query head h of batch entry b lands in a result: element
// b * batch + h * head + r * row, its columns contiguous.
struct ResultLayout {
  std::int64_t batch = 0, head = 0, row = 0;
  std::int64_t at(std::int64_t b, std::int64_t h, std::int64_t r) const {
    return b * batch + h * head + r * row;
  }
};

// How a key or value operand is stored: its dtype and, for int8, where its
// scales are (one per `group` elements of a row, laid out like the rows).
struct Storage {
  DType dtype = DType::float32;
  Layout scale;
  std::int64_t group = 0;
};

enum class MaskKind { none, boolean, additive };

struct Problem {
  // What the loops compute in, and the LSE's dtype: float64 for a float64
  // query, float32 for any other (a float16 or bfloat16 one included).
  DType dtype = DType::float32;
  DType q_dtype = DType::float32;     // the query as stored
  DType out_dtype = DType::float32;   // out's or the weights': dtype, or a 16-bit q_dtype
  DType mask_dtype = DType::float32;  // an additive mask's: dtype, or a 16-bit q_dtype
  Dims batch_shape;
  std::int64_t batch = 1;  // product of batch_shape
  std::int64_t Hq = 1, Hkv = 1, L = 0, S = 0, E = 0, Ev = 0;
  Layout q, k, v;
  Storage k_storage, v_storage;  // dtype float32 or float64: k and v are read as they are
  MaskKind mask_kind = MaskKind::none;
  Layout mask;  // expanded to (batch..., Hq, L, S); broadcast dims have stride 0
  Causal causal = Causal::none;
  double scale = 1.0;
  Window window;        // -1: that side unbounded
  double softcap = 0;   // 0: none
  std::vector<double> alibi_slopes;  // Hq each, or empty: none
  std::vector<double> sinks;
  // The outputs: (batch, Hq, L, Ev) for attention, (batch, Hq, L, S) for
  // weights, C-contiguous unless a packed batch's call laid them out
  // otherwise; lse (batch, Hq, L) or null.
  void* out = nullptr;
  void* lse = nullptr;
  ResultLayout out_rows, lse_rows;

  std::int64_t heads_per_kv() const { return Hkv > 0 ? Hq / Hkv : 1; }

  // Row i's position among the keys, i' = i + position_offset(), by which
  // the causal rule, the window and ALiBi measure distances.
  std::int64_t position_offset() const { return causal == Causal::upper_left ? 0 : S - L; }

  // The most keys `rows` consecutive query rows see together: S, or less
  // under a window bounded on both sides (a causal rule bounds the right).
  std::int64_t key_span(std::int64_t rows) const {
    const std::int64_t right = causal != Causal::none ? 0 : window.right;
    if (window.left < 0 || right < 0) return S;
    return std::min(S, window.left + std::min(right, S) + rows);
  }
};

// Element offset of flat batch index b (row-major over batch_shape).
inline std::int64_t batch_offset(const Problem& p, const Layout& t, std::int64_t b) {
  std::int64_t offset = 0;
  for (std::size_t d = p.batch_shape.size(); d-- > 0;) {
    offset += (b % p.batch_shape[d]) * t.batch[d];
    b /= p.batch_shape[d];
  }
  return offset;
}

// Element offset of row r (row-major over every dim but the last).
inline std::int64_t row_offset(std::int64_t r, const Dims& shape, const Dims& strides) {
  std::int64_t offset = 0;
  for (std::size_t d = shape.size() - 1; d-- > 0;) {
    offset += (r % shape[d]) * strides[d];
    r /= shape[d];
  }
  return offset;
}

// Both check every argument and throw argument_error / dtype_error before
// anything is written. A null out checks the inputs alone.
Problem check_attention(const TensorView& query, const TensorView& key, const TensorView& value,
                        const OutputView* out, const Options& options);
Problem check_weights(const TensorView& query, const TensorView& key, const OutputView* weights,
                      const Options& options);

// attention_varlen's and attention_paged's arguments, checked: one Problem
// per sequence, sharing everything but L, S and where their rows are.
std::vector<Problem> check_varlen(const TensorView& query, const TensorView& key,
                                  const TensorView& value, const TensorView& cu_seqlens_q,
                                  const TensorView& cu_seqlens_k, const OutputView& out,
                                  const Options& options);
std::vector<Problem> check_paged(const TensorView& query, const TensorView& cu_seqlens_q,
                                 const TensorView& key_cache, const TensorView& value_cache,
                                 const TensorView& block_table, const TensorView& seq_lens_k,
                                 const OutputView& out, const Options& options);

// The group of a quantized view (int8 data with scales that fit it).
std::int64_t checked_quantized(const TensorView& t);

// quantize_int8's arguments, checked: `rows` rows of E elements, in groups.
struct QuantizePlan {
  std::int64_t rows = 0;
  std::int64_t group = 1;
};
QuantizePlan check_quantize(const TensorView& x, const QuantizedOutput& out);

// merge's arguments, checked: `rows` rows of Ev. Shard i's out rows are
// outs[i] (shape (..., Ev)); its LSEs are read as a (..., 1) view with
// lse_shape and lse_strides[i].
struct MergePlan {
  std::int64_t rows = 0, Ev = 0;
  DType dtype = DType::float32;
  Dims lse_shape;
  std::vector<Dims> lse_strides;
};
MergePlan check_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                      const OutputView& out, const std::optional<OutputView>& lse);

// query's shape with its last dim (E) replaced: by Ev for the attention
// result, by S for the weights.
inline Dims result_shape(const Dims& query_shape, std::int64_t last) {
  Dims shape = query_shape;
  shape.back() = last;
  return shape;
}

}  // namespace dotattn::detail
