// Bad arguments: the exception's type (argument_error for shapes and
// values, dtype_error for dtypes), a message that names the argument and
// its shape, and out and lse left untouched. The cases of
// tests/test_errors.py that the C++ API can express, and some only it can
// (null data, strides); then the errors of the thread and ISA functions.
#include <algorithm>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "harness.hpp"
#include "support.hpp"

namespace dotattn_test {
namespace {

using dotattn::argument_error;
using dotattn::Dims;
using dotattn::dtype_error;

constexpr std::int64_t B = 2, H = 4, L = 5, S = 6, E = 8, Ev = 3;
constexpr float kSentinel = 7.25f;

bool all_equal(const std::vector<float>& x, float value) {
  return std::all_of(x.begin(), x.end(), [&](float e) { return e == value; });
}

// The arguments of a good float32 call with its LSE, for a case to spoil
// one. The input buffers are larger than their views, so that a case may
// give an input a larger shape.
struct Args {
  std::vector<float> q = std::vector<float>(4096, 0.5f);
  std::vector<float> k = std::vector<float>(4096, 0.25f);
  std::vector<float> v = std::vector<float>(4096, 1.0f);
  std::vector<double> f64 = std::vector<double>(4096, 0.5);
  std::vector<float> out = std::vector<float>(B * H * L * Ev, kSentinel);
  std::vector<float> lse = std::vector<float>(B * H * L, kSentinel);
  dotattn::TensorView query = dotattn::view(q.data(), {B, H, L, E});
  dotattn::TensorView key = dotattn::view(k.data(), {B, H, S, E});
  dotattn::TensorView value = dotattn::view(v.data(), {B, H, S, Ev});
  dotattn::OutputView result = dotattn::output(out.data(), {B, H, L, Ev});
  dotattn::Options options;

  Args() { options.lse = dotattn::output(lse.data(), {B, H, L}); }
  Args(const Args&) = delete;
  Args& operator=(const Args&) = delete;

