// The block kernels written once over a vector type V, and compiled once per
// ISA: kernels/<isa>.cpp includes its vector type (vec_<isa>.hpp) and this
// file, under that ISA's flags. Every function here is a member of
// BlockKernelsFor<V> or a template on V (with_count is called only with
// lambdas made inside those), and V differs per ISA, so no instantiation is
// shared between files built with different flags.
//
// V provides (R is its register type, N its lanes of T):
//   zero, set1, load, store (unaligned), load_partial / store_partial (the
//   first n lanes, touching no memory beyond them), add, sub, mul,
//   fmadd(a, b, c) = a * b + c, min and max (b if either is NaN), max_nan
//   (NaN if either is NaN), exp, low_bits_as_exponent (the float with the
//   low 9 bits of t's bits as its exponent field), and the
//   tile sizes kScoreKeys x kScoreRowVecs (score tile) and
//   kPvRows x kPvColVecs (P·V tile), chosen so the accumulators stay in
//   registers.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/kernels.hpp"

namespace dotattn::kernels {

// Calls f(std::integral_constant<int, n>) for a run-time n in [1, Max]: the
// micro-kernels take their tile size as a template argument so the
// accumulators can live in registers, and tails use a smaller instance.
template <int Max, class F>
inline void with_count(std::int64_t n, const F& f) {
  if constexpr (Max > 0) {
    if (n == Max)
      f(std::integral_constant<int, Max>{});
    else
      with_count<Max - 1>(n, f);
  }
}

// How far ahead the few-rows (decoding) kernels prefetch the keys and
// values they stream from memory. Measured on Zen 3, one core, E = Ev = 128,
// K and V far larger than the caches: keys read at 7.8 GB/s without and 13
// to 14.6 with 6 to 24 keys ahead; values at 8.8 without and 11 to 12.5
// with 8 or 16 ahead (a plain streaming read: 12 GB/s).
constexpr std::int64_t kKeysAhead = 12, kValuesAhead = 16;

// How many rows ahead the widen step prefetches the float16, bfloat16 and
// int8 rows it converts.
constexpr std::int64_t kWidenAhead = 16;

// exp_sum adds a row's weights in chunks of this many keys, then the chunk
// sums: the rounding error grows as (kSumChunk + keys / kSumChunk) ulps
// rather than keys ulps.
constexpr std::int64_t kSumChunk = 16;

template <class V>
struct BlockKernelsFor {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr std::int64_t N = V::N;

  // Asks for rows [0, count) of a row-major array (cols each) to be brought
  // into cache. Prefetches never fault, so rows past the end are harmless.
  // A member, like everything compiled with an ISA's flags, so that no
  // instantiation is shared with a file built for another ISA.
  static void prefetch_rows(const T* p, std::int64_t stride, std::int64_t count,
                            std::int64_t cols) {
    for (std::int64_t r = 0; r < count; ++r)
      for (std::int64_t c = 0; c < cols; c += 64 / static_cast<std::int64_t>(sizeof(T)))
        __builtin_prefetch(p + r * stride + c, 0, 3);
  }

  // Scores of Keys keys against RowVecs * N rows.
  template <int Keys, int RowVecs>
  static void score_micro(const T* qt, std::int64_t qt_ld, const T* k, std::int64_t k_stride,
                          std::int64_t E, T scale, T* st, std::int64_t st_ld) {
    R acc[Keys][RowVecs];
    for (int j = 0; j < Keys; ++j)
      for (int r = 0; r < RowVecs; ++r) acc[j][r] = V::zero();
    for (std::int64_t e = 0; e < E; ++e) {
      R q[RowVecs];
      for (int r = 0; r < RowVecs; ++r) q[r] = V::load(qt + e * qt_ld + r * N);
      for (int j = 0; j < Keys; ++j) {
        const R kj = V::set1(k[j * k_stride + e]);
        for (int r = 0; r < RowVecs; ++r) acc[j][r] = V::fmadd(kj, q[r], acc[j][r]);
      }
    }
    const R s = V::set1(scale);
    for (int j = 0; j < Keys; ++j)
      for (int r = 0; r < RowVecs; ++r) V::store(st + j * st_ld + r * N, V::mul(acc[j][r], s));
  }

