// Masking of a score tile: the causal rule, the window and the user's mask, applied
// between the score tile and the softmax. Masked scores become -inf; an
// additive mask is added. Tiles are addressed as s[i * row_step + j *
// key_step] for query row i and key j, so one code serves the transposed
// tiles of the attention loop and the rows of the weights.
#pragma once

#include <algorithm>
#include <cstdint>

#include "half_precision.hpp"
#include "online_softmax.hpp"
#include "problem.hpp"

namespace dotattn::detail {

struct TileStrides {
  std::int64_t row_step, key_step;
};

// The causal rule and the window as a per-row key range: row i sees keys
// [begin(i), end(i)), both non-decreasing in i.
struct VisibleKeys {
  bool active = false;  // a causal rule or a window
  std::int64_t offset = 0, left = 0, right = 0, S = 0;

  std::int64_t begin(std::int64_t i) const {
    return active ? std::clamp<std::int64_t>(i + offset - left, 0, S) : 0;
  }
  std::int64_t end(std::int64_t i) const {
    return active ? std::clamp<std::int64_t>(i + offset + right + 1, 0, S) : S;
  }
};

// An unbounded side reaches S + L keys: every key of every row (i' lies in
// [-L, S]), and no sum below overflows.
inline VisibleKeys visible_keys(const Problem& p) {
  VisibleKeys v;
  const std::int64_t reach = p.S + p.L;
  const auto side = [&](std::int64_t w) { return w < 0 ? reach : std::min(w, reach); };
  v.active = p.causal != Causal::none || p.window.left >= 0 || p.window.right >= 0;
  v.offset = p.position_offset();
  v.left = side(p.window.left);
  v.right = p.causal != Causal::none ? std::min<std::int64_t>(side(p.window.right), 0) : side(p.window.right);
  v.S = p.S;
  return v;
}

// Sets the scores of keys [j0, j0 + keys) that rows r0.. may not see to -inf.
template <class T>
void mask_outside(const VisibleKeys& visible, std::int64_t r0, std::int64_t rows, std::int64_t j0,
                  std::int64_t keys, T* s, TileStrides ts) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t first = std::clamp<std::int64_t>(visible.begin(r0 + i) - j0, 0, keys);
    const std::int64_t last = std::clamp<std::int64_t>(visible.end(r0 + i) - j0, first, keys);
    for (std::int64_t j = 0; j < first; ++j) s[i * ts.row_step + j * ts.key_step] = kNegInf<T>;
    for (std::int64_t j = last; j < keys; ++j) s[i * ts.row_step + j * ts.key_step] = kNegInf<T>;
  }
}

// The user's mask for the rows of one (batch, head): element (i, j) is at
// data + i * row + j * col, in elements of its dtype.
struct MaskRows {
  MaskKind kind = MaskKind::none;
  DType dtype = DType::boolean;
  const void* data = nullptr;
  std::int64_t row = 0, col = 0;
};

inline MaskRows mask_rows(const Problem& p, std::int64_t b, std::int64_t h, std::int64_t r0) {
  if (p.mask_kind == MaskKind::none) return {};
  const DType dtype = p.mask_kind == MaskKind::boolean ? DType::boolean : p.mask_dtype;
  const std::int64_t offset = batch_offset(p, p.mask, b) + h * p.mask.head + r0 * p.mask.row;
  return {p.mask_kind, dtype, static_cast<const char*>(p.mask.data) + offset * stored_size(dtype),
          p.mask.row, p.mask.col};
}

// Applies the mask to the scores of rows [0, rows) and keys [j0, j0 + keys).
template <class T>
void mask_tile(const MaskRows& mask, std::int64_t rows, std::int64_t j0, std::int64_t keys, T* s,
               TileStrides ts) {
  if (mask.kind == MaskKind::boolean) {
    // Read as bytes: NumPy's bool is one byte, and any nonzero byte is true.
    const auto* m = static_cast<const unsigned char*>(mask.data) + j0 * mask.col;
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < keys; ++j)
        if (!m[i * mask.row + j * mask.col]) s[i * ts.row_step + j * ts.key_step] = kNegInf<T>;
  } else if (mask.kind == MaskKind::additive && mask.dtype == dtype_of<T>::value) {
    const T* m = static_cast<const T*>(mask.data) + j0 * mask.col;
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < keys; ++j)
        s[i * ts.row_step + j * ts.key_step] += m[i * mask.row + j * mask.col];
  } else if (mask.kind == MaskKind::additive) {  // the 16-bit query's own dtype
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < keys; ++j)
        s[i * ts.row_step + j * ts.key_step] +=
            element_as<T>(mask.dtype, mask.data, i * mask.row + (j0 + j) * mask.col);
  }
}

}  // namespace dotattn::detail
