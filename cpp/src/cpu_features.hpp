// What the CPU and the operating system support, read once with cpuid and
// xgetbv. Built without ISA flags: it runs before anything is chosen.
#pragma once

#include <string>
#include <vector>

namespace dotattn::detail {

struct CpuFeatures {
  std::string brand;
  bool sse2 = false, sse41 = false, sse42 = false;
  bool avx = false, fma = false, f16c = false, avx2 = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512_bf16 = false, avx512_fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;

  // Names of the usable features, as lscpu spells them.
  std::vector<std::string> names() const;
};

const CpuFeatures& cpu_features();

}  // namespace dotattn::detail
