// How a call is cut into tiles: blocks of query rows (the work items) and
// blocks of keys (the steps of the online softmax), and the per-thread
// scratch that holds one tile.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "problem.hpp"

namespace dotattn::detail {

constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
constexpr std::int64_t round_up(std::int64_t a, std::int64_t b) { return ceil_div(a, b) * b; }

struct Blocking {
  std::int64_t rows = 1;       // query rows per work item
  std::int64_t keys = 1;       // keys per block
  std::int64_t kp_stride = 1;  // keys padded to the score tile's column width
  std::int64_t q_blocks = 0;   // work items per (batch, head)

  std::int64_t items(const Problem& p) const { return p.batch * p.Hq * q_blocks; }
};

// Query blocks of up to 64 rows; key blocks as large as keeps the packed
// keys (E x keys) within 64 KiB, the L2 share one tile can count on.
inline Blocking choose_blocking(const Problem& p, std::size_t elem_size,
                                std::int64_t score_columns) {
  constexpr std::int64_t kRows = 64, kMaxKeys = 256, kPackedBytes = 64 * 1024;
  Blocking b;
  b.rows = std::clamp<std::int64_t>(p.L, 1, kRows);
  const std::int64_t fit = kPackedBytes / (std::max<std::int64_t>(p.E, 1) * static_cast<std::int64_t>(elem_size));
  b.keys = std::clamp<std::int64_t>(fit / score_columns * score_columns, score_columns, kMaxKeys);
  b.keys = std::min(b.keys, round_up(std::max<std::int64_t>(p.S, 1), score_columns));
  b.kp_stride = round_up(b.keys, score_columns);
  b.q_blocks = ceil_div(p.L, b.rows);
  return b;
}

// One work item: rows [r0, r0 + rows) of query head h in batch b, which
// reads key/value head hk.
struct RowBlock {
  std::int64_t b, h, hk, r0, rows;
};

inline RowBlock row_block(const Problem& p, const Blocking& blk, std::int64_t item) {
  const std::int64_t qb = item % blk.q_blocks;
  const std::int64_t bh = item / blk.q_blocks;
  RowBlock r;
  r.b = bh / p.Hq;
  r.h = bh % p.Hq;
  r.hk = r.h / p.heads_per_kv();
  r.r0 = qb * blk.rows;
  r.rows = std::min(blk.rows, p.L - r.r0);
  return r;
}

// Row `row` of head `head` in batch b of an input operand.
template <class T>
const T* operand_rows(const Problem& p, const Layout& t, std::int64_t b, std::int64_t head,
                      std::int64_t row) {
  return static_cast<const T*>(t.data) + batch_offset(p, t, b) + head * t.head + row * t.row;
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
