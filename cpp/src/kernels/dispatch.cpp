// Chooses the block-kernel table for this CPU. Built at baseline, like the
// feature detection it will consult once ISA-specific tables exist; today
// the portable table is the only one.
#include "kernels/kernels.hpp"
#include "kernels/scalar.hpp"

namespace dotattn::kernels {

template <>
const BlockKernels<float>& selected<float>() {
  return scalar::f32;
}

template <>
const BlockKernels<double>& selected<double>() {
  return scalar::f64;
}

}  // namespace dotattn::kernels
