// Test-only: the AVX-512 kernels once more, through SIMDe's emulation of
// the AVX-512 intrinsics, so that every line of them is tested on a CPU
// without AVX-512 (DOTATTN_EMULATED_AVX512, top-level CMakeLists.txt; never
// in the wheel). This file alone is compiled with -mavx2 -mfma -mf16c: SIMDe
// does each 512-bit operation as two 256-bit ones, and the object must hold
// no zmm instruction (.ci/emulated_avx512.sh checks).
//
// The intrinsics are SIMDe's, by its native aliases (_mm512_add_ps is
// simde_mm512_add_ps, __m512 is simde__m512). DOTATTN_AVX512_EMULATED makes
// vec_avx512.hpp leave <immintrin.h> out and declare its vector type in the
// nested namespace `emulated`: BlockKernelsFor<emulated::VecAvx512F32> is a
// template instance of its own, with symbols of its own, beside
// avx512.cpp's BlockKernelsFor<VecAvx512F32>, compiled for another CPU.
// Sharing the name would make two definitions of each of its functions with
// different code (an ODR violation), and the linker would keep either one
// for both sets.
#define DOTATTN_AVX512_EMULATED 1
#define SIMDE_ENABLE_NATIVE_ALIASES 1
#include <simde/x86/avx512.h>

// What SIMDe 0.8 lacks or gets wrong of the intrinsics vec_avx512.hpp uses,
// each exactly as the native one, so that the two sets agree bit for bit:
//  - _mm512_cvtepi8_epi32 is missing (GCC's own, AVX-512, would be called).
//  - _mm512_maskz_loadu_ps and _mm512_mask_storeu_ps read and write all 16
//    lanes (SIMDe 0.8.2, avx512/loadu.h and storeu.h: a whole load or
//    store, then a blend with zeros): the store overwrites the floats after
//    the last lane with zeros, and the load reads past it. Here they are
//    AVX's vmaskmovps on each half, which touches the selected lanes only.
static inline simde__m256i dotattn_lanes_of(unsigned bits) {  // bits 0..7 -> 8 lane masks
  const simde__m256i bit = simde_mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return simde_mm256_cmpeq_epi32(
      simde_mm256_and_si256(simde_mm256_set1_epi32(static_cast<int>(bits)), bit), bit);
}
static inline simde__m512 dotattn_mm512_maskz_loadu_ps(simde__mmask16 k, const void* p) {
  const float* f = static_cast<const float*>(p);
  const simde__m256 lo = simde_mm256_maskload_ps(f, dotattn_lanes_of(k & 0xffu));
  const simde__m256 hi = simde_mm256_maskload_ps(f + 8, dotattn_lanes_of(k >> 8));
  return simde_mm512_insertf32x8(simde_mm512_castps256_ps512(lo), hi, 1);
}
static inline void dotattn_mm512_mask_storeu_ps(void* p, simde__mmask16 k, simde__m512 x) {
  float* f = static_cast<float*>(p);
  simde_mm256_maskstore_ps(f, dotattn_lanes_of(k & 0xffu), simde_mm512_castps512_ps256(x));
  simde_mm256_maskstore_ps(f + 8, dotattn_lanes_of(k >> 8), simde_mm512_extractf32x8_ps(x, 1));
}
static inline simde__m512i dotattn_mm512_cvtepi8_epi32(simde__m128i x) {
  return simde_mm512_cvtepi16_epi32(simde_mm256_cvtepi8_epi16(x));  // sign-extended twice
}
#undef _mm512_cvtepi8_epi32  // in case a later SIMDe has it
#undef _mm512_maskz_loadu_ps
#undef _mm512_mask_storeu_ps
#define _mm512_cvtepi8_epi32(x) dotattn_mm512_cvtepi8_epi32(x)
#define _mm512_maskz_loadu_ps(k, p) dotattn_mm512_maskz_loadu_ps(k, p)
#define _mm512_mask_storeu_ps(p, k, x) dotattn_mm512_mask_storeu_ps(p, k, x)

#include "kernels/block_kernels.hpp"
#include "kernels/isa_tables.hpp"
#include "kernels/vec_avx512.hpp"

namespace dotattn::kernels {

namespace emulated {

template <int K>
[[gnu::always_inline]] inline void VecAvx512F32::exp(R (&x)[K]) {
  exp_negative<VecAvx512F32>(x);
}
VecAvx512F32::R VecAvx512F32::tanh(R x) { return tanh_rational<VecAvx512F32>(x); }

}  // namespace emulated

const BlockKernels<float> avx512_emulated_f32 =
    BlockKernelsFor<emulated::VecAvx512F32>::table("avx512_emulated");

}  // namespace dotattn::kernels
