#include "threading.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#if defined(_OPENMP) && defined(__unix__)
#include <pthread.h>
#endif

#include "dotattn/dotattn.hpp"

namespace dotattn {
namespace {

// 0 until set_num_threads(): then OpenMP's default for the calling thread.
std::atomic<int> g_num_threads{0};

// fork(): GNU libgomp's thread pool does not survive it. The child has only
// the thread that forked, and if that thread had led a parallel region, the
// child's next one waits forever for the parent's workers. So a child forked
// after a call here has run on more than one thread computes every call on
// its own thread, without entering OpenMP (see parallel_for), whatever
// set_num_threads() says; get_num_threads() says 1 there. A child forked
// before any such call keeps its threads.
std::atomic<bool> g_threads_started{false};
std::atomic<bool> g_serial_after_fork{false};

#if defined(_OPENMP) && defined(__unix__)
void in_forked_child() {
  if (g_threads_started.load()) g_serial_after_fork.store(true);
}
[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, in_forked_child);
#endif

}  // namespace

int get_num_threads() {
  if (g_serial_after_fork.load(std::memory_order_relaxed)) return 1;
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

std::uint64_t stream_read(const void* data, std::size_t bytes) {
  // Whole 64-byte lines per work item, in 1 MiB chunks dealt out in order.
  constexpr std::size_t kChunk = std::size_t(1) << 20;
  const auto* words = static_cast<const std::uint64_t*>(data);
  const std::size_t count = bytes / sizeof(std::uint64_t);
  const std::int64_t chunks = static_cast<std::int64_t>((count * 8 + kChunk - 1) / kChunk);
  std::atomic<std::uint64_t> total{0};
  detail::parallel_for(chunks, detail::threads_for(chunks), [&](int, std::int64_t c) {
    const std::size_t begin = static_cast<std::size_t>(c) * (kChunk / 8);
    const std::size_t end = std::min(count, begin + kChunk / 8);
    std::uint64_t sum = 0;
    for (std::size_t i = begin; i < end; ++i) sum += words[i];
    total.fetch_add(sum, std::memory_order_relaxed);
  });
  return total.load();
}

namespace detail {

int threads_for(std::int64_t items) {
  const int threads = static_cast<int>(std::clamp<std::int64_t>(items, 1, get_num_threads()));
  // Before the parallel region starts: a fork() from now on sees it.
  if (threads > 1 && !g_threads_started.load(std::memory_order_relaxed)) g_threads_started.store(true);
  return threads;
}

}  // namespace detail
}  // namespace dotattn
