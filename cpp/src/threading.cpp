#include "threading.hpp"

#include <algorithm>
#include <atomic>
#include <string>

#include "dotattn/dotattn.hpp"

namespace dotattn {
namespace {

// 0 until set_num_threads(): then OpenMP's default for the calling thread.
std::atomic<int> g_num_threads{0};

}  // namespace

int get_num_threads() {
  const int n = g_num_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  if (n < 1) throw argument_error("set_num_threads: n must be at least 1, got " + std::to_string(n));
  g_num_threads.store(n, std::memory_order_relaxed);
}

namespace detail {

int threads_for(std::int64_t items) {
  return static_cast<int>(std::clamp<std::int64_t>(items, 1, get_num_threads()));
}

}  // namespace detail
}  // namespace dotattn
