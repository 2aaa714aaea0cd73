// The first steps of every key block, shared by the attention and weights
// loops: pack the keys, score them against a block of query rows, and mask.
#pragma once

#include <cstdint>

#include "kernels/kernels.hpp"
#include "mask.hpp"
#include "problem.hpp"
#include "tiling.hpp"

namespace dotattn::detail {

template <class T>
class MaskedScores {
 public:
  MaskedScores(const Problem& p, const kernels::BlockKernels<T>& kern, const RowBlock& rb)
      : p_(p),
        kern_(kern),
        rb_(rb),
        q_(operand_rows<T>(p, p.q, rb.b, rb.h, rb.r0)),
        k_(operand_rows<T>(p, p.k, rb.b, rb.hk, 0)),
        mask_(mask_rows<T>(p, rb.b, rb.h, rb.r0)),
        causal_(causal_limit(p.causal, p.L, p.S)),
        scale_(static_cast<T>(p.scale)) {}

  // Row r0 + i sees keys [0, visible_keys(i)) by the causal rule.
  std::int64_t visible_keys(std::int64_t i) const { return causal_.visible_keys(rb_.r0 + i); }

  // Keys from here on are hidden from every row of the block.
  std::int64_t key_end() const { return visible_keys(rb_.rows - 1); }

  // s[i][j] for keys [j0, j0 + keys): the scaled scores with the mask and
  // the causal rule applied. kp receives the packed keys.
  void compute(std::int64_t j0, std::int64_t keys, T* kp, std::int64_t kp_stride, T* s,
               std::int64_t s_stride) const {
    kern_.pack_keys(k_ + j0 * p_.k.row, p_.k.row, keys, p_.E, kp, kp_stride);
    kern_.score_tile(q_, p_.q.row, rb_.rows, kp, kp_stride, keys, p_.E, scale_, s, s_stride);
    mask_tile(mask_, rb_.rows, j0, keys, s, s_stride);
    if (causal_.active && j0 + keys > visible_keys(0))
      mask_causal(causal_, rb_.r0, rb_.rows, j0, keys, s, s_stride);
  }

 private:
  const Problem& p_;
  const kernels::BlockKernels<T>& kern_;
  RowBlock rb_;
  const T* q_;
  const T* k_;
  MaskRows mask_;
  CausalLimit causal_;
  T scale_;
};

}  // namespace dotattn::detail
