// The block kernels written once over a vector type V, and compiled once per
// ISA: kernels/<isa>.cpp includes its vector type (vec_<isa>.hpp) and this
// file, under that ISA's flags. Every function here is a member of
// BlockKernelsFor<V> or a template on V (with_count is called only with
// lambdas made inside those), and V differs per ISA, so no instantiation is
// shared between files built with different flags.
//
// V provides (R is its register type, N its lanes of T):
//   zero, set1, load, store (unaligned), load_partial / store_partial (the
//   first n lanes, touching no memory beyond them), sums (of N registers:
//   lane i the sum of register i's lanes), add, sub, mul,
//   fmadd(a, b, c) = a * b + c, min and max (b if either is NaN), max_nan
//   (NaN if either is NaN), div, exp (of K registers in place, for x <= 0),
//   tanh, low_bits_as_exponent (the float with the
//   low 9 bits of t's bits as its exponent field), kExpAtOnce (the keys'
//   vectors exp_sum exponentiates at once), kPeakChains (fma_peak's
//   independent FMA chains), and the
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


// exp_sum adds a row's weights in chunks of this many keys, then the chunk
// sums: the rounding error grows as (kSumChunk + keys / kSumChunk) ulps
// rather than keys ulps.
constexpr std::int64_t kSumChunk = 16;

template <class V>
struct BlockKernelsFor {
  using T = typename V::T;
  using R = typename V::R;
  static constexpr std::int64_t N = V::N;

  // This set's parameters: V's defaults until set_tuning() changes them.
  static inline Tuning tuning = V::kTuning;

  // Scores of Keys keys against RowVecs * N rows.
  template <int Keys, int RowVecs>
  static void score_micro(const T* qt, std::int64_t qt_ld, const T* k, std::int64_t k_stride,
                          std::int64_t E, T scale, T* st, std::int64_t st_ld, T* row_max) {
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
      for (int r = 0; r < RowVecs; ++r) {
        acc[j][r] = V::mul(acc[j][r], s);
        V::store(st + j * st_ld + r * N, acc[j][r]);
      }
    if (!row_max) return;
    for (int r = 0; r < RowVecs; ++r) {
      R m = V::load(row_max + r * N);
      for (int j = 0; j < Keys; ++j) m = V::max_nan(m, acc[j][r]);
      V::store(row_max + r * N, m);
    }
  }

  // A group of Keys keys against every row: its Keys x E keys stay in L1
  // while the row vectors go by.
  template <int Keys, int RowVecs>
  static void score_key_group(const T* qt, std::int64_t qt_ld, std::int64_t rows, const T* k,
                              std::int64_t k_stride, std::int64_t E, T scale, T* st,
                              std::int64_t st_ld, T* row_max) {
    constexpr std::int64_t step = RowVecs * N;
    const auto at = [&](std::int64_t i) { return row_max ? row_max + i : nullptr; };
    std::int64_t i = 0;
    for (; i + step <= rows; i += step)
      score_micro<Keys, RowVecs>(qt + i, qt_ld, k, k_stride, E, scale, st + i, st_ld, at(i));
    with_count<RowVecs - 1>((rows - i) / N, [&](auto vecs) {
      score_micro<Keys, decltype(vecs)::value>(qt + i, qt_ld, k, k_stride, E, scale, st + i, st_ld,
                                               at(i));
    });
  }

  template <int Keys, int RowVecs>
  static void score_keys(const T* qt, std::int64_t qt_ld, std::int64_t rows, const T* k,
                         std::int64_t k_stride, std::int64_t keys, std::int64_t E, T scale, T* st,
                         std::int64_t st_ld, T* row_max) {
    std::int64_t j = 0;
    for (; j + Keys <= keys; j += Keys)
      score_key_group<Keys, RowVecs>(qt, qt_ld, rows, k + j * k_stride, k_stride, E, scale,
                                     st + j * st_ld, st_ld, row_max);
    with_count<Keys - 1>(keys - j, [&](auto n) {
      score_key_group<decltype(n)::value, RowVecs>(qt, qt_ld, rows, k + j * k_stride, k_stride, E,
                                                   scale, st + j * st_ld, st_ld, row_max);
    });
  }

