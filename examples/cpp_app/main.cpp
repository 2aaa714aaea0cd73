// cpp_app: causal self-attention over a toy sequence of four tokens with the
// installed dotattn package; prints the attention weights and the result,
// then decodes the last token again against the keys and values kept as an
// int8 KV cache.
// The numbers are picked so that every printed value can be checked by hand
// (.ci/cpp_package.sh does).
#include <cstdint>
#include <cstdio>
#include <vector>

#include <dotattn/dotattn.hpp>
#include <dotattn/version.hpp>  // DOTATTN_VERSION (dotattn.hpp includes it too)

namespace {

// One "row i:" line per row of a row-major rows x cols matrix.
void print_rows(const char* title, const std::vector<float>& matrix, std::int64_t rows,
                std::int64_t cols) {
  std::printf("%s\n", title);
  for (std::int64_t i = 0; i < rows; ++i) {
    std::printf("  row %lld:", static_cast<long long>(i));
    for (std::int64_t j = 0; j < cols; ++j) std::printf(" %.4f", matrix[i * cols + j]);
    std::printf("\n");
  }
}

}  // namespace

int main() {
  // One head: L = S = 4 tokens, E = Ev = 3 features, row-major.
  constexpr std::int64_t L = 4, S = 4, E = 3, Ev = 3;
  const std::vector<float> query = {
      1, 0, 0,  // sees key 0 only
      0, 1, 0,  // scores 0, 1 against keys 0, 1
      0, 0, 0,  // all scores 0: keys 0..2 weigh the same
      2, 1, 0,  // scores 2, 1, 0, 3
  };
  const std::vector<float> key = {
      1, 0, 0,
      0, 1, 0,
      0, 0, 1,
      1, 1, 1,
  };
  // Unit vectors for keys 0..2, so that a result row shows how much it took
  // from each of them; key 3 adds to every column.
  const std::vector<float> value = {
      1, 0, 0,
      0, 1, 0,
      0, 0, 1,
      1, 1, 1,
  };
  std::vector<float> weights(L * S), result(L * Ev), decoded(Ev);
  // The int8 cache: one scale per token (a group of all E = Ev = 3 features).
  std::vector<std::int8_t> key_data(S * E), value_data(S * Ev);
  std::vector<float> key_scale(S), value_scale(S);

  dotattn::Options options;
  options.causal = dotattn::Causal::upper_left;  // token i attends to tokens 0..i
  // Scale 1 instead of the default 1/sqrt(E): the weights are then the
  // softmax of the plain dot products above.
  options.scale = 1.0;

  try {
    const dotattn::TensorView q = dotattn::view(query.data(), {L, E});
    const dotattn::TensorView k = dotattn::view(key.data(), {S, E});
    dotattn::attention_weights(q, k, dotattn::output(weights.data(), {L, S}), options);
    dotattn::attention(q, k, dotattn::view(value.data(), {S, Ev}),
                       dotattn::output(result.data(), {L, Ev}), options);

    dotattn::quantize_int8(k, dotattn::quantized_output(key_data.data(), {S, E}, key_scale.data(), E));
    dotattn::quantize_int8(dotattn::view(value.data(), {S, Ev}),
                           dotattn::quantized_output(value_data.data(), {S, Ev}, value_scale.data(), Ev));
    // Token 3's query against all four cached tokens (lower_right: the one
    // query row is the last position).
    dotattn::Options decode;
    decode.causal = dotattn::Causal::lower_right;
    decode.scale = 1.0;
    dotattn::attention(
        dotattn::view(query.data() + 3 * E, {1, E}),
        dotattn::quantized_view(key_data.data(), {S, E}, {}, key_scale.data(), {S, 1}),
        dotattn::quantized_view(value_data.data(), {S, Ev}, {}, value_scale.data(), {S, 1}),
        dotattn::output(decoded.data(), {1, Ev}), decode);
  } catch (const dotattn::argument_error& error) {
    // Bad shapes or options; dtype_error cannot happen here, view() and
    // output() take the dtype from the float pointers.
    std::fprintf(stderr, "cpp_app: %s\n", error.what());
    return 1;
  }

  std::printf("dotattn %s, kernels: %s\n", DOTATTN_VERSION, dotattn::get_isa().c_str());
  print_rows("attention weights (L x S):", weights, L, S);
  print_rows("result (L x Ev):", result, L, Ev);
  print_rows("token 3 decoded over the int8 KV cache (1 x Ev):", decoded, 1, Ev);
  return 0;
}
