// dotattn: scaled dot-product attention on the CPU.
//
//   out = softmax(query · keyᵀ · scale + mask) · value
//
// The public C++ API. Tensors are passed as non-owning views (pointer, dtype,
// shape, strides in elements); nothing here includes Python.
//
// Shapes: query (..., Hq, L, E), key (..., Hkv, S, E), value (..., Hkv, S, Ev)
// (query float32, float64, float16 or bfloat16; key and value as stored:
// float32, float16, bfloat16 or int8 with scales, each its own, for any
// query but a float64 one, which takes float64)
// with equal leading batch dims; or the single-head 2-D case (L, E), (S, E),
// (S, Ev). Hq must be a multiple of Hkv: query head h reads key/value head
// h / (Hq / Hkv). The result has shape (..., Hq, L, Ev).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "dotattn/version.hpp"

namespace dotattn {

// float16 (IEEE binary16), bfloat16 and int8 are storage formats of key and
// value (the KV cache). A float16 or bfloat16 query computes in float32 (it
// is widened as it is read); its out, or weights, may be float32 or its own
// dtype (rounded once, to nearest even), its LSE is float32, and an
// additive mask may be float32 or its dtype. A float32 or float64 query
// computes, and writes every result, in its own dtype. int32 and int64: the
// index arrays of packed and paged batches.
enum class DType { float32, float64, boolean, float16, bfloat16, int8, int32, int64 };

const char* dtype_name(DType dtype) noexcept;

// 16-bit floats as stored: the bits, for views of a buffer that holds them.
struct float16_t {
  std::uint16_t bits;
};
struct bfloat16_t {
  std::uint16_t bits;
};

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::float32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::float64; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::boolean; };
template <> struct dtype_of<float16_t> { static constexpr DType value = DType::float16; };
template <> struct dtype_of<bfloat16_t> { static constexpr DType value = DType::bfloat16; };
template <> struct dtype_of<std::int8_t> { static constexpr DType value = DType::int8; };
template <> struct dtype_of<std::int32_t> { static constexpr DType value = DType::int32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::int64; };

using Dims = std::vector<std::int64_t>;

// The dequantisation scales of an int8 tensor of shape (..., S, E): float32,
// shape (..., S, E / group), one per group of `group` consecutive elements
// of a row; element e of a row stands for data[e] * scale[e / group].
struct ScaleView {
  const float* data = nullptr;
  Dims shape;
  Dims strides;
};

// A read-only view of an input. Strides are in elements and may be zero
// (broadcast) or negative. query, key and value need unit stride in their
// last dim; a mask may have any strides. An int8 key or value carries its
// scales (quantized_view); no other dtype has them.
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::float32;
  Dims shape;
  Dims strides;
  std::optional<ScaleView> scale;
};

// A writable, C-contiguous output buffer.
struct OutputView {
  void* data = nullptr;
  DType dtype = DType::float32;
  Dims shape;
};

// Strides of a C-contiguous array of this shape, in elements.
Dims contiguous_strides(const Dims& shape);

template <class T>
TensorView view(const T* data, Dims shape, Dims strides = {}) {
  if (strides.empty()) strides = contiguous_strides(shape);
  return TensorView{data, dtype_of<T>::value, std::move(shape), std::move(strides), std::nullopt};
}

template <class T>
OutputView output(T* data, Dims shape) {
  return OutputView{data, dtype_of<T>::value, std::move(shape)};
}

// An int8 key or value with its scales: data (..., S, E), scale
// (..., S, E / group) with group dividing E, both with unit stride in their
// last dim (other strides free: a slice of a preallocated cache). Throws
// argument_error where the shapes do not fit together.
TensorView quantized_view(const std::int8_t* data, Dims shape, Dims strides, const float* scale,
                          Dims scale_shape, Dims scale_strides = {});

// The group of an int8 view: E / scale.shape.back() (E when E is 0).
std::int64_t quantization_group(const TensorView& quantized);

