// dotattn_bench: google-benchmark timings of dotattn::attention, float32, on
// the standard shapes, once for each kernel set (ISA) this CPU runs.
//
//   dotattn_bench [--threads N] [--benchmark_filter=REGEX] [other --benchmark_* flags]
//
// Benchmarks are named attention/<shape>/<isa>, e.g. attention/prefill/avx2
// (google-benchmark appends /real_time).
// Threads per call: --threads N, else $DOTATTN_BENCH_THREADS, else every core.
// Counters: GFLOP/s, with FLOPs = 4·B·Hq·L·S·E (halved for causal L == S);
// the decode shapes also report GB/s of K+V read, B·Hkv·S·(E+Ev)·4 bytes.
// Times are wall-clock (UseRealTime): the work runs on OpenMP threads.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <dotattn/dotattn.hpp>

namespace {

struct Shape {
  const char* name;
  std::int64_t B, Hq, Hkv, L, S, E;  // Ev = E
  bool causal;

  double flops() const {
    const double full = 4.0 * B * Hq * L * S * E;
    return causal && L == S ? full / 2 : full;
  }
  bool is_decode() const { return L == 1; }
  double kv_bytes() const { return double(B) * Hkv * S * (E + E) * sizeof(float); }
};

const Shape kShapes[] = {
    {"prefill", 1, 16, 16, 1024, 1024, 64, false},
    {"causal", 1, 32, 32, 2048, 2048, 128, true},
    {"long", 1, 8, 8, 8192, 8192, 64, false},
    {"decode", 1, 32, 8, 1, 4096, 128, false},
    {"decode_b8", 8, 32, 8, 1, 2048, 128, false},
    {"tiny", 1, 1, 1, 16, 16, 64, false},
};

std::vector<float> random_floats(std::int64_t count, unsigned seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<std::size_t>(count));
  for (float& x : values) x = uniform(engine);
  return values;
}

void bench_attention(benchmark::State& state, const Shape& shape, const std::string& isa) {
  dotattn::set_isa(isa);
  const std::int64_t B = shape.B, Hq = shape.Hq, Hkv = shape.Hkv, L = shape.L, S = shape.S, E = shape.E;
  const std::vector<float> q = random_floats(B * Hq * L * E, 1);
  const std::vector<float> k = random_floats(B * Hkv * S * E, 2);
  const std::vector<float> v = random_floats(B * Hkv * S * E, 3);
  std::vector<float> out(static_cast<std::size_t>(B * Hq * L * E));

  dotattn::Options options;
  options.causal = shape.causal ? dotattn::Causal::upper_left : dotattn::Causal::none;
  const dotattn::TensorView query = dotattn::view(q.data(), {B, Hq, L, E});
  const dotattn::TensorView key = dotattn::view(k.data(), {B, Hkv, S, E});
  const dotattn::TensorView value = dotattn::view(v.data(), {B, Hkv, S, E});
  const dotattn::OutputView result = dotattn::output(out.data(), {B, Hq, L, E});

  for (auto _ : state) {
    dotattn::attention(query, key, value, result, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }

  // Per iteration, divided by the elapsed (real) time: a rate.
  constexpr auto rate = benchmark::Counter::kIsIterationInvariantRate;
  state.counters["GFLOP/s"] = benchmark::Counter(shape.flops() * 1e-9, rate);
  if (shape.is_decode()) state.counters["K+V GB/s"] = benchmark::Counter(shape.kv_bytes() * 1e-9, rate);
}

// A thread count from text, or exit with a message naming where it came from.
int parse_threads(const char* text, const char* source) {
  char* end = nullptr;
  const long threads = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || threads < 1 || threads > 65536) {
    std::cerr << "dotattn_bench: " << source << " needs a positive integer, got '" << text << "'\n";
    std::exit(2);
  }
  return static_cast<int>(threads);
}

// Removes --threads N / --threads=N from argv (google-benchmark rejects
// flags it does not know) and returns N; 0 when absent.
int take_threads_flag(int& argc, char** argv) {
  int threads = 0;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0) {
      threads = parse_threads(i + 1 < argc ? argv[++i] : "", "--threads");
    } else if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = parse_threads(argv[i] + 10, "--threads");
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  argv[argc] = nullptr;
  return threads;
}

// --threads N, else $DOTATTN_BENCH_THREADS, else every core.
int threads_to_use(int& argc, char** argv) {
  if (const int threads = take_threads_flag(argc, argv); threads > 0) return threads;
  if (const char* env = std::getenv("DOTATTN_BENCH_THREADS"); env != nullptr && *env != '\0') {
    return parse_threads(env, "DOTATTN_BENCH_THREADS");
  }
  const unsigned cores = std::thread::hardware_concurrency();
  return cores > 0 ? static_cast<int>(cores) : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = threads_to_use(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  dotattn::set_num_threads(threads);
  const std::vector<std::string> isas = dotattn::supported_isas();
  std::string isa_list;
  for (const std::string& isa : isas) isa_list += (isa_list.empty() ? "" : ",") + isa;
  benchmark::AddCustomContext("dotattn", DOTATTN_VERSION);
  benchmark::AddCustomContext("dotattn threads", std::to_string(threads));
  benchmark::AddCustomContext("dotattn isas", isa_list);

  for (const Shape& shape : kShapes) {
    for (const std::string& isa : isas) {
      const std::string name = std::string("attention/") + shape.name + "/" + isa;
      benchmark::RegisterBenchmark(name.c_str(), bench_attention, shape, isa)
          ->UseRealTime()
          ->Unit(shape.L * shape.S < 1024 ? benchmark::kMicrosecond : benchmark::kMillisecond);
    }
  }

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
