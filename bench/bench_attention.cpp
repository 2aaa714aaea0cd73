// dotattn_bench: google-benchmark timings of dotattn::attention with a
// float32 query on the standard shapes, once for each storage format of key
// and value and each kernel set (ISA) this CPU runs.
//
//   dotattn_bench [--threads N] [--cold] [--benchmark_filter=REGEX] [other --benchmark_* flags]
//
// Benchmarks are named attention/<shape>/<kv>/<isa>, e.g.
// attention/decode/int8/avx2 (google-benchmark appends /real_time), where
// <kv> is float32, float16, bfloat16 or int8 (quantize_int8, group 32), the
// format K and V are stored in, converted once per benchmark, untimed.
// stream_read reads a 1 GiB buffer with dotattn::stream_read: the streaming
// read bandwidth of this run's thread count, to compare the decode shapes' with.
// Threads per call: --threads N, else $DOTATTN_BENCH_THREADS, else every core.
// --cold: before each iteration, untimed, evict the last-level cache by
// reading 512 MiB, as a decoding model's per-layer KV caches are evicted
// between one layer's calls; the attention benchmarks then run a fixed
// kColdIterations iterations.
// Counters: GFLOP/s, with FLOPs = 4·B·Hq·L·S·E (halved for causal L == S);
// the decode shapes also report K+V GB/s: the bytes of K and V as stored
// (int8: the data and its float32 scales) per call over the time.
// Times are wall-clock (UseRealTime): the work runs on OpenMP threads.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <utility>
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
};

const Shape kShapes[] = {
    {"prefill", 1, 16, 16, 1024, 1024, 64, false},
    {"causal", 1, 32, 32, 2048, 2048, 128, true},
    {"long", 1, 8, 8, 8192, 8192, 64, false},
    {"decode", 1, 32, 8, 1, 4096, 128, false},
    {"decode_b8", 8, 32, 8, 1, 2048, 128, false},
    {"decode_long", 1, 32, 8, 1, 16384, 128, false},
    {"tiny", 1, 1, 1, 16, 16, 64, false},
};

enum class KvFormat { float32, float16, bfloat16, int8 };

struct KvFormatName {
  KvFormat format;
  const char* name;
};

const KvFormatName kKvFormats[] = {
    {KvFormat::float32, "float32"},
    {KvFormat::float16, "float16"},
    {KvFormat::bfloat16, "bfloat16"},
    {KvFormat::int8, "int8"},
};

constexpr std::int64_t kInt8Group = 32;  // quantize_kv's default where 32 divides E
constexpr std::size_t kMiB = std::size_t(1) << 20;
constexpr std::size_t kFlushBytes = 512 * kMiB;   // --cold: far more than any L3
constexpr std::size_t kStreamBytes = 1024 * kMiB;
constexpr benchmark::IterationCount kColdIterations = 9;

// Per iteration, divided by the elapsed (real) time: a rate.
constexpr auto kRate = benchmark::Counter::kIsIterationInvariantRate;

std::vector<float> random_floats(std::int64_t count, unsigned seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<std::size_t>(count));
  for (float& x : values) x = uniform(engine);
  return values;
}