// Where quantize_int8 writes: int8 data of x's shape and its scales, each
// with any strides but unit stride in the last dim.
struct QuantizedOutput {
  std::int8_t* data = nullptr;
  Dims strides;
  float* scale = nullptr;
  Dims scale_shape;  // x's shape with the last dim E / group
  Dims scale_strides;
};

// The QuantizedOutput of C-contiguous buffers: data of `shape`, scale of
// `shape` with its last dim E / group. Throws argument_error unless group
// is positive and divides E.
QuantizedOutput quantized_output(std::int8_t* data, const Dims& shape, float* scale,
                                 std::int64_t group);

// Symmetric int8 quantisation of x (float32, float16 or bfloat16, shape
// (..., E), unit stride in the last dim) by groups of E / scale_shape.back()
// consecutive elements: scale = max|x| / 127 over the group (in float32; 0
// for a zero group), data = x / scale rounded half to even, within
// [-127, 127]. Throws argument_error for a non-finite x, a group that does
// not divide E, or outputs that do not fit, before anything is written.
void quantize_int8(const TensorView& x, const QuantizedOutput& out);

// Which keys a query row may see besides the mask.
//   upper_left:  query i sees keys j <= i            (PyTorch's is_causal)
//   lower_right: query i sees keys j <= i + S - L    (the KV-cache convention)
enum class Causal { none, upper_left, lower_right };

// A sliding window: query i sees key j only for i' - left <= j <= i' + right,
// where i' = i under Causal::upper_left and i + S - L otherwise (the
// bottom-right alignment of lower_right, also without causal). -1 leaves a
// side unbounded.
struct Window {
  std::int64_t left = -1;
  std::int64_t right = -1;
};

struct Options {
  // Boolean (true = may attend) or additive, of the dtype computed in (or a
  // 16-bit query's); broadcastable to (..., Hq, L, S), read through its
  // strides.
  std::optional<TensorView> mask;
  Causal causal = Causal::none;
  // Default 1/sqrt(E); any finite value.
  std::optional<double> scale;
  // Keys outside the window are hidden, and never read: the cost grows with
  // the window, not with S.
  std::optional<Window> window;
  // Logit soft-capping: each scaled score s becomes softcap * tanh(s /
  // softcap), before the mask and the ALiBi bias; softcap > 0.
  std::optional<double> softcap;
  // ALiBi: (Hq,) float32 or float64; adds -alibi_slopes[h] * |i' - j| to the
  // score of query head h, row i, key j (i' as for the window).
  std::optional<TensorView> alibi_slopes;
  // Attention sinks: (Hq,) float32 or float64, finite; one extra logit per
  // head that joins the softmax denominator and contributes no value. The
  // LSE includes it; a row that sees no key gets zeros and an LSE of sinks[h].
  std::optional<TensorView> sinks;
  // attention() only: log-sum-exp of the scaled, masked scores, shape
  // (..., Hq, L), in the dtype computed in (float32 for a 16-bit query);
  // -inf for a row that sees no key.
  std::optional<OutputView> lse;
};

// Bad arguments. Both derive from std::invalid_argument; the Python module
// raises ValueError for argument_error and TypeError for dtype_error, with
// the same message.
class argument_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class dtype_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// The result shape of attention(query, key, value, options); checks the
// inputs and options (not the outputs) and throws as attention() would.
Dims attention_shape(const TensorView& query, const TensorView& key, const TensorView& value,
                     const Options& options = {});

// Writes the attention result into out. Every argument is checked before
// anything is written; on an exception out and lse are left untouched.
// A query row that sees no key gets zeros (and an LSE of -inf).
void attention(const TensorView& query, const TensorView& key, const TensorView& value,
               const OutputView& out, const Options& options = {});

// The shape (..., Hq, L, S) of attention_weights(query, key, options).
Dims attention_weights_shape(const TensorView& query, const TensorView& key,
                             const Options& options = {});

