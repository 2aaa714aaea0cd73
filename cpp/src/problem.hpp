// The plain-data description of one checked call: every operand as a
// (batch..., head, row, col) layout with element strides, the sizes, the
// mask and the scale. check.cpp builds it; the loops read nothing else.
#pragma once

#include <cstdint>

#include "dotattn/dotattn.hpp"

namespace dotattn::detail {

struct Layout {
  const void* data = nullptr;
  Dims batch;  // one stride per dim of Problem::batch_shape
  std::int64_t head = 0;
  std::int64_t row = 0;
  std::int64_t col = 1;
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
  DType dtype = DType::float32;  // the query's, the results' and an additive mask's
  Dims batch_shape;
  std::int64_t batch = 1;  // product of batch_shape
  std::int64_t Hq = 1, Hkv = 1, L = 0, S = 0, E = 0, Ev = 0;
  Layout q, k, v;
  Storage k_storage, v_storage;  // dtype float32 or float64: k and v are read as they are
  MaskKind mask_kind = MaskKind::none;
  Layout mask;  // expanded to (batch..., Hq, L, S); broadcast dims have stride 0
  Causal causal = Causal::none;
  double scale = 1.0;
  // C-contiguous outputs: (batch, Hq, L, Ev) for attention, (batch, Hq, L, S)
  // for weights; lse (batch, Hq, L) or null.
  void* out = nullptr;
  void* lse = nullptr;

  std::int64_t heads_per_kv() const { return Hkv > 0 ? Hq / Hkv : 1; }
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

// Both check every argument and throw argument_error / dtype_error before
// anything is written. A null out checks the inputs alone.
Problem check_attention(const TensorView& query, const TensorView& key, const TensorView& value,
                        const OutputView* out, const Options& options);
Problem check_weights(const TensorView& query, const TensorView& key, const OutputView* weights,
                      const Options& options);

// The group of a quantized view (int8 data with scales that fit it).
std::int64_t checked_quantized(const TensorView& t);

// quantize_int8's arguments, checked: `rows` rows of E elements, in groups.
struct QuantizePlan {
  std::int64_t rows = 0;
  std::int64_t group = 1;
};
QuantizePlan check_quantize(const TensorView& x, const QuantizedOutput& out);

// query's shape with its last dim (E) replaced: by Ev for the attention
// result, by S for the weights.
inline Dims result_shape(const Dims& query_shape, std::int64_t last) {
  Dims shape = query_shape;
  shape.back() = last;
  return shape;
}

}  // namespace dotattn::detail
