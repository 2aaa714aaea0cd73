// The score options of dotattn::Options (window, softcap, alibi_slopes,
// sinks) against the oracle on every kernel set: each alone with the causal
// rules, large scores under the cap, rows that see no key, all of them
// together on each path of the loop (decoding split into key ranges,
// grouped query heads, prefill with row-block tails), and their errors.
// Then merge(): split-K equality with attention over all keys, shards and
// rows that see nothing, non-finite LSEs, strided views, and bad arguments.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness.hpp"
#include "support.hpp"

namespace dotattn_test {
namespace {

using dotattn::argument_error;
using dotattn::Causal;
using dotattn::Dims;
using dotattn::dtype_error;
using dotattn::Window;

template <class Error>
struct Throws {  // which exception a case expects
  using type = Error;
};

// A call with score options: score holds them for the oracle, and as
// float64 the views of alibi_slopes and sinks point into it; with float32
// set, dotattn reads float32 copies of those instead (of the same values).
struct OptionsCall {
  Call call;  // causal, scale, mask
  ScoreOptions score;
  bool float32 = false;
  std::vector<float> slopes32, sinks32;

  dotattn::Options options() {
    dotattn::Options o = call.options();
    o.window = score.window;
    o.softcap = score.softcap;
    slopes32.assign(score.alibi_slopes.begin(), score.alibi_slopes.end());
    sinks32.assign(score.sinks.begin(), score.sinks.end());
    const auto size = [](const auto& x) { return Dims{static_cast<std::int64_t>(x.size())}; };
    if (!score.alibi_slopes.empty())
      o.alibi_slopes = float32 ? dotattn::view(slopes32.data(), size(slopes32))
                               : dotattn::view(score.alibi_slopes.data(), size(score.alibi_slopes));
    if (!score.sinks.empty())
      o.sinks = float32 ? dotattn::view(sinks32.data(), size(sinks32))
                        : dotattn::view(score.sinks.data(), size(score.sinks));
    return o;
  }
};

const char* name(Causal c) {
  return c == Causal::none ? "no causal" : c == Causal::upper_left ? "upper_left" : "lower_right";
}

template <class T>
Expected expected(const Qkv<T>& in, const OptionsCall& c) {
  const double scale = c.call.scale ? *c.call.scale : 1.0 / std::sqrt(static_cast<double>(in.n.E));
  return naive_attention(in.n, to_double(in.q), to_double(in.k), to_double(in.v), scale,
                         c.call.causal, c.call.mask_terms, c.score);
}

// attention() with its LSE and attention_weights() on every kernel set,
// against the oracle. out, lse and weights start as NaN, so an element left
// unwritten shows. A row that sees no key must be exactly zeros with an LSE
// of exactly sinks[h] (-inf without sinks); the weights of a row sum to
// 1 - exp(sinks[h] - lse) (1 without sinks, 0 for a row that sees nothing).
// Returns the oracle's result.
template <class T>
Expected check_options(const Qkv<T>& in, OptionsCall c) {
  Context context(describe(in.n) + ", " + name(c.call.causal) + ", " + describe(c.score) +
                  (c.float32 ? ", float32 slopes and sinks" : ""));
  const Expected want = expected(in, c);
  const Sizes& n = in.n;
  for_each_isa([&] {
    std::vector<T> out(want.out.size(), kNaN<T>), lse(want.lse.size(), kNaN<T>);
    dotattn::Options options = c.options();
    options.lse = dotattn::output(lse.data(), in.lse_shape());
    dotattn::attention(in.query(), in.key(), in.value(),
                       dotattn::output(out.data(), in.out_shape()), options);
    CHECK_MATCH(out, want.out, tolerance<T>());
    CHECK_MATCH(lse, want.lse, tolerance<T>());

    std::vector<T> weights(want.weights.size(), kNaN<T>);
    dotattn::attention_weights(in.query(), in.key(),
                               dotattn::output(weights.data(), in.weights_shape()), c.options());
    CHECK_MATCH(weights, want.weights, tolerance<T>());

    for (std::size_t row = 0; row < want.lse.size(); ++row) {
      const std::size_t h = static_cast<std::size_t>((static_cast<std::int64_t>(row) / n.L) % n.Hq);
      const bool has_sink = !c.score.sinks.empty();
      bool nothing = true;  // the row sees no key
      for (std::int64_t j = 0; j < n.S; ++j) nothing = nothing && want.weights[row * n.S + j] == 0;
      if (nothing) {
        for (std::int64_t e = 0; e < n.Ev; ++e) CHECK(out[row * n.Ev + e] == T(0));
        const T nothing_lse =
            has_sink ? static_cast<T>(c.score.sinks[h]) : -std::numeric_limits<T>::infinity();
        CHECK(lse[row] == nothing_lse);
      }
      double sum = 0;
      for (std::int64_t j = 0; j < n.S; ++j) sum += weights[row * n.S + j];
      const double sink_share = has_sink ? std::exp(c.score.sinks[h] - want.lse[row]) : 0.0;
      CHECK(std::abs(sum - (nothing ? 0.0 : 1.0 - sink_share)) <= tolerance<T>());
    }
  });
  return want;
}

Sizes sizes(std::int64_t B, std::int64_t Hq, std::int64_t Hkv, std::int64_t L, std::int64_t S,
            std::int64_t E, std::int64_t Ev) {
  Sizes n;
  n.B = B;
  n.Hq = Hq;
  n.Hkv = Hkv;
  n.L = L;
  n.S = S;
  n.E = E;
  n.Ev = Ev;
  return n;
}

// Small calls: L < S, L == S and L > S (lower_right rows before key 0).
const std::int64_t kSmallLS[][2] = {{7, 17}, {13, 13}, {17, 7}};
const Causal kCausal[] = {Causal::none, Causal::upper_left, Causal::lower_right};

Sizes small(std::int64_t L, std::int64_t S) { return sizes(2, 4, 2, L, S, 9, 5); }

// 2^-(h + 1): exact in float32, as is each bias slope * |i' - j|.
std::vector<double> alibi(std::int64_t Hq) {
  std::vector<double> s;
  for (std::int64_t h = 0; h < Hq; ++h) s.push_back(std::ldexp(1.0, -static_cast<int>(h + 1)));
  return s;
}

// Sink logits in quarters (exact in float32), from -3 to 3.
std::vector<double> sinks(std::int64_t Hq, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<double> s;
  for (std::int64_t h = 0; h < Hq; ++h) s.push_back(std::floor(rng.uniform() * 25) / 4 - 3);
  return s;
}

OptionsCall with_window(Causal causal, Window w) {
  OptionsCall c;
  c.call.causal = causal;
  c.score.window = w;
  return c;
}

template <class T>
void window() {
  const Window windows[] = {{5, -1}, {-1, 3}, {4, 2}, {0, 0}, {0, -1}, {100, 100}};
  for (const auto& ls : kSmallLS)
    for (const Causal causal : kCausal)
      for (const Window w : windows)
        check_options(Qkv<T>(small(ls[0], ls[1]), ls[0] + ls[1]), with_window(causal, w));
}

TEST(options, window_float32) { window<float>(); }
TEST(options, window_float64) { window<double>(); }

// The window on the decode path (L = 1, S = 2001: split into key ranges),
// the grouped path and prefill with tails.
TEST(options, window_paths) {
  const Sizes decode = sizes(1, 8, 2, 1, 2001, 64, 64);
  check_options(Qkv<float>(decode, 20), with_window(Causal::lower_right, {700, -1}));
  check_options(Qkv<float>(decode, 21), with_window(Causal::none, {511, 0}));
  check_options(Qkv<double>(decode, 22), with_window(Causal::upper_left, {1500, 3}));
  const Sizes speculative = sizes(1, 8, 2, 4, 2001, 64, 64);
  check_options(Qkv<float>(speculative, 23), with_window(Causal::none, {300, 2}));
  const Sizes grouped = sizes(2, 8, 2, 1, 300, 64, 64);
  check_options(Qkv<float>(grouped, 24), with_window(Causal::none, {37, 5}));
  const Sizes prefill = sizes(1, 4, 2, 197, 331, 32, 24);
  check_options(Qkv<float>(prefill, 25), with_window(Causal::upper_left, {64, 16}));
  check_options(Qkv<double>(prefill, 26), with_window(Causal::lower_right, {50, -1}));
}

// Keys outside every row's window are never read: NaN and inf in them
// (whole key ranges when decoding) do not reach the result.
TEST(options, keys_outside_the_window_are_not_read) {
  Qkv<float> in(sizes(1, 8, 2, 1, 2001, 64, 64), 27);
  for (std::int64_t kv = 0; kv < 2; ++kv)
    for (std::int64_t j = 0; j < 2001 - 301; ++j)
      for (std::int64_t e = 0; e < 64; ++e) {
        in.k[(kv * 2001 + j) * 64 + e] = kNaN<float>;
        in.v[(kv * 2001 + j) * 64 + e] =
            (j + e) % 2 ? std::numeric_limits<float>::infinity() : kNaN<float>;
      }
  check_options(in, with_window(Causal::none, {300, -1}));
}

// Query and key of small integers in [-2, 2]: with E = 64 and scale 1,
// scores of standard deviation 16, exact in float32.
template <class T>
Qkv<T> integer_qkv(const Sizes& n, std::uint64_t seed) {
  Qkv<T> in(n, seed);
  Rng rng(seed + 1);
  for (T& x : in.q) x = static_cast<T>(std::floor(rng.uniform() * 5) - 2);
  for (T& x : in.k) x = static_cast<T>(std::floor(rng.uniform() * 5) - 2);
  return in;
}

template <class T>
void softcap_large_scores() {
  for (const Sizes& n : {sizes(1, 4, 2, 9, 40, 64, 16), sizes(1, 8, 2, 1, 2001, 64, 64)}) {
    const Qkv<T> in = integer_qkv<T>(n, 30);
    OptionsCall c;
    c.call.scale = 1.0;
    c.score.softcap = 5.0;
    const Expected capped = check_options(in, c);
    // The cap matters: scores reach 30, and the result differs without it.
    double largest = 0;
    for (std::int64_t row = 0; row < n.B * n.Hq * n.L; ++row)
      for (std::int64_t j = 0; j < n.S; ++j) {
        double dot = 0;
        const std::int64_t kv = row / n.L / (n.Hq / n.Hkv);
        for (std::int64_t e = 0; e < n.E; ++e)
          dot += in.q[row * n.E + e] * in.k[(kv * n.S + j) * n.E + e];
        largest = std::max(largest, std::abs(dot));
      }
    CHECK(largest >= 30);
    c.score.softcap.reset();
    CHECK(!mismatch(expected(in, c).out, capped.out, 1e-2).empty());
    c.score.softcap = 5.0;
    c.score.window = Window{40, -1};
    c.call.causal = Causal::lower_right;
    check_options(in, c);
  }
}

TEST(options, softcap_large_scores_float32) { softcap_large_scores<float>(); }
TEST(options, softcap_large_scores_float64) { softcap_large_scores<double>(); }

template <class T>
void alibi_slopes() {
  for (const auto& ls : kSmallLS)
    for (const Causal causal : kCausal) {
      OptionsCall c;
      c.call.causal = causal;
      c.score.alibi_slopes = alibi(4);
      check_options(Qkv<T>(small(ls[0], ls[1]), 40), c);
      c.float32 = true;
      check_options(Qkv<T>(small(ls[0], ls[1]), 41), c);
    }
}

TEST(options, alibi_float32) { alibi_slopes<float>(); }
TEST(options, alibi_float64) { alibi_slopes<double>(); }

template <class T>
void sink_logits() {
  for (const auto& ls : kSmallLS)
    for (const Causal causal : kCausal) {
      OptionsCall c;
      c.call.causal = causal;
      c.score.sinks = sinks(4, 50 + ls[0]);
      check_options(Qkv<T>(small(ls[0], ls[1]), 51), c);
      c.float32 = true;
      c.score.sinks = {20.0, -30.0, 8.0, 0.0};  // nearly everything, nearly nothing
      check_options(Qkv<T>(small(ls[0], ls[1]), 52), c);
    }
}

TEST(options, sinks_float32) { sink_logits<float>(); }
TEST(options, sinks_float64) { sink_logits<double>(); }

// Rows that see no key get zeros and an LSE of sinks[h] (check_options
// checks both exactly): hidden by the window, by lower_right with L > S, by
// a boolean mask row all false, and when decoding, in every key range.
template <class T>
void sinks_rows_that_see_nothing() {
  const Sizes n = sizes(2, 4, 2, 9, 5, 8, 6);
  OptionsCall c;
  c.score.sinks = {1.5, -2.0, 0.25, 3.0};
  c.score.window = Window{1, 1};  // i' = i - 4: rows 0 to 2 see nothing
  Expected want = check_options(Qkv<T>(n, 60), c);
  CHECK(want.lse[0] == 1.5 && want.lse[2] == 1.5 && want.lse[9 + 1] == -2.0);
  c.score.window.reset();
  c.call.causal = Causal::lower_right;  // rows 0 to 3 see nothing
  want = check_options(Qkv<T>(n, 61), c);
  CHECK(want.lse[3] == 1.5 && want.lse[4] != 1.5);

  const std::int64_t size = n.B * n.Hq * n.L * n.S;
  const std::unique_ptr<bool[]> storage(new bool[size]);
  bool* mask = storage.get();
  Rng rng(62);
  for (std::int64_t x = 0; x < size; ++x) mask[x] = rng.uniform() < 0.6;
  for (std::int64_t j = 0; j < n.S; ++j) {
    mask[((0 * n.Hq + 1) * n.L + 4) * n.S + j] = false;
    mask[((1 * n.Hq + 3) * n.L + 8) * n.S + j] = false;
  }
  c.call.causal = Causal::none;
  c.call.mask = dotattn::view(static_cast<const bool*>(mask), {n.B, n.Hq, n.L, n.S});
  c.call.mask_terms = [&](std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) {
    return mask[((b * n.Hq + h) * n.L + i) * n.S + j] ? 0.0 : -kInf;
  };
  want = check_options(Qkv<T>(n, 63), c);
  CHECK(want.lse[(0 * n.Hq + 1) * n.L + 4] == -2.0 && want.lse[(1 * n.Hq + 3) * n.L + 8] == 3.0);

  // Decoding: heads 1 and 6 see nothing in any range, head 3 only the last keys.
  const Sizes d = sizes(1, 8, 2, 1, 2001, 64, 64);
  const std::unique_ptr<bool[]> decode_storage(new bool[8 * 2001]);
  bool* decode_mask = decode_storage.get();
  std::fill(decode_mask, decode_mask + 8 * 2001, true);
  for (std::int64_t j = 0; j < 2001; ++j) {
    decode_mask[1 * 2001 + j] = decode_mask[6 * 2001 + j] = false;
    if (j < 1500) decode_mask[3 * 2001 + j] = false;
  }
  OptionsCall dc;
  dc.score.sinks = sinks(8, 64);
  dc.call.mask = dotattn::view(static_cast<const bool*>(decode_mask), {1, 8, 1, 2001});
  dc.call.mask_terms = [&](std::int64_t, std::int64_t h, std::int64_t, std::int64_t j) {
    return decode_mask[h * 2001 + j] ? 0.0 : -kInf;
  };
  want = check_options(Qkv<T>(d, 65), dc);
  CHECK(want.lse[1] == dc.score.sinks[1] && want.lse[6] == dc.score.sinks[6]);
}

TEST(options, sinks_rows_that_see_nothing_float32) { sinks_rows_that_see_nothing<float>(); }
TEST(options, sinks_rows_that_see_nothing_float64) { sinks_rows_that_see_nothing<double>(); }

// Every option at once, with an additive mask of +-20 that is not capped,
// on each path.
template <class T>
void all_together() {
  struct Case {
    Sizes n;
    Window window;
    Causal causal;
  };
  const Case cases[] = {
      {sizes(1, 8, 2, 1, 2001, 64, 64), {900, -1}, Causal::lower_right},  // decode, split
      {sizes(1, 8, 2, 4, 2001, 64, 64), {400, 2}, Causal::none},           // 4 rows, split
      {sizes(2, 8, 2, 1, 300, 64, 64), {100, -1}, Causal::lower_right},    // grouped rows
      {sizes(1, 4, 2, 197, 331, 32, 24), {80, 10}, Causal::upper_left},    // prefill, tails
      {sizes(1, 2, 2, 301, 301, 40, 40), {150, 150}, Causal::none},        // L == S
      {sizes(2, 4, 2, 9, 5, 16, 8), {1, 1}, Causal::none},                 // rows that see nothing
  };
  std::uint64_t seed = 70;
  for (const Case& k : cases) {
    const Sizes& n = k.n;
    std::vector<T> terms(n.L * n.S);
    Rng rng(seed);
    for (T& t : terms) t = static_cast<T>(20 * (std::floor(rng.uniform() * 3) - 1));
    OptionsCall c;
    c.call.causal = k.causal;
    c.call.mask = dotattn::view(terms.data(), {n.L, n.S});
    c.call.mask_terms = [&](std::int64_t, std::int64_t, std::int64_t i, std::int64_t j) {
      return static_cast<double>(terms[i * n.S + j]);
    };
    c.score.window = k.window;
    c.score.softcap = 4.0;
    c.score.alibi_slopes = alibi(n.Hq);
    c.score.sinks = sinks(n.Hq, seed);
    check_options(Qkv<T>(n, seed++), c);
  }
}

TEST(options, all_together_float32) { all_together<float>(); }
TEST(options, all_together_float64) { all_together<double>(); }

// Bad options: argument_error for values, dtype_error for dtypes, with the
// argument named, and out, lse and weights left untouched.
TEST(options, errors) {
  constexpr std::int64_t B = 2, H = 4, L = 5, S = 6, E = 8, Ev = 3;
  constexpr float kSentinel = 7.25f;
  const std::vector<float> q(B * H * L * E, 0.5f), k(B * H * S * E, 0.25f), v(B * H * S * Ev, 1.0f);
  const std::vector<double> three(3, 0.5), nan4 = {0.5, kNaN<double>, 0.5, 0.5};
  const std::vector<double> inf4 = {0.0, 0.0, -kInf, 0.0};
  const std::vector<float> good32(4, 0.5f);
  const bool flags[4] = {true, true, true, true};

  const auto refused = [&](auto throws, const dotattn::Options& bad, const char* text) {
    using Error = typename decltype(throws)::type;
    Context context(std::string("expecting \"") + text + "\"");
    std::vector<float> out(B * H * L * Ev, kSentinel), lse(B * H * L, kSentinel);
    std::vector<float> weights(B * H * L * S, kSentinel);
    dotattn::Options o = bad;
    o.lse = dotattn::output(lse.data(), {B, H, L});
    const auto query = dotattn::view(q.data(), {B, H, L, E});
    const auto key = dotattn::view(k.data(), {B, H, S, E});
    const auto value = dotattn::view(v.data(), {B, H, S, Ev});
    const auto result = dotattn::output(out.data(), {B, H, L, Ev});
    expect_error<Error>([&] { dotattn::attention(query, key, value, result, o); }, {text});
    expect_error<Error>([&] { dotattn::attention_shape(query, key, value, bad); }, {text});
    const auto weights_out = dotattn::output(weights.data(), {B, H, L, S});
    expect_error<Error>([&] { dotattn::attention_weights(query, key, weights_out, bad); }, {text});
    CHECK(std::all_of(out.begin(), out.end(), [&](float x) { return x == kSentinel; }));
    CHECK(std::all_of(lse.begin(), lse.end(), [&](float x) { return x == kSentinel; }));
    CHECK(std::all_of(weights.begin(), weights.end(), [&](float x) { return x == kSentinel; }));
  };
  const Throws<argument_error> value_error;
  const Throws<dtype_error> type_error;
  dotattn::Options o;
  o.window = Window{-2, 0};
  refused(value_error, o, "window=(-2, 0) must hold two ints >= -1");
  o.window = Window{3, -7};
  refused(value_error, o, "window=(3, -7) must hold two ints >= -1");
  o = {};
  for (const double bad : {0.0, -1.0, kInf, kNaN<double>, 1e300}) {
    o.softcap = bad;
    refused(value_error, o, "softcap must be finite and > 0");
  }
  o = {};
  o.alibi_slopes = dotattn::view(three.data(), {3});
  refused(value_error, o, "alibi_slopes (3,) must have shape (4,)");
  o.alibi_slopes = dotattn::view(good32.data(), {4, 1});
  refused(value_error, o, "alibi_slopes (4, 1) must have shape (4,)");
  o.alibi_slopes = dotattn::view(flags, {4});
  refused(type_error, o, "alibi_slopes has dtype bool; expected float32 or float64");
  o.alibi_slopes = dotattn::view(nan4.data(), {4});
  refused(value_error, o, "alibi_slopes[1] is nan; every value must be finite");
  o = {};
  o.sinks = dotattn::view(three.data(), {3});
  refused(value_error, o, "sinks (3,) must have shape (4,)");
  o.sinks = dotattn::view(flags, {4});
  refused(type_error, o, "sinks has dtype bool");
  o.sinks = dotattn::view(inf4.data(), {4});
  refused(value_error, o, "sinks[2] is -inf; every value must be finite");
}

// --- merge -------------------------------------------------------------------

// merge() by its definition, in double: outs[i] (rows, Ev), lses[i] (rows).
void naive_merge(const std::vector<std::vector<double>>& outs,
                 const std::vector<std::vector<double>>& lses, std::int64_t Ev,
                 std::vector<double>& out, std::vector<double>& lse) {
  const std::size_t rows = lses[0].size();
  out.assign(rows * Ev, 0.0);
  lse.assign(rows, -kInf);
  for (std::size_t r = 0; r < rows; ++r) {
    double m = -kInf;
    bool nan = false;
    for (const auto& l : lses) {
      nan = nan || std::isnan(l[r]) || l[r] == kInf;
      m = std::max(m, l[r]);
    }
    if (nan) {
      for (std::int64_t e = 0; e < Ev; ++e) out[r * Ev + e] = kNaN<double>;
      lse[r] = kNaN<double>;
      continue;
    }
    if (m == -kInf) continue;
    double total = 0;
    for (std::size_t i = 0; i < lses.size(); ++i) {
      const double w = std::exp(lses[i][r] - m);
      total += w;
      if (w == 0) continue;
      for (std::int64_t e = 0; e < Ev; ++e) out[r * Ev + e] += w * outs[i][r * Ev + e];
    }
    for (std::int64_t e = 0; e < Ev; ++e) out[r * Ev + e] /= total;
    lse[r] = m + std::log(total);
  }
}

// Attention over key ranges bounds[i] to bounds[i + 1] with their LSEs, the
// sinks on the first range only and lower_right on the last (the others lie
// wholly before the rows' causal edge: bounds[-2] <= S - L + 1), merged:
// equal to the oracle's attention over all keys.
template <class T>
void split_k(const Sizes& n, const std::vector<std::int64_t>& bounds, Causal causal,
             bool with_sinks) {
  Context context(describe(n) + ", " + name(causal) +
                  (with_sinks ? ", sinks on the first shard" : ""));
  const Qkv<T> in(n, 80 + n.L);
  OptionsCall full;
  full.call.causal = causal;
  if (with_sinks) full.score.sinks = sinks(n.Hq, 81);
  const Expected want = expected(in, full);
  for_each_isa([&] {
    const std::size_t shards = bounds.size() - 1;
    std::vector<std::vector<T>> outs(shards, std::vector<T>(want.out.size(), kNaN<T>));
    std::vector<std::vector<T>> lses(shards, std::vector<T>(want.lse.size(), kNaN<T>));
    std::vector<dotattn::TensorView> out_views, lse_views;
    for (std::size_t i = 0; i < shards; ++i) {
      const std::int64_t a = bounds[i], length = bounds[i + 1] - bounds[i];
      const auto key = dotattn::view(in.k.data() + a * n.E, {n.B, n.Hkv, length, n.E},
                                     {n.Hkv * n.S * n.E, n.S * n.E, n.E, 1});
      const auto value = dotattn::view(in.v.data() + a * n.Ev, {n.B, n.Hkv, length, n.Ev},
                                       {n.Hkv * n.S * n.Ev, n.S * n.Ev, n.Ev, 1});
      dotattn::Options o;
      o.causal = i + 1 == shards ? causal : Causal::none;
      if (with_sinks && i == 0) o.sinks = dotattn::view(full.score.sinks.data(), {n.Hq});
      o.lse = dotattn::output(lses[i].data(), in.lse_shape());
      dotattn::attention(in.query(), key, value, dotattn::output(outs[i].data(), in.out_shape()),
                         o);
      out_views.push_back(dotattn::view(outs[i].data(), in.out_shape()));
      lse_views.push_back(dotattn::view(lses[i].data(), in.lse_shape()));
    }
    std::vector<T> out(want.out.size(), kNaN<T>), lse(want.lse.size(), kNaN<T>);
    dotattn::merge(out_views, lse_views, dotattn::output(out.data(), in.out_shape()),
                   dotattn::output(lse.data(), in.lse_shape()));
    CHECK_MATCH(out, want.out, tolerance<T>());
    CHECK_MATCH(lse, want.lse, tolerance<T>());
    // Without the LSE output: the same out.
    std::vector<T> out_only(want.out.size(), kNaN<T>);
    dotattn::merge(out_views, lse_views, dotattn::output(out_only.data(), in.out_shape()));
    CHECK(out_only == out);
  });
}

TEST(merge, split_k) {
  const Sizes decode = sizes(1, 8, 2, 1, 3001, 64, 64);
  const Sizes speculative = sizes(1, 8, 2, 3, 2000, 32, 48);
  const Sizes few_keys = sizes(2, 4, 2, 7, 50, 16, 8);
  const Sizes prefill = sizes(1, 2, 1, 130, 300, 32, 32);
  for (const bool on : {false, true}) {  // sinks on the first shard
    split_k<float>(decode, {0, 1000, 1700, 3001}, Causal::none, on);
    split_k<double>(decode, {0, 1024, 2048, 3001}, Causal::lower_right, on);
    split_k<float>(speculative, {0, 512, 1998, 2000}, Causal::lower_right, on);  // row 0: none
    split_k<double>(few_keys, {0, 13, 14, 37, 50}, Causal::none, on);  // a one-key shard
    split_k<float>(prefill, {0, 100, 171, 300}, Causal::lower_right, on);
  }
}

// Shards and rows that see nothing (LSE -inf, out garbage), underflowing
// weights, NaN and +inf LSEs, and inputs read through strides: a
// transposed LSE (the (H, total) LSE of packed sequences), a backwards one,
// an out with stride 2 in its last dim and one broadcast by zero strides.
template <class T>
void merge_cases() {
  constexpr std::int64_t H = 3, total = 7, Ev = 5, rows = total * H;  // out (total, H, Ev)
  Rng rng(90);
  std::vector<std::vector<double>> outs(4, std::vector<double>(rows * Ev));
  std::vector<std::vector<double>> lses(4, std::vector<double>(rows));
  for (auto& o : outs)
    for (double& x : o) x = static_cast<T>(rng.normal());
  for (auto& l : lses)
    for (double& x : l) x = static_cast<T>(3 * rng.normal());
  const auto at = [&](std::int64_t t, std::int64_t h) { return t * H + h; };
  for (std::int64_t h = 0; h < H; ++h) {  // token 0: shard 1 sees nothing, with a NaN out
    lses[1][at(0, h)] = -kInf;
    for (std::int64_t e = 0; e < Ev; ++e) outs[1][at(0, h) * Ev + e] = kNaN<double>;
  }
  for (auto& l : lses) l[at(1, 1)] = -kInf;  // no shard sees (1, 1)
  for (auto& o : outs)
    for (std::int64_t e = 0; e < Ev; ++e) o[at(1, 1) * Ev + e] = kNaN<double>;
  lses[2][at(2, 0)] = -1e4;  // a weight that underflows to 0, with an inf out
  outs[2][at(2, 0) * Ev + 3] = kInf;
  lses[3][at(3, 2)] = kNaN<double>;  // NaN rows
  lses[0][at(4, 1)] = kInf;
  outs[0][at(5, 0) * Ev + 2] = kNaN<double>;  // one NaN element
  std::vector<double> want, want_lse;
  naive_merge(outs, lses, Ev, want, want_lse);
  CHECK(want_lse[at(1, 1)] == -kInf && std::isnan(want_lse[at(3, 2)]));
  CHECK(std::isnan(want[at(5, 0) * Ev + 2]) && std::isfinite(want[at(5, 0) * Ev + 1]));

  // What dotattn reads: shard 0 plain; shard 1 with its LSE stored (H, total)
  // and seen transposed; shard 2 with its out at stride 2 and its LSE
  // backwards; shard 3 as stored (every row of a shard broadcast is tested
  // below).
  std::vector<T> o0(outs[0].begin(), outs[0].end()), l0(lses[0].begin(), lses[0].end());
  std::vector<T> o1(outs[1].begin(), outs[1].end()), l1(rows);
  for (std::int64_t t = 0; t < total; ++t)
    for (std::int64_t h = 0; h < H; ++h) l1[h * total + t] = static_cast<T>(lses[1][at(t, h)]);
  std::vector<T> o2(2 * rows * Ev, kNaN<T>), l2(rows);
  for (std::int64_t x = 0; x < rows * Ev; ++x) o2[2 * x] = static_cast<T>(outs[2][x]);
  for (std::int64_t r = 0; r < rows; ++r) l2[rows - 1 - r] = static_cast<T>(lses[2][r]);
  std::vector<T> o3(outs[3].begin(), outs[3].end()), l3(lses[3].begin(), lses[3].end());
  const std::vector<dotattn::TensorView> out_views = {
      dotattn::view(o0.data(), {total, H, Ev}),
      dotattn::view(o1.data(), {total, H, Ev}),
      dotattn::view(o2.data(), {total, H, Ev}, {2 * H * Ev, 2 * Ev, 2}),
      dotattn::view(o3.data(), {total, H, Ev}),
  };
  const std::vector<dotattn::TensorView> lse_views = {
      dotattn::view(l0.data(), {total, H}),
      dotattn::view(l1.data(), {total, H}, {1, total}),
      dotattn::view(l2.data() + rows - 1, {total, H}, {-H, -1}),
      dotattn::view(l3.data(), {total, H}),
  };
  for_each_isa([&] {
    std::vector<T> out(rows * Ev, kNaN<T>), lse(rows, kNaN<T>);
    dotattn::merge(out_views, lse_views, dotattn::output(out.data(), {total, H, Ev}),
                   dotattn::output(lse.data(), {total, H}));
    CHECK_MATCH(out, want, tolerance<T>());
    CHECK_MATCH(lse, want_lse, tolerance<T>());
    for (std::int64_t e = 0; e < Ev; ++e) CHECK(out[at(1, 1) * Ev + e] == T(0));
  });

  // One out broadcast over the tokens (zero stride), with the plain LSEs.
  std::vector<T> row(H * Ev);
  for (T& x : row) x = static_cast<T>(rng.normal());
  std::vector<std::vector<double>> broadcast(2, std::vector<double>(rows * Ev));
  for (std::int64_t x = 0; x < rows * Ev; ++x) {
    broadcast[0][x] = row[x % (H * Ev)];
    broadcast[1][x] = outs[3][x];
  }
  naive_merge(broadcast, {lses[0], lses[3]}, Ev, want, want_lse);
  for_each_isa([&] {
    std::vector<T> out(rows * Ev, kNaN<T>);
    dotattn::merge({dotattn::view(row.data(), {total, H, Ev}, {0, Ev, 1}), out_views[3]},
                   {lse_views[0], lse_views[3]}, dotattn::output(out.data(), {total, H, Ev}));
    CHECK_MATCH(out, want, tolerance<T>());
  });
}

TEST(merge, cases_float32) { merge_cases<float>(); }
TEST(merge, cases_float64) { merge_cases<double>(); }

TEST(merge, errors) {
  constexpr float kSentinel = 7.25f;
  const std::vector<float> a(24, 0.5f), b(24, 0.25f), la(6, 0.0f), lb(6, 1.0f);
  const std::vector<double> b64(24, 0.25), lb64(6, 1.0);
  std::vector<float> out(24, kSentinel), lse(6, kSentinel);
  std::vector<double> out64(24, kSentinel);
  const auto untouched = [&] {
    return std::all_of(out.begin(), out.end(), [&](float x) { return x == kSentinel; }) &&
           std::all_of(lse.begin(), lse.end(), [&](float x) { return x == kSentinel; }) &&
           std::all_of(out64.begin(), out64.end(), [&](double x) { return x == kSentinel; });
  };
  using Views = std::vector<dotattn::TensorView>;
  const auto A = dotattn::view(a.data(), {2, 3, 4}), Bv = dotattn::view(b.data(), {2, 3, 4});
  const auto LA = dotattn::view(la.data(), {2, 3}), LB = dotattn::view(lb.data(), {2, 3});
  const auto result = dotattn::output(out.data(), {2, 3, 4});
  const auto result_lse = std::optional<dotattn::OutputView>(dotattn::output(lse.data(), {2, 3}));
  using Lse = std::optional<dotattn::OutputView>;
  const auto refused = [&](auto throws, const Views& outs, const Views& lses,
                           const dotattn::OutputView& o, const Lse& l, const char* text) {
    using Error = typename decltype(throws)::type;
    Context context(std::string("expecting \"") + text + "\"");
    expect_error<Error>([&] { dotattn::merge(outs, lses, o, l); }, {text});
    CHECK(untouched());
  };
  const Throws<argument_error> value_error;
  const Throws<dtype_error> type_error;
  refused(value_error, {}, {}, result, result_lse, "outs is empty");
  refused(value_error, {A, Bv}, {LA}, result, result_lse, "outs has 2 results but lses has 1");
  refused(value_error, {A, dotattn::view(b.data(), {2, 3, 3})}, {LA, LB}, result, result_lse,
          "outs[1] (2, 3, 3) does not match outs[0] (2, 3, 4)");
  refused(value_error, {A, Bv}, {LA, dotattn::view(lb.data(), {3, 2})}, result, result_lse,
          "lses[1] (3, 2) does not fit outs[1] (2, 3, 4)");
  refused(type_error, {A, dotattn::view(b64.data(), {2, 3, 4})}, {LA, LB}, result, result_lse,
          "outs[1] has dtype float64 but outs[0] has float32");
  refused(type_error, {A, Bv}, {LA, dotattn::view(lb64.data(), {2, 3})}, result, result_lse,
          "lses[1] has dtype float64 but outs[0] has float32");
  refused(value_error, {A, Bv}, {LA, LB}, dotattn::output(out.data(), {2, 3, 5}), result_lse,
          "out (2, 3, 5) does not match the result's shape (2, 3, 4)");
  refused(type_error, {A, Bv}, {LA, LB}, dotattn::output(out64.data(), {2, 3, 4}), result_lse,
          "out has dtype float64 but the result is float32");
  refused(value_error, {A, Bv}, {LA, LB}, result, dotattn::output(lse.data(), {3, 2}),
          "lse (3, 2)");
  // An output that overlaps an input.
  std::vector<float> shared(a);
  const auto S = dotattn::view(shared.data(), {2, 3, 4});
  const auto into_shared = dotattn::output(shared.data(), {2, 3, 4});
  expect_error<argument_error>([&] { dotattn::merge({S, Bv}, {LA, LB}, into_shared); },
                               {"out overlaps"});
  CHECK(shared == a);
}

}  // namespace
}  // namespace dotattn_test
