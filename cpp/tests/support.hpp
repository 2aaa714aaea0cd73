// What the test files share: deterministic random data, the inputs of one
// call with their shapes and views, the loop over the kernel sets, and the
// checks of attention() and attention_weights() against the oracle.
#pragma once

#include <cmath>
#include <exception>
#include <initializer_list>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <dotattn/dotattn.hpp>

#include "harness.hpp"
#include "oracle.hpp"

namespace dotattn_test {

// splitmix64, and normal numbers from it by Box-Muller: the same data on
// every run.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)

  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log(u1) is finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::uint64_t state_;
};

template <class T>
std::vector<T> normal_data(std::int64_t count, Rng& rng) {
  std::vector<T> x(static_cast<std::size_t>(count));
  for (T& e : x) e = static_cast<T>(rng.normal());
  return x;
}

template <class T>
std::vector<double> to_double(const std::vector<T>& x) {
  return std::vector<double>(x.begin(), x.end());
}

template <class T>
constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Standard-normal query, key and value, C-contiguous, of shapes
// batch + (Hq, L, E), batch + (Hkv, S, E), batch + (Hkv, S, Ev), where the
// batch dims (default {B}) multiply to B; with heads = false there is no
// head dim (Hq = Hkv = 1), and with no batch dims either, the 2-D case.
template <class T>
struct Qkv {
  Sizes n;
  dotattn::Dims batch;
  bool heads = true;
  std::vector<T> q, k, v;

  Qkv(const Sizes& sizes, std::uint64_t seed) : n(sizes), batch{sizes.B} {
    Rng rng(seed);
    q = normal_data<T>(n.B * n.Hq * n.L * n.E, rng);
    k = normal_data<T>(n.B * n.Hkv * n.S * n.E, rng);
    v = normal_data<T>(n.B * n.Hkv * n.S * n.Ev, rng);
  }

  // batch + (h, rows, cols), without h unless heads, without cols if < 0.
  dotattn::Dims shape(std::int64_t h, std::int64_t rows, std::int64_t cols) const {
    const std::int64_t tail[] = {h, rows, cols};
    dotattn::Dims s(batch);
    s.insert(s.end(), tail + (heads ? 0 : 1), tail + (cols >= 0 ? 3 : 2));
    return s;
  }
  dotattn::Dims out_shape() const { return shape(n.Hq, n.L, n.Ev); }
  dotattn::Dims lse_shape() const { return shape(n.Hq, n.L, -1); }
  dotattn::Dims weights_shape() const { return shape(n.Hq, n.L, n.S); }

  dotattn::TensorView query() const { return dotattn::view(q.data(), shape(n.Hq, n.L, n.E)); }
  dotattn::TensorView key() const { return dotattn::view(k.data(), shape(n.Hkv, n.S, n.E)); }
  dotattn::TensorView value() const { return dotattn::view(v.data(), shape(n.Hkv, n.S, n.Ev)); }
};

// The options of a call, and the mask once more for the oracle.
struct Call {
  dotattn::Causal causal = dotattn::Causal::none;
  std::optional<double> scale;
  std::optional<dotattn::TensorView> mask;  // what dotattn reads
  MaskFunction mask_terms;                  // the same mask, for naive_attention

  dotattn::Options options() const {
    dotattn::Options o;
    o.causal = causal;
    o.scale = scale;
    o.mask = mask;
    return o;
  }
};

template <class T>
Expected expected(const Qkv<T>& in, const Call& call) {
  const double scale = call.scale ? *call.scale : 1.0 / std::sqrt(static_cast<double>(in.n.E));
  return naive_attention(in.n, to_double(in.q), to_double(in.k), to_double(in.v), scale,
                         call.causal, call.mask_terms);
}

// call() throws Error with a message that contains each of texts.
template <class Error, class F>
void expect_error(const F& call, std::initializer_list<const char*> texts) {
  try {
    call();
  } catch (const Error& error) {
    for (const char* text : texts) check_message(__FILE__, __LINE__, error.what(), text);
    return;
  } catch (const std::exception& error) {
    fail(__FILE__, __LINE__, std::string("threw another exception: ") + error.what());
    return;
  }
  fail(__FILE__, __LINE__, "did not throw");
}

// Runs f() once with each kernel set this CPU supports, with a Context
// naming it, and leaves the set in use as it was.
template <class F>
void for_each_isa(const F& f) {
  struct Restore {
    std::string isa;
    ~Restore() { dotattn::set_isa(isa); }
  } restore{dotattn::get_isa()};
  for (const std::string& isa : dotattn::supported_isas()) {
    dotattn::set_isa(isa);
    Context context("isa " + isa);
    f();
  }
}

}  // namespace dotattn_test

#define CHECK_MATCH(got, want, tol)                                                   \
  do {                                                                                \
    const std::string dotattn_test_mismatch =                                         \
        ::dotattn_test::mismatch(::dotattn_test::to_double(got), want, tol);          \
    if (!dotattn_test_mismatch.empty())                                               \
      ::dotattn_test::fail(__FILE__, __LINE__, #got ": " + dotattn_test_mismatch);    \
  } while (0)

namespace dotattn_test {

// attention() with its LSE on every kernel set, against the oracle. out and
// lse start as NaN, so an element left unwritten shows; a row that sees no
// key must be exactly zeros. Returns the oracle's result.
template <class T>
Expected check_attention(const Qkv<T>& in, const Call& call = {}) {
  Context context(describe(in.n));
  const Expected want = expected(in, call);
  for_each_isa([&] {
    std::vector<T> out(want.out.size(), kNaN<T>), lse(want.lse.size(), kNaN<T>);
    dotattn::Options options = call.options();
    options.lse = dotattn::output(lse.data(), in.lse_shape());
    dotattn::attention(in.query(), in.key(), in.value(),
                       dotattn::output(out.data(), in.out_shape()), options);
    CHECK_MATCH(out, want.out, tolerance<T>());
    CHECK_MATCH(lse, want.lse, tolerance<T>());
    for (std::size_t row = 0; row < want.lse.size(); ++row)
      if (want.lse[row] == -kInf)
        for (std::int64_t e = 0; e < in.n.Ev; ++e) CHECK(out[row * in.n.Ev + e] == T(0));
  });
  return want;
}

// attention_weights() on every kernel set, against the oracle: each row sums
// to 1, or is all zeros when it sees no key.
template <class T>
Expected check_weights(const Qkv<T>& in, const Call& call = {}) {
  Context context(describe(in.n));
  const Expected want = expected(in, call);
  for_each_isa([&] {
    std::vector<T> weights(want.weights.size(), kNaN<T>);
    dotattn::attention_weights(in.query(), in.key(),
                               dotattn::output(weights.data(), in.weights_shape()), call.options());
    CHECK_MATCH(weights, want.weights, tolerance<T>());
    for (std::size_t row = 0; row < want.lse.size(); ++row) {
      double sum = 0;
      for (std::int64_t j = 0; j < in.n.S; ++j) sum += weights[row * in.n.S + j];
      CHECK(want.lse[row] == -kInf ? sum == 0 : std::abs(sum - 1) <= tolerance<T>());
    }
  });
  return want;
}

}  // namespace dotattn_test
