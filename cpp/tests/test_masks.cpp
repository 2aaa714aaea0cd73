// Boolean and additive masks against the oracle on every kernel set: the
// shapes that broadcast to (B, Hq, L, S), broadcasting through zero strides
// and other layouts, masks with the causal rule, fully masked rows (zeros,
// LSE -inf), and values of hidden keys that must not leak into the result.
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "harness.hpp"
#include "support.hpp"

namespace dotattn_test {
namespace {

using dotattn::Causal;
using dotattn::Dims;

// A C-contiguous mask of `shape`, which lines up with the right end of
// (B, Hq, L, S); a dim of size 1 broadcasts. M is bool (true = may attend)
// or the inputs' float type (added to the scores).
template <class M>
struct Mask {
  Dims shape;
  std::int64_t size = 1;
  std::unique_ptr<M[]> data;

  explicit Mask(Dims dims) : shape(std::move(dims)) {
    for (const std::int64_t s : shape) size *= s;
    data.reset(new M[size]);
  }

  // The element that score (b, h, i, j) reads.
  M at(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    const std::int64_t coords[] = {b, h, i, j};
    const std::size_t nd = shape.size();
    std::int64_t index = 0;
    for (std::size_t d = 0; d < nd; ++d)
      index = index * shape[d] + (shape[d] == 1 ? 0 : coords[4 - nd + d]);
    return data[index];
  }

  MaskFunction terms() const {
    return [this](std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) {
      const M m = at(b, h, i, j);
      if constexpr (std::is_same_v<M, bool>)
        return m ? 0.0 : -kInf;
      else
        return static_cast<double>(m);
    };
  }

