// The tests' oracle: attention computed from its definition in double
// precision with plain loops (the rules of python/dotattn/reference.py), and
// the comparison against it with the accuracy dotattn promises
// (reference.py's TOLERANCES and errors()).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <dotattn/dotattn.hpp>

namespace dotattn_test {

// The sizes of one call; B is the product of the batch dims.
struct Sizes {
  std::int64_t B = 1, Hq = 1, Hkv = 1, L = 1, S = 1, E = 1, Ev = 1;
};

std::string describe(const Sizes& n);

// The additive term of score (b, h, i, j), for flat batch index b and query
// head h: 0 leaves the score as it is, -inf hides the key.
using MaskFunction =
    std::function<double(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j)>;

struct Expected {
  std::vector<double> out;      // (B, Hq, L, Ev)
  std::vector<double> lse;      // (B, Hq, L)
  std::vector<double> weights;  // (B, Hq, L, S)
};

// The score options of dotattn::Options (reference.py's rules 2 to 8): a
// window, a soft cap, and ALiBi slopes and sinks per query head (empty for
// none). Row i's position among the keys is i' = i under upper_left and
// i + S - L otherwise.
struct ScoreOptions {
  std::optional<dotattn::Window> window;
  std::optional<double> softcap;
  std::vector<double> alibi_slopes;  // (Hq,) or empty
  std::vector<double> sinks;         // (Hq,) or empty
};

std::string describe(const ScoreOptions& o);

// q (B, Hq, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev), C-contiguous; mask
// may be empty. Query head h reads key/value head h / (Hq / Hkv). The score
// of key j: dot * scale, then softcap * tanh(score / softcap), then
// - alibi_slopes[h] * |i' - j|, then the mask's term; keys hidden by the
// causal rule or the window get -inf. With sinks, sinks[h] joins each row's
// softmax denominator: a row that sees no key gets zeros and an LSE of
// sinks[h] (-inf without sinks), and the weights of a row sum to
// 1 - exp(sinks[h] - lse).
Expected naive_attention(const Sizes& n, const std::vector<double>& q, const std::vector<double>& k,
                         const std::vector<double>& v, double scale, dotattn::Causal causal,
                         const MaskFunction& mask, const ScoreOptions& options = {});

// How far got is from want: "" if it is within tolerance, else what is
// wrong. Like reference.py's errors(): NaN and +-inf must be in the same
// places; over want's finite entries, ||got - want|| <= tol * ||want|| and
// max|got - want| <= tol * max|want|.
std::string mismatch(const std::vector<double>& got, const std::vector<double>& want, double tol);

template <class T>
constexpr double tolerance() {
  return sizeof(T) == 4 ? 1e-5 : 1e-12;
}

}  // namespace dotattn_test