  // A group of Keys keys against every row: its Keys x E keys stay in L1
  // while the row vectors go by.
  template <int Keys, int RowVecs>
  static void score_key_group(const T* qt, std::int64_t qt_ld, std::int64_t rows, const T* k,
                              std::int64_t k_stride, std::int64_t E, T scale, T* st,
                              std::int64_t st_ld) {
    constexpr std::int64_t step = RowVecs * N;
    std::int64_t i = 0;
    for (; i + step <= rows; i += step)
      score_micro<Keys, RowVecs>(qt + i, qt_ld, k, k_stride, E, scale, st + i, st_ld);
    with_count<RowVecs - 1>((rows - i) / N, [&](auto vecs) {
      score_micro<Keys, decltype(vecs)::value>(qt + i, qt_ld, k, k_stride, E, scale, st + i, st_ld);
    });
  }

  template <int Keys, int RowVecs>
  static void score_keys(const T* qt, std::int64_t qt_ld, std::int64_t rows, const T* k,
                         std::int64_t k_stride, std::int64_t keys, std::int64_t E, T scale, T* st,
                         std::int64_t st_ld) {
    std::int64_t j = 0;
    for (; j + Keys <= keys; j += Keys)
      score_key_group<Keys, RowVecs>(qt, qt_ld, rows, k + j * k_stride, k_stride, E, scale,
                                     st + j * st_ld, st_ld);
    with_count<Keys - 1>(keys - j, [&](auto n) {
      score_key_group<decltype(n)::value, RowVecs>(qt, qt_ld, rows, k + j * k_stride, k_stride, E,
                                                   scale, st + j * st_ld, st_ld);
    });
  }

  // With a single row vector (a few query rows, more than score_rows takes),
  // the tile takes more keys instead, so that as many accumulators as usual
  // hide the FMA latency.
  static void score_tile(const T* qt, std::int64_t qt_ld, std::int64_t rows, const T* k,
                         std::int64_t k_stride, std::int64_t keys, std::int64_t E, T scale, T* st,
                         std::int64_t st_ld) {
    if (rows <= N)
      score_keys<V::kScoreKeys * V::kScoreRowVecs, 1>(qt, qt_ld, rows, k, k_stride, keys, E, scale,
                                                       st, st_ld);
    else
      score_keys<V::kScoreKeys, V::kScoreRowVecs>(qt, qt_ld, rows, k, k_stride, keys, E, scale, st,
                                                  st_ld);
  }

  // Scores of Keys keys against Rows rows, as dot products along E.
  template <int Keys, int Rows>
  static void score_dot_micro(const T* q, std::int64_t q_ld, const T* k, std::int64_t k_stride,
                              std::int64_t E, T scale, T* st, std::int64_t st_ld) {
    R acc[Rows][Keys];
    for (int r = 0; r < Rows; ++r)
      for (int j = 0; j < Keys; ++j) acc[r][j] = V::zero();
    const auto step = [&](std::int64_t e, std::int64_t lanes) {
      const auto load = [&](const T* p) {
        return lanes == N ? V::load(p + e) : V::load_partial(p + e, lanes);
      };
      R kj[Keys];
      for (int j = 0; j < Keys; ++j) kj[j] = load(k + j * k_stride);
      for (int r = 0; r < Rows; ++r) {
        const R qr = load(q + r * q_ld);
        for (int j = 0; j < Keys; ++j) acc[r][j] = V::fmadd(qr, kj[j], acc[r][j]);
      }
    };
    std::int64_t e = 0;
    for (; e + N <= E; e += N) step(e, N);
    if (e < E) step(e, E - e);
    for (int j = 0; j < Keys; ++j)
      for (int r = 0; r < Rows; ++r) st[j * st_ld + r] = scale * V::reduce_add(acc[r][j]);
  }

  template <int Rows>
  static void score_dot_rows(const T* q, std::int64_t q_ld, const T* k, std::int64_t k_stride,
                             std::int64_t keys, std::int64_t E, T scale, T* st, std::int64_t st_ld) {
    std::int64_t j = 0;
    for (; j + V::kDotKeys <= keys; j += V::kDotKeys) {
      prefetch_rows(k + (j + kKeysAhead) * k_stride, k_stride, V::kDotKeys, E);
      score_dot_micro<V::kDotKeys, Rows>(q, q_ld, k + j * k_stride, k_stride, E, scale,
                                         st + j * st_ld, st_ld);
    }
    with_count<V::kDotKeys - 1>(keys - j, [&](auto n) {
      score_dot_micro<decltype(n)::value, Rows>(q, q_ld, k + j * k_stride, k_stride, E, scale,
                                                st + j * st_ld, st_ld);
    });
  }

