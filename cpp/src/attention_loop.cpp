// The blocked online-softmax (FlashAttention-style) forward pass. A work
// item is one row block and one range of keys; its key blocks are visited
// in order, each as score tile -> mask -> fold into the running softmax ->
// P·V accumulate, so the L x S score matrix never exists. When the keys are
// split into several ranges (decoding), a second pass merges each row
// block's ranges in order. Extra memory: one tile per thread, plus the
// ranges' states when split (bounded by choose_blocking).
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

// One thread's scratch, carved from one allocation (a small call would
// otherwise spend a fair share of its time in the allocator).
template <class T>
struct Tile {
  AlignedArray<T> buffer;
  T* q;        // packed queries, E x tile_rows
  T* st;       // scores, then weights: keys x tile_rows
  T* acc;      // tile_rows x Ev
  T* saved;    // acc before the block's P·V step
  T* clean_v;  // the block's values with inf and NaN zeroed: keys x Ev
  T* rows;     // m, l, block max, block sum, alpha: tile_rows each
  T* wk;       // the block's keys widened (keys x E), if stored in another format
  T* wv;       // the block's values widened (keys x Ev), likewise

  Tile(const Problem& p, const Blocking& blk) {
    const std::int64_t sizes[] = {p.E * blk.tile_rows,
                                  blk.keys * blk.tile_rows,
                                  blk.tile_rows * p.Ev,
                                  blk.tile_rows * p.Ev,
                                  blk.keys * p.Ev,
                                  5 * blk.tile_rows,
                                  widens(p.k_storage, p.dtype) ? blk.keys * p.E : 0,
                                  widens(p.v_storage, p.dtype) ? blk.keys * p.Ev : 0};
    constexpr std::int64_t line = 64 / sizeof(T);
    std::int64_t total = 0;
    for (const std::int64_t n : sizes) total += round_up(n, line);
    buffer = aligned_array<T>(total);  // moving the Tile keeps these pointers valid
    T* next = buffer.get();
    T** fields[] = {&q, &st, &acc, &saved, &clean_v, &rows, &wk, &wv};
    for (std::size_t i = 0; i < 8; ++i) {
      *fields[i] = next;
      next += round_up(sizes[i], line);
    }
    // score_rows leaves the padding rows alone: they must hold numbers.
    std::fill(st, st + blk.keys * blk.tile_rows, T(0));
  }

  RowState<T> state(std::int64_t tile_rows) const {
    return {rows, rows + tile_rows, acc, rows + 2 * tile_rows, rows + 3 * tile_rows,
            rows + 4 * tile_rows};
  }
};

// The softmax state of row block rb over keys [j_begin, j_end).
template <class T>
RowState<T> attend(const Problem& p, const kernels::BlockKernels<T>& kern, const Blocking& blk,
                   const RowBlock& rb, std::int64_t j_begin, std::int64_t j_end, Tile<T>& t) {
  const MaskedScores<T> scores(p, kern, rb, t.q, blk.tile_rows, t.wk);
  const OperandRows<T> values(p, p.v, p.v_storage, rb.b, rb.hk, p.Ev, kern);
  const std::int64_t rows = rb.tile_rows();
  const RowState<T> s = t.state(blk.tile_rows);
  std::fill(s.m, s.m + blk.tile_rows, kNegInf<T>);
  std::fill(s.l, s.l + blk.tile_rows, T(0));
  std::fill(s.acc, s.acc + rows * p.Ev, T(0));

  const std::int64_t end = std::min(j_end, scores.key_end());
  for (std::int64_t j0 = j_begin; j0 < end; j0 += blk.keys) {
    const std::int64_t keys = std::min(blk.keys, end - j0);
    scores.compute(j0, keys, t.st);
    const T smallest = fold_block(kern, t.st, keys, blk.tile_rows, rows, p.Ev, s);
    // Every weight nonzero: no 0 * inf to keep out (accumulate_values), so
    // few rows read stored values straight from memory.
    if (scores.few_rows() && values.widens() && smallest > T(0)) {
      kern.pv_accumulate_stored(t.st, blk.tile_rows, rows, keys, values.stored_from(j0), p.Ev,
                                s.acc, p.Ev);
      continue;
    }
    const auto v = values.block(j0, keys, t.wv);
    accumulate_values(kern, t.st, blk.tile_rows, rows, keys, v.data, v.stride, p.Ev, smallest, s.acc,
                      t.saved, t.clean_v);
  }
  return s;
}

