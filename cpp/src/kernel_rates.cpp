// kernel_rates(): one thread's rate of each per-block step of a kernel set
// on one tile held in cache, beside the set's register-only FMA peak, so
// that a kernel's efficiency can be read off (python -m dotattn bench
// --kernels). Built at baseline: it only calls through the tables.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "dotattn/dotattn.hpp"
#include "kernels/kernels.hpp"

namespace dotattn {
namespace {

// The fastest of five batches of calls of fn, each batch at least
// seconds / 5 long, in seconds per call.
template <class F>
double seconds_per_call(double seconds, const F& fn) {
  using clock = std::chrono::steady_clock;
  fn();  // warm the caches and the branch predictors
  double best = 1e300;
  for (int batch = 0; batch < 5; ++batch) {
    std::int64_t calls = 0;
    const auto start = clock::now();
    double elapsed = 0;
    do {
      fn();
      ++calls;
      elapsed = std::chrono::duration<double>(clock::now() - start).count();
    } while (elapsed < seconds / 5);
    best = std::min(best, elapsed / static_cast<double>(calls));
  }
  return best;
}

}  // namespace

KernelRates kernel_rates(const std::string& isa, std::int64_t rows, std::int64_t keys, std::int64_t E,
                         double seconds) {
  const kernels::BlockKernels<float>& kern = kernels::table_named(isa, "kernel_rates");
  if (rows < 1 || keys < 1 || E < 1 || !(seconds > 0))
    throw argument_error("kernel_rates: rows, keys and E must be positive and seconds > 0");
  const std::int64_t tile_rows = (rows + kern.row_multiple - 1) / kern.row_multiple * kern.row_multiple;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  const auto random = [&](std::int64_t n) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (float& value : x) value = normal(gen);
    return x;
  };
  const std::vector<float> qt = random(E * tile_rows), k = random(keys * E), v = random(keys * E);
  std::vector<float> st(static_cast<std::size_t>(keys * tile_rows)), m(static_cast<std::size_t>(tile_rows)),
      l(static_cast<std::size_t>(tile_rows)), acc(static_cast<std::size_t>(tile_rows * E));
  const float scale = 0.125f;

  KernelRates r;
  r.isa = kern.name;
  constexpr std::int64_t kPeakIterations = 1 << 16;
  r.peak_gflops = static_cast<double>(kern.fma_peak(1)) * kPeakIterations /
                  seconds_per_call(seconds, [&] { kern.fma_peak(kPeakIterations); }) / 1e9;
  const double products = 2.0 * static_cast<double>(tile_rows * keys * E);
  const auto score = [&] {
    kern.score_tile(qt.data(), tile_rows, tile_rows, k.data(), E, keys, E, scale, st.data(), tile_rows,
                    nullptr);
  };
  r.score_gflops = products / seconds_per_call(seconds, score) / 1e9;
  // exp_sum, timed on the weights of a first call against a maximum of 1:
  // the weights stay in (0, 1] call after call, and exp costs the same for
  // every argument. (The block max is found within the score tile.)
  score();
  kern.block_max(st.data(), tile_rows, keys, tile_rows, m.data());
  kern.exp_sum(st.data(), tile_rows, keys, tile_rows, m.data(), l.data());
  std::fill(m.begin(), m.end(), 1.0f);
  r.softmax_gscores = static_cast<double>(tile_rows * keys) /
                      seconds_per_call(seconds, [&] {
                        kern.exp_sum(st.data(), tile_rows, keys, tile_rows, m.data(), l.data());
                      }) / 1e9;
  const kernels::StoredRows values = kernels::rows_at(DType::float32, v.data(), E, keys, E);
  r.pv_gflops = products / seconds_per_call(seconds, [&] {
                  kern.pv_accumulate(st.data(), tile_rows, tile_rows, keys, values, E, acc.data(), E);
                }) / 1e9;
  return r;
}

}  // namespace dotattn
