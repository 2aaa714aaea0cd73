// The blocked online-softmax (FlashAttention-style) forward pass. For each
// block of query rows, key/value blocks are visited in order; each step is
// score tile -> mask -> fold into the running softmax -> P·V accumulate, and
// the L x S score matrix never exists. Extra memory: one tile per thread.
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
struct Tile {
  AlignedArray<T> kp;   // packed keys, E x kp_stride
  AlignedArray<T> s;    // scores, then weights: rows x kp_stride
  AlignedArray<T> acc;  // rows x Ev
  AlignedArray<T> m, l;

  Tile(const Problem& p, const Blocking& blk)
      : kp(aligned_array<T>(p.E * blk.kp_stride)),
        s(aligned_array<T>(blk.rows * blk.kp_stride)),
        acc(aligned_array<T>(blk.rows * p.Ev)),
        m(aligned_array<T>(blk.rows)),
        l(aligned_array<T>(blk.rows)) {}
};

template <class T>
void attend_row_block(const Problem& p, const kernels::BlockKernels<T>& kern,
                      const Blocking& blk, const RowBlock& rb, Tile<T>& t) {
  const MaskedScores<T> scores(p, kern, rb);
  const T* v = operand_rows<T>(p, p.v, rb.b, rb.hk, 0);
  const std::int64_t ld = blk.kp_stride;

  std::fill(t.m.get(), t.m.get() + rb.rows, kNegInf<T>);
  std::fill(t.l.get(), t.l.get() + rb.rows, T(0));
  std::fill(t.acc.get(), t.acc.get() + rb.rows * p.Ev, T(0));

  const std::int64_t kv_end = scores.key_end();
  for (std::int64_t j0 = 0; j0 < kv_end; j0 += blk.keys) {
    const std::int64_t keys = std::min(blk.keys, kv_end - j0);
    scores.compute(j0, keys, t.kp.get(), ld, t.s.get(), ld);
    for (std::int64_t i = 0; i < rb.rows; ++i)
      fold_scores(kern, t.s.get() + i * ld, keys, t.m[i], t.l[i], t.acc.get() + i * p.Ev, p.Ev);
    kern.pv_accumulate(t.s.get(), ld, rb.rows, keys, v + j0 * p.v.row, p.v.row, p.Ev,
                       t.acc.get(), p.Ev);
  }

  const std::int64_t first_row = (rb.b * p.Hq + rb.h) * p.L + rb.r0;
  T* out = static_cast<T*>(p.out) + first_row * p.Ev;
  T* lse = p.lse ? static_cast<T*>(p.lse) + first_row : nullptr;
  for (std::int64_t i = 0; i < rb.rows; ++i)
    finish_row(t.m[i], t.l[i], t.acc.get() + i * p.Ev, p.Ev, out + i * p.Ev,
               lse ? lse + i : nullptr);
}

}  // namespace

template <class T>
void attention_loop(const Problem& p) {
  const kernels::BlockKernels<T>& kern = kernels::selected<T>();
  const Blocking blk = choose_blocking(p, sizeof(T), kern.score_columns);
  for_each_item(
      blk.items(p), [&] { return Tile<T>(p, blk); },
      [&](std::int64_t item, Tile<T>& tile) {
        attend_row_block(p, kern, blk, row_block(p, blk, item), tile);
      });
}

template void attention_loop<float>(const Problem&);
template void attention_loop<double>(const Problem&);

}  // namespace dotattn::detail
