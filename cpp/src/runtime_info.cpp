#include <string>

#include "build_info.hpp"
#include "cpu_features.hpp"
#include "dotattn/dotattn.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dotattn {
namespace {

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

std::string openmp() {
#if defined(_OPENMP)
  return "OpenMP " + std::to_string(_OPENMP);
#else
  return "disabled";
#endif
}

}  // namespace

RuntimeInfo runtime_info() {
  const detail::CpuFeatures& cpu = detail::cpu_features();
  RuntimeInfo info;
  info.version = DOTATTN_VERSION;
  info.compiler = compiler();
  info.build_type = DOTATTN_BUILD_TYPE;
  info.build_flags = DOTATTN_BUILD_FLAGS;
  info.openmp = openmp();
  info.cpu = cpu.brand;
  info.cpu_features = cpu.names();
  info.isa = get_isa();
  info.supported_isas = supported_isas();
  info.num_threads = get_num_threads();
  return info;
}

}  // namespace dotattn
