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
  bool automatic = true;  // chosen at first use where it is the first that runs here
};

bool has_avx2(const detail::CpuFeatures& f) { return f.avx2 && f.fma && f.f16c; }

// Best first; "scalar" last.
const Isa kIsas[] = {
    {"avx512",
     [](const detail::CpuFeatures& f) {
       return f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.fma;
     },
     &avx512_f32},
    {"avx2", has_avx2, &avx2_f32},
#ifdef DOTATTN_HAVE_AVX512_EMULATED
    // Test-only (kernels/avx512_emulated.cpp): the avx512 kernels through
    // SIMDe on AVX2, slower than avx2, so after it, and only by name.
    {"avx512_emulated", has_avx2, &avx512_emulated_f32, false},
#endif
    {"scalar", [](const detail::CpuFeatures&) { return true; }, &scalar_f32},
};

// "a, b, c": the names of the sets that run here, or of every set built.
std::string name_list(bool supported_only) {
  std::string list;
  for (const Isa& isa : kIsas)
    if (!supported_only || isa.runs_here(detail::cpu_features()))
      list += (list.empty() ? "" : ", ") + std::string(isa.name);
  return list;
}

// The entry for `name`, which this CPU must run.
const Isa& usable(const std::string& name, const char* who) {
  for (const Isa& isa : kIsas) {
    if (name != isa.name) continue;
    if (!isa.runs_here(detail::cpu_features()))
      throw argument_error(std::string(who) + ": this CPU does not support \"" + name +
                           "\" (it supports: " + name_list(true) + ")");
    return isa;
  }
  throw argument_error(std::string(who) + ": unknown ISA \"" + name + "\" (choose from " +
                       name_list(false) + ")");
}

const Isa& initial_isa() {
  if (const char* forced = std::getenv("DOTATTN_ISA"); forced && *forced)
    return usable(forced, "DOTATTN_ISA");
  for (const Isa& isa : kIsas)
    if (isa.automatic && isa.runs_here(detail::cpu_features())) return isa;
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

const BlockKernels<float>& table_named(const std::string& name, const char* who) {
  return *usable(name, who).f32;
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

Tuning get_tuning(const std::string& isa) { return *kernels::table_named(isa, "get_tuning").tuning; }

void set_tuning(const std::string& isa, const Tuning& tuning) {
  const kernels::BlockKernels<float>& table = kernels::table_named(isa, "set_tuning");
  const std::int64_t fields[] = {tuning.row_block,       tuning.key_block_bytes,
                                 tuning.decode_key_block_bytes,
                                 tuning.min_split_keys,  tuning.key_bytes_ahead,
                                 tuning.value_bytes_ahead, tuning.value_chunk_bytes};
  for (const std::int64_t x : fields)
    if (x < 1) throw argument_error("set_tuning: every field must be positive");
  if (tuning.row_block > 1024) throw argument_error("set_tuning: row_block must be at most 1024");
  *table.tuning = tuning;
}

void set_isa(const std::string& name) {
  kernels::g_isa.store(&kernels::usable(name, "set_isa"), std::memory_order_release);
}

}  // namespace dotattn
