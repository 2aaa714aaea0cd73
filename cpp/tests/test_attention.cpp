// attention() against the oracle on every kernel set: odd sizes, both
// causal alignments, GQA/MQA, Ev != E, every rank, strided inputs, the
// split-key (decoding) path, empty sizes, and the same bits at any thread
// count. The LSE is checked with every result (support.hpp).
#include <cstring>
#include <vector>

#include "harness.hpp"
#include "support.hpp"

namespace dotattn_test {
namespace {

using dotattn::Causal;

constexpr std::int64_t kSizes[] = {1, 2, 3, 7, 17, 33, 65, 100};
constexpr int kCount = sizeof kSizes / sizeof kSizes[0];

// Every (L, S) pair of kSizes, with E and Ev going through kSizes as well,
// and two query heads reading one or two key/value heads.
template <class T>
void odd_sizes() {
  for (int a = 0; a < kCount; ++a)
    for (int b = 0; b < kCount; ++b) {
      Sizes n;
      n.Hq = 2;
      n.Hkv = 1 + (a + b) % 2;
      n.L = kSizes[a];
      n.S = kSizes[b];
      n.E = kSizes[(a + b) % kCount];
      n.Ev = kSizes[(a + 2 * b + 3) % kCount];
      check_attention(Qkv<T>(n, 100 * a + b));
    }
}

TEST(attention, odd_sizes_float32) { odd_sizes<float>(); }
TEST(attention, odd_sizes_float64) { odd_sizes<double>(); }

// upper_left: row i sees keys j <= i; lower_right: j <= i + S - L, so with
// L > S the first L - S rows see no key (zeros, LSE -inf).
template <class T>
void causal() {
  const std::int64_t shapes[][2] = {{3, 17}, {17, 3}, {17, 17}, {1, 100},  {100, 1},
                                    {33, 65}, {65, 33}, {7, 7},  {100, 100}, {2, 1}};
  for (const Causal c : {Causal::upper_left, Causal::lower_right})
    for (const auto& [L, S] : shapes) {
      Context context(c == Causal::upper_left ? "upper_left" : "lower_right");
      Sizes n;
      n.B = 2;
      n.Hq = 2;
      n.Hkv = 2;
      n.L = L;
      n.S = S;
      n.E = 17;
      n.Ev = 7;
      Call call;
      call.causal = c;
      check_attention(Qkv<T>(n, L * 1000 + S), call);
    }
}

TEST(attention, causal_float32) { causal<float>(); }
TEST(attention, causal_float64) { causal<double>(); }

// Grouped- and multi-query: 6 query heads over 6, 3, 2 or 1 key/value heads.
template <class T>
void grouped_query() {
  for (const std::int64_t Hkv : {6, 3, 2, 1})
    for (const std::int64_t L : {1, 3, 17, 40})
      for (const Causal c : {Causal::none, Causal::lower_right}) {
        Sizes n;
        n.B = 2;
        n.Hq = 6;
        n.Hkv = Hkv;
        n.L = L;
        n.S = 33;
        n.E = 16;
        n.Ev = 24;
        Call call;
        call.causal = c;
        check_attention(Qkv<T>(n, Hkv * 100 + L), call);
      }
}

TEST(attention, grouped_query_float32) { grouped_query<float>(); }
TEST(attention, grouped_query_float64) { grouped_query<double>(); }

TEST(attention, value_width_differs) {
  for (const std::int64_t Ev : {1, 3, 8, 31, 100}) {
    Sizes n;
    n.Hq = 3;
    n.Hkv = 3;
    n.L = 9;
    n.S = 20;
    n.E = 65;
    n.Ev = Ev;
    check_attention(Qkv<float>(n, Ev));
    check_attention(Qkv<double>(n, Ev));
  }
}

// A few query rows against many keys: the keys are split into ranges that
// are merged by their LSEs.
template <class T>
void decoding() {
  for (const std::int64_t L : {1, 3})
    for (const Causal c : {Causal::none, Causal::lower_right}) {
      Sizes n;
      n.Hq = 8;
      n.Hkv = 2;
      n.L = L;
      n.S = 2100;
      n.E = 64;
      n.Ev = 48;
      Call call;
      call.causal = c;
      check_attention(Qkv<T>(n, 7 + L), call);
    }
}

TEST(attention, decoding_float32) { decoding<float>(); }
TEST(attention, decoding_float64) { decoding<double>(); }

// 2-D (L, E), 3-D (H, L, E) and 5-D (B1, B2, H, L, E) operands.
TEST(attention, ranks) {
  Sizes single;
  single.L = 7;
  single.S = 17;
  single.E = 33;
  single.Ev = 5;
  Qkv<float> two_d(single, 1);
  two_d.batch = {};
  two_d.heads = false;
  check_attention(two_d);

  Sizes heads = single;
  heads.Hq = 4;
  heads.Hkv = 2;
  Qkv<double> three_d(heads, 2);
  three_d.batch = {};
  check_attention(three_d);

  Sizes batched = heads;
  batched.B = 6;
  Qkv<float> five_d(batched, 3);
  five_d.batch = {2, 3};
  Call call;
  call.causal = Causal::upper_left;
  check_attention(five_d, call);
}

TEST(attention, explicit_scale) {
  Sizes n;
  n.Hq = 2;
  n.Hkv = 2;
  n.L = 5;
  n.S = 9;
  n.E = 7;
  n.Ev = 3;
  for (const double scale : {0.0, 0.05, -0.7, 2.5}) {
    Call call;
    call.scale = scale;
    check_attention(Qkv<float>(n, 11), call);
    check_attention(Qkv<double>(n, 11), call);
  }
  // E = 0: every score is 0 (the scale must be given), the result the mean value.
  n.E = 0;
  Call call;
  call.scale = 1.0;
  check_attention(Qkv<float>(n, 12), call);
}

// S = 0: every row sees no key. L = 0 and B = 0: nothing to compute.
TEST(attention, empty) {
  Sizes n;
  n.Hq = 2;
  n.Hkv = 1;
  n.L = 4;
  n.S = 0;
  n.E = 8;
  n.Ev = 3;
  check_attention(Qkv<float>(n, 1));
  check_attention(Qkv<double>(n, 1));
  n.L = 0;
  n.S = 5;
  check_attention(Qkv<float>(n, 2));
  n.B = 0;
  n.L = 3;
  check_attention(Qkv<float>(n, 3));
}

// Inputs read in place through their strides: the query as the transpose of
// a (B, L, H, E) array, the keys with padded rows, the values a slice of a
// larger KV cache.
TEST(attention, strided_inputs) {
  const std::int64_t B = 2, H = 4, L = 9, S = 13, E = 16, Ev = 8, pad = 5, capacity = 20;
  Sizes n;
  n.B = B;
  n.Hq = H;
  n.Hkv = H;
  n.L = L;
  n.S = S;
  n.E = E;
  n.Ev = Ev;
  Qkv<float> dense(n, 5);  // the same values, C-contiguous, for the oracle
  const Expected want = expected(dense, Call{});

  std::vector<float> q(B * L * H * E), k(B * H * S * (E + pad)), v(B * H * capacity * Ev);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      for (std::int64_t i = 0; i < L; ++i)
        for (std::int64_t e = 0; e < E; ++e)
          q[((b * L + i) * H + h) * E + e] = dense.q[((b * H + h) * L + i) * E + e];
      for (std::int64_t j = 0; j < S; ++j) {
        for (std::int64_t e = 0; e < E; ++e)
          k[((b * H + h) * S + j) * (E + pad) + e] = dense.k[((b * H + h) * S + j) * E + e];
        for (std::int64_t e = 0; e < Ev; ++e)
          v[((b * H + h) * capacity + j) * Ev + e] = dense.v[((b * H + h) * S + j) * Ev + e];
      }
    }
  const auto query = dotattn::view(q.data(), {B, H, L, E}, {L * H * E, E, H * E, 1});
  const std::int64_t k_row = E + pad, v_head = capacity * Ev;
  const auto key = dotattn::view(k.data(), {B, H, S, E}, {H * S * k_row, S * k_row, k_row, 1});
  const auto value = dotattn::view(v.data(), {B, H, S, Ev}, {H * v_head, v_head, Ev, 1});
  for_each_isa([&] {
    std::vector<float> out(want.out.size(), kNaN<float>);
    dotattn::attention(query, key, value, dotattn::output(out.data(), {B, H, L, Ev}));
    CHECK_MATCH(out, want.out, tolerance<float>());
  });
}

// The tiling depends on the shapes only: 1, 2 and 3 threads give the same bits.
TEST(attention, same_bits_at_any_thread_count) {
  struct Restore {
    int threads = dotattn::get_num_threads();
    ~Restore() { dotattn::set_num_threads(threads); }
  } restore;
  Sizes prefill;
  prefill.B = 2;
  prefill.Hq = 4;
  prefill.Hkv = 2;
  prefill.L = 100;
  prefill.S = 130;
  prefill.E = 32;
  prefill.Ev = 32;
  Sizes decode = prefill;
  decode.L = 1;
  decode.S = 1500;
  for (const Sizes& n : {prefill, decode}) {
    Context context(describe(n));
    const Qkv<float> in(n, 9);
    for_each_isa([&] {
      std::vector<float> first;
      for (const int threads : {1, 2, 3}) {
        dotattn::set_num_threads(threads);
        std::vector<float> out(n.B * n.Hq * n.L * n.Ev);
        dotattn::Options options;
        options.causal = Causal::lower_right;
        dotattn::attention(in.query(), in.key(), in.value(),
                           dotattn::output(out.data(), in.out_shape()), options);
        if (first.empty())
          first = out;
        else
          CHECK(std::memcmp(first.data(), out.data(), out.size() * sizeof(float)) == 0);
      }
    });
  }
}

TEST(attention, result_shapes) {
  Sizes n;
  n.B = 2;
  n.Hq = 6;
  n.Hkv = 3;
  n.L = 5;
  n.S = 7;
  n.E = 4;
  n.Ev = 9;
  const Qkv<float> in(n, 1);
  CHECK(dotattn::attention_shape(in.query(), in.key(), in.value()) == dotattn::Dims({2, 6, 5, 9}));
  CHECK(dotattn::attention_weights_shape(in.query(), in.key()) == dotattn::Dims({2, 6, 5, 7}));
}

}  // namespace
}  // namespace dotattn_test
