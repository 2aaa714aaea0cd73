// The kernel tables, one per ISA file, for dispatch.cpp to choose from.
#pragma once

#include "kernels/kernels.hpp"

namespace dotattn::kernels {

extern const BlockKernels<float> scalar_f32;
extern const BlockKernels<double> scalar_f64;
extern const BlockKernels<float> avx2_f32;    // kernels/avx2.cpp
extern const BlockKernels<float> avx512_f32;  // kernels/avx512.cpp
// kernels/avx512_emulated.cpp, in builds with DOTATTN_EMULATED_AVX512 only
// (test-only: the AVX-512 kernels through SIMDe, on AVX2).
extern const BlockKernels<float> avx512_emulated_f32;

}  // namespace dotattn::kernels