  Call call(Causal causal = Causal::none) const {
    Call c;
    c.causal = causal;
    c.mask = dotattn::view(data.get(), shape);
    c.mask_terms = terms();
    return c;
  }
};

// About a quarter of the keys hidden.
Mask<bool> random_bool(Dims shape, std::uint64_t seed) {
  Mask<bool> m(std::move(shape));
  Rng rng(seed);
  for (std::int64_t i = 0; i < m.size; ++i) m.data[i] = rng.uniform() >= 0.25;
  return m;
}

// Normal terms, with about one in eight -inf.
template <class T>
Mask<T> random_additive(Dims shape, std::uint64_t seed) {
  Mask<T> m(std::move(shape));
  Rng rng(seed);
  for (std::int64_t i = 0; i < m.size; ++i)
    m.data[i] = rng.uniform() < 0.125 ? -std::numeric_limits<T>::infinity()
                                      : static_cast<T>(rng.normal());
  return m;
}

constexpr std::int64_t B = 2, Hq = 4, Hkv = 2, L = 7, S = 17;

Sizes sizes() {
  Sizes n;
  n.B = B;
  n.Hq = Hq;
  n.Hkv = Hkv;
  n.L = L;
  n.S = S;
  n.E = 9;
  n.Ev = 5;
  return n;
}

// Every way a mask broadcasts to (B, Hq, L, S).
const Dims kShapes[] = {{L, S},     {1, 1, L, S}, {B, Hq, L, S}, {B, 1, 1, S}, {Hq, 1, S},
                        {S},        {B, Hq, 1, S}, {1, Hq, L, 1}, {L, 1},       {1}};

std::string name(const Dims& shape) {
  std::string s = "mask shape (";
  for (std::size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + ")";
}

TEST(masks, boolean) {
  for (const Dims& shape : kShapes) {
    Context context(name(shape));
    const Mask<bool> mask = random_bool(shape, shape.size() * 100 + shape.back());
    check_attention(Qkv<float>(sizes(), 1), mask.call());
    check_attention(Qkv<double>(sizes(), 2), mask.call());
  }
}

template <class T>
void additive() {
  for (const Dims& shape : kShapes) {
    Context context(name(shape));
    const Mask<T> mask = random_additive<T>(shape, shape.size() * 100 + shape.back());
    check_attention(Qkv<T>(sizes(), 3), mask.call());
  }
}

TEST(masks, additive_float32) { additive<float>(); }
TEST(masks, additive_float64) { additive<double>(); }

TEST(masks, with_causal) {
  for (const Causal c : {Causal::upper_left, Causal::lower_right}) {
    Context context(c == Causal::upper_left ? "upper_left" : "lower_right");
    const Mask<bool> boolean = random_bool({B, 1, L, S}, 5);
    check_attention(Qkv<float>(sizes(), 4), boolean.call(c));
    const Mask<float> additive = random_additive<float>({L, S}, 6);
    check_attention(Qkv<float>(sizes(), 5), additive.call(c));
  }
}

// A mask read through explicit strides: zero strides broadcast an (L, S)
// mask and a (B, S) key-padding mask to (B, Hq, L, S); a transposed
// (column-major) mask and one read backwards (negative row stride).
TEST(masks, strides) {
  const Qkv<float> in(sizes(), 6);
  const Mask<bool> rows = random_bool({L, S}, 7);
  Call call = rows.call();
  call.mask = dotattn::view(rows.data.get(), {B, Hq, L, S}, {0, 0, S, 1});
  check_attention(in, call);

  const Mask<float> padding = random_additive<float>({B, 1, 1, S}, 8);
  call = padding.call();
  call.mask = dotattn::view(padding.data.get(), {B, Hq, L, S}, {S, 0, 0, 1});
  check_attention(in, call);

  // Element (i, j) of an (S, L) array is score (i, j)'s term at [j][i].
  Mask<float> columns({S, L});
  Rng rng(9);
  for (std::int64_t x = 0; x < columns.size; ++x)
    columns.data[x] = static_cast<float>(rng.normal());
  call = Call{};
  call.mask = dotattn::view(columns.data.get(), {L, S}, {1, L});
  call.mask_terms = [&](std::int64_t, std::int64_t, std::int64_t i, std::int64_t j) {
    return static_cast<double>(columns.data[j * L + i]);
  };
  check_attention(in, call);

  // Row i of the view is row L - 1 - i of the array.
  const Mask<bool> backwards = random_bool({L, S}, 10);
  call = Call{};
  call.mask = dotattn::view(backwards.data.get() + (L - 1) * S, {L, S}, {-S, 1});
  call.mask_terms = [&](std::int64_t, std::int64_t, std::int64_t i, std::int64_t j) {
    return backwards.data[(L - 1 - i) * S + j] ? 0.0 : -kInf;
  };
  check_attention(in, call);
}

// Rows that see no key: zeros and an LSE of -inf (check_attention checks the
// zeros exactly), by a boolean mask, an additive -inf row, or everything.
TEST(masks, fully_masked_rows) {
  Mask<bool> boolean = random_bool({B, Hq, L, S}, 11);
  for (const std::int64_t row : {std::int64_t(0), std::int64_t(3), L - 1})
    for (std::int64_t j = 0; j < S; ++j) boolean.data[(1 * Hq * L + 2 * L + row) * S + j] = false;
  check_attention(Qkv<float>(sizes(), 12), boolean.call());
  check_attention(Qkv<double>(sizes(), 12), boolean.call(Causal::lower_right));

  Mask<float> additive = random_additive<float>({L, S}, 13);
  for (std::int64_t j = 0; j < S; ++j)
    additive.data[2 * S + j] = -std::numeric_limits<float>::infinity();
  check_attention(Qkv<float>(sizes(), 14), additive.call());

  Mask<bool> nothing({1});
  nothing.data[0] = false;
  const Expected want = check_attention(Qkv<float>(sizes(), 15), nothing.call());
  for (const double lse : want.lse) CHECK(lse == -kInf);
}

// NaN and inf in the values of hidden keys (garbage in unused KV-cache
// slots) never reach the result: their weight is exactly 0.
template <class T>
void hidden_values(const Sizes& n) {
  Qkv<T> in(n, 16);
  Mask<bool> padding({n.B, 1, 1, n.S});
  const std::int64_t visible[] = {n.S / 3, n.S - 1};  // keys per batch entry
  for (std::int64_t b = 0; b < n.B; ++b)
    for (std::int64_t j = 0; j < n.S; ++j) {
      padding.data[b * n.S + j] = j < visible[b % 2];
      if (j < visible[b % 2]) continue;
      for (std::int64_t h = 0; h < n.Hkv; ++h)
        for (std::int64_t e = 0; e < n.Ev; ++e)
          in.v[((b * n.Hkv + h) * n.S + j) * n.Ev + e] =
              (j + e) % 3 == 0 ? kNaN<T> : (j + e) % 3 == 1 ? std::numeric_limits<T>::infinity()
                                                             : -std::numeric_limits<T>::infinity();
    }
  check_attention(in, padding.call());
  check_attention(in, padding.call(Causal::lower_right));
}

TEST(masks, hidden_values_do_not_leak) {
  hidden_values<float>(sizes());
  hidden_values<double>(sizes());
  Sizes decode = sizes();  // split into key ranges, the last ones all hidden
  decode.L = 1;
  decode.S = 2100;
  decode.E = 64;
  decode.Ev = 64;
  hidden_values<float>(decode);
}

// Decoding with a key-padding mask: batch entry 0 sees the first 700 keys,
// entry 1 none, so whole key ranges are hidden before the merge.
TEST(masks, decoding_with_padding) {
  Sizes n;
  n.B = 2;
  n.Hq = 8;
  n.Hkv = 2;
  n.L = 1;
  n.S = 2100;
  n.E = 32;
  n.Ev = 40;
  Mask<bool> padding({n.B, 1, 1, n.S});
  for (std::int64_t j = 0; j < n.S; ++j) {
    padding.data[j] = j < 700;
    padding.data[n.S + j] = false;
  }
  check_attention(Qkv<float>(n, 17), padding.call());
  check_attention(Qkv<double>(n, 17), padding.call());
}

}  // namespace
}  // namespace dotattn_test