  // With a single row vector (a few query rows, more than score_rows takes),
  // the tile takes more keys instead, so that as many accumulators as usual
  // hide the FMA latency.
  static void score_tile(const T* qt, std::int64_t qt_ld, std::int64_t rows, const T* k,
                         std::int64_t k_stride, std::int64_t keys, std::int64_t E, T scale, T* st,
                         std::int64_t st_ld, T* row_max) {
    if (rows <= N)
      score_keys<V::kScoreKeys * V::kScoreRowVecs, 1>(qt, qt_ld, rows, k, k_stride, keys, E, scale,
                                                       st, st_ld, row_max);
    else
      score_keys<V::kScoreKeys, V::kScoreRowVecs>(qt, qt_ld, rows, k, k_stride, keys, E, scale, st,
                                                  st_ld, row_max);
  }

  // Where the few-rows kernels read key or value rows from: Plain, in
  // place as T; Stored<D>, as stored (float16, bfloat16, int8), widened in
  // registers as they are loaded, so that the rows stream from memory with
  // the same prefetching as T's and no scratch pass stands between memory
  // and the arithmetic. Either is a run of evenly spaced rows (run(): the
  // rows from row j of head h of a StoredRows, to the end of j's page), so
  // that the row map is read once per run, not per row: found per row, the
  // address arithmetic of a 16-bit row cost as much as its FMAs. Both give
  // load(j, c) (N elements of row j from column c) and load_partial(j, c,
  // lanes); a Stored int8 source with kRowScale or kPanelScale also gives
  // its rows unscaled and the scale that the kernel applies once instead.
  struct Plain {
    const T* data;
    std::int64_t stride;
    static constexpr std::int64_t kSize = sizeof(T);
    static constexpr bool kScaled = false, kRowScale = false, kPanelScale = false;

    static Plain run(const StoredRows& s, std::int64_t h, std::int64_t j) {
      return {static_cast<const T*>(s.data) + h * s.head_stride + s.rows.offset(s.first + j),
              s.rows.stride};
    }
    R load(std::int64_t j, std::int64_t c) const { return V::load(data + j * stride + c); }
    R load_partial(std::int64_t j, std::int64_t c, std::int64_t lanes) const {
      return V::load_partial(data + j * stride + c, lanes);
    }
  };

  // How an int8 row's scales are found: one per row (group E), one per
  // power-of-two group of whole P·V panels (group 32), or lane by lane.
  // Fixed per source, so that the loaded vectors stay in registers. With
  // one scale per row or per panel, the kernels fold it into a weight (P·V)
  // or the row's score instead of multiplying every element.
  enum class Scales { none, row, shift, lanes };

  template <DType D, Scales How = Scales::none>
  struct Stored {
    using Elem = std::conditional_t<D == DType::int8, std::int8_t, std::uint16_t>;
    static constexpr std::int64_t kSize = sizeof(Elem);
    static constexpr bool kScaled = How != Scales::none;
    static constexpr bool kRowScale = How == Scales::row;
    static constexpr bool kPanelScale = How == Scales::row || How == Scales::shift;
    const Elem* data;
    std::int64_t stride;
    const float* scale;
    std::int64_t scale_stride;
    std::int64_t group;
    int group_shift;

