// Key and value stored as float16, bfloat16 or int8 (quantized_view,
// quantize_int8) with a float32 query, and a bfloat16 query, on every kernel
// set, against the oracle computed on the values as stored; and
// quantize_int8 itself.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "harness.hpp"
#include "support.hpp"

namespace dotattn_test {
namespace {

using dotattn::Dims;

// Multiples of 1/64 in (-4, 4): exact in float16 and bfloat16 alike.
std::vector<float> exact_16_bit(std::int64_t count, Rng& rng) {
  std::vector<float> x(static_cast<std::size_t>(count));
  for (float& e : x) e = static_cast<float>(static_cast<int>(rng.next() % 511) - 255) / 64.0f;
  return x;
}

std::uint32_t bits_of(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

std::vector<dotattn::bfloat16_t> to_bfloat16(const std::vector<float>& x) {
  std::vector<dotattn::bfloat16_t> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i].bits = static_cast<std::uint16_t>(bits_of(x[i]) >> 16);
  return y;
}

// For normal values whose low 13 mantissa bits are zero, and zero.
std::vector<dotattn::float16_t> to_float16(const std::vector<float>& x) {
  std::vector<dotattn::float16_t> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::uint32_t b = bits_of(x[i]), sign = (b >> 16) & 0x8000u;
    const std::uint32_t exponent = (b >> 23) & 0xffu;
    y[i].bits = static_cast<std::uint16_t>(
        exponent == 0 ? sign : sign | ((exponent - 112) << 10) | ((b >> 13) & 0x3ffu));
  }
  return y;
}

// x (rows x E) quantized by groups: the int8 data, its scales, and the
// values they stand for.
struct Quantized {
  std::vector<std::int8_t> data;
  std::vector<float> scale;
  std::vector<double> values;

  Quantized(const std::vector<float>& x, const Dims& shape, std::int64_t group)
      : data(x.size()), scale(x.size() / static_cast<std::size_t>(group)), values(x.size()) {
    dotattn::quantize_int8(dotattn::view(x.data(), shape),
                           dotattn::quantized_output(data.data(), shape, scale.data(), group));
    for (std::size_t i = 0; i < x.size(); ++i)
      values[i] = double(data[i]) * double(scale[i / static_cast<std::size_t>(group)]);
  }