  static void score_rows(const T* q, std::int64_t q_ld, std::int64_t rows, const T* k,
                         std::int64_t k_stride, std::int64_t keys, std::int64_t E, T scale, T* st,
                         std::int64_t st_ld) {
    std::int64_t i = 0;
    for (; i + V::kDotRows <= rows; i += V::kDotRows)
      score_dot_rows<V::kDotRows>(q + i * q_ld, q_ld, k, k_stride, keys, E, scale, st + i, st_ld);
    with_count<V::kDotRows - 1>(rows - i, [&](auto n) {
      score_dot_rows<decltype(n)::value>(q + i * q_ld, q_ld, k, k_stride, keys, E, scale, st + i,
                                         st_ld);
    });
  }

  static void block_max(const T* st, std::int64_t st_ld, std::int64_t keys, std::int64_t rows,
                        T* m) {
    for (std::int64_t i = 0; i < rows; i += N) {
      R acc = V::set1(T(-__builtin_huge_val()));  // a builtin: no shared inline code
      for (std::int64_t j = 0; j < keys; ++j) acc = V::max_nan(acc, V::load(st + j * st_ld + i));
      V::store(m + i, acc);
    }
  }

  static T exp_sum(T* st, std::int64_t st_ld, std::int64_t keys, std::int64_t rows, const T* m,
                   T* l) {
    R smallest = V::set1(T(1));
    for (std::int64_t i = 0; i < rows; i += N) {
      const R mi = V::load(m + i);
      R sum = V::zero();
      // Summed by chunks: beside a weight of 1, a weight under half an ulp
      // of 1 (exp(-16.6) in float32) would be rounded away when added
      // alone, and many such weights are a real share of the sum.
      for (std::int64_t j0 = 0; j0 < keys; j0 += kSumChunk) {
        const std::int64_t j1 = j0 + kSumChunk < keys ? j0 + kSumChunk : keys;
        R chunk = V::zero();
        for (std::int64_t j = j0; j < j1; ++j) {
          const R p = V::exp(V::sub(V::load(st + j * st_ld + i), mi));
          V::store(st + j * st_ld + i, p);
          chunk = V::add(chunk, p);
          smallest = V::min(p, smallest);  // a NaN p is passed over
        }
        sum = V::add(sum, chunk);
      }
      V::store(l + i, sum);
    }
    T lanes[N];
    V::store(lanes, smallest);
    T least = lanes[0];
    for (std::int64_t i = 1; i < N; ++i) least = lanes[i] < least ? lanes[i] : least;
    return least;
  }

  static void scale_rows(T* acc, std::int64_t acc_ld, std::int64_t rows, std::int64_t Ev,
                         const T* a) {
    for (std::int64_t i = 0; i < rows; ++i) {
      if (a[i] == T(1)) continue;
      T* row = acc + i * acc_ld;
      // a[i] == 0: the row's earlier weights all underflowed, and what they
      // brought goes, an inf value included (0 * inf would be NaN).
      const bool clear = a[i] == T(0);
      const R ai = V::set1(a[i]);
      const auto scaled = [&](R x) { return clear ? V::zero() : V::mul(x, ai); };
      std::int64_t e = 0;
      for (; e + N <= Ev; e += N) V::store(row + e, scaled(V::load(row + e)));
      if (e < Ev) V::store_partial(row + e, scaled(V::load_partial(row + e, Ev - e)), Ev - e);
    }
  }

  // acc[Rows][ColVecs * N] += pt^T · v over every key. Full: all ColVecs * N
  // columns exist; otherwise only the first `cols`, through partial loads.
  template <int Rows, int ColVecs, bool Full>
  static void pv_micro(const T* pt, std::int64_t pt_ld, std::int64_t keys, const T* v,
                       std::int64_t v_stride, T* acc, std::int64_t acc_ld, std::int64_t cols) {
    std::int64_t lanes[ColVecs];
    for (int c = 0; c < ColVecs; ++c) {
      const std::int64_t left = cols - c * N;
      lanes[c] = left < 0 ? 0 : (left > N ? N : left);
    }
    const auto load = [&](const T* p, int c) {
      return Full ? V::load(p + c * N) : V::load_partial(p + c * N, lanes[c]);
    };
    R o[Rows][ColVecs];
    for (int r = 0; r < Rows; ++r)
      for (int c = 0; c < ColVecs; ++c) o[r][c] = load(acc + r * acc_ld, c);
    for (std::int64_t j = 0; j < keys; ++j) {
      R vj[ColVecs];
      for (int c = 0; c < ColVecs; ++c) vj[c] = load(v + j * v_stride, c);
      for (int r = 0; r < Rows; ++r) {
        const R p = V::set1(pt[j * pt_ld + r]);
        for (int c = 0; c < ColVecs; ++c) o[r][c] = V::fmadd(p, vj[c], o[r][c]);
      }
    }
    for (int r = 0; r < Rows; ++r)
      for (int c = 0; c < ColVecs; ++c) {
        if (Full)
          V::store(acc + r * acc_ld + c * N, o[r][c]);
        else
          V::store_partial(acc + r * acc_ld + c * N, o[r][c], lanes[c]);
      }
  }

