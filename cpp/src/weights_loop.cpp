// The attention weights softmax(Q·Kᵀ·scale + mask): the result is the whole
// L x S matrix, so each block of rows is scored straight into it and then
// normalised row by row, with the same block kernels as the attention loop.
#include <algorithm>
#include <cstdint>

#include "kernels/kernels.hpp"
#include "loops.hpp"
#include "masked_scores.hpp"
#include "online_softmax.hpp"
#include "threading.hpp"
#include "tiling.hpp"

namespace dotattn::detail {
namespace {

template <class T>
void weigh_row_block(const Problem& p, const kernels::BlockKernels<T>& kern,
                     const Blocking& blk, const RowBlock& rb, T* kp) {
  const MaskedScores<T> scores(p, kern, rb);
  T* w = static_cast<T*>(p.out) + ((rb.b * p.Hq + rb.h) * p.L + rb.r0) * p.S;

  const std::int64_t kv_end = scores.key_end();
  for (std::int64_t j0 = 0; j0 < kv_end; j0 += blk.keys)
    scores.compute(j0, std::min(blk.keys, kv_end - j0), kp, blk.kp_stride, w + j0, p.S);
  for (std::int64_t i = 0; i < rb.rows; ++i)
    softmax_row(kern, w + i * p.S, scores.visible_keys(i), p.S);
}

}  // namespace

template <class T>
void weights_loop(const Problem& p) {
  const kernels::BlockKernels<T>& kern = kernels::selected<T>();
  const Blocking blk = choose_blocking(p, sizeof(T), kern.score_columns);
  for_each_item(
      blk.items(p), [&] { return aligned_array<T>(p.E * blk.kp_stride); },
      [&](std::int64_t item, AlignedArray<T>& packed_keys) {
        weigh_row_block(p, kern, blk, row_block(p, blk, item), packed_keys.get());
      });
}

template void weights_loop<float>(const Problem&);
template void weights_loop<double>(const Problem&);

}  // namespace dotattn::detail
