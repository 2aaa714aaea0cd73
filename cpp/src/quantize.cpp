// int8 quantisation of K/V rows (dotattn::quantize_int8) and the quantized
// views the attention calls read. A row is widened to float32 by the
// selected kernels' widen step (float16, bfloat16), then quantised group by
// group; rows are independent, so they are split over threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "dotattn/dotattn.hpp"
#include "kernels/kernels.hpp"
#include "online_softmax.hpp"
#include "operand_rows.hpp"
#include "problem.hpp"
#include "threading.hpp"
#include "tiling.hpp"

namespace dotattn {
namespace {

// Row r of x as float32: in place, or widened into buffer.
const float* row_of(const TensorView& x, std::int64_t r, float* buffer) {
  const std::int64_t offset = detail::row_offset(r, x.shape, x.strides);
  if (x.dtype == DType::float32) return static_cast<const float*>(x.data) + offset;
  const kernels::StoredRows from = kernels::rows_at(
      x.dtype, static_cast<const std::uint16_t*>(x.data) + offset, 0, 1, x.shape.back());
  kernels::selected<float>().widen(from, 1, x.shape.back(), buffer);
  return buffer;
}

// scale = max|x| / 127; a zero group (or one so small that its scale
// underflows to 0) gets scale 0 and data 0.
void quantize_group(const float* x, std::int64_t n, std::int8_t* data, float* scale) {
  float largest = 0;
  for (std::int64_t i = 0; i < n; ++i) largest = std::max(largest, std::abs(x[i]));
  const float s = largest / 127.0f;
  *scale = s;
  for (std::int64_t i = 0; i < n; ++i) {
    const float q = s > 0 ? std::nearbyint(x[i] / s) : 0.0f;  // half to even in the default mode
    data[i] = static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
  }
}

constexpr std::int64_t kRowsPerItem = 64;

}  // namespace

TensorView quantized_view(const std::int8_t* data, Dims shape, Dims strides, const float* scale,
                          Dims scale_shape, Dims scale_strides) {
  if (strides.empty()) strides = contiguous_strides(shape);
  if (scale_strides.empty()) scale_strides = contiguous_strides(scale_shape);
  TensorView t{data, DType::int8, std::move(shape), std::move(strides),
               ScaleView{scale, std::move(scale_shape), std::move(scale_strides)}};
  detail::checked_quantized(t);
  return t;
}

std::int64_t quantization_group(const TensorView& quantized) {
  return detail::checked_quantized(quantized);
}

QuantizedOutput quantized_output(std::int8_t* data, const Dims& shape, float* scale,
                                 std::int64_t group) {
  const std::int64_t E = shape.empty() ? 0 : shape.back();
  if (group <= 0 || (E > 0 && E % group != 0))
    throw argument_error("quantized_output: group=" + std::to_string(group) +
                         " must be positive and divide E=" + std::to_string(E));
  QuantizedOutput out;
  out.data = data;
  out.strides = contiguous_strides(shape);
  out.scale = scale;
  out.scale_shape = shape;
  if (!shape.empty()) out.scale_shape.back() = E / group;
  out.scale_strides = contiguous_strides(out.scale_shape);
  return out;
}

void quantize_int8(const TensorView& x, const QuantizedOutput& out) {
  const detail::QuantizePlan plan = detail::check_quantize(x, out);
  const std::int64_t E = x.shape.back();
  const std::int64_t items = detail::ceil_div(plan.rows, kRowsPerItem);
  const auto make_buffer = [&] { return std::vector<float>(static_cast<std::size_t>(E)); };

  // x must be finite, checked before anything is written: a scale computed
  // from inf or NaN quantises nothing.
  std::vector<char> finite(static_cast<std::size_t>(items), 1);
  detail::for_each_item(items, make_buffer, [&](std::int64_t item, std::vector<float>& buffer) {
    const std::int64_t end = std::min(plan.rows, (item + 1) * kRowsPerItem);
    for (std::int64_t r = item * kRowsPerItem; r < end; ++r)
      if (!detail::all_finite(row_of(x, r, buffer.data()), E)) finite[static_cast<std::size_t>(item)] = 0;
  });
  if (std::find(finite.begin(), finite.end(), 0) != finite.end())
    throw argument_error("x holds inf or NaN; only finite values can be quantized");

  detail::for_each_item(items, make_buffer, [&](std::int64_t item, std::vector<float>& buffer) {
    const std::int64_t end = std::min(plan.rows, (item + 1) * kRowsPerItem);
    for (std::int64_t r = item * kRowsPerItem; r < end; ++r) {
      const float* row = row_of(x, r, buffer.data());
      std::int8_t* data = out.data + detail::row_offset(r, x.shape, out.strides);
      float* scale = out.scale + detail::row_offset(r, out.scale_shape, out.scale_strides);
      for (std::int64_t g = 0; g * plan.group < E; ++g)
        quantize_group(row + g * plan.group, plan.group, data + g * plan.group, scale + g);
    }
  });
}

}  // namespace dotattn