  template <bool Full>
  static void pv_columns(const T* pt, std::int64_t pt_ld, std::int64_t rows, std::int64_t keys,
                         const T* v, std::int64_t v_stride, T* acc, std::int64_t acc_ld,
                         std::int64_t cols) {
    std::int64_t i = 0;
    for (; i + V::kPvRows <= rows; i += V::kPvRows)
      pv_micro<V::kPvRows, V::kPvColVecs, Full>(pt + i, pt_ld, keys, v, v_stride,
                                                acc + i * acc_ld, acc_ld, cols);
    with_count<V::kPvRows - 1>(rows - i, [&](auto n) {
      pv_micro<decltype(n)::value, V::kPvColVecs, Full>(pt + i, pt_ld, keys, v, v_stride,
                                                         acc + i * acc_ld, acc_ld, cols);
    });
  }

  // Column panels outside, rows inside: a panel of v (keys x ColVecs * N)
  // stays in L1 while every row block reads it.
  static void pv_panels(const T* pt, std::int64_t pt_ld, std::int64_t rows, std::int64_t keys,
                        const T* v, std::int64_t v_stride, std::int64_t Ev, T* acc,
                        std::int64_t acc_ld) {
    constexpr std::int64_t panel = V::kPvColVecs * N;
    std::int64_t c = 0;
    for (; c + panel <= Ev; c += panel)
      pv_columns<true>(pt, pt_ld, rows, keys, v + c, v_stride, acc + c, acc_ld, panel);
    if (c < Ev) pv_columns<false>(pt, pt_ld, rows, keys, v + c, v_stride, acc + c, acc_ld, Ev - c);
  }

  // With few rows (decoding) the values come from memory, not cache, and
  // are read once: in chunks of a few keys, so that each chunk's rows are
  // read whole and in order, which the hardware prefetchers follow, instead
  // of one column panel of every row at a time.
  static void pv_accumulate(const T* pt, std::int64_t pt_ld, std::int64_t rows, std::int64_t keys,
                            const T* v, std::int64_t v_stride, std::int64_t Ev, T* acc,
                            std::int64_t acc_ld) {
    if (rows > V::kPvRows) return pv_panels(pt, pt_ld, rows, keys, v, v_stride, Ev, acc, acc_ld);
    constexpr std::int64_t chunk = 4;  // 12 GB/s of values against 5.7 for the whole block
    for (std::int64_t j = 0; j < keys; j += chunk) {
      prefetch_rows(v + (j + kValuesAhead) * v_stride, v_stride, chunk, Ev);
      pv_panels(pt + j * pt_ld, pt_ld, rows, keys - j < chunk ? keys - j : chunk, v + j * v_stride,
                v_stride, Ev, acc, acc_ld);
    }
  }

  // N elements of a stored row widened, of which the first `lanes` exist:
  // a partial vector goes through a zero-filled copy, so nothing past the
  // row is read.
  template <class Stored, class Widen>
  static R widened(const Stored* p, std::int64_t lanes, const Widen& widen) {
    if (lanes == N) return widen(p);
    Stored part[N] = {};
    for (std::int64_t i = 0; i < lanes; ++i) part[i] = p[i];
    return widen(part);
  }

  // The scales of elements [c, c + lanes) of an int8 row. One broadcast
  // when a group spans whole vectors (group 32, or group E with N | E).
  static R scales_at(const float* scale, std::int64_t c, std::int64_t lanes, std::int64_t group) {
    if (group % N == 0) return V::set1(scale[c / group]);
    T part[N] = {};
    for (std::int64_t i = 0; i < lanes; ++i) part[i] = scale[(c + i) / group];
    return V::load(part);
  }