  bool untouched() const { return all_equal(out, kSentinel) && all_equal(lse, kSentinel); }
};

enum class Fault { input, output };

// attention(a) throws Error, naming texts, and writes nothing; so does
// attention_shape(), which checks the inputs only, when the fault is in one.
template <class Error>
void refused(const Args& a, std::initializer_list<const char*> texts, Fault fault = Fault::input) {
  Context context(std::string("expecting \"") + *texts.begin() + "\"");
  expect_error<Error>([&] { dotattn::attention(a.query, a.key, a.value, a.result, a.options); },
                      texts);
  CHECK(a.untouched());
  if (fault == Fault::input)
    expect_error<Error>([&] { dotattn::attention_shape(a.query, a.key, a.value, a.options); },
                        texts);
}

TEST(errors, good_call_passes) {
  Args a;
  dotattn::attention(a.query, a.key, a.value, a.result, a.options);
  CHECK(all_equal(a.out, 1.0f));  // every value is 1
  CHECK(!all_equal(a.lse, kSentinel));
}

TEST(errors, shapes) {
  {
    Args a;
    a.query = dotattn::view(a.q.data(), {8});
    refused<argument_error>(
        a, {"query, key and value must have the same number of dims, at least 2",
            "query (8,), key (2, 4, 6, 8), value (2, 4, 6, 3)"});
  }
  {
    Args a;
    a.query = dotattn::view(a.q.data(), {});
    refused<argument_error>(a, {"at least 2", "query ()"});
  }
  {
    Args a;
    a.key = dotattn::view(a.k.data(), {H, S, E});
    refused<argument_error>(a, {"same number of dims", "query (2, 4, 5, 8), key (4, 6, 8)"});
  }
  {
    Args a;
    a.key = dotattn::view(a.k.data(), {3, H, S, E});
    refused<argument_error>(a, {"equal batch dims", "key (3, 4, 6, 8), value (2, 4, 6, 3)"});
  }
  {
    Args a;
    a.key = dotattn::view(a.k.data(), {B, H, S, 5});
    refused<argument_error>(a, {"same last dim E; got query E=8, key E=5", "key (2, 4, 6, 5)"});
  }
  {
    Args a;
    a.value = dotattn::view(a.v.data(), {B, H, 4, Ev});
    refused<argument_error>(a, {"same length S; got key S=6, value S=4", "value (2, 4, 4, 3)"});
  }
  {
    Args a;
    a.value = dotattn::view(a.v.data(), {B, 2, S, Ev});
    refused<argument_error>(a, {"same number of heads; got key 4, value 2", "value (2, 2, 6, 3)"});
  }
  {
    Args a;
    a.query = dotattn::view(a.q.data(), {B, 3, L, E});
    a.key = dotattn::view(a.k.data(), {B, 2, S, E});
    a.value = dotattn::view(a.v.data(), {B, 2, S, Ev});
    refused<argument_error>(
        a, {"the query heads Hq=3 must be a multiple of the key/value heads Hkv=2",
            "query (2, 3, 5, 8)"});
  }
  {
    Args a;
    a.key = dotattn::view(a.k.data(), {B, 0, S, E});
    a.value = dotattn::view(a.v.data(), {B, 0, S, Ev});
    refused<argument_error>(a, {"Hq=4 must be a multiple of the key/value heads Hkv=0"});
  }
  {
    Args a;
    a.value = dotattn::view(a.v.data(), {B, H, -S, Ev}, {H * S * Ev, S * Ev, Ev, 1});
    refused<argument_error>(a, {"value (2, 4, -6, 3) has a negative size"});
  }
  {  // batch dims whose product overflows (explicit strides: no product is formed for them)
    Args a;
    const std::int64_t huge = std::int64_t(1) << 32;
    a.query = dotattn::view(a.q.data(), {huge, huge, 1, 1, E}, {0, 0, 0, 0, 1});
    a.key = dotattn::view(a.k.data(), {huge, huge, 1, S, E}, {0, 0, 0, E, 1});
    a.value = dotattn::view(a.v.data(), {huge, huge, 1, S, Ev}, {0, 0, 0, Ev, 1});
    refused<argument_error>(
        a, {"query (4294967296, 4294967296) has more elements than fit in 64 bits"});
  }
}

// What the C++ views can get wrong that NumPy arrays cannot.
TEST(errors, views) {
  {
    Args a;
    a.query.data = nullptr;
    refused<argument_error>(a, {"query has a null data pointer"});
  }
  {
    Args a;
    a.key.strides = {1};
    refused<argument_error>(a, {"key (2, 4, 6, 8) has 4 dims but 1 strides"});
  }
  {
    Args a;
    a.value = dotattn::view(a.v.data(), {B, H, S, Ev}, {2 * H * S * Ev, 2 * S * Ev, 2 * Ev, 2});
    refused<argument_error>(a, {"value (2, 4, 6, 3) must have unit stride in its last dim, got 2"});
  }
  {
    Args a;
    a.result.data = nullptr;
    refused<argument_error>(a, {"out has a null data pointer"}, Fault::output);
  }
}

TEST(errors, masks) {
  const std::unique_ptr<bool[]> bools(new bool[4096]());
  {
    Args a;
    a.options.mask = dotattn::view(bools.get(), {L, S + 1});
    refused<argument_error>(
        a, {"attn_mask (5, 7) is not broadcastable to (2, 4, 5, 6), "
            "the shape of the attention weights"});
  }
  {
    Args a;
    a.options.mask = dotattn::view(bools.get(), {1, B, H, L, S});
    refused<argument_error>(a, {"attn_mask (1, 2, 4, 5, 6) is not broadcastable to (2, 4, 5, 6)"});
  }
  {
    Args a;
    a.options.mask = dotattn::view(bools.get(), {2, L, S});
    refused<argument_error>(a, {"attn_mask (2, 5, 6) is not broadcastable"});
  }
  {
    Args a;
    a.options.mask = dotattn::view(a.f64.data(), {L, S});
    refused<dtype_error>(
        a, {"attn_mask has dtype float64; expected bool", "the inputs' dtype float32"});
  }
  {
    Args a;
    a.options.mask = dotattn::TensorView{nullptr, dotattn::DType::boolean, {L, S}, {S, 1}, std::nullopt};
    refused<argument_error>(a, {"attn_mask has a null data pointer"});
  }
  {
    Args a;
    a.options.mask = dotattn::TensorView{bools.get(), dotattn::DType::boolean, {L, S}, {S, 1, 1}, std::nullopt};
    refused<argument_error>(a, {"attn_mask (5, 6) has 2 dims but 3 strides"});
  }
}

TEST(errors, scale) {
  const double inf = std::numeric_limits<double>::infinity();
  const struct {
    double scale;
    const char* text;
  } cases[] = {{std::numeric_limits<double>::quiet_NaN(), "scale must be finite, got nan"},
               {inf, "scale must be finite, got inf"},
               {-inf, "scale must be finite, got -inf"},
               {1e300, "scale=1e+300 overflows float32, the dtype computed in"}};
  for (const auto& c : cases) {
    Args a;
    a.options.scale = c.scale;
    refused<argument_error>(a, {c.text});
  }
  Args a;
  a.query = dotattn::view(a.q.data(), {B, H, L, 0});
  a.key = dotattn::view(a.k.data(), {B, H, S, 0});
  refused<argument_error>(
      a, {"query has E=0, for which the default scale 1/sqrt(E) is undefined; pass scale"});
}

TEST(errors, dtypes) {
  const std::unique_ptr<bool[]> bools(new bool[4096]());
  {
    Args a;
    a.query = dotattn::view(bools.get(), {B, H, L, E});
    refused<dtype_error>(a, {"query has dtype bool; expected float32, float64, float16 or bfloat16"});
  }
  {
    Args a;
    a.key = dotattn::view(a.f64.data(), {B, H, S, E});
    refused<dtype_error>(a, {"key has dtype float64 but query is float32, which reads float32, "
                             "float16, bfloat16 or int8 key and value"});
  }
  {
    Args a;
    a.value = dotattn::view(a.f64.data(), {B, H, S, Ev});
    refused<dtype_error>(a, {"value has dtype float64 but query is float32"});
  }
  {
    Args a;
    a.result = dotattn::output(a.f64.data(), {B, H, L, Ev});
    refused<dtype_error>(a, {"out has dtype float64 but the result is float32"}, Fault::output);
  }
  {
    Args a;
    a.options.lse = dotattn::output(a.f64.data(), {B, H, L});
    refused<dtype_error>(a, {"lse has dtype float64 but the result is float32"}, Fault::output);
  }
}

TEST(errors, outputs) {
  {
    Args a;
    a.result = dotattn::output(a.out.data(), {B, H, L, Ev + 1});
    refused<argument_error>(a, {"out (2, 4, 5, 4) does not match the result's shape (2, 4, 5, 3)"},
                            Fault::output);
  }
  {
    Args a;
    a.result = dotattn::output(a.out.data(), {B * H, L, Ev});
    refused<argument_error>(a, {"out (8, 5, 3) does not match the result's shape (2, 4, 5, 3)"},
                            Fault::output);
  }
  {
    Args a;
    a.options.lse = dotattn::output(a.lse.data(), {B, H, L, 1});
    refused<argument_error>(a, {"lse (2, 4, 5, 1) does not match the result's shape (2, 4, 5)"},
                            Fault::output);
  }
  {
    Args a;
    a.result = dotattn::output(a.q.data() + 10, {B, H, L, Ev});
    refused<argument_error>(
        a, {"out overlaps query; an output must not share memory with an input"}, Fault::output);
    CHECK(all_equal(a.q, 0.5f));
  }
  {
    Args a;
    a.result = dotattn::output(a.v.data() + B * H * S * Ev - 1, {B, H, L, Ev});
    refused<argument_error>(a, {"out overlaps value"}, Fault::output);
  }
  {
    Args a;
    a.options.lse = dotattn::output(a.out.data() + 3, {B, H, L});
    refused<argument_error>(a, {"lse overlaps out; the two outputs must not share memory"},
                            Fault::output);
  }
  {
    Args a;
    a.options.lse = dotattn::output(a.k.data(), {B, H, L});
    refused<argument_error>(a, {"lse overlaps key"}, Fault::output);
  }
}

TEST(errors, weights) {
  Args a;
  std::vector<float> weights(B * H * L * S, kSentinel);
  const auto call = [&](const dotattn::OutputView& w, const dotattn::Options& options) {
    return [&a, w, options] { dotattn::attention_weights(a.query, a.key, w, options); };
  };
  expect_error<argument_error>(call(dotattn::output(weights.data(), {B, H, L, S}), a.options),
                               {"lse is an output of attention(), not of attention_weights()"});
  const dotattn::Options none;
  expect_error<argument_error>(
      call(dotattn::output(weights.data(), {B, H, L, S - 1}), none),
      {"weights (2, 4, 5, 5) does not match the result's shape (2, 4, 5, 6)"});
  expect_error<dtype_error>(call(dotattn::output(a.f64.data(), {B, H, L, S}), none),
                            {"weights has dtype float64 but the result is float32"});
  expect_error<argument_error>(call(dotattn::output(a.k.data() + 1, {B, H, L, S}), none),
                               {"weights overlaps key"});
  CHECK(all_equal(weights, kSentinel));
}

TEST(errors, threads_and_isas) {
  const int threads = dotattn::get_num_threads();
  CHECK_THROWS(dotattn::set_num_threads(0), argument_error,
               "set_num_threads: n must be at least 1, got 0");
  CHECK(dotattn::get_num_threads() == threads);

  const std::vector<std::string> isas = dotattn::supported_isas();
  const std::string isa = dotattn::get_isa();
  CHECK(!isas.empty() && isas.back() == "scalar");
  CHECK(std::find(isas.begin(), isas.end(), isa) != isas.end());
#ifdef DOTATTN_HAVE_AVX512_EMULATED
  const char* const known = "avx512, avx2, avx512_emulated, scalar";
  const std::vector<const char*> vector_sets = {"avx512", "avx2", "avx512_emulated"};
#else
  const char* const known = "avx512, avx2, scalar";
  const std::vector<const char*> vector_sets = {"avx512", "avx2"};
#endif
  CHECK_THROWS(dotattn::set_isa("bogus"), argument_error,
               std::string("set_isa: unknown ISA \"bogus\" (choose from ") + known + ")");
  for (const char* name : vector_sets)
    if (std::find(isas.begin(), isas.end(), name) == isas.end())
      CHECK_THROWS(dotattn::set_isa(name), argument_error,
                   std::string("set_isa: this CPU does not support \"") + name + "\"");
  CHECK(dotattn::get_isa() == isa);
}

TEST(errors, tuning) {
  const std::string isa = dotattn::get_isa();
  const dotattn::Tuning before = dotattn::get_tuning(isa);
  dotattn::Tuning bad = before;
  bad.value_chunk_bytes = 0;
  CHECK_THROWS(dotattn::set_tuning(isa, bad), argument_error, "set_tuning: every field must be positive");
  bad = before;
  bad.row_block = 1025;
  CHECK_THROWS(dotattn::set_tuning(isa, bad), argument_error, "set_tuning: row_block must be at most 1024");
  CHECK_THROWS(dotattn::get_tuning("bogus"), argument_error, "get_tuning: unknown ISA \"bogus\"");
  CHECK_THROWS(dotattn::set_tuning("bogus", before), argument_error, "set_tuning: unknown ISA \"bogus\"");
  CHECK(dotattn::get_tuning(isa).row_block == before.row_block);
  CHECK(dotattn::get_tuning(isa).value_chunk_bytes == before.value_chunk_bytes);

  dotattn::Tuning changed = before;
  changed.row_block = 17;
  dotattn::set_tuning(isa, changed);
  CHECK(dotattn::get_tuning(isa).row_block == 17);
  dotattn::set_tuning(isa, before);
  CHECK(dotattn::get_tuning(isa).row_block == before.row_block);
  CHECK_THROWS(dotattn::kernel_rates("bogus", 16, 16, 16, 0.01), argument_error,
               "kernel_rates: unknown ISA \"bogus\"");
}

}  // namespace
}  // namespace dotattn_test
