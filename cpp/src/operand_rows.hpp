// Key and value rows as the block kernels read them. Stored in the type the
// call computes in, they are read in place. Stored as float16, bfloat16 or
// int8, they are widened to it in registers, either by the few-rows
// (decoding) kernels as they stream them from memory (stored_from), or, for
// the many-rows kernels, which read each element once per tile row, block
// by block into a tile-sized scratch (block). Every stored byte is read once
// per work item, and K and V are never copied whole.
#pragma once

#include <cstdint>

#include "kernels/kernels.hpp"
#include "problem.hpp"
#include "tiling.hpp"

namespace dotattn::detail {

// Whether keys or values stored so are widened for a call computing in
// `computed`: whether it needs the scratch for them.
inline bool widens(const Storage& storage, DType computed) { return storage.dtype != computed; }

template <class T>
class OperandRows {
 public:
  // Rows of one run as T, `stride` apart: `count` rows from data exist (at
  // least those asked for), as far as a kernel may prefetch.
  struct Rows {
    const T* data;
    std::int64_t stride;
    std::int64_t count;
  };

  // Rows of heads [head, head + heads) in batch b of an operand with `cols`
  // columns.
  OperandRows(const Problem& p, const Layout& rows, const Storage& storage, std::int64_t b,
              std::int64_t head, std::int64_t heads, std::int64_t cols,
              const kernels::BlockKernels<T>& kern)
      : kern_(kern), widens_(detail::widens(storage, dtype_of<T>::value)), S_(p.S) {
    const std::int64_t first = batch_offset(p, rows, b) + head * rows.head;
    stored_.dtype = storage.dtype;
    stored_.data = static_cast<const char*>(rows.data) + first * stored_size(storage.dtype);
    stored_.rows = rows.map();
    stored_.cols = cols;
    stored_.heads = heads;
    stored_.head_stride = rows.head;
    if (storage.dtype == DType::int8) {
      stored_.scale = static_cast<const float*>(storage.scale.data) +
                      batch_offset(p, storage.scale, b) + head * storage.scale.head;
      stored_.scale_rows = storage.scale.map();
      stored_.scale_head_stride = storage.scale.head;
      stored_.group = storage.group;
    }
  }

  std::int64_t heads() const { return stored_.heads; }

  // The end of the run of rows from j0 (before `end`) that block() may
  // return together: a paged cache's rows are evenly spaced within a page.
  std::int64_t run_end(std::int64_t j0, std::int64_t end) const {
    return stored_.rows.run_end(j0, end);
  }

  // The rows of every head from row j0 on, as stored, for the few-rows
  // kernels, which find them through the row map, across the pages of a
  // paged cache.
  kernels::StoredRows stored_from(std::int64_t j0) const {
    kernels::StoredRows from = stored_;
    from.first = j0;
    from.count = S_ - j0;
    return from;
  }

  // Rows [j0, j0 + n) of one run of head h as T; scratch (n x cols)
  // receives them when they are widened.
  Rows block(std::int64_t h, std::int64_t j0, std::int64_t n, T* scratch) const {
    kernels::StoredRows from = stored_from(j0);
    from.data = static_cast<const char*>(from.data) + h * from.head_stride * stored_size(from.dtype);
    if (from.scale) from.scale += h * from.scale_head_stride;
    from.heads = 1;
    if (!widens_)
      return {static_cast<const T*>(from.data) + from.rows.offset(j0), from.rows.stride,
              run_end(j0, S_) - j0};
    kern_.widen(from, n, from.cols, scratch);
    return {scratch, from.cols, n};
  }

 private:
  const kernels::BlockKernels<T>& kern_;
  bool widens_;
  std::int64_t S_;
  kernels::StoredRows stored_;
};

}  // namespace dotattn::detail
