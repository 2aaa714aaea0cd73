// The first steps of every key block, shared by the attention and weights
// loops: score a block of keys against the row block's queries (packed
// once by the constructor), then, in this order, soft-cap, ALiBi bias,
// the user's mask, and the causal rule and window.
#pragma once

#include <algorithm>
#include <cstdint>

#include "half_precision.hpp"
#include "kernels/kernels.hpp"
#include "mask.hpp"
#include "operand_rows.hpp"
#include "problem.hpp"
#include "tiling.hpp"

namespace dotattn::detail {

// A row block's scratch: q (E x tile_rows) for the packed queries;
// widened_k (keys x E) for a block of keys stored in another format; bias
// (2 x tile_rows) for the ALiBi slopes and positions of the tile rows.
template <class T>
struct ScoreScratch {
  T* q;
  T* widened_k;
  T* bias;
};

template <class T>
class MaskedScores {
 public:
  MaskedScores(const Problem& p, const kernels::BlockKernels<T>& kern, const RowBlock& rb,
               std::int64_t tile_rows, const ScoreScratch<T>& scratch)
      : p_(p),
        kern_(kern),
        rb_(rb),
        q_(scratch.q),
        tile_rows_(tile_rows),
        by_rows_(rb.kv_rows(p) <= kern.dot_rows),
        keys_(p, p.k, p.k_storage, rb.b, rb.hk, rb.kv_heads(p), p.E, kern),
        widened_k_(scratch.widened_k),
        slope_(p.alibi_slopes.empty() ? nullptr : scratch.bias),
        position_(scratch.bias + tile_rows),
        visible_(visible_keys(p)),
        scale_(static_cast<T>(p.scale)) {
    pack_queries();
    if (slope_) set_bias_rows();
  }

  // Row r0 + i sees keys [key_begin(i), key_end(i)).
  std::int64_t key_begin(std::int64_t i) const { return visible_.begin(rb_.r0 + i); }
  std::int64_t key_end(std::int64_t i) const { return visible_.end(rb_.r0 + i); }

  // Few rows: scored by dot products (score_rows), stored keys widened as
  // they are loaded; the P·V step reads stored values the same way.
  bool few_rows() const { return by_rows_; }

  // The keys some row of the block sees: [key_begin(), key_end()).
  std::int64_t key_begin() const { return key_begin(0); }
  std::int64_t key_end() const { return key_end(rb_.rows - 1); }

  // st[j][t] (j < keys, t < tile_rows, leading dimension tile_rows) for keys
  // [j0, j0 + keys): the scaled scores with the mask and the causal rule
  // applied (and the scores adjusted by softcap and ALiBi). Where the score
  // tile's scores are final (many rows, and nothing of the above changes
  // them in this block), their row maxima too, into row_max (tile_rows;
  // may be null), and returns true: the block's max then needs no pass of
  // its own.
  bool compute(std::int64_t j0, std::int64_t keys, T* st, T* row_max) const {
    const bool crosses_edge =
        visible_.active && (j0 + keys > key_end(0) || j0 < key_begin(rb_.rows - 1));
    const bool final_scores = row_max && !by_rows_ && !(p_.softcap > 0) && !slope_ &&
                              !crosses_edge && p_.mask_kind == MaskKind::none;
    if (by_rows_)
      kern_.score_rows(q_, p_.E, rb_.kv_rows(p_), keys_.stored_from(j0), keys, p_.E, scale_, st,
                       tile_rows_);
    else
      score_runs(j0, keys, st, final_scores ? row_max : nullptr);
    if (final_scores) return true;
    if (p_.softcap > 0) kern_.soft_cap(st, tile_rows_, keys, tile_rows_, static_cast<T>(p_.softcap));
    if (slope_) kern_.add_distance_bias(st, tile_rows_, keys, tile_rows_, slope_, position_, j0);
    const TileStrides ts{1, tile_rows_};
    for (std::int64_t g = 0; g < rb_.heads; ++g) {
      T* head = st + g * rb_.rows;
      mask_tile(mask_rows(p_, rb_.b, rb_.h0 + g, rb_.r0), rb_.rows, j0, keys, head, ts);
      if (crosses_edge) mask_outside(visible_, rb_.r0, rb_.rows, j0, keys, head, ts);
    }
    return false;
  }

 private:
  // The scaled scores of keys [j0, j0 + keys) for many rows: a tile per
  // run of evenly spaced rows (a page, in a paged cache).
  void score_runs(std::int64_t j0, std::int64_t keys, T* st, T* row_max) const {
    if (row_max) std::fill(row_max, row_max + tile_rows_, kNegInf<T>);
    for (std::int64_t j = j0, next; j < j0 + keys; j = next) {
      next = keys_.run_end(j, j0 + keys);
      const auto k = keys_.block(0, j, next - j, widened_k_);
      kern_.score_tile(q_, tile_rows_, tile_rows_, k.data, k.stride, next - j, p_.E, scale_,
                       st + (j - j0) * tile_rows_, tile_rows_, row_max);
    }
  }

  // Tile row t = g * rows + i is query row r0 + i of head h0 + g. For
  // score_rows: q[t][e], row by row. For score_tile: q[e][t], transposed,
  // zero in the padding rows. A 16-bit query is widened here, once per row
  // block.
  void pack_queries() {
    if (!by_rows_) std::fill(q_, q_ + p_.E * tile_rows_, T(0));
    const std::int64_t row_step = by_rows_ ? p_.E : 1, e_step = by_rows_ ? 1 : tile_rows_;
    for (std::int64_t g = 0; g < rb_.heads; ++g)
      for (std::int64_t i = 0; i < rb_.rows; ++i) {
        const void* q = operand_row(p_, p_.q, p_.q_dtype, rb_.b, rb_.h0 + g, rb_.r0 + i);
        T* packed = q_ + (g * rb_.rows + i) * row_step;
        for (std::int64_t e = 0; e < p_.E; ++e) packed[e * e_step] = element_as<T>(p_.q_dtype, q, e);
      }
  }

  // Tile row t = g * rows + i: slope -alibi_slopes[h0 + g] and position
  // i' of row r0 + i; the padding rows get zeros.
  void set_bias_rows() {
    std::fill(slope_, slope_ + 2 * tile_rows_, T(0));
    for (std::int64_t g = 0; g < rb_.heads; ++g)
      for (std::int64_t i = 0; i < rb_.rows; ++i) {
        slope_[g * rb_.rows + i] = static_cast<T>(-p_.alibi_slopes[static_cast<std::size_t>(rb_.h0 + g)]);
        position_[g * rb_.rows + i] = static_cast<T>(rb_.r0 + i + visible_.offset);
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
  T* slope_;  // null without ALiBi
  T* position_;
  VisibleKeys visible_;
  T scale_;
};

}  // namespace dotattn::detail
