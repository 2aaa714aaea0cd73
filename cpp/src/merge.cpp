// dotattn::merge: attention results over disjoint key sets combined by
// their LSEs, row by row, as the split-K pass of the attention loop does
// with its own ranges. Rows are independent, so they are split over threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "dotattn/dotattn.hpp"
#include "online_softmax.hpp"
#include "problem.hpp"
#include "threading.hpp"
#include "tiling.hpp"

namespace dotattn {
namespace {

constexpr std::int64_t kRowsPerItem = 64;

template <class T>
void merge_row(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
               const detail::MergePlan& plan, std::int64_t r, T* out, T* lse) {
  const std::size_t n = outs.size();
  const auto lse_of = [&](std::size_t i) {
    return static_cast<const T*>(lses[i].data)[detail::row_offset(r, plan.lse_shape, plan.lse_strides[i])];
  };
  T m = detail::kNegInf<T>;
  for (std::size_t i = 0; i < n; ++i) m = detail::nan_max(m, lse_of(i));
  std::fill(out, out + plan.Ev, T(0));
  if (m == detail::kNegInf<T>) {
    if (lse) *lse = m;
    return;
  }
  T sum = T(0);
  for (std::size_t i = 0; i < n; ++i) {
    const T w = std::exp(lse_of(i) - m);
    if (w == T(0)) continue;  // a shard that saw nothing: its out may hold anything
    sum += w;
    const T* o = static_cast<const T*>(outs[i].data) + detail::row_offset(r, outs[i].shape, outs[i].strides);
    const std::int64_t step = outs[i].strides.back();
    for (std::int64_t e = 0; e < plan.Ev; ++e) out[e] += w * o[e * step];
  }
  const T inv = T(1) / sum;
  for (std::int64_t e = 0; e < plan.Ev; ++e) out[e] *= inv;
  if (lse) *lse = m + std::log(sum);
}

template <class T>
void merge_rows(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                const detail::MergePlan& plan, const OutputView& out, const std::optional<OutputView>& lse) {
  const std::int64_t items = detail::ceil_div(plan.rows, kRowsPerItem);
  detail::for_each_item(items, [] { return 0; }, [&](std::int64_t item, int) {
    const std::int64_t end = std::min(plan.rows, (item + 1) * kRowsPerItem);
    for (std::int64_t r = item * kRowsPerItem; r < end; ++r)
      merge_row<T>(outs, lses, plan, r, static_cast<T*>(out.data) + r * plan.Ev,
                   lse ? static_cast<T*>(lse->data) + r : nullptr);
  });
}

}  // namespace

void merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
           const OutputView& out, const std::optional<OutputView>& lse) {
  const detail::MergePlan plan = detail::check_merge(outs, lses, out, lse);
  if (plan.dtype == DType::float32)
    merge_rows<float>(outs, lses, plan, out, lse);
  else
    merge_rows<double>(outs, lses, plan, out, lse);
}

}  // namespace dotattn
