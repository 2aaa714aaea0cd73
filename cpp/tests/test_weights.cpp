// attention_weights() against the oracle on every kernel set: each row
// sums to 1, a row that sees no key is zeros (support.hpp checks both).
#include <limits>
#include <memory>
#include <vector>

#include "harness.hpp"
#include "support.hpp"

namespace dotattn_test {
namespace {

using dotattn::Causal;

template <class T>
void odd_sizes() {
  const std::int64_t sizes[] = {1, 2, 3, 7, 17, 33, 65, 100};
  for (const std::int64_t L : sizes)
    for (const std::int64_t S : {1, 3, 17, 100}) {
      Sizes n;
      n.Hq = 2;
      n.Hkv = 1;
      n.L = L;
      n.S = S;
      n.E = L % 2 ? 33 : 8;
      n.Ev = 0;  // no values: the oracle's weights only
      check_weights(Qkv<T>(n, L * 1000 + S));
    }
}

TEST(weights, odd_sizes_float32) { odd_sizes<float>(); }
TEST(weights, odd_sizes_float64) { odd_sizes<double>(); }

// Both alignments with L < S, L = S and L > S (lower_right hides every key
// from the first L - S rows), and GQA/MQA.
TEST(weights, causal_and_groups) {
  const std::int64_t shapes[][2] = {{5, 12}, {12, 12}, {12, 5}};
  for (const Causal c : {Causal::upper_left, Causal::lower_right})
    for (const auto& [L, S] : shapes)
      for (const std::int64_t Hkv : {4, 2, 1}) {
        Context context(c == Causal::upper_left ? "upper_left" : "lower_right");
        Sizes n;
        n.B = 2;
        n.Hq = 4;
        n.Hkv = Hkv;
        n.L = L;
        n.S = S;
        n.E = 7;
        n.Ev = 0;
        Call call;
        call.causal = c;
        check_weights(Qkv<float>(n, L + S + Hkv), call);
        check_weights(Qkv<double>(n, L + S + Hkv), call);
      }
}

// A boolean (L, S) mask broadcast through zero strides with a fully masked
// row, and an additive one with -inf terms and an explicit scale.
TEST(weights, masks) {
  Sizes n;
  n.B = 2;
  n.Hq = 3;
  n.Hkv = 3;
  n.L = 6;
  n.S = 19;
  n.E = 10;
  n.Ev = 0;
  const Qkv<float> in(n, 3);

  std::unique_ptr<bool[]> boolean(new bool[n.L * n.S]);
  for (std::int64_t x = 0; x < n.L * n.S; ++x)
    boolean[x] = x % 5 != 0 && x / n.S != 4;  // row 4 sees no key
  Call call;
  call.mask = dotattn::view(boolean.get(), {n.B, n.Hq, n.L, n.S}, {0, 0, n.S, 1});
  call.mask_terms = [&](std::int64_t, std::int64_t, std::int64_t i, std::int64_t j) {
    return boolean[i * n.S + j] ? 0.0 : -kInf;
  };
  check_weights(in, call);

  std::vector<float> additive(n.S);
  for (std::int64_t j = 0; j < n.S; ++j)
    additive[j] = j % 4 == 1 ? -std::numeric_limits<float>::infinity()
                             : 0.25f * static_cast<float>(j % 7);
  call.mask = dotattn::view(additive.data(), {n.S});
  call.mask_terms = [&](std::int64_t, std::int64_t, std::int64_t, std::int64_t j) {
    return static_cast<double>(additive[j]);
  };
  call.scale = 0.4;
  check_weights(in, call);
}

TEST(weights, one_key_weighs_one) {
  Sizes n;
  n.L = 3;
  n.S = 1;
  n.E = 5;
  n.Ev = 0;
  const Qkv<float> in(n, 4);
  for_each_isa([&] {
    std::vector<float> weights(3, kNaN<float>);
    dotattn::attention_weights(in.query(), in.key(),
                               dotattn::output(weights.data(), in.weights_shape()));
    for (const float w : weights) CHECK(w == 1.0f);
  });
}

}  // namespace
}  // namespace dotattn_test