// Output row and LSE of tile row t of rb.
template <class T>
T* out_row(const Problem& p, const RowBlock& rb, std::int64_t t) {
  return static_cast<T*>(p.out) + rb.result_offset(p, t, p.Ev);
}

template <class T>
T* lse_of(const Problem& p, const RowBlock& rb, std::int64_t t) {
  return p.lse ? static_cast<T*>(p.lse) + rb.result_offset(p, t, 1) : nullptr;
}

// The states of every key range of every row block, for the merge pass.
template <class T>
struct RangeStates {
  std::int64_t tile_rows, Ev;
  AlignedArray<T> m, l, acc;

  RangeStates(std::int64_t items, std::int64_t tile_rows, std::int64_t Ev)
      : tile_rows(tile_rows),
        Ev(Ev),
        m(aligned_array<T>(items * tile_rows)),
        l(aligned_array<T>(items * tile_rows)),
        acc(aligned_array<T>(items * tile_rows * Ev)) {}

  void store(std::int64_t item, const RowState<T>& s, std::int64_t rows) {
    std::copy(s.m, s.m + rows, m.get() + item * tile_rows);
    std::copy(s.l, s.l + rows, l.get() + item * tile_rows);
    std::copy(s.acc, s.acc + rows * Ev, acc.get() + item * tile_rows * Ev);
  }
};

template <class T>
void attend_split(const Problem& p, const kernels::BlockKernels<T>& kern, const Blocking& blk) {
  RangeStates<T> ranges(blk.items(p), blk.tile_rows, p.Ev);
  for_each_item(
      blk.items(p), [&] { return Tile<T>(p, blk); },
      [&](std::int64_t item, Tile<T>& tile) {
        const RowBlock rb = row_block(p, blk, item / blk.splits);
        const std::int64_t j0 = item % blk.splits * blk.split_keys;
        ranges.store(item, attend(p, kern, blk, rb, j0, j0 + blk.split_keys, tile), rb.tile_rows());
      });
  for_each_item(
      blk.row_items(p), [] { return 0; },
      [&](std::int64_t row_item, int) {
        const RowBlock rb = row_block(p, blk, row_item);
        const std::int64_t first = row_item * blk.splits * blk.tile_rows;
        for (std::int64_t t = 0; t < rb.tile_rows(); ++t)
          merge_ranges(blk.splits, ranges.m.get() + first + t, ranges.l.get() + first + t,
                       blk.tile_rows, ranges.acc.get() + (first + t) * p.Ev, blk.tile_rows * p.Ev,
                       p.Ev, out_row<T>(p, rb, t), lse_of<T>(p, rb, t));
      });
}

template <class T>
void attend_whole(const Problem& p, const kernels::BlockKernels<T>& kern, const Blocking& blk) {
  for_each_item(
      blk.items(p), [&] { return Tile<T>(p, blk); },
      [&](std::int64_t item, Tile<T>& tile) {
        const RowBlock rb = row_block(p, blk, item);
        const RowState<T> s = attend(p, kern, blk, rb, 0, p.S, tile);
        for (std::int64_t t = 0; t < rb.tile_rows(); ++t)
          finish_row(s.m[t], s.l[t], s.acc + t * p.Ev, p.Ev, out_row<T>(p, rb, t), lse_of<T>(p, rb, t));
      });
}

}  // namespace

template <class T>
void attention_loop(const Problem& p) {
  const kernels::BlockKernels<T>& kern = kernels::selected<T>();
  const Blocking blk = choose_blocking(p, sizeof(T), kern.row_multiple, Purpose::attention);
  if (blk.splits > 1)
    attend_split(p, kern, blk);
  else
    attend_whole(p, kern, blk);
}

template void attention_loop<float>(const Problem&);
template void attention_loop<double>(const Problem&);

}  // namespace dotattn::detail
