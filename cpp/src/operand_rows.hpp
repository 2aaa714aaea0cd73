// Key and value rows as the block kernels read them. Stored in the type the
// call computes in, they are read in place. Stored as float16, bfloat16 or
// int8, they are widened to it in registers, either by the few-rows
// (decoding) kernels as they stream them from memory (stored_from), or, for
// the many-rows kernels, which read each element once per tile row, block
// by block into a tile-sized scratch (block). Every stored byte is read once
// per work item, and K and V are never copied whole.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/kernels.hpp"
#include "problem.hpp"
#include "tiling.hpp"

namespace dotattn::detail {

inline std::int64_t stored_size(DType dtype) {
  switch (dtype) {
    case DType::float64:
    case DType::int64: return 8;
    case DType::float16:
    case DType::bfloat16: return 2;
    case DType::int8:
    case DType::boolean: return 1;
    case DType::float32:
    case DType::int32: return 4;
  }
  return 4;
}

// Whether keys or values stored so are widened for a call computing in
// `computed`: whether it needs the scratch for them.
inline bool widens(const Storage& storage, DType computed) { return storage.dtype != computed; }

template <class T>
class OperandRows {
 public:
  struct Rows {
    const T* data;
    std::int64_t stride;
    kernels::RowsAhead ahead;
  };

  // Rows of head `head` in batch b of an operand with `cols` columns.
  OperandRows(const Problem& p, const Layout& rows, const Storage& storage, std::int64_t b,
              std::int64_t head, std::int64_t cols, const kernels::BlockKernels<T>& kern)
      : kern_(kern),
        cols_(cols),
        widens_(detail::widens(storage, dtype_of<T>::value)),
        rows_(rows),
        scales_(storage.scale),
        S_(p.S) {
    const std::int64_t first = batch_offset(p, rows, b) + head * rows.head;
    stored_.dtype = storage.dtype;
    stored_.data = static_cast<const char*>(rows.data) + first * stored_size(storage.dtype);
    stored_.stride = rows.row;
    stored_.cols = cols;
    if (storage.dtype == DType::int8) {
      stored_.scale = static_cast<const float*>(storage.scale.data) +
                      batch_offset(p, storage.scale, b) + head * storage.scale.head;
      stored_.scale_stride = storage.scale.row;
      stored_.group = storage.group;
    }
  }

  // Whether the rows are stored in another format than T.
  bool widens() const { return widens_; }

  // The end of the run of rows from j0 (before `end`) that the calls below
  // may read together: a paged cache's rows are evenly spaced within a page.
  std::int64_t run_end(std::int64_t j0, std::int64_t end) const { return rows_.run_end(j0, end); }

  // What a kernel reading rows from j0 may prefetch: the rest of j0's run
  // and the next run (all rows to S unless paged).
  kernels::RowsAhead ahead_of(std::int64_t j0) const {
    kernels::RowsAhead ahead;
    const std::int64_t end = run_end(j0, S_);
    ahead.rows = end - j0;
    if (end < S_) {
      ahead.next = address(end);
      ahead.next_rows = run_end(end, S_) - end;
      ahead.next_scale = scale_address(end);
    }
    return ahead;
  }

  // The stored rows from row j0 on (to its run's end), for the kernels that
  // widen as they load.
  kernels::StoredRows stored_from(std::int64_t j0) const {
    kernels::StoredRows from = stored_;
    from.data = address(j0);
    from.scale = scale_address(j0);
    from.ahead = ahead_of(j0);
    return from;
  }

  // Rows [j0, j0 + n) of one run as T; scratch (n x cols) receives them
  // when they are widened.
  Rows block(std::int64_t j0, std::int64_t n, T* scratch) const {
    if (!widens_) return {static_cast<const T*>(address(j0)), stored_.stride, ahead_of(j0)};
    kern_.widen(stored_from(j0), n, cols_, scratch);
    kernels::RowsAhead own;
    own.rows = n;
    return {scratch, cols_, own};
  }

  // Row j as stored, and its scales.
  const void* address(std::int64_t j) const {
    return static_cast<const char*>(stored_.data) + rows_.row_offset(j) * stored_size(stored_.dtype);
  }
  const float* scale_address(std::int64_t j) const {
    return stored_.scale ? stored_.scale + scales_.row_offset(j) : nullptr;
  }

  // Whether this operand's row j (and its scales) lie `rows` rows after
  // `first`'s row j at `first`'s spacing: the two runs read as one.
  bool continues(const OperandRows& first, std::int64_t j, std::int64_t rows) const {
    const std::int64_t size = stored_size(stored_.dtype);
    const bool data = static_cast<const char*>(address(j)) ==
                      static_cast<const char*>(first.address(j)) + rows * first.stored_.stride * size;
    const bool scales = !stored_.scale ||
                        scale_address(j) == first.scale_address(j) + rows * first.stored_.scale_stride;
    return data && scales;
  }

 private:
  const kernels::BlockKernels<T>& kern_;
  std::int64_t cols_;
  bool widens_;
  Layout rows_, scales_;
  std::int64_t S_;
  kernels::StoredRows stored_;
};

// What a kernel reading head h's run from row j0 may prefetch when a row
// block reads several heads' runs page by page (RowBlock::kv_heads): the
// rest of the run and, where the next heads' runs follow it evenly spaced
// (vLLM's layout: a page's heads one after another), theirs as well; then
// the next head's run, or after the last head the first head's next run.
template <class T>
kernels::RowsAhead ahead_in_page_order(const std::vector<OperandRows<T>>& heads, std::size_t h,
                                       std::int64_t j0, std::int64_t S) {
  kernels::RowsAhead ahead = heads[h].ahead_of(j0);
  if (heads.size() == 1) return ahead;
  const std::int64_t run = ahead.rows;
  // The last head whose run continues evenly spaced; a few heads are as far
  // as any kernel prefetches (kernels::kValueBytesAhead), and every head
  // of every page asks.
  constexpr std::size_t kMostHeads = 4;
  std::size_t last = h;
  while (last + 1 < heads.size() && last - h < kMostHeads &&
         heads[last + 1].continues(heads[h], j0, static_cast<std::int64_t>(last + 1 - h) * run))
    ++last;
  ahead.rows = static_cast<std::int64_t>(last - h + 1) * run;
  const OperandRows<T>& next = last + 1 < heads.size() ? heads[last + 1] : heads[0];
  const std::int64_t from = last + 1 < heads.size() ? j0 : j0 + run;
  ahead.next = nullptr;
  ahead.next_rows = 0;
  ahead.next_scale = nullptr;
  if (from < S) {
    ahead.next = next.address(from);
    ahead.next_rows = next.run_end(from, S) - from;
    ahead.next_scale = next.scale_address(from);
  }
  return ahead;
}

// The rows of each key/value head of row block rb (one, unless the block
// takes several: RowBlock::kv_heads).
template <class T>
std::vector<OperandRows<T>> operand_heads(const Problem& p, const Layout& rows, const Storage& storage,
                                          const RowBlock& rb, std::int64_t cols,
                                          const kernels::BlockKernels<T>& kern) {
  std::vector<OperandRows<T>> heads;
  heads.reserve(static_cast<std::size_t>(rb.kv_heads(p)));
  for (std::int64_t h = 0; h < rb.kv_heads(p); ++h)
    heads.emplace_back(p, rows, storage, rb.b, rb.hk + h, cols, kern);
  return heads;
}

}  // namespace dotattn::detail
