// Masking of a score tile: the causal rule and the user's mask, applied
// between the score tile and the softmax. Masked scores become -inf; an
// additive mask is added. Tiles are addressed as s[i * row_step + j *
// key_step] for query row i and key j, so one code serves the transposed
// tiles of the attention loop and the rows of the weights.
#pragma once

#include <algorithm>
#include <cstdint>

#include "online_softmax.hpp"
#include "problem.hpp"

namespace dotattn::detail {

struct TileStrides {
  std::int64_t row_step, key_step;
};

// The causal rule as a per-row key limit: row i sees keys j <= i + offset.
struct CausalLimit {
  bool active = false;
  std::int64_t offset = 0;
  std::int64_t S = 0;

  // Row i sees keys [0, visible_keys(i)).
  std::int64_t visible_keys(std::int64_t i) const {
    return active ? std::clamp<std::int64_t>(i + offset + 1, 0, S) : S;
  }
};

inline CausalLimit causal_limit(Causal causal, std::int64_t L, std::int64_t S) {
  switch (causal) {
    case Causal::none: return {false, 0, S};
    case Causal::upper_left: return {true, 0, S};
    case Causal::lower_right: return {true, S - L, S};
  }
  return {false, 0, S};
}

// Sets the scores of keys [j0, j0 + keys) that rows r0.. may not see to -inf.
template <class T>
void mask_causal(const CausalLimit& causal, std::int64_t r0, std::int64_t rows, std::int64_t j0,
                 std::int64_t keys, T* s, TileStrides ts) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t first_hidden = std::max<std::int64_t>(causal.visible_keys(r0 + i) - j0, 0);
    for (std::int64_t j = first_hidden; j < keys; ++j) s[i * ts.row_step + j * ts.key_step] = kNegInf<T>;
  }
}

// The user's mask for the rows of one (batch, head): element (i, j) is at
// data + i * row + j * col, in elements of its own type.
struct MaskRows {
  MaskKind kind = MaskKind::none;
  const void* data = nullptr;
  std::int64_t row = 0, col = 0;
};

template <class T>
MaskRows mask_rows(const Problem& p, std::int64_t b, std::int64_t h, std::int64_t r0) {
  if (p.mask_kind == MaskKind::none) return {};
  const std::int64_t offset = batch_offset(p, p.mask, b) + h * p.mask.head + r0 * p.mask.row;
  const void* data = p.mask_kind == MaskKind::boolean
                         ? static_cast<const void*>(static_cast<const unsigned char*>(p.mask.data) + offset)
                         : static_cast<const void*>(static_cast<const T*>(p.mask.data) + offset);
  return {p.mask_kind, data, p.mask.row, p.mask.col};
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
  } else if (mask.kind == MaskKind::additive) {
    const T* m = static_cast<const T*>(mask.data) + j0 * mask.col;
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < keys; ++j)
        s[i * ts.row_step + j * ts.key_step] += m[i * mask.row + j * mask.col];
  }
}

}  // namespace dotattn::detail