// Writes the softmax probabilities softmax(query · keyᵀ · scale + mask) into
// weights; each row sums to 1, a row that sees no key is all zeros.
void attention_weights(const TensorView& query, const TensorView& key, const OutputView& weights,
                       const Options& options = {});

// Packed variable-length batches (flash-attn's varlen layout): B sequences
// of different lengths, token-major. Sequence b's queries are rows
// [cu_seqlens_q[b], cu_seqlens_q[b + 1]) of query (total_q, Hq, E), its
// keys and values rows [cu_seqlens_k[b], cu_seqlens_k[b + 1]) of key
// (total_k, Hkv, E) and value (total_k, Hkv, Ev), in any format attention()
// reads (an int8 one with scales (total_k, Hkv, groups)). cu_seqlens_q and
// cu_seqlens_k: int32 or int64 (B + 1,), rising from 0 to total_q and
// total_k. Each sequence is attention() of its own L and S, with every
// option but mask (the causal rule and window aligned by its own L and S;
// flash-attn's causal=True is Causal::lower_right). out (total_q, Hq, Ev),
// C-contiguous; options.lse (Hq, total_q), flash-attn's layout.
void attention_varlen(const TensorView& query, const TensorView& key, const TensorView& value,
                      const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                      const OutputView& out, const Options& options = {});

// A paged KV cache (vLLM's layout): key_cache (num_pages, page_size, Hkv,
// E) and value_cache (num_pages, page_size, Hkv, Ev), in any format
// attention() reads (int8 with scales (num_pages, page_size, Hkv, groups));
// any strides (vLLM's (2, num_blocks, Hkv, block_size, E) cache passes as
// cache[0] with dims 1 and 2 swapped); block_table int32 (B, max_pages),
// unit stride in its last dim; seq_lens_k int32 or int64 (B,). Sequence
// b's key j (j < seq_lens_k[b]) is slot j % page_size of page
// block_table[b][j / page_size]; entries past a sequence's last page are
// not read. Queries packed as in attention_varlen: query (total_q, Hq, E)
// with cu_seqlens_q (B + 1,); decoding has one query per sequence
// (cu_seqlens_q = 0, 1, ..., B). Options, out and lse as
// attention_varlen's. Page indices and lengths are checked against the
// cache before anything is read.
void attention_paged(const TensorView& query, const TensorView& cu_seqlens_q,
                     const TensorView& key_cache, const TensorView& value_cache,
                     const TensorView& block_table, const TensorView& seq_lens_k,
                     const OutputView& out, const Options& options = {});

// The exact combination of attention results computed over disjoint key
// sets (split-K, KV shards): outs[i] of shape (..., Ev) and lses[i] of shape
// (...), any strides, all float32 or all float64. With m = max_i lses[i]:
// out = sum_i exp(lses[i] - m) outs[i] / sum_i exp(lses[i] - m) and
// lse = m + log(sum_i exp(lses[i] - m)). A shard whose LSE is -inf (it saw
// no key) contributes nothing, whatever its out holds; a row with every LSE
// -inf gets zeros and -inf, as a fully masked row of attention() does.
// out (and lse, if given) are C-contiguous, written only after every
// argument is checked.
void merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
           const OutputView& out, const std::optional<OutputView>& lse = std::nullopt);

// Threads used by one call. Until set, OpenMP's default for the calling
// thread (which honours OMP_NUM_THREADS). n must be >= 1. In a process
// forked after a call has run on more than one thread: 1, whatever was set
// (GNU libgomp's thread pool does not survive fork()).
int get_num_threads();
void set_num_threads(int n);

