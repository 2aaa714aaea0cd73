// The AVX-512 kernels; this file alone is compiled with
// -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma.
#include "kernels/block_kernels.hpp"
#include "kernels/isa_tables.hpp"
#include "kernels/vec_avx512.hpp"

namespace dotattn::kernels {

template <int K>
[[gnu::always_inline]] inline void VecAvx512F32::exp(R (&x)[K]) {
  exp_negative<VecAvx512F32>(x);
}
VecAvx512F32::R VecAvx512F32::tanh(R x) { return tanh_rational<VecAvx512F32>(x); }

const BlockKernels<float> avx512_f32 = BlockKernelsFor<VecAvx512F32>::table("avx512");

}  // namespace dotattn::kernels
