// The public entry points: check, then run the loop for the dtype.
#include <cstdint>
#include <vector>

#include "dotattn/dotattn.hpp"
#include "loops.hpp"
#include "problem.hpp"

namespace dotattn {

const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::boolean: return "bool";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
    case DType::int8: return "int8";
    case DType::int32: return "int32";
    case DType::int64: return "int64";
  }
  return "unknown";
}

Dims contiguous_strides(const Dims& shape) {
  Dims strides(shape.size());
  std::int64_t stride = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= shape[d];
  }
  return strides;
}

Dims attention_shape(const TensorView& query, const TensorView& key, const TensorView& value,
                     const Options& options) {
  const detail::Problem p = detail::check_attention(query, key, value, nullptr, options);
  return detail::result_shape(query.shape, p.Ev);
}

void attention(const TensorView& query, const TensorView& key, const TensorView& value,
               const OutputView& out, const Options& options) {
  const detail::Problem p = detail::check_attention(query, key, value, &out, options);
  if (p.dtype == DType::float32)
    detail::attention_loop<float>(&p, 1);
  else
    detail::attention_loop<double>(&p, 1);
}

namespace {

void run_sequences(const std::vector<detail::Problem>& problems) {
  if (problems.empty()) return;
  if (problems.front().dtype == DType::float32)
    detail::attention_loop<float>(problems.data(), problems.size());
  else
    detail::attention_loop<double>(problems.data(), problems.size());
}

}  // namespace

void attention_varlen(const TensorView& query, const TensorView& key, const TensorView& value,
                      const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                      const OutputView& out, const Options& options) {
  run_sequences(detail::check_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, out, options));
}

void attention_paged(const TensorView& query, const TensorView& cu_seqlens_q,
                     const TensorView& key_cache, const TensorView& value_cache,
                     const TensorView& block_table, const TensorView& seq_lens_k,
                     const OutputView& out, const Options& options) {
  run_sequences(detail::check_paged(query, cu_seqlens_q, key_cache, value_cache, block_table,
                                    seq_lens_k, out, options));
}

Dims attention_weights_shape(const TensorView& query, const TensorView& key,
                             const Options& options) {
  const detail::Problem p = detail::check_weights(query, key, nullptr, options);
  return detail::result_shape(query.shape, p.S);
}

void attention_weights(const TensorView& query, const TensorView& key, const OutputView& weights,
                       const Options& options) {
  const detail::Problem p = detail::check_weights(query, key, &weights, options);
  if (p.dtype == DType::float32)
    detail::weights_loop<float>(p);
  else
    detail::weights_loop<double>(p);
}

}  // namespace dotattn
