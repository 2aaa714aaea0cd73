// Chooses the kernel table. Built at baseline, like the feature detection
// it consults: nothing here may run an instruction the CPU might lack.
#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu_features.hpp"
#include "dotattn/dotattn.hpp"
#include "kernels/isa_tables.hpp"
#include "kernels/kernels.hpp"

namespace dotattn {
namespace kernels {
namespace {

struct Isa {
  const char* name;
  bool (*runs_here)(const detail::CpuFeatures&);
  const BlockKernels<float>* f32;
};

// Best first.
const Isa kIsas[] = {
    {"avx512",
     [](const detail::CpuFeatures& f) {
       return f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.fma;
     },
     &avx512_f32},
    {"avx2", [](const detail::CpuFeatures& f) { return f.avx2 && f.fma && f.f16c; }, &avx2_f32},
    {"scalar", [](const detail::CpuFeatures&) { return true; }, &scalar_f32},
};

std::string supported_list() {
  std::string list;
  for (const std::string& name : supported_isas()) list += (list.empty() ? "" : ", ") + name;
  return list;
}

// The entry for `name`, which this CPU must run.
const Isa& usable(const std::string& name, const char* who) {
  for (const Isa& isa : kIsas) {
    if (name != isa.name) continue;
    if (!isa.runs_here(detail::cpu_features()))
      throw argument_error(std::string(who) + ": this CPU does not support \"" + name +
                           "\" (it supports: " + supported_list() + ")");
    return isa;
  }
  throw argument_error(std::string(who) + ": unknown ISA \"" + name +
                       "\" (choose from avx512, avx2, scalar)");
}

const Isa& initial_isa() {
  if (const char* forced = std::getenv("DOTATTN_ISA"); forced && *forced)
    return usable(forced, "DOTATTN_ISA");
  for (const Isa& isa : kIsas)
    if (isa.runs_here(detail::cpu_features())) return isa;
  return kIsas[sizeof kIsas / sizeof kIsas[0] - 1];
}

std::atomic<const Isa*> g_isa{nullptr};

const Isa& current() {
  const Isa* isa = g_isa.load(std::memory_order_acquire);
  if (isa) return *isa;
  const Isa* chosen = &initial_isa();
  g_isa.compare_exchange_strong(isa, chosen, std::memory_order_acq_rel);
  return *g_isa.load(std::memory_order_acquire);
}

}  // namespace

template <>
const BlockKernels<float>& selected<float>() {
  return *current().f32;
}

template <>
const BlockKernels<double>& selected<double>() {
  return scalar_f64;
}

}  // namespace kernels

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const kernels::Isa& isa : kernels::kIsas)
    if (isa.runs_here(detail::cpu_features())) names.emplace_back(isa.name);
  return names;
}

std::string get_isa() { return kernels::current().name; }

void set_isa(const std::string& name) {
  kernels::g_isa.store(&kernels::usable(name, "set_isa"), std::memory_order_release);
}

}  // namespace dotattn
