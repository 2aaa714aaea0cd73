// The first steps of every key block, shared by the attention and weights
// loops: score a block of keys against the row block's queries (packed
// once by the constructor) and mask the tile.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/kernels.hpp"
#include "mask.hpp"
#include "operand_rows.hpp"
#include "problem.hpp"
#include "tiling.hpp"

namespace dotattn::detail {

template <class T>
class MaskedScores {
 public:
  // q: scratch of E x tile_rows for the packed queries; widened_k: of
  // keys x E for a block of keys stored in another format.
  MaskedScores(const Problem& p, const kernels::BlockKernels<T>& kern, const RowBlock& rb, T* q,
               std::int64_t tile_rows, T* widened_k)
      : p_(p),
        kern_(kern),
        rb_(rb),
        q_(q),
        tile_rows_(tile_rows),
        by_rows_(rb.tile_rows() <= kern.dot_rows),
        keys_(p, p.k, p.k_storage, rb.b, rb.hk, p.E, kern),
        widened_k_(widened_k),
        causal_(causal_limit(p.causal, p.L, p.S)),
        scale_(static_cast<T>(p.scale)) {
    pack_queries();
  }

  // Row r0 + i sees keys [0, visible_keys(i)) by the causal rule.
  std::int64_t visible_keys(std::int64_t i) const { return causal_.visible_keys(rb_.r0 + i); }

  // Few rows: scored by dot products (score_rows), stored keys widened as
  // they are loaded; the P·V step reads stored values the same way.
  bool few_rows() const { return by_rows_; }

  // Keys from here on are hidden from every row of the block.
  std::int64_t key_end() const { return visible_keys(rb_.rows - 1); }

  // st[j][t] (j < keys, t < tile_rows, leading dimension tile_rows) for keys
  // [j0, j0 + keys): the scaled scores with the mask and the causal rule
  // applied.
  void compute(std::int64_t j0, std::int64_t keys, T* st) const {
    if (by_rows_ && keys_.widens()) {
      kern_.score_rows_stored(q_, p_.E, rb_.tile_rows(), keys_.stored_from(j0), keys, p_.E, scale_,
                              st, tile_rows_);
    } else {
      const auto k = keys_.block(j0, keys, widened_k_);
      if (by_rows_)
        kern_.score_rows(q_, p_.E, rb_.tile_rows(), k.data, k.stride, keys, p_.E, scale_, st,
                         tile_rows_);
      else
        kern_.score_tile(q_, tile_rows_, tile_rows_, k.data, k.stride, keys, p_.E, scale_, st,
                         tile_rows_);
    }
    const TileStrides ts{1, tile_rows_};
    const bool crosses_diagonal = causal_.active && j0 + keys > visible_keys(0);
    for (std::int64_t g = 0; g < rb_.heads; ++g) {
      T* head = st + g * rb_.rows;
      mask_tile(mask_rows<T>(p_, rb_.b, rb_.h0 + g, rb_.r0), rb_.rows, j0, keys, head, ts);
      if (crosses_diagonal) mask_causal(causal_, rb_.r0, rb_.rows, j0, keys, head, ts);
    }
  }

 private:
  // Tile row t = g * rows + i is query row r0 + i of head h0 + g. For
  // score_rows: q[t][e], row by row. For score_tile: q[e][t], transposed,
  // zero in the padding rows.
  void pack_queries() {
    if (!by_rows_) std::fill(q_, q_ + p_.E * tile_rows_, T(0));
    const std::int64_t row_step = by_rows_ ? p_.E : 1, e_step = by_rows_ ? 1 : tile_rows_;
    for (std::int64_t g = 0; g < rb_.heads; ++g)
      for (std::int64_t i = 0; i < rb_.rows; ++i) {
        const T* q = operand_rows<T>(p_, p_.q, rb_.b, rb_.h0 + g, rb_.r0 + i);
        T* packed = q_ + (g * rb_.rows + i) * row_step;
        for (std::int64_t e = 0; e < p_.E; ++e) packed[e * e_step] = q[e];
      }
  }

  const Problem& p_;
  const kernels::BlockKernels<T>& kern_;
  RowBlock rb_;
  T* q_;
  std::int64_t tile_rows_;
  bool by_rows_;  // few rows: score_rows, else score_tile
  OperandRows<T> keys_;
  T* widened_k_;
  CausalLimit causal_;
  T scale_;
};

}  // namespace dotattn::detail
