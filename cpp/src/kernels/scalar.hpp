#pragma once

#include "kernels/kernels.hpp"

namespace dotattn::kernels::scalar {

extern const BlockKernels<float> f32;
extern const BlockKernels<double> f64;

}  // namespace dotattn::kernels::scalar