  dotattn::TensorView view(const Dims& shape, std::int64_t group) const {
    Dims scale_shape = shape;
    scale_shape.back() /= group;
    return dotattn::quantized_view(data.data(), shape, {}, scale.data(), scale_shape);
  }
};

// Decoding (and three rows, as speculative decoding has) with float16 keys
// and int8 values, then bfloat16 keys and float32 values: the split-K path
// with a tail, GQA, and the LSE.
TEST(formats, decode) {
  for (const std::int64_t L : {1, 3}) {
    Sizes n;
    n.Hq = 8;
    n.Hkv = 2;
    n.L = L;
    n.S = 1501;
    n.E = 64;
    n.Ev = 48;
    Rng rng(L);
    const std::vector<float> q = normal_data<float>(n.Hq * n.L * n.E, rng);
    const std::vector<float> k = exact_16_bit(n.Hkv * n.S * n.E, rng);
    const std::vector<float> v = normal_data<float>(n.Hkv * n.S * n.Ev, rng);
    const Dims q_shape{1, n.Hq, n.L, n.E}, k_shape{1, n.Hkv, n.S, n.E}, v_shape{1, n.Hkv, n.S, n.Ev};
    const std::vector<dotattn::float16_t> k16 = to_float16(k);
    const std::vector<dotattn::bfloat16_t> kb16 = to_bfloat16(k);
    const Quantized v8(v, v_shape, 16);

    const double scale = 1.0 / std::sqrt(double(n.E));
    const Expected with_int8 = naive_attention(n, to_double(q), to_double(k), v8.values, scale,
                                               dotattn::Causal::lower_right, {});
    const Expected with_f32 = naive_attention(n, to_double(q), to_double(k), to_double(v), scale,
                                              dotattn::Causal::lower_right, {});
    const struct {
      const char* name;
      dotattn::TensorView key, value;
      const Expected& want;
    } cases[] = {
        {"float16 keys, int8 values", dotattn::view(k16.data(), k_shape), v8.view(v_shape, 16), with_int8},
        {"bfloat16 keys, float32 values", dotattn::view(kb16.data(), k_shape), dotattn::view(v.data(), v_shape),
         with_f32},
    };
    for (const auto& c : cases) {
      Context context(std::string(c.name) + ", " + describe(n));
      for_each_isa([&] {
        std::vector<float> out(c.want.out.size(), kNaN<float>), lse(c.want.lse.size(), kNaN<float>);
        dotattn::Options options;
        options.causal = dotattn::Causal::lower_right;
        options.lse = dotattn::output(lse.data(), {1, n.Hq, n.L});
        dotattn::attention(dotattn::view(q.data(), q_shape), c.key, c.value,
                           dotattn::output(out.data(), {1, n.Hq, n.L, n.Ev}), options);
        CHECK_MATCH(out, c.want.out, tolerance<float>());
        CHECK_MATCH(lse, c.want.lse, tolerance<float>());
      });
    }
  }
}

// A bfloat16 query (with bfloat16 keys and float16 values): out in float32
// within float32's tolerance, out in bfloat16 within one rounding of it
// (2^-9 of the largest value, twice over), the LSE float32; a bfloat16
// LSE or a float64 out is refused before anything is written.
TEST(formats, bfloat16_query) {
  Sizes n;
  n.Hq = 4;
  n.Hkv = 2;
  n.L = 37;
  n.S = 203;
  n.E = 40;
  n.Ev = 24;
  Rng rng(7);
  const std::vector<float> q = exact_16_bit(n.Hq * n.L * n.E, rng);
  const std::vector<float> k = exact_16_bit(n.Hkv * n.S * n.E, rng);
  const std::vector<float> v = exact_16_bit(n.Hkv * n.S * n.Ev, rng);
  const Dims q_shape{1, n.Hq, n.L, n.E}, k_shape{1, n.Hkv, n.S, n.E}, v_shape{1, n.Hkv, n.S, n.Ev};
  const Dims out_shape{1, n.Hq, n.L, n.Ev};
  const std::vector<dotattn::bfloat16_t> qb = to_bfloat16(q), kb = to_bfloat16(k);
  const std::vector<dotattn::float16_t> v16 = to_float16(v);
  const Expected want = naive_attention(n, to_double(q), to_double(k), to_double(v),
                                        1.0 / std::sqrt(double(n.E)), dotattn::Causal::upper_left, {});
  for_each_isa([&] {
    std::vector<float> out(want.out.size(), kNaN<float>), lse(want.lse.size(), kNaN<float>);
    std::vector<dotattn::bfloat16_t> out16(want.out.size(), dotattn::bfloat16_t{0x7fc0});
    dotattn::Options options;
    options.causal = dotattn::Causal::upper_left;
    options.lse = dotattn::output(lse.data(), {1, n.Hq, n.L});
    const auto query = dotattn::view(qb.data(), q_shape);
    const auto key = dotattn::view(kb.data(), k_shape);
    const auto value = dotattn::view(v16.data(), v_shape);
    dotattn::attention(query, key, value, dotattn::output(out.data(), out_shape), options);
    CHECK_MATCH(out, want.out, tolerance<float>());
    CHECK_MATCH(lse, want.lse, tolerance<float>());
    options.lse.reset();
    dotattn::attention(query, key, value, dotattn::output(out16.data(), out_shape), options);
    std::vector<float> widened(out16.size());
    for (std::size_t i = 0; i < out16.size(); ++i) {
      const std::uint32_t bits = std::uint32_t(out16[i].bits) << 16;
      std::memcpy(&widened[i], &bits, sizeof bits);
    }
    CHECK_MATCH(widened, want.out, 4e-3);

    std::vector<dotattn::bfloat16_t> lse16(want.lse.size(), dotattn::bfloat16_t{0x7fc0});
    options.lse = dotattn::output(lse16.data(), {1, n.Hq, n.L});
    expect_error<dotattn::dtype_error>(
        [&] { dotattn::attention(query, key, value, dotattn::output(out.data(), out_shape), options); },
        {"lse has dtype bfloat16 but the result is float32"});
    CHECK(lse16[0].bits == 0x7fc0);

    std::vector<double> out64(want.out.size(), 7.0);
    expect_error<dotattn::dtype_error>(
        [&] { dotattn::attention(query, key, value, dotattn::output(out64.data(), out_shape)); },
        {"out has dtype float64 but the result is bfloat16 (the query's dtype) or float32"});
    CHECK(out64[0] == 7.0);
  });
}

// scale = max|x| / 127 per group, data = x / scale rounded half to even.
TEST(formats, quantize_int8) {
  const std::vector<float> x = {127, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -126.5f, 3.49f,
                                0,   0,    0,    0,    0,     0,     0,       0};
  const Quantized q(x, {2, 8}, 8);
  CHECK(q.scale[0] == 1.0f && q.scale[1] == 0.0f);
  const std::int8_t want[] = {127, 0, 2, 2, 0, -2, -126, 3, 0, 0, 0, 0, 0, 0, 0, 0};
  CHECK(std::memcmp(q.data.data(), want, sizeof want) == 0);
  CHECK(dotattn::quantization_group(q.view({2, 8}, 8)) == 8);
}

TEST(formats, bad_input) {
  std::vector<float> x(64, 1.0f);
  std::vector<std::int8_t> data(64, 3);
  std::vector<float> scale(2, 9.0f);
  dotattn::QuantizedOutput out;
  out.data = data.data();
  out.strides = {64, 1};
  out.scale = scale.data();
  out.scale_shape = {1, 3};
  out.scale_strides = {3, 1};
  expect_error<dotattn::argument_error>(
      [&] { dotattn::quantize_int8(dotattn::view(x.data(), {1, 64}), out); },
      {"out scale (1, 3) does not fit out data (1, 64): its last dim (3 groups) must divide E=64"});
  out.scale_shape = {1, 2};
  out.scale_strides = {2, 1};
  x[5] = std::nanf("");
  expect_error<dotattn::argument_error>(
      [&] { dotattn::quantize_int8(dotattn::view(x.data(), {1, 64}), out); }, {"x holds inf or NaN"});
  CHECK(data[0] == 3 && scale[0] == 9.0f);

  expect_error<dotattn::argument_error>(
      [&] { dotattn::quantized_output(data.data(), {1, 64}, scale.data(), 3); },
      {"quantized_output: group=3 must be positive and divide E=64"});

  const std::vector<float> q(64, 1.0f);
  std::vector<float> result(64, 7.0f);
  expect_error<dotattn::dtype_error>(
      [&] {
        dotattn::attention(dotattn::view(q.data(), {1, 64}), dotattn::view(data.data(), {1, 64}),
                           dotattn::view(q.data(), {1, 64}), dotattn::output(result.data(), {1, 64}));
      },
      {"key is int8 without its scales"});
  CHECK(result[0] == 7.0f);
}

}  // namespace
}  // namespace dotattn_test
