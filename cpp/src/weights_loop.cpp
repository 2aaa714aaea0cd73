// The attention weights softmax(Q·Kᵀ·scale + mask): the result is the whole
// L x S matrix, so each block of rows is scored with the same block kernels
// as the attention loop, copied into the result's rows, and normalised row
// by row.
#include <algorithm>
#include <cstdint>

#include "half_precision.hpp"
#include "kernels/kernels.hpp"
#include "loops.hpp"
#include "masked_scores.hpp"
#include "online_softmax.hpp"
#include "threading.hpp"
#include "tiling.hpp"

namespace dotattn::detail {
namespace {

template <class T>
struct WeightsTile {
  // wk: a block of keys widened, if stored in another format; bias: the
  // ALiBi slopes and positions; rows: a row block's weights as T, when the
  // result is narrower (a 16-bit query's dtype).
  AlignedArray<T> q, st, wk, bias, rows;

  WeightsTile(const Problem& p, const Blocking& blk)
      : q(aligned_array<T>(p.E * blk.tile_rows)),
        st(aligned_array<T>(blk.keys * blk.tile_rows)),
        wk(aligned_array<T>(widens(p.k_storage, p.dtype) ? blk.keys * p.E : 0)),
        bias(aligned_array<T>(p.alibi_slopes.empty() ? 0 : 2 * blk.tile_rows)),
        rows(aligned_array<T>(p.out_dtype == p.dtype ? 0 : blk.rows * p.S)) {}
};

template <class T>
void weigh_row_block(const Problem& p, const kernels::BlockKernels<T>& kern,
                     const Blocking& blk, const RowBlock& rb, WeightsTile<T>& t) {
  const MaskedScores<T> scores(p, kern, rb, blk.tile_rows, {t.q.get(), t.wk.get(), t.bias.get()});
  const std::int64_t first = rb.result_offset(p.out_rows, 0);
  const bool narrowed = p.out_dtype != p.dtype;
  T* w = narrowed ? t.rows.get() : static_cast<T*>(p.out) + first;

  const std::int64_t kv_end = scores.key_end();
  for (std::int64_t j0 = scores.key_begin(); j0 < kv_end; j0 += blk.keys) {
    const std::int64_t keys = std::min(blk.keys, kv_end - j0);
    scores.compute(j0, keys, t.st.get(), nullptr);
    for (std::int64_t i = 0; i < rb.rows; ++i)
      for (std::int64_t j = 0; j < keys; ++j) w[i * p.S + j0 + j] = t.st[j * blk.tile_rows + i];
  }
  const T sink = p.sinks.empty() ? kNegInf<T> : static_cast<T>(p.sinks[static_cast<std::size_t>(rb.h0)]);
  for (std::int64_t i = 0; i < rb.rows; ++i)
    softmax_row(w + i * p.S, scores.key_begin(i), scores.key_end(i), p.S, sink);
  if (narrowed)
    store_row(w, rb.rows * p.S, p.out_dtype, static_cast<char*>(p.out) + first * stored_size(p.out_dtype));
}

}  // namespace

template <class T>
void weights_loop(const Problem& p) {
  const kernels::BlockKernels<T>& kern = kernels::selected<T>();
  const Blocking blk = choose_blocking(p, kern, Purpose::weights);
  for_each_item(
      blk.items(p), [&] { return WeightsTile<T>(p, blk); },
      [&](std::int64_t item, WeightsTile<T>& tile) {
        weigh_row_block(p, kern, blk, row_block(p, blk, item), tile);
      });
}

template void weights_loop<float>(const Problem&);
template void weights_loop<double>(const Problem&);

}  // namespace dotattn::detail