// The SIMD kernel sets ("ISAs"): "avx512" (AVX-512 F/BW/DQ/VL), "avx2"
// (AVX2 + FMA + F16C) and the portable "scalar". One build carries all of them;
// the best one this CPU and OS support is chosen at first use, unless the
// environment variable DOTATTN_ISA names another.
//
// Builds configured with DOTATTN_EMULATED_AVX512 (for tests only) add
// "avx512_emulated", the avx512 kernels through SIMDe on AVX2, after "avx2";
// it is never chosen at first use, only by name.
//
// supported_isas(): the ones this CPU runs, best first ("scalar" is last).
// get_isa(): the one in use. set_isa(name): use another from now on; throws
// argument_error for an unknown name or one this CPU lacks. Calls already
// running finish with the kernels they started with.
std::vector<std::string> supported_isas();
std::string get_isa();
void set_isa(const std::string& name);

// For benchmarks: reads the bytes [data, data + bytes) once, split over
// get_num_threads() threads, the way a decode call streams its KV cache;
// the time it takes gives the read bandwidth to compare that call with.
// Returns a checksum so the reads cannot be left out.
std::uint64_t stream_read(const void* data, std::size_t bytes);

// For benchmarks: one thread's rates of the per-block steps of kernel set
// `isa` (one this CPU runs) on one tile of `rows` query rows (padded to the
// set's row multiple), `keys` keys and E = Ev, whose operands stay in
// cache, each the fastest of five batches of calls lasting `seconds` in
// all. peak_gflops: a loop of independent FMAs on registers alone, the
// most the set's vector unit computes; score_gflops and pv_gflops: the
// score tile and the P·V step (2·rows·keys·E FLOPs each);
// softmax_gscores: the scores per second of exp_sum (exponentiating a
// tile's scores and summing them by rows; the rows' maxima are found
// within the score tile).
struct KernelRates {
  std::string isa;
  double peak_gflops = 0, score_gflops = 0, pv_gflops = 0, softmax_gscores = 0;
};
KernelRates kernel_rates(const std::string& isa, std::int64_t rows, std::int64_t keys, std::int64_t E,
                         double seconds);

// The parameters a kernel set's speed depends on that are not its register
// blocking (which is compiled in): one table per set, its defaults chosen
// by measurement (cpp/src/kernels/vec_<isa>.hpp says where), retuned on
// any machine by `python -m dotattn tune`. Sizes in elements or bytes.
// Results stay bit-identical across thread counts whatever the values,
// but the key blocks (key_block_bytes, decode_key_block_bytes) and split-K
// ranges (min_split_keys) set the order in which a row's sums are taken, so
// changing those may change the last bits of a result.
struct Tuning {
  std::int64_t row_block = 96;            // query rows per row block (many rows)
  std::int64_t key_block_bytes = 65536;   // keys per block: keys x (E + Ev + tile rows) within this
  std::int64_t decode_key_block_bytes = 65536;  // the same for few rows (decoding)
  std::int64_t min_split_keys = 512;      // decoding: keys per split-K range, at least
  std::int64_t key_bytes_ahead = 3072;    // few rows: keys prefetched this far ahead
  std::int64_t value_bytes_ahead = 4096;  // few rows: values prefetched this far ahead
  std::int64_t value_chunk_bytes = 2048;  // few rows: P·V takes the values in chunks of this
};

// The table of kernel set `isa` (one this CPU runs; else argument_error),
// and a new one for it: every field must be positive (row_block at most
// 1024); for tuning and benchmarks, between calls, not while one runs.
Tuning get_tuning(const std::string& isa);
void set_tuning(const std::string& isa, const Tuning& tuning);

// What show_config() reports.
struct RuntimeInfo {
  std::string version;
  std::string compiler;
  std::string build_type;
  std::string build_flags;
  std::string openmp;          // OpenMP version, or "disabled"
  std::string cpu;             // brand string
  std::vector<std::string> cpu_features;  // those the CPU and OS both support
  std::string isa;             // the kernel set in use: get_isa()
  std::vector<std::string> supported_isas;
  int num_threads = 1;
};

RuntimeInfo runtime_info();

}  // namespace dotattn
