// The portable kernels, built for the baseline target: float32 on a CPU
// without AVX2, and float64 everywhere.
#include <cmath>
#include <cstdint>

#include "kernels/block_kernels.hpp"
#include "kernels/isa_tables.hpp"
#include "kernels/vec_portable.hpp"

namespace dotattn::kernels {

using VecPortableF32 = VecPortable<float, std::int32_t>;
using VecPortableF64 = VecPortable<double, std::int64_t>;

template <>
template <int K>
void VecPortableF32::exp(R (&x)[K]) {
  exp_negative<VecPortableF32>(x);
}

template <>
VecPortableF32::R VecPortableF32::tanh(R x) {
  return tanh_rational<VecPortableF32>(x);
}

// The float32 polynomials are not accurate enough for float64's tolerance.
template <>
template <int K>
void VecPortableF64::exp(R (&x)[K]) {
  for (int k = 0; k < K; ++k)
    for (std::int64_t i = 0; i < N; ++i) x[k][i] = std::exp(x[k][i]);
}

template <>
VecPortableF64::R VecPortableF64::tanh(R x) {
  for (std::int64_t i = 0; i < N; ++i) x[i] = std::tanh(x[i]);
  return x;
}

const BlockKernels<float> scalar_f32 = BlockKernelsFor<VecPortableF32>::table("scalar");
const BlockKernels<double> scalar_f64 = BlockKernelsFor<VecPortableF64>::table("scalar");

}  // namespace dotattn::kernels
