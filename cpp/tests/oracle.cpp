#include "oracle.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace dotattn_test {

std::string describe(const Sizes& n) {
  std::ostringstream os;
  os << "B=" << n.B << " Hq=" << n.Hq << " Hkv=" << n.Hkv << " L=" << n.L << " S=" << n.S
     << " E=" << n.E << " Ev=" << n.Ev;
  return os.str();
}

std::string describe(const ScoreOptions& o) {
  std::ostringstream os;
  os << "window=";
  if (o.window)
    os << "(" << o.window->left << ", " << o.window->right << ")";
  else
    os << "none";
  os << " softcap=";
  if (o.softcap)
    os << *o.softcap;
  else
    os << "none";
  os << " alibi=" << (o.alibi_slopes.empty() ? "no" : "yes");
  os << " sinks=" << (o.sinks.empty() ? "no" : "yes");
  return os.str();
}

Expected naive_attention(const Sizes& n, const std::vector<double>& q, const std::vector<double>& k,
                         const std::vector<double>& v, double scale, dotattn::Causal causal,
                         const MaskFunction& mask, const ScoreOptions& options) {
  const double inf = std::numeric_limits<double>::infinity();
  Expected r;
  r.out.assign(n.B * n.Hq * n.L * n.Ev, 0.0);
  r.lse.assign(n.B * n.Hq * n.L, -inf);
  r.weights.assign(n.B * n.Hq * n.L * n.S, 0.0);
  const std::int64_t group = n.Hq / n.Hkv;
  std::vector<double> scores(n.S);
  // -1 (or no window): an unbounded side.
  const std::int64_t left = options.window ? options.window->left : -1;
  const std::int64_t right = options.window ? options.window->right : -1;

  for (std::int64_t b = 0; b < n.B; ++b)
    for (std::int64_t h = 0; h < n.Hq; ++h)
      for (std::int64_t i = 0; i < n.L; ++i) {
        const std::int64_t row = (b * n.Hq + h) * n.L + i;  // of out, lse and weights
        const std::int64_t kv = b * n.Hkv + h / group;       // key/value head
        // The row's position among the keys.
        const std::int64_t at = causal == dotattn::Causal::upper_left ? i : i + n.S - n.L;
        // 1. scaled scores, capped, biased, masked
        for (std::int64_t j = 0; j < n.S; ++j) {
          bool visible = true;
          if (causal != dotattn::Causal::none) visible = j <= at;
          if (left >= 0) visible = visible && j >= at - left;
          if (right >= 0) visible = visible && j <= at + right;
          double dot = 0;
          for (std::int64_t e = 0; e < n.E; ++e)
            dot += q[row * n.E + e] * k[(kv * n.S + j) * n.E + e];
          double s = dot * scale;
          if (options.softcap) s = *options.softcap * std::tanh(s / *options.softcap);
          if (!options.alibi_slopes.empty())
            s -= options.alibi_slopes[h] * static_cast<double>(std::abs(at - j));
          scores[j] = visible ? s + (mask ? mask(b, h, i, j) : 0.0) : -inf;
        }
        // 2. the row's max, with the sink; a row that sees no key (and has
        // no sink) keeps zeros and an LSE of -inf
        const bool has_sink = !options.sinks.empty();
        const double sink = has_sink ? options.sinks[h] : -inf;
        double m = sink;
        for (std::int64_t j = 0; j < n.S; ++j) m = std::max(m, scores[j]);
        if (m == -inf) continue;
        // 3. softmax (the sink in the denominator), LSE, weighted sum of the
        // values (a zero weight adds nothing)
        double sum = has_sink ? std::exp(sink - m) : 0.0;
        for (std::int64_t j = 0; j < n.S; ++j) sum += std::exp(scores[j] - m);
        r.lse[row] = m + std::log(sum);
        for (std::int64_t j = 0; j < n.S; ++j) {
          const double w = std::exp(scores[j] - m) / sum;
          r.weights[row * n.S + j] = w;
          if (w == 0) continue;
          for (std::int64_t e = 0; e < n.Ev; ++e)
            r.out[row * n.Ev + e] += w * v[(kv * n.S + j) * n.Ev + e];
        }
      }
  return r;
}

std::string mismatch(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  if (got.size() != want.size())
    return "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
  double largest = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool nan_differs = std::isnan(g) != std::isnan(w);
    const bool inf_differs = (std::isinf(g) || std::isinf(w)) && g != w;
    if (nan_differs || inf_differs) {
      std::ostringstream os;
      os << "element " << i << " is " << g << ", expected " << w;
      return os.str();
    }
    if (std::isfinite(w)) largest = std::max(largest, std::abs(w));
  }
  // Sums of squares of values scaled to at most 1 (as reference.errors()),
  // which cannot underflow.
  double diff2 = 0, want2 = 0, worst = 0;
  std::size_t worst_at = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(want[i])) continue;
    const double d = std::abs(got[i] - want[i]);
    if (d > worst) {
      worst = d;
      worst_at = i;
    }
    if (largest > 0) {
      diff2 += (d / largest) * (d / largest);
      want2 += (want[i] / largest) * (want[i] / largest);
    }
  }
  if (worst == 0) return "";
  std::ostringstream os;
  if (largest == 0) {
    os << "expected zeros, element " << worst_at << " is " << got[worst_at];
    return os.str();
  }
  const double relative = std::sqrt(diff2 / want2), elementwise = worst / largest;
  if (relative <= tol && elementwise <= tol) return "";
  os << "relative error " << relative << ", elementwise " << elementwise << " (element " << worst_at
     << ": " << got[worst_at] << ", expected " << want[worst_at] << "); tolerance " << tol;
  return os.str();
}

}  // namespace dotattn_test