  // dst row r = convert(row r of src, column c, lanes) for every vector of
  // columns, prefetching kWidenAhead rows ahead (bytes per element: Size).
  template <int Size, class Convert>
  static void widen_rows(const StoredRows& src, std::int64_t rows, std::int64_t cols, T* dst,
                         const Convert& convert) {
    const auto* base = static_cast<const char*>(src.data);
    const std::int64_t row_bytes = src.stride * Size;
    for (std::int64_t r = 0; r < rows; ++r) {
      const char* ahead = base + (r + kWidenAhead) * row_bytes;
      for (std::int64_t b = 0; b < cols * Size; b += 64) __builtin_prefetch(ahead + b, 0, 3);
      if (src.scale) __builtin_prefetch(src.scale + (r + kWidenAhead) * src.scale_stride, 0, 3);
      T* out = dst + r * cols;
      std::int64_t c = 0;
      for (; c + N <= cols; c += N) V::store(out + c, convert(r, c, N));
      if (c < cols) V::store_partial(out + c, convert(r, c, cols - c), cols - c);
    }
  }

  static void widen(const StoredRows& src, std::int64_t rows, std::int64_t cols, T* dst) {
    if (src.dtype == DType::int8) {
      const auto* data = static_cast<const std::int8_t*>(src.data);
      return widen_rows<1>(src, rows, cols, dst, [&](std::int64_t r, std::int64_t c, std::int64_t n) {
        const R x = widened(data + r * src.stride + c, n, [](const std::int8_t* p) { return V::from_i8(p); });
        return V::mul(x, scales_at(src.scale + r * src.scale_stride, c, n, src.group));
      });
    }
    const auto* data = static_cast<const std::uint16_t*>(src.data);
    if (src.dtype == DType::bfloat16)
      return widen_rows<2>(src, rows, cols, dst, [&](std::int64_t r, std::int64_t c, std::int64_t n) {
        return widened(data + r * src.stride + c, n, [](const std::uint16_t* p) { return V::from_bf16(p); });
      });
    widen_rows<2>(src, rows, cols, dst, [&](std::int64_t r, std::int64_t c, std::int64_t n) {
      return widened(data + r * src.stride + c, n, [](const std::uint16_t* p) { return V::from_f16(p); });
    });
  }

  static constexpr BlockKernels<T> table(const char* name) {
    using Widen = void (*)(const StoredRows&, std::int64_t, std::int64_t, T*);
    Widen widen_step = nullptr;
    if constexpr (std::is_same_v<T, float>) widen_step = &widen;
    return {name,        N,           &score_tile, N / 2,          &score_rows, &block_max,
            &exp_sum,    &scale_rows, &pv_accumulate, widen_step};
  }
};

// exp(x) for float x <= 0: x = n ln2 + r with |r| <= ln2 / 2, exp(x) =
// 2^n (1 + r + r^2 P(r)), P of degree 5 with the minimax coefficients
// published with Cephes' expf. n comes from adding 1.5 * 2^23 + 127, which
// rounds x / ln2 to a whole number and leaves n + 127, the biased exponent
// of 2^n, in the low bits. x is clamped at -88, where n + 127 = 0 and 2^n
// becomes exactly 0: weights under about 1e-38 (scores 87.3 below the row's
// largest) are 0, and a masked score (-inf) gives exactly 0. NaN becomes 0
// too; fold_block makes such rows NaN. The maximum relative error, measured
// by tests/test_isa.py, is stated in README.md.
template <class V>
typename V::R exp_negative(typename V::R x) {
  using R = typename V::R;
  using T = typename V::T;
  x = V::max(x, V::set1(T(-88.0)));
  const R shifter = V::set1(T(12583039.0));  // 1.5 * 2^23 + 127
  const R t = V::fmadd(x, V::set1(T(1.44269504088896341)), shifter);
  const R n = V::sub(t, shifter);
  R r = V::fmadd(n, V::set1(T(-0.693359375)), x);  // ln2 split so n * hi is exact
  r = V::fmadd(n, V::set1(T(2.12194440e-4)), r);
  R p = V::set1(T(1.9875691500e-4));
  p = V::fmadd(p, r, V::set1(T(1.3981999507e-3)));
  p = V::fmadd(p, r, V::set1(T(8.3334519073e-3)));
  p = V::fmadd(p, r, V::set1(T(4.1665795894e-2)));
  p = V::fmadd(p, r, V::set1(T(1.6666665459e-1)));
  p = V::fmadd(p, r, V::set1(T(5.0000001201e-1)));
  p = V::fmadd(V::mul(p, r), r, V::add(r, V::set1(T(1))));
  return V::mul(p, V::low_bits_as_exponent(t));
}

}  // namespace dotattn::kernels
