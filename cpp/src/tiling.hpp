// How a call is cut into tiles: blocks of query rows (with the query heads
// of one key/value group together when the rows are few), blocks of keys
// (the steps of the online softmax), and, for few long rows, ranges of keys
// computed apart and merged (split-K). Every boundary depends on the shapes
// alone, never on the thread count, so neither do the results.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "kernels/kernels.hpp"
#include "problem.hpp"

namespace dotattn::detail {

constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
constexpr std::int64_t round_up(std::int64_t a, std::int64_t b) { return ceil_div(a, b) * b; }

enum class Purpose { attention, weights };

struct Blocking {
  std::int64_t heads = 1;        // query heads (of one key/value head) per row block
  std::int64_t rows = 1;         // query rows per head per row block
  std::int64_t tile_rows = 1;    // heads * rows, padded to the kernels' row multiple
  std::int64_t keys = 1;         // keys per block
  std::int64_t q_blocks = 0;     // row blocks per head group
  std::int64_t head_groups = 0;  // Hq / heads
  std::int64_t splits = 1;       // key ranges per row block
  std::int64_t split_keys = 0;   // keys per range: a multiple of keys

  std::int64_t row_items(const Problem& p) const { return p.batch * head_groups * q_blocks; }
  std::int64_t items(const Problem& p) const { return row_items(p) * splits; }
};

// The blocking of p for the kernel table kern, by its parameters (Tuning)
// and tile sizes. Row blocks of up to tuning.row_block rows. Key blocks of
// keys x (E + Ev + tile_rows) within tuning.key_block_bytes, which keeps the
// score tile in L1 between the steps that read it (decode_key_block_bytes
// for few rows), a whole number of the score tile's keys (key_multiple), so
// that no block ends on a narrower tile. When
// there are fewer than 64 row blocks, too few to keep many threads busy
// (decoding: one row per head), the keys are split into ranges of at
// least tuning.min_split_keys so that there are up to 256 work items; the
// ranges are merged by their LSEs. The values of each kernel set and why:
// its vec_<isa>.hpp.
//
// Decoding against a paged cache (few rows per key/value head: at most
// dot_rows, the kernels' few-rows limit), a row block takes every query
// head, so that each page is read whole, its heads in order: one head's
// part of a page of 16 tokens is only 2 to 8 KiB, and reading such pieces
// scattered over the pool ran at 0.74x of contiguous (Zen 3).
//
// call_row_items: the row blocks of the whole call when p is one of
// several problems (the sequences of a packed batch): many short
// sequences keep the threads busy without splitting any of them.
template <class T>
Blocking choose_blocking(const Problem& p, const kernels::BlockKernels<T>& kern, Purpose purpose,
                         std::int64_t call_row_items = 0) {
  constexpr std::int64_t kSplitBelow = 64, kMaxItems = 256;
  const Tuning& tuning = *kern.tuning;
  const std::int64_t dot_rows = kern.dot_rows;
  Blocking b;
  const std::int64_t group = p.heads_per_kv();
  const bool grouped = purpose == Purpose::attention && group > 1 && group * p.L <= tuning.row_block;
  b.heads = grouped ? group : 1;
  const bool whole_pages = purpose == Purpose::attention && p.k.pages && group * p.L <= dot_rows &&
                           p.Hq * p.L <= tuning.row_block;
  if (whole_pages) b.heads = p.Hq;
  b.rows = std::clamp<std::int64_t>(p.L, 1, tuning.row_block);
  b.tile_rows = round_up(b.heads * b.rows, kern.row_multiple);
  b.q_blocks = ceil_div(p.L, b.rows);
  b.head_groups = p.Hq / b.heads;

  // Few rows per key/value head (decoding): the kernels stream the keys and
  // values from memory and only the block's scores stay in cache, so its
  // blocks are bounded apart, by decode_key_block_bytes.
  const std::int64_t kv_rows = (b.heads == 1 ? 1 : group) * b.rows;
  const bool few_rows = purpose == Purpose::attention && kv_rows <= dot_rows;
  const std::int64_t per_key =
      (p.E + p.Ev + b.tile_rows) * static_cast<std::int64_t>(sizeof(T));
  const std::int64_t step = std::max<std::int64_t>(kern.key_multiple, 1);
  const std::int64_t budget = few_rows ? tuning.decode_key_block_bytes : tuning.key_block_bytes;
  b.keys = std::clamp<std::int64_t>(budget / per_key / step * step, step, 512 / step * step);
  // The keys one row block sees: fewer than S under a window.
  const std::int64_t span = std::max<std::int64_t>(p.key_span(b.rows), 1);
  b.keys = std::min(b.keys, span);

  b.split_keys = span;
  const std::int64_t row_items = std::max(b.row_items(p), call_row_items);
  if (purpose == Purpose::attention && row_items > 0 && row_items < kSplitBelow) {
    const std::int64_t ranges =
        std::min(span / tuning.min_split_keys, std::max<std::int64_t>(kMaxItems / row_items, 1));
    if (ranges > 1) {
      // Blocks that divide a range about evenly, so that rounding the range
      // up to whole blocks keeps about `ranges` of them.
      const std::int64_t range = ceil_div(span, ranges);
      b.keys = std::min(b.keys, round_up(ceil_div(range, ceil_div(range, b.keys)), step));
      b.split_keys = round_up(range, b.keys);
    }
  }
  b.splits = ceil_div(span, b.split_keys);
  return b;
}

// A row block: rows [r0, r0 + rows) of query heads [h0, h0 + heads) in
// batch b, all reading key/value head hk. Tile row g * rows + i is row
// r0 + i of head h0 + g.
struct RowBlock {
  std::int64_t b, h0, heads, hk, r0, rows;

