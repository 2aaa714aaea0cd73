// The threading plan: a call is cut into independent work items (one query
// block of one (batch, head)), dealt out to threads dynamically. Each item is
// computed by one thread from start to end with fixed block boundaries, so
// the result does not depend on the number of threads.
#pragma once

#include <cstdint>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dotattn::detail {

// Threads to use for a call of this many work items.
int threads_for(std::int64_t items);

// Runs body(thread, item) for every item in [0, items) on `threads` threads
// (thread in [0, threads)). body must not throw.
template <class Body>
void parallel_for(std::int64_t items, int threads, const Body& body) {
#if defined(_OPENMP)
  // One thread runs without OpenMP: no team to start, and nothing of the
  // runtime's that fork() may have left broken is touched (threading.cpp).
  if (threads <= 1) {
    for (std::int64_t item = 0; item < items; ++item) body(0, item);
    return;
  }
  // Items cost unequal amounts under a causal mask: deal them out one by one.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (std::int64_t item = 0; item < items; ++item) body(omp_get_thread_num(), item);
#else
  (void)threads;
  for (std::int64_t item = 0; item < items; ++item) body(0, item);
#endif
}

// Runs body(item, scratch) for every work item, each thread with a scratch
// of its own made by make_scratch() before the parallel region, so that
// running out of memory throws before anything is written.
template <class MakeScratch, class Body>
void for_each_item(std::int64_t items, const MakeScratch& make_scratch, const Body& body) {
  if (items == 0) return;
  const int threads = threads_for(items);
  std::vector<decltype(make_scratch())> scratch;
  scratch.reserve(static_cast<std::size_t>(threads));
  for (int t = 0; t < threads; ++t) scratch.push_back(make_scratch());
  parallel_for(items, threads, [&](int thread, std::int64_t item) {
    body(item, scratch[static_cast<std::size_t>(thread)]);
  });
}

}  // namespace dotattn::detail
