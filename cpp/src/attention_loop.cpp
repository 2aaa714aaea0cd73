// The blocked online-softmax (FlashAttention-style) forward pass. A work
// item is one row block and one range of keys; its key blocks are visited
// in order, each as score tile -> mask -> fold into the running softmax ->
// P·V accumulate, so the L x S score matrix never exists. When the keys are
// split into several ranges (decoding), a second pass merges each row
// block's ranges in order. Extra memory: one tile per thread, plus the
// ranges' states when split (bounded by choose_blocking).
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <optional>
#include <utility>
#include <vector>

#include "half_precision.hpp"
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
  T* bias;     // ALiBi slopes and positions: 2 x tile_rows

  Tile(const Problem& p, const Blocking& blk) {
    const std::int64_t sizes[] = {p.E * blk.tile_rows,
                                  blk.keys * blk.tile_rows,
                                  blk.tile_rows * p.Ev,
                                  blk.tile_rows * p.Ev,
                                  blk.keys * p.Ev,
                                  5 * blk.tile_rows,
                                  widens(p.k_storage, p.dtype) ? blk.keys * p.E : 0,
                                  widens(p.v_storage, p.dtype) ? blk.keys * p.Ev : 0,
                                  p.alibi_slopes.empty() ? 0 : 2 * blk.tile_rows};
    constexpr std::int64_t line = 64 / sizeof(T);
    std::int64_t total = 0;
    for (const std::int64_t n : sizes) total += round_up(n, line);
    buffer = aligned_array<T>(total);  // moving the Tile keeps these pointers valid
    T* next = buffer.get();
    T** fields[] = {&q, &st, &acc, &saved, &clean_v, &rows, &wk, &wv, &bias};
    for (std::size_t i = 0; i < std::size(fields); ++i) {
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

// The P·V step of keys [j0, j0 + keys) with weights pt (keys x tile_rows),
// `rows` tile rows per key/value head.
template <class T>
void accumulate_block(const Problem& p, const kernels::BlockKernels<T>& kern, const Blocking& blk,
                      bool few_rows, const OperandRows<T>& values, std::int64_t j0,
                      std::int64_t keys, const T* pt, std::int64_t rows, T smallest, T* acc,
                      Tile<T>& t) {
  // Every weight nonzero: no 0 * inf to keep out (accumulate_values), so
  // few rows read the values as stored, straight from memory and across
  // pages, in one call.
  if (few_rows && smallest > T(0))
    return kern.pv_accumulate(pt, blk.tile_rows, rows, keys, values.stored_from(j0), p.Ev, acc,
                              p.Ev);
  for (std::int64_t j = j0, next; j < j0 + keys; j = next) {
    next = values.run_end(j, j0 + keys);
    for (std::int64_t h = 0; h < values.heads(); ++h)
      accumulate_values(kern, pt + (j - j0) * blk.tile_rows + h * rows, blk.tile_rows, rows,
                        next - j, values.block(h, j, next - j, t.wv), p.Ev, smallest,
                        acc + h * rows * p.Ev, t.saved, t.clean_v);
  }
}

// The softmax state of row block rb over `count` keys from the `first`-th
// key the block sees (the keys before the block's window are never read).
template <class T>
RowState<T> attend(const Problem& p, const kernels::BlockKernels<T>& kern, const Blocking& blk,
                   const RowBlock& rb, std::int64_t first, std::int64_t count, Tile<T>& t) {
  const MaskedScores<T> scores(p, kern, rb, blk.tile_rows, {t.q, t.wk, t.bias});
  const OperandRows<T> values(p, p.v, p.v_storage, rb.b, rb.hk, rb.kv_heads(p), p.Ev, kern);
  const std::int64_t rows = rb.tile_rows();
  const RowState<T> s = t.state(blk.tile_rows);
  std::fill(s.m, s.m + blk.tile_rows, kNegInf<T>);
  std::fill(s.l, s.l + blk.tile_rows, T(0));
  std::fill(s.acc, s.acc + rows * p.Ev, T(0));

  const std::int64_t begin = scores.key_begin() + first;
  const std::int64_t end = std::min(begin + count, scores.key_end());
  for (std::int64_t j0 = begin; j0 < end; j0 += blk.keys) {
    const std::int64_t keys = std::min(blk.keys, end - j0);
    const bool have_max = scores.compute(j0, keys, t.st, s.block_max);
    const T smallest = fold_block(kern, t.st, keys, blk.tile_rows, rows, p.Ev, s, have_max);
    accumulate_block(p, kern, blk, scores.few_rows(), values, j0, keys, t.st, rb.kv_rows(p),
                     smallest, s.acc, t);
  }
  return s;
}

// Output row (of p.out_dtype) and LSE of tile row t of rb.
inline void* out_row(const Problem& p, const RowBlock& rb, std::int64_t t) {
  return static_cast<char*>(p.out) + rb.result_offset(p.out_rows, t) * stored_size(p.out_dtype);
}

template <class T>
T* lse_of(const Problem& p, const RowBlock& rb, std::int64_t t) {
  return p.lse ? static_cast<T*>(p.lse) + rb.result_offset(p.lse_rows, t) : nullptr;
}

// Tile row t's finished state: its head's sink (if any) joins the softmax,
// then out and lse are written; an out narrower than T (a 16-bit query's
// dtype) from the finished row, which acc then holds.
template <class T>
void finish_tile_row(const Problem& p, const RowBlock& rb, std::int64_t t, T m, T l, T* acc) {
  if (!p.sinks.empty())
    add_sink(static_cast<T>(p.sinks[static_cast<std::size_t>(rb.head_of(t))]), m, l, acc, p.Ev);
  if (p.out_dtype == dtype_of<T>::value)
    return finish_row(m, l, acc, p.Ev, static_cast<T*>(out_row(p, rb, t)), lse_of<T>(p, rb, t));
  finish_row(m, l, acc, p.Ev, acc, lse_of<T>(p, rb, t));
  store_row(acc, p.Ev, p.out_dtype, out_row(p, rb, t));
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

// One problem of a call (a sequence of a packed batch, or the whole call)
// and its blocking.
template <class T>
struct Planned {
  const Problem* p;
  Blocking blk;
  std::optional<RangeStates<T>> ranges;  // split into key ranges: their states
};

// Work items numbered across the problems, each problem's after the one
// before; item -> (problem, its own item).
template <class T>
std::pair<Planned<T>*, std::int64_t> locate(std::vector<Planned<T>>& plans,
                                            const std::vector<std::int64_t>& starts, std::int64_t item) {
  const auto at = std::upper_bound(starts.begin(), starts.end(), item) - starts.begin() - 1;
  return {&plans[static_cast<std::size_t>(at)], item - starts[static_cast<std::size_t>(at)]};
}

// First pass: each item attends its row block over all its keys and
// finishes the rows, or over one key range, kept for the merge.
template <class T>
void attend_item(const kernels::BlockKernels<T>& kern, Planned<T>& plan, std::int64_t item, Tile<T>& tile) {
  const Problem& p = *plan.p;
  const Blocking& blk = plan.blk;
  const RowBlock rb = row_block(p, blk, item / blk.splits);
  if (blk.splits == 1) {
    const RowState<T> s = attend(p, kern, blk, rb, 0, p.S, tile);
    for (std::int64_t t = 0; t < rb.tile_rows(); ++t)
      finish_tile_row(p, rb, t, s.m[t], s.l[t], s.acc + t * p.Ev);
    return;
  }
  const std::int64_t first = item % blk.splits * blk.split_keys;
  plan.ranges->store(item, attend(p, kern, blk, rb, first, blk.split_keys, tile), rb.tile_rows());
}

// Second pass: the key ranges of one row block merged and finished.
template <class T>
void merge_row_block(const Planned<T>& plan, std::int64_t row_item, T* acc) {
  const Problem& p = *plan.p;
  const Blocking& blk = plan.blk;
  const RangeStates<T>& ranges = *plan.ranges;
  const RowBlock rb = row_block(p, blk, row_item);
  const std::int64_t first = row_item * blk.splits * blk.tile_rows;
  for (std::int64_t t = 0; t < rb.tile_rows(); ++t) {
    T m, l;
    merge_ranges(blk.splits, ranges.m.get() + first + t, ranges.l.get() + first + t, blk.tile_rows,
                 ranges.acc.get() + (first + t) * p.Ev, blk.tile_rows * p.Ev, p.Ev, m, l, acc);
    finish_tile_row(p, rb, t, m, l, acc);
  }
}

// A tile big enough for every plan's blocking.
template <class T>
Blocking widest(const std::vector<Planned<T>>& plans) {
  Blocking w = plans.front().blk;
  for (const Planned<T>& plan : plans) {
    w.tile_rows = std::max(w.tile_rows, plan.blk.tile_rows);
    w.keys = std::max(w.keys, plan.blk.keys);
  }
  return w;
}

}  // namespace

// The problems share dtype, heads, E, Ev, formats and options; they differ
// in L, S and where their operands and results are. All their work items
// run in one parallel pass (two when some are split into key ranges), the
// most costly problems' first, so that no thread is left with a long one
// at the end.
template <class T>
void attention_loop(const Problem* problems, std::size_t count) {
  const kernels::BlockKernels<T>& kern = kernels::selected<T>();
  const auto blocking = [&](const Problem& p, std::int64_t call_row_items) {
    return choose_blocking(p, kern, Purpose::attention, call_row_items);
  };
  std::int64_t call_row_items = 0;
  for (std::size_t i = 0; i < count; ++i) call_row_items += blocking(problems[i], 0).row_items(problems[i]);
  std::vector<Planned<T>> plans;
  for (std::size_t i = 0; i < count; ++i) {
    const Problem& p = problems[i];
    Planned<T> plan{&p, blocking(p, call_row_items), std::nullopt};
    if (plan.blk.items(p) > 0) plans.push_back(std::move(plan));
  }
  if (plans.empty()) return;
  const auto item_cost = [](const Planned<T>& a) {
    return a.blk.tile_rows * std::min(a.blk.split_keys, a.p->S);
  };
  std::stable_sort(plans.begin(), plans.end(),
                   [&](const Planned<T>& a, const Planned<T>& b) { return item_cost(a) > item_cost(b); });

  std::vector<std::int64_t> starts, merge_starts;
  std::int64_t items = 0, merges = 0;
  std::vector<Planned<T>*> split;
  for (Planned<T>& plan : plans) {
    starts.push_back(items);
    items += plan.blk.items(*plan.p);
    if (plan.blk.splits > 1) {
      plan.ranges.emplace(plan.blk.items(*plan.p), plan.blk.tile_rows, plan.p->Ev);
      merge_starts.push_back(merges);
      merges += plan.blk.row_items(*plan.p);
      split.push_back(&plan);
    }
  }
  const Blocking tile_blocking = widest(plans);
  for_each_item(
      items, [&] { return Tile<T>(*plans.front().p, tile_blocking); },
      [&](std::int64_t item, Tile<T>& tile) {
        const auto [plan, own] = locate(plans, starts, item);
        attend_item(kern, *plan, own, tile);
      });
  if (split.empty()) return;
  for_each_item(
      merges, [&] { return aligned_array<T>(plans.front().p->Ev); },
      [&](std::int64_t item, AlignedArray<T>& acc) {
        const auto at = std::upper_bound(merge_starts.begin(), merge_starts.end(), item) - merge_starts.begin() - 1;
        merge_row_block(*split[static_cast<std::size_t>(at)], item - merge_starts[static_cast<std::size_t>(at)], acc.get());
      });
}

template void attention_loop<float>(const Problem*, std::size_t);
template void attention_loop<double>(const Problem*, std::size_t);

}  // namespace dotattn::detail