  std::int64_t tile_rows() const { return heads * rows; }
  // The block's key/value heads hk, hk + 1, ...: more than one when it
  // takes every query head (paged decoding), each with kv_rows() tile rows.
  std::int64_t kv_heads(const Problem& p) const {
    return heads > p.heads_per_kv() ? heads / p.heads_per_kv() : 1;
  }
  std::int64_t kv_rows(const Problem& p) const { return tile_rows() / kv_heads(p); }
  std::int64_t head_of(std::int64_t t) const { return h0 + t / rows; }

  // Offset of tile row t in a result laid out so.
  std::int64_t result_offset(const ResultLayout& result, std::int64_t t) const {
    return result.at(b, head_of(t), r0 + t % rows);
  }
};

// Row blocks are numbered head by head, so that the threads, taking them
// in order, read one head's keys and values together while they are in
// the caches: numbered query block by query block across the heads, each
// block read another head's, and the long prefill (8 heads of 4 MiB of
// keys and values) ran from memory at 0.77x (Zen 5, one thread). Within
// a head the last query blocks come first: under a causal mask they see
// the most keys, and the dynamic schedule should start them first so that
// the call ends on short ones.
inline RowBlock row_block(const Problem& p, const Blocking& blk, std::int64_t row_item) {
  const std::int64_t qb = blk.q_blocks - 1 - row_item % blk.q_blocks;
  const std::int64_t bg = row_item / blk.q_blocks;
  RowBlock r;
  r.b = bg / blk.head_groups;
  r.h0 = (bg % blk.head_groups) * blk.heads;
  r.heads = blk.heads;
  r.hk = r.h0 / p.heads_per_kv();
  r.r0 = qb * blk.rows;
  r.rows = std::min(blk.rows, p.L - r.r0);
  return r;
}

// Row `row` of head `head` in batch b of an input operand stored as dtype.
inline const void* operand_row(const Problem& p, const Layout& t, DType dtype, std::int64_t b,
                               std::int64_t head, std::int64_t row) {
  const std::int64_t at = batch_offset(p, t, b) + head * t.head + t.row_offset(row);
  return static_cast<const char*>(t.data) + at * stored_size(dtype);
}

// 64-byte aligned scratch arrays.
constexpr std::align_val_t kCacheLine{64};

struct AlignedDelete {
  void operator()(void* p) const { ::operator delete[](p, kCacheLine); }
};

template <class T>
using AlignedArray = std::unique_ptr<T[], AlignedDelete>;

template <class T>
AlignedArray<T> aligned_array(std::int64_t n) {
  const auto count = static_cast<std::size_t>(std::max<std::int64_t>(n, 1));
  return AlignedArray<T>(static_cast<T*>(::operator new[](count * sizeof(T), kCacheLine)));
}

}  // namespace dotattn::detail
