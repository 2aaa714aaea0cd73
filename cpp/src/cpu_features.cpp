#include "cpu_features.hpp"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define DOTATTN_X86 1
#endif

namespace dotattn::detail {
namespace {

#if defined(DOTATTN_X86)

struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

Regs cpuid(unsigned leaf, unsigned subleaf = 0) {
  Regs r;
  if (!__get_cpuid_count(leaf, subleaf, &r.a, &r.b, &r.c, &r.d)) return {};
  return r;
}

bool bit(unsigned word, int n) { return (word >> n) & 1u; }

// The register state the OS saves on a context switch (XCR0). Inline asm
// rather than the _xgetbv intrinsic, which would need an ISA flag here.
std::uint64_t os_saved_state() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

std::string brand_string() {
  if (cpuid(0x80000000u).a < 0x80000004u) return "unknown x86-64";
  char text[49] = {};
  for (unsigned i = 0; i < 3; ++i) {
    const Regs r = cpuid(0x80000002u + i);
    std::memcpy(text + 16 * i, &r, 16);
  }
  std::string s(text);
  const auto first = s.find_first_not_of(' ');
  return first == std::string::npos ? "unknown x86-64" : s.substr(first);
}

CpuFeatures detect() {
  CpuFeatures f;
  f.brand = brand_string();
  const unsigned max_leaf = cpuid(0).a;
  const Regs l1 = cpuid(1);
  f.sse2 = bit(l1.d, 26);
  f.sse41 = bit(l1.c, 19);
  f.sse42 = bit(l1.c, 20);
  const std::uint64_t xcr0 = bit(l1.c, 27) ? os_saved_state() : 0;
  const bool ymm_saved = (xcr0 & 0x6) == 0x6;
  const bool zmm_saved = (xcr0 & 0xE6) == 0xE6;
  const bool tiles_saved = (xcr0 & 0x60000) == 0x60000;
  f.avx = ymm_saved && bit(l1.c, 28);
  f.fma = f.avx && bit(l1.c, 12);
  f.f16c = f.avx && bit(l1.c, 29);
  if (max_leaf < 7) return f;
  const Regs l7 = cpuid(7, 0);
  const Regs l7s1 = cpuid(7, 1);
  f.avx2 = f.avx && bit(l7.b, 5);
  f.avx512f = zmm_saved && bit(l7.b, 16);
  f.avx512dq = f.avx512f && bit(l7.b, 17);
  f.avx512bw = f.avx512f && bit(l7.b, 30);
  f.avx512vl = f.avx512f && bit(l7.b, 31);
  f.avx512_fp16 = f.avx512f && bit(l7.d, 23);
  f.avx512_bf16 = f.avx512f && bit(l7s1.a, 5);
  f.amx_tile = tiles_saved && bit(l7.d, 24);
  f.amx_bf16 = f.amx_tile && bit(l7.d, 22);
  f.amx_int8 = f.amx_tile && bit(l7.d, 25);
  return f;
}

#else

CpuFeatures detect() {
  CpuFeatures f;
  f.brand = "unknown (not x86)";
  return f;
}

#endif

}  // namespace

std::vector<std::string> CpuFeatures::names() const {
  const std::pair<bool, const char*> all[] = {
      {sse2, "sse2"},         {sse41, "sse4_1"},         {sse42, "sse4_2"},
      {avx, "avx"},           {fma, "fma"},              {f16c, "f16c"},
      {avx2, "avx2"},         {avx512f, "avx512f"},      {avx512dq, "avx512dq"},
      {avx512bw, "avx512bw"}, {avx512vl, "avx512vl"},    {avx512_bf16, "avx512_bf16"},
      {avx512_fp16, "avx512_fp16"}, {amx_tile, "amx_tile"}, {amx_bf16, "amx_bf16"},
      {amx_int8, "amx_int8"}};
  std::vector<std::string> out;
  for (const auto& [present, name] : all)
    if (present) out.emplace_back(name);
  return out;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace dotattn::detail
