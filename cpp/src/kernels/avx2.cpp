// The AVX2 + FMA + F16C kernels; this file alone is compiled with
// -mavx2 -mfma -mf16c.
#include "kernels/block_kernels.hpp"
#include "kernels/isa_tables.hpp"
#include "kernels/vec_avx2.hpp"

namespace dotattn::kernels {

template <int K>
[[gnu::always_inline]] inline void VecAvx2F32::exp(R (&x)[K]) {
  exp_negative<VecAvx2F32>(x);
}
VecAvx2F32::R VecAvx2F32::tanh(R x) { return tanh_rational<VecAvx2F32>(x); }

const BlockKernels<float> avx2_f32 = BlockKernelsFor<VecAvx2F32>::table("avx2");

}  // namespace dotattn::kernels