    static Stored run(const StoredRows& s, std::int64_t h, std::int64_t j) {
      Stored r;
      r.data = static_cast<const Elem*>(s.data) + h * s.head_stride + s.rows.offset(s.first + j);
      r.stride = s.rows.stride;
      r.scale = kScaled ? s.scale + h * s.scale_head_stride + s.scale_rows.offset(s.first + j) : nullptr;
      r.scale_stride = s.scale_rows.stride;
      r.group = s.group;
      r.group_shift = s.group > 0 ? __builtin_ctzll(static_cast<unsigned long long>(s.group)) : 0;
      return r;
    }
    static R widen(const Elem* p) {
      if constexpr (D == DType::float16) return V::from_f16(p);
      else if constexpr (D == DType::bfloat16) return V::from_bf16(p);
      else return V::from_i8(p);
    }
    // The scales of row j's columns [c, c + lanes).
    R scales(std::int64_t j, std::int64_t c, std::int64_t lanes) const {
      const float* row_scale = scale + j * scale_stride;
      if constexpr (How == Scales::row) return V::set1(row_scale[0]);
      else if constexpr (How == Scales::shift) return V::set1(row_scale[c >> group_shift]);
      else {
        T part[N] = {};
        for (std::int64_t i = 0; i < lanes; ++i) part[i] = row_scale[(c + i) / group];
        return V::load(part);
      }
    }
    R dequantized(R x, std::int64_t j, std::int64_t c, std::int64_t lanes) const {
      if constexpr (How == Scales::none) return x;
      else return V::mul(x, scales(j, c, lanes));
    }
    R load_unscaled(std::int64_t j, std::int64_t c) const { return widen(data + j * stride + c); }
    // A partial vector goes through a zero-filled copy: nothing past the
    // row is read.
    R load_partial_unscaled(std::int64_t j, std::int64_t c, std::int64_t lanes) const {
      Elem part[N] = {};
      for (std::int64_t i = 0; i < lanes; ++i) part[i] = data[j * stride + c + i];
      return widen(part);
    }
    R load(std::int64_t j, std::int64_t c) const { return dequantized(load_unscaled(j, c), j, c, N); }
    R load_partial(std::int64_t j, std::int64_t c, std::int64_t lanes) const {
      return dequantized(load_partial_unscaled(j, c, lanes), j, c, lanes);
    }
    // The one scale of row j's columns from c (kPanelScale: a P·V panel
    // lies within one group).
    T panel_scale(std::int64_t j, std::int64_t c) const {
      return scale[j * scale_stride + (How == Scales::row ? 0 : c >> group_shift)];
    }
  };

  template <class Src>
  struct As {
    using type = Src;
  };

  // Calls f(As<Src>{}) with the source type of src's format and scales.
  template <class F>
  static void with_source(const StoredRows& src, const F& f) {
    if (src.dtype == dtype_of<T>::value) return f(As<Plain>{});
    if constexpr (std::is_same_v<T, float>) {
      switch (src.dtype) {
        case DType::float16: return f(As<Stored<DType::float16>>{});
        case DType::bfloat16: return f(As<Stored<DType::bfloat16>>{});
        default: break;
      }
      const bool power_of_two = (src.group & (src.group - 1)) == 0;
      if (src.group >= src.cols) return f(As<Stored<DType::int8, Scales::row>>{});
      if (src.group % (V::kPvColVecs * N) == 0 && power_of_two)
        return f(As<Stored<DType::int8, Scales::shift>>{});
      f(As<Stored<DType::int8, Scales::lanes>>{});
    }
  }

  // How many rows of `cols` elements of a source make `bytes` bytes.
  template <class Src>
  static std::int64_t rows_in(std::int64_t bytes, std::int64_t cols) {
    const std::int64_t row = cols > 0 ? cols * Src::kSize : 1;
    return (bytes + row - 1) / row;
  }

  // The end of the run of rows from j (before `end`) that lie evenly
  // spaced: the rest of j's page, or all of them.
  static std::int64_t run_end(const StoredRows& s, std::int64_t j, std::int64_t end) {
    return s.rows.run_end(s.first + j, s.first + end) - s.first;
  }