std::uint32_t bits_of(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

// The conversions to 16 bits truncate rather than round: a timing does not
// depend on the last bit of the data.
dotattn::bfloat16_t to_bfloat16(float x) { return {static_cast<std::uint16_t>(bits_of(x) >> 16)}; }

// For |x| < 2 (random_floats' range); below float16's smallest normal, 0.
dotattn::float16_t to_float16(float x) {
  const std::uint32_t bits = bits_of(x), sign = (bits >> 16) & 0x8000u, exponent = (bits >> 23) & 0xffu;
  if (exponent < 113) return {static_cast<std::uint16_t>(sign)};
  return {static_cast<std::uint16_t>(sign | ((exponent - 112) << 10) | ((bits >> 13) & 0x3ffu))};
}

template <class T>
std::vector<T> converted(const std::vector<float>& x, T (*convert)(float)) {
  std::vector<T> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = convert(x[i]);
  return y;
}

// A key or value in one storage format, built from float32 values, and the
// view of it that attention() reads. It holds only what is stored, so that
// bytes() is what one call streams.
class StoredKv {
 public:
  StoredKv(std::vector<float> values, const dotattn::Dims& shape, KvFormat format) {
    switch (format) {
      case KvFormat::float32:
        float32_ = std::move(values);
        view_ = dotattn::view(float32_.data(), shape);
        break;
      case KvFormat::float16:
        float16_ = converted(values, to_float16);
        view_ = dotattn::view(float16_.data(), shape);
        break;
      case KvFormat::bfloat16:
        bfloat16_ = converted(values, to_bfloat16);
        view_ = dotattn::view(bfloat16_.data(), shape);
        break;
      case KvFormat::int8:
        view_ = quantized(values, shape);
        break;
    }
  }
  StoredKv(const StoredKv&) = delete;  // view_ points into this object's buffers
  StoredKv& operator=(const StoredKv&) = delete;

  const dotattn::TensorView& view() const { return view_; }

  double bytes() const {
    return double(float32_.size() * sizeof(float) + float16_.size() * sizeof(dotattn::float16_t) +
                  bfloat16_.size() * sizeof(dotattn::bfloat16_t) + int8_.size() + scale_.size() * sizeof(float));
  }

 private:
  dotattn::TensorView quantized(const std::vector<float>& values, const dotattn::Dims& shape) {
    dotattn::Dims scale_shape = shape;
    scale_shape.back() /= kInt8Group;
    int8_.resize(values.size());
    scale_.resize(values.size() / kInt8Group);
    dotattn::quantize_int8(dotattn::view(values.data(), shape),
                           dotattn::quantized_output(int8_.data(), shape, scale_.data(), kInt8Group));
    return dotattn::quantized_view(int8_.data(), shape, {}, scale_.data(), scale_shape);
  }

  std::vector<float> float32_;
  std::vector<dotattn::float16_t> float16_;
  std::vector<dotattn::bfloat16_t> bfloat16_;
  std::vector<std::int8_t> int8_;
  std::vector<float> scale_;
  dotattn::TensorView view_;
};

// 1 GiB, allocated at first use, with every page written: untouched pages
// would all map the kernel's one zero page, whose reads hit the cache.
const std::vector<std::uint64_t>& read_buffer() {
  static const std::vector<std::uint64_t> buffer(kStreamBytes / sizeof(std::uint64_t), 1);
  return buffer;
}

void evict_cache() { benchmark::DoNotOptimize(dotattn::stream_read(read_buffer().data(), kFlushBytes)); }

void bench_attention(benchmark::State& state, const Shape& shape, KvFormat format, const std::string& isa,
                     bool cold) {
  dotattn::set_isa(isa);
  const std::int64_t B = shape.B, Hq = shape.Hq, Hkv = shape.Hkv, L = shape.L, S = shape.S, E = shape.E;
  const std::vector<float> q = random_floats(B * Hq * L * E, 1);
  const StoredKv key(random_floats(B * Hkv * S * E, 2), {B, Hkv, S, E}, format);
  const StoredKv value(random_floats(B * Hkv * S * E, 3), {B, Hkv, S, E}, format);
  std::vector<float> out(static_cast<std::size_t>(B * Hq * L * E));

  dotattn::Options options;
  options.causal = shape.causal ? dotattn::Causal::upper_left : dotattn::Causal::none;
  const dotattn::TensorView query = dotattn::view(q.data(), {B, Hq, L, E});
  const dotattn::OutputView result = dotattn::output(out.data(), {B, Hq, L, E});

  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      evict_cache();
      state.ResumeTiming();
    }
    dotattn::attention(query, key.view(), value.view(), result, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }

  state.counters["GFLOP/s"] = benchmark::Counter(shape.flops() * 1e-9, kRate);
  if (shape.is_decode()) {
    state.counters["K+V GB/s"] = benchmark::Counter((key.bytes() + value.bytes()) * 1e-9, kRate);
  }
}

void bench_stream_read(benchmark::State& state) {
  const std::vector<std::uint64_t>& buffer = read_buffer();
  for (auto _ : state) benchmark::DoNotOptimize(dotattn::stream_read(buffer.data(), kStreamBytes));
  state.counters["GB/s"] = benchmark::Counter(kStreamBytes * 1e-9, kRate);
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

struct OwnFlags {
  int threads = 0;  // 0 when absent
  bool cold = false;
};

// Removes --threads N / --threads=N and --cold from argv (google-benchmark
// rejects flags it does not know) and returns them.
OwnFlags take_own_flags(int& argc, char** argv) {
  OwnFlags flags;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0) {
      flags.threads = parse_threads(i + 1 < argc ? argv[++i] : "", "--threads");
    } else if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      flags.threads = parse_threads(argv[i] + 10, "--threads");
    } else if (std::strcmp(argv[i], "--cold") == 0) {
      flags.cold = true;
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  argv[argc] = nullptr;
  return flags;
}

// --threads N, else $DOTATTN_BENCH_THREADS, else every core.
int threads_to_use(const OwnFlags& flags) {
  if (flags.threads > 0) return flags.threads;
  if (const char* env = std::getenv("DOTATTN_BENCH_THREADS"); env != nullptr && *env != '\0') {
    return parse_threads(env, "DOTATTN_BENCH_THREADS");
  }
  const unsigned cores = std::thread::hardware_concurrency();
  return cores > 0 ? static_cast<int>(cores) : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const OwnFlags flags = take_own_flags(argc, argv);
  const int threads = threads_to_use(flags);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  dotattn::set_num_threads(threads);
  const std::vector<std::string> isas = dotattn::supported_isas();
  std::string isa_list;
  for (const std::string& isa : isas) isa_list += (isa_list.empty() ? "" : ",") + isa;
  benchmark::AddCustomContext("dotattn", DOTATTN_VERSION);
  benchmark::AddCustomContext("dotattn threads", std::to_string(threads));
  benchmark::AddCustomContext("dotattn isas", isa_list);
  benchmark::AddCustomContext("dotattn cold", flags.cold ? "yes: 512 MiB read before each iteration" : "no");

  benchmark::RegisterBenchmark("stream_read", bench_stream_read)->UseRealTime()->Unit(benchmark::kMillisecond);
  for (const Shape& shape : kShapes) {
    for (const KvFormatName& kv : kKvFormats) {
      for (const std::string& isa : isas) {
        const std::string name = std::string("attention/") + shape.name + "/" + kv.name + "/" + isa;
        benchmark::internal::Benchmark* bench =
            benchmark::RegisterBenchmark(name.c_str(), bench_attention, shape, kv.format, isa, flags.cold);
        bench->UseRealTime()->Unit(shape.L * shape.S < 1024 ? benchmark::kMicrosecond : benchmark::kMillisecond);
        // google-benchmark's minimum time counts only the timed part: on a
        // small shape it would take thousands of untimed evictions.
        if (flags.cold) bench->Iterations(kColdIterations);
      }
    }
  }

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