  // Asks for `count` rows to be brought into cache, their scales too, from
  // the row `distance` rows after row j of head h in the order the kernels
  // read them (rows [begin, end) of each head in turn, then the next run),
  // as far as s has rows: through the row map, the rows ahead run on across
  // the pages of a paged cache. Inlined always: GCC 12 takes a function
  // that only prefetches for one without effects and drops its calls.
  template <class Src>
  [[gnu::always_inline]] static void prefetch_ahead(const StoredRows& s, std::int64_t h, std::int64_t j,
                             std::int64_t begin, std::int64_t end, std::int64_t distance,
                             std::int64_t count) {
    std::int64_t r = j + distance;
    for (; r >= end && h + 1 < s.heads; ++h) r -= end - begin;
    if (r >= end) h = 0;  // past the run's last head: the next run, from its first
    const std::int64_t last = r + count < s.count ? r + count : s.count;
    const char* head = static_cast<const char*>(s.data) + h * s.head_stride * Src::kSize;
    for (; r < last; ++r) {
      const char* row = head + s.rows.offset(s.first + r) * Src::kSize;
      for (std::int64_t b = 0; b < s.cols * Src::kSize; b += 64) __builtin_prefetch(row + b, 0, 3);
      if constexpr (Src::kScaled)
        __builtin_prefetch(s.scale + h * s.scale_head_stride + s.scale_rows.offset(s.first + r), 0, 3);
    }
  }

  // Scores of Keys keys (from key j0 of k) against Rows rows, as dot
  // products along E.
  template <int Keys, int Rows, class Src>
  static void score_dot_micro(const T* q, std::int64_t q_ld, const Src& k, std::int64_t j0,
                              std::int64_t E, T scale, T* st, std::int64_t st_ld) {
    R acc[Rows][Keys];
    for (int r = 0; r < Rows; ++r)
      for (int j = 0; j < Keys; ++j) acc[r][j] = V::zero();
    const auto step = [&](std::int64_t e, std::int64_t lanes) {
      R kj[Keys];
      for (int j = 0; j < Keys; ++j) {
        if constexpr (Src::kRowScale)  // applied to the sum below
          kj[j] = lanes == N ? k.load_unscaled(j0 + j, e) : k.load_partial_unscaled(j0 + j, e, lanes);
        else
          kj[j] = lanes == N ? k.load(j0 + j, e) : k.load_partial(j0 + j, e, lanes);
      }
      for (int r = 0; r < Rows; ++r) {
        const R qr = lanes == N ? V::load(q + r * q_ld + e) : V::load_partial(q + r * q_ld + e, lanes);
        for (int j = 0; j < Keys; ++j) acc[r][j] = V::fmadd(qr, kj[j], acc[r][j]);
      }
    };
    std::int64_t e = 0;
    for (; e + N <= E; e += N) step(e, N);
    if (e < E) step(e, E - e);
    // The sums of all Rows x Keys accumulators at once, N to a vector
    // (V::sums), key by key: sum[j * Rows + r] is acc[r][j]'s.
    constexpr int kCount = Rows * Keys, kGroups = (kCount + N - 1) / N;
    T sum[kGroups * N];
    for (int g = 0; g < kGroups; ++g) {
      R x[N];
      for (int i = 0; i < N; ++i) {
        const int at = g * N + i;
        x[i] = at < kCount ? acc[at % Rows][at / Rows] : V::zero();
      }
      V::store(sum + g * N, V::sums(x));
    }
    for (int j = 0; j < Keys; ++j) {
      T key_scale = scale;
      if constexpr (Src::kRowScale) key_scale = scale * k.panel_scale(j0 + j, 0);
      for (int r = 0; r < Rows; ++r) st[j * st_ld + r] = key_scale * sum[j * Rows + r];
    }
  }

  // Scores of keys [begin, end) of head h of k (one run, read from `run`)
  // against Rows rows; the keys `ahead` rows on are prefetched, each once,
  // when `prefetch` (the first rows of a head).
  template <int Rows, class Src>
  static void score_dot_rows(const T* q, std::int64_t q_ld, const StoredRows& k, const Src& run,
                             std::int64_t h, std::int64_t begin, std::int64_t end,
                             std::int64_t ahead, bool prefetch, std::int64_t E, T scale, T* st,
                             std::int64_t st_ld) {
    const std::int64_t keys = end - begin;
    std::int64_t j = 0;
    for (; j + V::kDotKeys <= keys; j += V::kDotKeys) {
      if (prefetch) prefetch_ahead<Src>(k, h, begin + j, begin, end, ahead, V::kDotKeys);
      score_dot_micro<V::kDotKeys, Rows>(q, q_ld, run, j, E, scale, st + j * st_ld, st_ld);
    }
    if (j == keys) return;
    if (prefetch) prefetch_ahead<Src>(k, h, begin + j, begin, end, ahead, keys - j);
    with_count<V::kDotKeys - 1>(keys - j, [&](auto n) {
      score_dot_micro<decltype(n)::value, Rows>(q, q_ld, run, j, E, scale, st + j * st_ld, st_ld);
    });
  }

  static void score_rows(const T* q, std::int64_t q_ld, std::int64_t rows, const StoredRows& k,
                         std::int64_t keys, std::int64_t E, T scale, T* st, std::int64_t st_ld) {
    with_source(k, [&](auto as) {
      using Src = typename decltype(as)::type;
      const std::int64_t ahead = rows_in<Src>(tuning.key_bytes_ahead, E);
      for (std::int64_t j = 0, next; j < keys; j = next) {
        next = run_end(k, j, keys);
        for (std::int64_t h = 0; h < k.heads; ++h) {
          const Src run = Src::run(k, h, j);
          const T* qh = q + h * rows * q_ld;
          T* sh = st + j * st_ld + h * rows;
          std::int64_t i = 0;
          for (; i + V::kDotRows <= rows; i += V::kDotRows)
            score_dot_rows<V::kDotRows>(qh + i * q_ld, q_ld, k, run, h, j, next, ahead, i == 0, E,
                                        scale, sh + i, st_ld);
          with_count<V::kDotRows - 1>(rows - i, [&](auto n) {
            score_dot_rows<decltype(n)::value>(qh + i * q_ld, q_ld, k, run, h, j, next, ahead,
                                               i == 0, E, scale, sh + i, st_ld);
          });
        }
      }
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
        const auto weights = [&](std::int64_t j, auto count) {
          constexpr int K = decltype(count)::value;
          R p[K];
          for (int k = 0; k < K; ++k) p[k] = V::sub(V::load(st + (j + k) * st_ld + i), mi);
          V::exp(p);
          for (int k = 0; k < K; ++k) {
            V::store(st + (j + k) * st_ld + i, p[k]);
            chunk = V::add(chunk, p[k]);
            smallest = V::min(p[k], smallest);  // a NaN p is passed over
          }
        };
        std::int64_t j = j0;
        for (; j + V::kExpAtOnce <= j1; j += V::kExpAtOnce)
          weights(j, std::integral_constant<int, V::kExpAtOnce>{});
        for (; j < j1; ++j) weights(j, std::integral_constant<int, 1>{});
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

  // acc[Rows][ColVecs * N] += pt^T · v over keys [j0, j0 + keys), columns
  // from c0. Full: all ColVecs * N columns exist; otherwise only the first
  // `cols`, through partial loads. The keys are summed apart and then added
  // to acc, so the rounding error grows as (keys + S / keys) ulps rather than
  // S ulps: summed straight into acc, a thousand near-equal weighted values
  // were 1.1e-5 off, the whole float32 tolerance.
  template <int Rows, int ColVecs, bool Full, class Src>
  static void pv_micro(const T* pt, std::int64_t pt_ld, std::int64_t j0, std::int64_t keys,
                       const Src& v, std::int64_t c0, T* acc, std::int64_t acc_ld,
                       std::int64_t cols) {
    std::int64_t lanes[ColVecs];
    for (int c = 0; c < ColVecs; ++c) {
      const std::int64_t left = cols - c * N;
      lanes[c] = left < 0 ? 0 : (left > N ? N : left);
    }
    const auto load_acc = [&](const T* p, int c) {
      return Full ? V::load(p + c * N) : V::load_partial(p + c * N, lanes[c]);
    };
    R o[Rows][ColVecs];
    for (int r = 0; r < Rows; ++r)
      for (int c = 0; c < ColVecs; ++c) o[r][c] = V::zero();
    for (std::int64_t j = 0; j < keys; ++j) {
      R vj[ColVecs];
      if constexpr (Src::kPanelScale) {  // the panel's one scale goes into the weights
        for (int c = 0; c < ColVecs; ++c)
          vj[c] = Full ? v.load_unscaled(j0 + j, c0 + c * N)
                       : v.load_partial_unscaled(j0 + j, c0 + c * N, lanes[c]);
      } else {
        for (int c = 0; c < ColVecs; ++c)
          vj[c] = Full ? v.load(j0 + j, c0 + c * N) : v.load_partial(j0 + j, c0 + c * N, lanes[c]);
      }
      T panel_scale = T(1);
      if constexpr (Src::kPanelScale) panel_scale = v.panel_scale(j0 + j, c0);
      for (int r = 0; r < Rows; ++r) {
        const R p = V::set1(Src::kPanelScale ? pt[j * pt_ld + r] * panel_scale : pt[j * pt_ld + r]);
        for (int c = 0; c < ColVecs; ++c) o[r][c] = V::fmadd(p, vj[c], o[r][c]);
      }
    }
    for (int r = 0; r < Rows; ++r)
      for (int c = 0; c < ColVecs; ++c) {
        const R sum = V::add(load_acc(acc + r * acc_ld, c), o[r][c]);
        if (Full)
          V::store(acc + r * acc_ld + c * N, sum);
        else
          V::store_partial(acc + r * acc_ld + c * N, sum, lanes[c]);
      }
  }

  template <bool Full, class Src>
  static void pv_columns(const T* pt, std::int64_t pt_ld, std::int64_t rows, std::int64_t j0,
                         std::int64_t keys, const Src& v, std::int64_t c0, T* acc,
                         std::int64_t acc_ld, std::int64_t cols) {
    std::int64_t i = 0;
    for (; i + V::kPvRows <= rows; i += V::kPvRows)
      pv_micro<V::kPvRows, V::kPvColVecs, Full>(pt + i, pt_ld, j0, keys, v, c0, acc + i * acc_ld,
                                                acc_ld, cols);
    with_count<V::kPvRows - 1>(rows - i, [&](auto n) {
      pv_micro<decltype(n)::value, V::kPvColVecs, Full>(pt + i, pt_ld, j0, keys, v, c0,
                                                         acc + i * acc_ld, acc_ld, cols);
    });
  }

  // Column panels outside, rows inside: a panel of v (keys x ColVecs * N)
  // stays in L1 while every row block reads it.
  template <class Src>
  static void pv_panels(const T* pt, std::int64_t pt_ld, std::int64_t rows, std::int64_t j0,
                        std::int64_t keys, const Src& v, std::int64_t Ev, T* acc,
                        std::int64_t acc_ld) {
    constexpr std::int64_t panel = V::kPvColVecs * N;
    std::int64_t c = 0;
    for (; c + panel <= Ev; c += panel)
      pv_columns<true>(pt, pt_ld, rows, j0, keys, v, c, acc + c, acc_ld, panel);
    if (c < Ev) pv_columns<false>(pt, pt_ld, rows, j0, keys, v, c, acc + c, acc_ld, Ev - c);
  }

  // With few rows (decoding) the values come from memory, not cache, and
  // are read once: in chunks of a few keys, so that each chunk's rows are
  // read whole and in order, which the hardware prefetchers follow, instead
  // of one column panel of every row at a time.
  static void pv_accumulate(const T* pt, std::int64_t pt_ld, std::int64_t rows, std::int64_t keys,
                            const StoredRows& v, std::int64_t Ev, T* acc, std::int64_t acc_ld) {
    with_source(v, [&](auto as) {
      using Src = typename decltype(as)::type;
      const std::int64_t chunk_rows = rows_in<Src>(tuning.value_chunk_bytes, Ev);
      const bool few = rows <= V::kPvRows;
      const std::int64_t chunk = !few ? keys : chunk_rows > 4 ? chunk_rows : 4;
      const std::int64_t ahead = rows_in<Src>(tuning.value_bytes_ahead, Ev);
      for (std::int64_t j = 0, next; j < keys; j = next) {
        next = run_end(v, j, keys);
        for (std::int64_t h = 0; h < v.heads; ++h) {
          const Src run = Src::run(v, h, j);
          const T* ph = pt + j * pt_ld + h * rows;
          T* ah = acc + h * rows * acc_ld;
          for (std::int64_t c = 0; j + c < next; c += chunk) {
            const std::int64_t n = next - j - c < chunk ? next - j - c : chunk;
            if (few) prefetch_ahead<Src>(v, h, j + c, j, next, ahead, n);
            pv_panels(ph + c * pt_ld, pt_ld, rows, c, n, run, Ev, ah, acc_ld);
          }
        }
      }
    });
  }

  // The widen step for the many-rows kernels: each block of rows is
  // widened once into dst and then read by every row of the tile.
  static void widen(const StoredRows& src, std::int64_t rows, std::int64_t cols, T* dst) {
    with_source(src, [&](auto as) {
      using Src = typename decltype(as)::type;
      const std::int64_t ahead = rows_in<Src>(tuning.key_bytes_ahead, cols);
      for (std::int64_t j = 0, next; j < rows; j = next) {
        next = run_end(src, j, rows);
        const Src run = Src::run(src, 0, j);
        for (std::int64_t r = 0; j + r < next; ++r) {
          prefetch_ahead<Src>(src, 0, j + r, j, next, ahead, 1);
          T* out = dst + (j + r) * cols;
          std::int64_t c = 0;
          for (; c + N <= cols; c += N) V::store(out + c, run.load(r, c));
          if (c < cols) V::store_partial(out + c, run.load_partial(r, c, cols - c), cols - c);
        }
      }
    });
  }

  static void soft_cap(T* st, std::int64_t st_ld, std::int64_t keys, std::int64_t rows, T cap) {
    const R c = V::set1(cap), inv = V::set1(T(1) / cap);
    for (std::int64_t j = 0; j < keys; ++j)
      for (std::int64_t i = 0; i < rows; i += N) {
        T* s = st + j * st_ld + i;
        V::store(s, V::mul(c, V::tanh(V::mul(V::load(s), inv))));
      }
  }

  static void add_distance_bias(T* st, std::int64_t st_ld, std::int64_t keys, std::int64_t rows,
                                const T* slope, const T* position, std::int64_t j0) {
    for (std::int64_t i = 0; i < rows; i += N) {
      const R a = V::load(slope + i), pos = V::load(position + i);
      for (std::int64_t j = 0; j < keys; ++j) {
        const R d = V::sub(pos, V::set1(static_cast<T>(j0 + j)));
        T* s = st + j * st_ld + i;
        V::store(s, V::fmadd(a, V::max(d, V::sub(V::zero(), d)), V::load(s)));
      }
    }
  }

  // V::kPeakChains accumulators, each a chain of dependent FMAs: enough
  // chains to cover the FMA latency times the FMA pipes.
  static std::int64_t fma_peak(std::int64_t iterations) {
    constexpr int kChains = V::kPeakChains;
    R acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = V::set1(T(c));
    const R a = V::set1(T(0.999999)), b = V::set1(T(1e-6));
    for (std::int64_t it = 0; it < iterations; ++it)
      for (int c = 0; c < kChains; ++c) acc[c] = V::fmadd(acc[c], a, b);
    R sum = V::zero();
    for (int c = 0; c < kChains; ++c) sum = V::add(sum, acc[c]);
    T lanes[N];
    V::store(lanes, sum);
    volatile T sink = lanes[0];  // the chains must be computed
    (void)sink;
    return 2 * kChains * N;
  }

  static constexpr BlockKernels<T> table(const char* name) {
    BlockKernels<T> t{name,        N,           V::kScoreKeys, &score_tile, N / 2, &score_rows, &block_max,
                      &exp_sum,    &soft_cap,   &add_distance_bias, &scale_rows, &pv_accumulate};
    if constexpr (std::is_same_v<T, float>) t.widen = &widen;
    t.fma_peak = &fma_peak;
    t.tuning = &tuning;
    return t;
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
//
// K registers at once, each step of the K in turn: K independent chains of
// about 15 dependent operations, which the FP pipes can overlap where one
// chain leaves them waiting on its latency. Inlined always, so that the K
// registers stay registers: GCC 12 kept it out of line, passing them
// through memory (34 moves beside 105 arithmetic instructions for K = 8).
template <class V, int K>
[[gnu::always_inline]] inline void exp_negative(typename V::R (&x)[K]) {
  using R = typename V::R;
  using T = typename V::T;
  const R shifter = V::set1(T(12583039.0));  // 1.5 * 2^23 + 127
  R t[K], r[K], p[K];
  for (int k = 0; k < K; ++k) x[k] = V::max(x[k], V::set1(T(-88.0)));
  for (int k = 0; k < K; ++k) t[k] = V::fmadd(x[k], V::set1(T(1.44269504088896341)), shifter);
  for (int k = 0; k < K; ++k) {  // ln2 split so that n * hi is exact
    const R n = V::sub(t[k], shifter);
    r[k] = V::fmadd(n, V::set1(T(-0.693359375)), x[k]);
    r[k] = V::fmadd(n, V::set1(T(2.12194440e-4)), r[k]);
  }
  for (int k = 0; k < K; ++k) p[k] = V::fmadd(V::set1(T(1.9875691500e-4)), r[k], V::set1(T(1.3981999507e-3)));
  for (int k = 0; k < K; ++k) p[k] = V::fmadd(p[k], r[k], V::set1(T(8.3334519073e-3)));
  for (int k = 0; k < K; ++k) p[k] = V::fmadd(p[k], r[k], V::set1(T(4.1665795894e-2)));
  for (int k = 0; k < K; ++k) p[k] = V::fmadd(p[k], r[k], V::set1(T(1.6666665459e-1)));
  for (int k = 0; k < K; ++k) p[k] = V::fmadd(p[k], r[k], V::set1(T(5.0000001201e-1)));
  for (int k = 0; k < K; ++k) p[k] = V::fmadd(V::mul(p[k], r[k]), r[k], V::add(r[k], V::set1(T(1))));
  for (int k = 0; k < K; ++k) x[k] = V::mul(p[k], V::low_bits_as_exponent(t[k]));
}

// tanh(x) for float x: x P(x^2) / Q(x^2) with P and Q of degree 4, a
// rational fit to tanh on [0, 9] (relative error 2.4e-8 in exact
// arithmetic, under 4e-7 evaluated in float32: a few ulps, everywhere),
// which costs a third of tanh through exp. |x| > 9 is clamped (tanh(9)
// rounds to 1 in float32) and the result to [-1, 1], so +-inf give +-1;
// NaN stays NaN (max and min return their second operand for NaN).
template <class V>
typename V::R tanh_rational(typename V::R x) {
  using R = typename V::R;
  using T = typename V::T;
  const R one = V::set1(T(1)), minus_one = V::set1(T(-1));
  const R c = V::min(V::set1(T(9)), V::max(V::set1(T(-9)), x));
  const R y = V::mul(c, c);
  R p = V::set1(T(1.334805802000183e-08));
  p = V::fmadd(p, y, V::set1(T(2.06037763203085e-05)));
  p = V::fmadd(p, y, V::set1(T(0.003495239575523353)));
  p = V::fmadd(p, y, V::set1(T(0.1338072259098902)));
  p = V::fmadd(p, y, V::set1(T(0.9999999765906818)));
  R q = V::set1(T(7.773699961972913e-07));
  q = V::fmadd(q, y, V::set1(T(0.0003285083761806042)));
  q = V::fmadd(q, y, V::set1(T(0.025875626896324423)));
  q = V::fmadd(q, y, V::set1(T(0.4671403761613548)));
  q = V::fmadd(q, y, one);
  const R t = V::div(V::mul(c, p), q);
  return V::min(one, V::max(minus_one, t));
}

}  // namespace dotattn::kernels
