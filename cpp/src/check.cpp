// Argument checks shared by the C++ API and the Python module: every message
// names the argument and the shapes involved, and nothing is written before
// all of them pass.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "operand_rows.hpp"
#include "problem.hpp"

namespace dotattn::detail {
namespace {

std::string format_shape(const Dims& shape) {
  std::ostringstream os;
  os << '(';
  for (std::size_t d = 0; d < shape.size(); ++d) os << (d ? ", " : "") << shape[d];
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

std::string described(const char* name, const Dims& shape) {
  return std::string(name) + " " + format_shape(shape);
}

std::size_t itemsize(DType dtype) { return static_cast<std::size_t>(stored_size(dtype)); }

std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* name, const Dims& shape) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    throw argument_error(described(name, shape) + " has more elements than fit in 64 bits");
  return r;
}

std::int64_t element_count(const char* name, const Dims& shape) {
  std::int64_t n = 1;
  for (std::int64_t s : shape) n = checked_mul(n, s, name, shape);
  return n;
}

std::string format_number(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

// Sizes that are not negative and whose product fits, and data unless empty.
void check_buffer(const char* name, const void* data, const Dims& shape) {
  for (std::int64_t s : shape)
    if (s < 0) throw argument_error(described(name, shape) + " has a negative size");
  if (data == nullptr && element_count(name, shape) > 0)
    throw argument_error(std::string(name) + " has a null data pointer");
}

void check_view(const char* name, const TensorView& t) {
  if (t.strides.size() != t.shape.size())
    throw argument_error(described(name, t.shape) + " has " + std::to_string(t.shape.size()) +
                         " dims but " + std::to_string(t.strides.size()) + " strides");
  check_buffer(name, t.data, t.shape);
}

void check_float_dtype(const char* name, DType dtype) {
  if (dtype != DType::float32 && dtype != DType::float64)
    throw dtype_error(std::string(name) + " has dtype " + dtype_name(dtype) +
                      "; expected float32 or float64");
}

bool is_16_bit(DType dtype) { return dtype == DType::float16 || dtype == DType::bfloat16; }

// The query: float32 or float64, or float16 or bfloat16, which compute in
// float32.
void check_query_dtype(DType dtype) {
  if (dtype != DType::float32 && dtype != DType::float64 && !is_16_bit(dtype))
    throw dtype_error(std::string("query has dtype ") + dtype_name(dtype) +
                      "; expected float32, float64, float16 or bfloat16");
}

DType computed_in(DType query) { return query == DType::float64 ? DType::float64 : DType::float32; }

// A key or value's dtype against the query's: a float64 query reads
// float64 ones; a float32, float16 or bfloat16 query float32, float16,
// bfloat16 or int8 ones, each its own.
void check_kv_dtype(const char* name, const TensorView& t, DType query) {
  if (t.dtype == DType::boolean || t.dtype == DType::int32 || t.dtype == DType::int64)
    throw dtype_error(std::string(name) + " has dtype " + dtype_name(t.dtype) +
                      "; expected float32, float16, bfloat16, int8 (with its scales) or float64");
  if (query == DType::float64 && t.dtype != DType::float64)
    throw dtype_error(std::string(name) + " has dtype " + dtype_name(t.dtype) +
                      " but query is float64, which needs float64 key and value (float16, "
                      "bfloat16 and int8 key/value need a float32, float16 or bfloat16 query)");
  if (query != DType::float64 && t.dtype == DType::float64)
    throw dtype_error(std::string(name) + " has dtype float64 but query is " + dtype_name(query) +
                      ", which reads float32, float16, bfloat16 or int8 key and value");
  if (t.dtype == DType::int8 && !t.scale)
    throw dtype_error(std::string(name) + " is int8 without its scales; pass the int8 data with "
                      "its float32 scales (dotattn::quantized_view, dotattn.QuantizedKV)");
  if (t.dtype != DType::int8 && t.scale)
    throw argument_error(std::string(name) + " has scales but dtype " + dtype_name(t.dtype) +
                         "; only an int8 key or value carries them");
}

// The byte range [lo, hi) a view can touch; empty (lo == hi) if it has no
// elements. Used to refuse outputs that share memory with an input.
struct Extent {
  std::uintptr_t lo = 0, hi = 0;
  bool overlaps(const Extent& o) const { return lo < hi && o.lo < o.hi && lo < o.hi && o.lo < hi; }
};

Extent extent_of(const char* name, const void* data, DType dtype, const Dims& shape,
                 const Dims& strides) {
  std::int64_t lo = 0, hi = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 0) return {};
    const std::int64_t reach = checked_mul(shape[d] - 1, strides[d], name, shape);
    if (__builtin_add_overflow(reach < 0 ? lo : hi, reach, reach < 0 ? &lo : &hi))
      throw argument_error(described(name, shape) + " has strides that overflow 64 bits");
  }
  const auto base = reinterpret_cast<std::uintptr_t>(data);
  const auto size = static_cast<std::int64_t>(itemsize(dtype));
  return {base + static_cast<std::uintptr_t>(lo * size),
          base + static_cast<std::uintptr_t>((hi + 1) * size)};
}

Extent extent_of(const char* name, const TensorView& t) {
  return extent_of(name, t.data, t.dtype, t.shape, t.strides);
}

Extent extent_of(const char* name, const ScaleView& t) {
  return extent_of(name, t.data, DType::float32, t.shape, t.strides);
}

Extent extent_of(const char* name, const OutputView& t) {
  return extent_of(name, t.data, t.dtype, t.shape, contiguous_strides(t.shape));
}

void check_unit_inner_stride(const char* name, const TensorView& t) {
  if (t.shape.back() > 1 && t.strides.back() != 1 && element_count(name, t.shape) > 0)
    throw argument_error(described(name, t.shape) + " must have unit stride in its last dim, got " +
                         std::to_string(t.strides.back()) +
                         " (the Python API copies such inputs once; the C++ API does not copy)");
}

// strides as (batch..., head, row, col); 2-D operands have a single head.
Layout layout_of(const void* data, const Dims& strides, std::size_t batch_dims) {
  Layout l;
  l.data = data;
  l.batch.assign(strides.begin(), strides.begin() + static_cast<std::ptrdiff_t>(batch_dims));
  const std::size_t nd = strides.size();
  l.head = nd >= 3 ? strides[nd - 3] : 0;
  l.row = strides[nd - 2];
  l.col = strides[nd - 1];
  return l;
}

// The group of an int8 view's scales, once they are checked to fit its
// data: data (..., E), scale (..., E / group), unit stride in both last dims.
std::int64_t checked_group(const char* data_name, const char* scale_name, const TensorView& t) {
  const ScaleView& sc = *t.scale;
  const TensorView scale{sc.data, DType::float32, sc.shape, sc.strides, std::nullopt};
  check_view(scale_name, scale);
  const std::size_t nd = t.shape.size();
  const std::int64_t E = nd ? t.shape.back() : 0;
  const auto mismatch = [&](const std::string& why) {
    return argument_error(described(scale_name, sc.shape) + " does not fit " +
                          described(data_name, t.shape) + ": " + why);
  };
  if (sc.shape.size() != nd || nd == 0)
    throw mismatch("expected the same number of dims, at least 1");
  for (std::size_t d = 0; d + 1 < nd; ++d)
    if (sc.shape[d] != t.shape[d])
      throw mismatch("expected the same shape but the last dim, one scale per group of elements");
  const std::int64_t groups = sc.shape.back();
  if (E == 0 ? groups != 0 : groups == 0 || E % groups != 0)
    throw mismatch("its last dim (" + std::to_string(groups) + " groups) must divide E=" +
                   std::to_string(E) + " (group = E / groups)");
  check_unit_inner_stride(scale_name, scale);
  return E == 0 ? 1 : E / groups;
}

// How key or value is stored; float32 and float64 are read as they are.
Storage storage_of(const char* name, const char* scale_name, const TensorView& t,
                   std::size_t batch_dims) {
  Storage s;
  s.dtype = t.dtype;
  if (t.dtype != DType::int8) return s;
  s.group = checked_group(name, scale_name, t);
  s.scale = layout_of(t.scale->data, t.scale->strides, batch_dims);
  return s;
}

// query/key/value sizes and layouts; value is null for attention_weights.
Problem check_qkv(const TensorView& q, const TensorView& k, const TensorView* v) {
  const std::string_view operands = v ? "query, key and value" : "query and key";
  check_view("query", q);
  check_view("key", k);
  if (v) check_view("value", *v);
  check_query_dtype(q.dtype);
  check_kv_dtype("key", k, q.dtype);
  if (v) check_kv_dtype("value", *v, q.dtype);

  // Built only for a message: formatting costs more than a small call.
  const auto shapes = [&] {
    return described("query", q.shape) + ", " + described("key", k.shape) +
           (v ? ", " + described("value", v->shape) : "");
  };
  const std::size_t nd = q.shape.size();
  if (nd < 2 || k.shape.size() != nd || (v && v->shape.size() != nd))
    throw argument_error(std::string(operands) +
                         " must have the same number of dims, at least 2: (..., H, L, E), "
                         "(..., H, S, E), (..., H, S, Ev) or (L, E), (S, E), (S, Ev); got " +
                         shapes());
  const std::size_t batch_dims = nd >= 3 ? nd - 3 : 0;
  for (std::size_t d = 0; d < batch_dims; ++d)
    if (k.shape[d] != q.shape[d] || (v && v->shape[d] != q.shape[d]))
      throw argument_error(std::string(operands) + " must have equal batch dims; got " + shapes());

  Problem p;
  p.dtype = computed_in(q.dtype);
  p.q_dtype = q.dtype;
  p.out_dtype = p.dtype;
  p.batch_shape.assign(q.shape.begin(), q.shape.begin() + static_cast<std::ptrdiff_t>(batch_dims));
  p.batch = element_count("query", p.batch_shape);
  p.Hq = nd >= 3 ? q.shape[nd - 3] : 1;
  p.Hkv = nd >= 3 ? k.shape[nd - 3] : 1;
  p.L = q.shape[nd - 2];
  p.E = q.shape[nd - 1];
  p.S = k.shape[nd - 2];
  p.Ev = v ? v->shape[nd - 1] : 0;

  if (k.shape[nd - 1] != p.E)
    throw argument_error("query and key must have the same last dim E; got query E=" +
                         std::to_string(p.E) + ", key E=" + std::to_string(k.shape[nd - 1]) +
                         ": " + shapes());
  if (v && v->shape[nd - 2] != p.S)
    throw argument_error("key and value must have the same length S; got key S=" +
                         std::to_string(p.S) + ", value S=" + std::to_string(v->shape[nd - 2]) +
                         ": " + shapes());
  if (v && nd >= 3 && v->shape[nd - 3] != p.Hkv)
    throw argument_error("key and value must have the same number of heads; got key " +
                         std::to_string(p.Hkv) + ", value " + std::to_string(v->shape[nd - 3]) +
                         ": " + shapes());
  if (p.Hkv == 0 ? p.Hq != 0 : p.Hq % p.Hkv != 0)
    throw argument_error("the query heads Hq=" + std::to_string(p.Hq) +
                         " must be a multiple of the key/value heads Hkv=" +
                         std::to_string(p.Hkv) + ": " + shapes());

  check_unit_inner_stride("query", q);
  check_unit_inner_stride("key", k);
  if (v) check_unit_inner_stride("value", *v);
  p.q = layout_of(q.data, q.strides, batch_dims);
  p.k = layout_of(k.data, k.strides, batch_dims);
  p.k_storage = storage_of("key", "key scale", k, batch_dims);
  if (v) {
    p.v = layout_of(v->data, v->strides, batch_dims);
    p.v_storage = storage_of("value", "value scale", *v, batch_dims);
  }
  return p;
}

void check_scale(Problem& p, const Options& options) {
  if (!options.scale) {
    if (p.E == 0)
      throw argument_error(
          "query has E=0, for which the default scale 1/sqrt(E) is undefined; pass scale");
    p.scale = 1.0 / std::sqrt(static_cast<double>(p.E));
    return;
  }
  const double s = *options.scale;
  if (!std::isfinite(s))
    throw argument_error("scale must be finite, got " + format_number(s));
  if (p.dtype == DType::float32 && !std::isfinite(static_cast<float>(s)))
    throw argument_error("scale=" + format_number(s) + " overflows float32, the dtype computed in");
  p.scale = s;
}

// Broadcasts the mask to (batch..., Hq, L, S) through zero strides, as NumPy
// broadcasting would, without materialising it.
void check_mask(Problem& p, const Options& options, const Dims& query_shape) {
  if (!options.mask) return;
  const TensorView& m = *options.mask;
  check_view("attn_mask", m);
  const bool query_dtype = is_16_bit(p.q_dtype) && m.dtype == p.q_dtype;
  if (m.dtype != DType::boolean && m.dtype != p.dtype && !query_dtype)
    throw dtype_error(std::string("attn_mask has dtype ") + dtype_name(m.dtype) +
                      "; expected bool (True = may attend) or, added to the scores, " +
                      (is_16_bit(p.q_dtype) ? std::string(dtype_name(p.q_dtype)) + " (the query's dtype) or float32"
                                            : std::string("the inputs' dtype ") + dtype_name(p.dtype)));
  p.mask_dtype = m.dtype;

  const Dims target = result_shape(query_shape, p.S);
  const std::size_t nt = target.size();
  const std::size_t nm = m.shape.size();
  const auto fail = [&] {
    throw argument_error(described("attn_mask", m.shape) + " is not broadcastable to " +
                         format_shape(target) + ", the shape of the attention weights");
  };
  if (nm > nt) fail();
  Dims strides(nt, 0);
  for (std::size_t i = 0; i < nm; ++i) {
    const std::size_t t = nt - nm + i;
    if (m.shape[i] == target[t])
      strides[t] = m.strides[i];
    else if (m.shape[i] != 1)
      fail();  // a size-1 dim broadcasts: its stride stays 0
  }
  p.mask_kind = m.dtype == DType::boolean ? MaskKind::boolean : MaskKind::additive;
  p.mask = layout_of(m.data, strides, p.batch_shape.size());
}

void check_window(Problem& p, const Options& options) {
  if (!options.window) return;
  const Window w = *options.window;
  if (w.left < -1 || w.right < -1)
    throw argument_error("window=(" + std::to_string(w.left) + ", " + std::to_string(w.right) +
                         ") must hold two ints >= -1 (left, right keys; -1 for unbounded)");
  p.window = w;
}

void check_softcap(Problem& p, const Options& options) {
  if (!options.softcap) return;
  const double c = *options.softcap;
  const bool fits = p.dtype != DType::float32 ||
                    (std::isfinite(static_cast<float>(c)) && std::isfinite(1.0f / static_cast<float>(c)));
  if (!(c > 0) || !std::isfinite(c) || !fits)
    throw argument_error("softcap must be finite and > 0" +
                         std::string(p.dtype == DType::float32 ? ", as must be its float32 inverse" : "") +
                         ", got " + format_number(c));
  p.softcap = c;
}

// One finite value per query head: alibi_slopes and sinks.
std::vector<double> per_head_values(const char* name, const TensorView& t, std::int64_t Hq) {
  check_view(name, t);
  if (t.shape.size() != 1 || t.shape[0] != Hq)
    throw argument_error(described(name, t.shape) + " must have shape (" + std::to_string(Hq) +
                         ",), one value per query head (Hq=" + std::to_string(Hq) + ")");
  if (t.dtype != DType::float32 && t.dtype != DType::float64)
    throw dtype_error(std::string(name) + " has dtype " + dtype_name(t.dtype) +
                      "; expected float32 or float64");
  std::vector<double> values(static_cast<std::size_t>(Hq));
  for (std::int64_t h = 0; h < Hq; ++h) {
    const std::int64_t at = h * t.strides[0];
    const double x = t.dtype == DType::float32 ? static_cast<const float*>(t.data)[at]
                                               : static_cast<const double*>(t.data)[at];
    if (!std::isfinite(x))
      throw argument_error(std::string(name) + "[" + std::to_string(h) + "] is " +
                           format_number(x) + "; every value must be finite");
    values[static_cast<std::size_t>(h)] = x;
  }
  return values;
}

void check_options(Problem& p, const Options& options, const Dims& query_shape) {
  check_scale(p, options);
  check_mask(p, options, query_shape);
  p.causal = options.causal;
  check_window(p, options);
  check_softcap(p, options);
  if (options.alibi_slopes) p.alibi_slopes = per_head_values("alibi_slopes", *options.alibi_slopes, p.Hq);
  if (options.sinks) p.sinks = per_head_values("sinks", *options.sinks, p.Hq);
}

enum class Result { values, lse };

// out and the weights are in the dtype computed in, or in a 16-bit query's
// own; the LSE in the dtype computed in.
void check_result_buffer(const char* name, const OutputView& o, const Problem& p,
                         const Dims& expected, Result result = Result::values) {
  check_buffer(name, o.data, o.shape);
  const bool narrowed = is_16_bit(p.q_dtype) && result == Result::values;
  if (o.dtype != p.dtype && !(narrowed && o.dtype == p.q_dtype))
    throw dtype_error(std::string(name) + " has dtype " + dtype_name(o.dtype) + " but the result is " +
                      (narrowed ? std::string(dtype_name(p.q_dtype)) + " (the query's dtype) or float32"
                                : std::string(dtype_name(p.dtype))));
  if (o.shape != expected)
    throw argument_error(described(name, o.shape) + " does not match the result's shape " +
                         format_shape(expected));
}

// The result the caller allocates from `shape` (and, for attention, the LSE:
// every dim but the last): their element counts and sizes in bytes must fit
// in 64 bits, as NumPy's own limit has it, or a size or offset computed from
// them would wrap. Inputs that fit can still give such a result, e.g. the
// L x S attention weights of a long broadcast query and key.
void check_result_size(const char* result, const Dims& shape, DType dtype, const Dims& query,
                       const char* other, const Dims& other_shape) {
  const auto size = static_cast<std::int64_t>(itemsize(dtype));
  std::int64_t rows = 1, bytes = 0;
  bool overflow = false;
  for (std::size_t d = 0; d + 1 < shape.size(); ++d)
    overflow = overflow || __builtin_mul_overflow(rows, shape[d], &rows);
  overflow = overflow || __builtin_mul_overflow(rows, size, &bytes) ||
             __builtin_mul_overflow(bytes, shape.back(), &bytes);
  if (overflow)
    throw argument_error(described("query", query) + " and " + described(other, other_shape) +
                         " give " + result + " of shape " + format_shape(shape) +
                         ", too large: its size in bytes overflows 64 bits");
}

void check_no_overlap(const char* name, const Extent& written, const TensorView& q,
                      const TensorView& k, const TensorView* v, const Options& options) {
  const auto refuse_if = [&](const char* input, const Extent& read) {
    if (written.overlaps(read))
      throw argument_error(std::string(name) + " overlaps " + input +
                           "; an output must not share memory with an input");
  };
  refuse_if("query", extent_of("query", q));
  refuse_if("key", extent_of("key", k));
  if (k.scale) refuse_if("key's scales", extent_of("key scale", *k.scale));
  if (v) refuse_if("value", extent_of("value", *v));
  if (v && v->scale) refuse_if("value's scales", extent_of("value scale", *v->scale));
  if (options.mask) refuse_if("attn_mask", extent_of("attn_mask", *options.mask));
  if (options.alibi_slopes) refuse_if("alibi_slopes", extent_of("alibi_slopes", *options.alibi_slopes));
  if (options.sinks) refuse_if("sinks", extent_of("sinks", *options.sinks));
}

// dims d0 and d1 of a view (and of its scales) swapped: a token-major
// (total, H, E) operand seen as the (H, total, E) the attention checks take.
TensorView swapped(const TensorView& t, std::size_t d0, std::size_t d1) {
  TensorView s = t;
  std::swap(s.shape[d0], s.shape[d1]);
  std::swap(s.strides[d0], s.strides[d1]);
  if (s.scale && s.scale->shape.size() == t.shape.size()) {
    std::swap(s.scale->shape[d0], s.scale->shape[d1]);
    std::swap(s.scale->strides[d0], s.scale->strides[d1]);
  }
  return s;
}

// TensorView t without its first dim (a paged cache's page index).
TensorView one_page(const TensorView& t) {
  TensorView s = t;
  s.shape.erase(s.shape.begin());
  s.strides.erase(s.strides.begin());
  if (s.scale && !s.scale->shape.empty()) {
    s.scale->shape.erase(s.scale->shape.begin());
    s.scale->strides.erase(s.scale->strides.begin());
  }
  return s;
}

void check_dims(const char* name, const TensorView& t, std::size_t dims, const char* layout) {
  if (t.shape.size() != dims)
    throw argument_error(described(name, t.shape) + " must have " + std::to_string(dims) +
                         " dims: " + layout);
}

// The values of an index view of shape (n,) or (rows, cols), read row by
// row: int32, or also int64 where `wide` allows it.
void check_index_view(const char* name, const TensorView& t, const Dims& shape, const char* meaning,
                      bool wide) {
  check_view(name, t);
  if (t.dtype != DType::int32 && !(wide && t.dtype == DType::int64))
    throw dtype_error(std::string(name) + " has dtype " + dtype_name(t.dtype) + "; expected int32" +
                      (wide ? " or int64" : ""));
  if (t.shape != shape)
    throw argument_error(described(name, t.shape) + " must have shape " + format_shape(shape) +
                         ": " + meaning);
}

std::vector<std::int64_t> index_values(const char* name, const TensorView& t, const Dims& shape,
                                       const char* meaning) {
  check_index_view(name, t, shape, meaning, true);
  std::vector<std::int64_t> values;
  const std::int64_t rows = shape.size() == 2 ? shape[0] : 1, cols = shape.back();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::int64_t at = (shape.size() == 2 ? r * t.strides[0] : 0) + c * t.strides.back();
      values.push_back(t.dtype == DType::int32 ? static_cast<const std::int32_t*>(t.data)[at]
                                               : static_cast<const std::int64_t*>(t.data)[at]);
    }
  return values;
}

// cu_seqlens: B + 1 offsets rising from 0 to total.
void check_offsets(const char* name, const std::vector<std::int64_t>& cu, std::int64_t total,
                   const char* operand) {
  bool rising = cu.front() == 0 && cu.back() == total;
  for (std::size_t b = 1; b < cu.size(); ++b) rising = rising && cu[b] >= cu[b - 1];
  if (!rising)
    throw argument_error(std::string(name) + " must rise from 0 to " + std::to_string(total) +
                         " (the rows of " + operand + "), never falling; got " + format_shape(cu));
}

// The byte ranges a packed or paged call reads, for the overlap checks.
std::vector<std::pair<std::string, Extent>> read_extents(
    const std::vector<std::pair<const char*, const TensorView*>>& inputs, const Options& options) {
  std::vector<std::pair<std::string, Extent>> read;
  for (const auto& [name, t] : inputs) {
    read.emplace_back(name, extent_of(name, *t));
    if (t->scale) read.emplace_back(std::string(name) + "'s scales", extent_of(name, *t->scale));
  }
  if (options.alibi_slopes) read.emplace_back("alibi_slopes", extent_of("alibi_slopes", *options.alibi_slopes));
  if (options.sinks) read.emplace_back("sinks", extent_of("sinks", *options.sinks));
  return read;
}

// out (total_q, Hq, Ev) and options.lse (Hq, total_q) of a packed call,
// checked and laid out in base.
void check_packed_outputs(Problem& base, const OutputView& out, const Options& options,
                          std::int64_t total_q,
                          const std::vector<std::pair<std::string, Extent>>& read) {
  check_result_buffer("out", out, base, {total_q, base.Hq, base.Ev});
  std::vector<std::pair<const char*, Extent>> written{{"out", extent_of("out", out)}};
  base.out = out.data;
  base.out_dtype = out.dtype;
  base.out_rows = {0, base.Ev, base.Hq * base.Ev};
  if (options.lse) {
    check_result_buffer("lse", *options.lse, base, {base.Hq, total_q}, Result::lse);
    written.emplace_back("lse", extent_of("lse", *options.lse));
    if (written[0].second.overlaps(written[1].second))
      throw argument_error("lse overlaps out; the two outputs must not share memory");
    base.lse = options.lse->data;
    base.lse_rows = {0, total_q, 1};
  }
  for (const auto& [name, extent] : written)
    for (const auto& [input, r] : read)
      if (extent.overlaps(r))
        throw argument_error(std::string(name) + " overlaps " + input +
                             "; an output must not share memory with an input");
}

// The checks of check_qkv that name arguments, made first on a packed or
// paged call's own operands so that messages name them and their shapes:
// query (total_q, Hq, E); key and value with their heads at dim `heads`.
void check_packed_operands(const TensorView& q, const char* key_name, const TensorView& k,
                           const char* value_name, const TensorView& v, std::size_t heads) {
  check_view("query", q);
  check_view(key_name, k);
  check_view(value_name, v);
  check_query_dtype(q.dtype);
  check_kv_dtype(key_name, k, q.dtype);
  check_kv_dtype(value_name, v, q.dtype);
  const auto shapes = [&] {
    return described("query", q.shape) + ", " + described(key_name, k.shape) + ", " +
           described(value_name, v.shape);
  };
  if (k.shape.back() != q.shape.back())
    throw argument_error(std::string("query and ") + key_name + " must have the same last dim E; got query E=" +
                         std::to_string(q.shape.back()) + ", " + key_name + " E=" +
                         std::to_string(k.shape.back()) + ": " + shapes());
  if (k.shape[heads] != v.shape[heads])
    throw argument_error(std::string(key_name) + " and " + value_name +
                         " must have the same number of heads; got " + shapes());
  const std::int64_t Hq = q.shape[1], Hkv = k.shape[heads];
  if (Hkv == 0 ? Hq != 0 : Hq % Hkv != 0)
    throw argument_error("the query heads Hq=" + std::to_string(Hq) +
                         " must be a multiple of the key/value heads Hkv=" + std::to_string(Hkv) +
                         ": " + shapes());
  check_unit_inner_stride("query", q);
  check_unit_inner_stride(key_name, k);
  check_unit_inner_stride(value_name, v);
  for (const auto& [name, t] : {std::pair{key_name, &k}, std::pair{value_name, &v}})
    if (t->dtype == DType::int8) checked_group(name, (std::string(name) + " scale").c_str(), *t);
}

void refuse_mask(const Options& options, const char* call) {
  if (options.mask)
    throw argument_error(std::string("attn_mask is not taken by ") + call +
                         "; use is_causal and window, or attention() per sequence");
}

// Layout l moved on by `rows` rows (a sequence's first).
Layout from_row(Layout l, std::int64_t rows, std::int64_t elem_size) {
  l.data = static_cast<const char*>(l.data) + rows * l.row * elem_size;
  return l;
}

// Sequence b of a packed call: its L query rows from row q0 on, its S keys,
// its results from row q0 on.
Problem sequence(const Problem& base, std::int64_t q0, std::int64_t L, std::int64_t S) {
  Problem p = base;
  p.L = L;
  p.S = S;
  p.q = from_row(p.q, q0, static_cast<std::int64_t>(itemsize(p.q_dtype)));
  p.out = static_cast<char*>(p.out) + q0 * p.out_rows.row * static_cast<std::int64_t>(itemsize(p.out_dtype));
  if (p.lse) p.lse = static_cast<char*>(p.lse) + q0 * p.lse_rows.row * static_cast<std::int64_t>(itemsize(p.dtype));
  return p;
}

}  // namespace

std::vector<Problem> check_varlen(const TensorView& query, const TensorView& key,
                                  const TensorView& value, const TensorView& cu_seqlens_q,
                                  const TensorView& cu_seqlens_k, const OutputView& out,
                                  const Options& options) {
  const char* layout = "(total, H, E) for a packed batch";
  check_dims("query", query, 3, layout);
  check_dims("key", key, 3, layout);
  check_dims("value", value, 3, layout);
  refuse_mask(options, "attention_varlen");
  check_packed_operands(query, "key", key, "value", value, 1);
  if (key.shape[0] != value.shape[0])
    throw argument_error("key and value must have the same length total_k; got key " +
                         std::to_string(key.shape[0]) + ", value " + std::to_string(value.shape[0]) +
                         ": " + described("key", key.shape) + ", " + described("value", value.shape));
  const TensorView v = swapped(value, 0, 1);
  Problem base = check_qkv(swapped(query, 0, 1), swapped(key, 0, 1), &v);
  const std::int64_t total_q = query.shape[0], total_k = key.shape[0];
  check_dims("cu_seqlens_q", cu_seqlens_q, 1, "(B + 1,)");
  const std::int64_t B = cu_seqlens_q.shape[0] - 1;
  if (B < 0) throw argument_error("cu_seqlens_q (0,) must hold B + 1 >= 1 offsets");
  const auto cu_q = index_values("cu_seqlens_q", cu_seqlens_q, {B + 1}, "B + 1 query offsets");
  const auto cu_k = index_values("cu_seqlens_k", cu_seqlens_k, {B + 1},
                                 "B + 1 key offsets, as many as cu_seqlens_q");
  check_offsets("cu_seqlens_q", cu_q, total_q, "query");
  check_offsets("cu_seqlens_k", cu_k, total_k, "key and value");
  check_options(base, options, {base.Hq, total_q, base.E});
  check_result_size("a result", {total_q, base.Hq, base.Ev}, base.dtype, query.shape, "value", value.shape);
  check_packed_outputs(base, out, options, total_q,
                       read_extents({{"query", &query}, {"key", &key}, {"value", &value},
                                     {"cu_seqlens_q", &cu_seqlens_q}, {"cu_seqlens_k", &cu_seqlens_k}},
                                    options));
  std::vector<Problem> problems;
  for (std::int64_t b = 0; b < B; ++b) {
    const auto at = static_cast<std::size_t>(b);
    Problem p = sequence(base, cu_q[at], cu_q[at + 1] - cu_q[at], cu_k[at + 1] - cu_k[at]);
    p.k = from_row(p.k, cu_k[at], stored_size(p.k_storage.dtype));
    p.v = from_row(p.v, cu_k[at], stored_size(p.v_storage.dtype));
    for (Storage* st : {&p.k_storage, &p.v_storage})
      if (st->dtype == DType::int8) st->scale = from_row(st->scale, cu_k[at], 4);
    problems.push_back(std::move(p));
  }
  return problems;
}

std::vector<Problem> check_paged(const TensorView& query, const TensorView& cu_seqlens_q,
                                 const TensorView& key_cache, const TensorView& value_cache,
                                 const TensorView& block_table, const TensorView& seq_lens_k,
                                 const OutputView& out, const Options& options) {
  check_dims("query", query, 3, "(total_q, Hq, E) for a packed batch");
  check_dims("key_cache", key_cache, 4, "(num_pages, page_size, Hkv, E)");
  check_dims("value_cache", value_cache, 4, "(num_pages, page_size, Hkv, Ev)");
  refuse_mask(options, "attention_paged");
  for (const auto* t : {&key_cache, &value_cache}) {
    const std::string name = t == &key_cache ? "key_cache" : "value_cache";
    check_view(name.c_str(), *t);
    if (!t->scale) continue;
    const std::string scale_name = name + " scale";
    if (t->scale->strides.size() != t->scale->shape.size() || t->scale->shape.size() != 4 ||
        t->scale->shape[0] != t->shape[0])
      throw argument_error(described(scale_name.c_str(), t->scale->shape) + " does not fit " +
                           described(name.c_str(), t->shape) +
                           ": expected (num_pages, page_size, Hkv, groups) with a stride per dim");
  }
  if (key_cache.shape[0] != value_cache.shape[0] || key_cache.shape[1] != value_cache.shape[1])
    throw argument_error(described("key_cache", key_cache.shape) + " and " +
                         described("value_cache", value_cache.shape) +
                         " must have the same num_pages and page_size");
  const std::int64_t num_pages = key_cache.shape[0], page_size = key_cache.shape[1];
  check_packed_operands(query, "key_cache", key_cache, "value_cache", value_cache, 2);
  // One page as (Hkv, page_size, E): the per-page layout the checks take. A
  // cache of no pages has none to read (NumPy gives it zero strides).
  TensorView k_page = swapped(one_page(key_cache), 0, 1);
  TensorView v_page = swapped(one_page(value_cache), 0, 1);
  if (num_pages == 0)
    for (TensorView* page : {&k_page, &v_page}) {
      page->strides = contiguous_strides(page->shape);
      if (page->scale) page->scale->strides = contiguous_strides(page->scale->shape);
    }
  Problem base = check_qkv(swapped(query, 0, 1), k_page, &v_page);
  const std::int64_t total_q = query.shape[0];
  check_dims("cu_seqlens_q", cu_seqlens_q, 1, "(B + 1,)");
  const std::int64_t B = cu_seqlens_q.shape[0] - 1;
  if (B < 0) throw argument_error("cu_seqlens_q (0,) must hold B + 1 >= 1 offsets");
  const auto cu_q = index_values("cu_seqlens_q", cu_seqlens_q, {B + 1}, "B + 1 query offsets");
  check_offsets("cu_seqlens_q", cu_q, total_q, "query");
  const auto lengths = index_values("seq_lens_k", seq_lens_k, {B}, "one key count per sequence");
  check_dims("block_table", block_table, 2, "(B, max_pages)");
  const std::int64_t max_pages = block_table.shape[1];
  check_index_view("block_table", block_table, {B, max_pages}, "B rows of page indices", false);
  check_unit_inner_stride("block_table", block_table);
  // Only the pages the sequences use are read, here and by the loops.
  const auto page_at = [&](std::int64_t b, std::int64_t i) -> std::int64_t {
    return static_cast<const std::int32_t*>(block_table.data)[b * block_table.strides[0] + i];
  };
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t S = lengths[static_cast<std::size_t>(b)];
    if (S < 0 || S > max_pages * page_size)
      throw argument_error("seq_lens_k[" + std::to_string(b) + "] = " + std::to_string(S) +
                           " does not fit block_table " + format_shape(block_table.shape) +
                           " of pages of " + std::to_string(page_size) + " keys");
    const std::int64_t used = page_size > 0 ? (S + page_size - 1) / page_size : 0;
    for (std::int64_t i = 0; i < used; ++i) {
      const std::int64_t page = page_at(b, i);
      if (page < 0 || page >= num_pages)
        throw argument_error("block_table[" + std::to_string(b) + ", " + std::to_string(i) + "] = " +
                             std::to_string(page) + " is not a page of key_cache " +
                             format_shape(key_cache.shape));
    }
  }
  check_options(base, options, {base.Hq, total_q, base.E});
  check_result_size("a result", {total_q, base.Hq, base.Ev}, base.dtype, query.shape, "value_cache",
                    value_cache.shape);
  check_packed_outputs(base, out, options, total_q,
                       read_extents({{"query", &query}, {"key_cache", &key_cache},
                                     {"value_cache", &value_cache}, {"cu_seqlens_q", &cu_seqlens_q},
                                     {"block_table", &block_table}, {"seq_lens_k", &seq_lens_k}},
                                    options));
  const auto paged = [&](Layout l, const Dims& strides, std::int64_t b) {
    l.pages = static_cast<const std::int32_t*>(block_table.data) + b * block_table.strides[0];
    l.page_size = page_size;
    l.page_stride = strides[0];
    if (page_size > 0 && (page_size & (page_size - 1)) == 0) l.page_shift = __builtin_ctzll(static_cast<unsigned long long>(page_size));
    return l;
  };
  std::vector<Problem> problems;
  for (std::int64_t b = 0; b < B; ++b) {
    const auto at = static_cast<std::size_t>(b);
    Problem p = sequence(base, cu_q[at], cu_q[at + 1] - cu_q[at], lengths[at]);
    p.k = paged(p.k, key_cache.strides, b);
    p.v = paged(p.v, value_cache.strides, b);
    if (key_cache.scale) p.k_storage.scale = paged(p.k_storage.scale, key_cache.scale->strides, b);
    if (value_cache.scale) p.v_storage.scale = paged(p.v_storage.scale, value_cache.scale->strides, b);
    problems.push_back(std::move(p));
  }
  return problems;
}

std::int64_t checked_quantized(const TensorView& t) {
  check_view("data", t);
  if (t.dtype != DType::int8 || !t.scale)
    throw dtype_error(std::string("data has dtype ") + dtype_name(t.dtype) +
                      (t.scale ? "" : " and no scales") + "; a quantized view is int8 with scales");
  check_unit_inner_stride("data", t);
  return checked_group("data", "scale", t);
}

QuantizePlan check_quantize(const TensorView& x, const QuantizedOutput& out) {
  check_view("x", x);
  if (x.dtype != DType::float32 && x.dtype != DType::float16 && x.dtype != DType::bfloat16)
    throw dtype_error(std::string("x has dtype ") + dtype_name(x.dtype) +
                      "; expected float32, float16 or bfloat16");
  if (x.scale) throw argument_error("x has scales; quantize a float32, float16 or bfloat16 tensor");
  if (x.shape.empty()) throw argument_error("x must have at least 1 dim (..., E); got a scalar");
  check_unit_inner_stride("x", x);
  const TensorView data{out.data, DType::int8, x.shape, out.strides,
                        ScaleView{out.scale, out.scale_shape, out.scale_strides}};
  check_view("out data", data);
  check_unit_inner_stride("out data", data);
  QuantizePlan plan;
  plan.group = checked_group("out data", "out scale", data);

  const Extent written = extent_of("out data", data);
  const Extent scales = extent_of("out scale", *data.scale);
  const Extent read = extent_of("x", x);
  if (written.overlaps(read) || scales.overlaps(read))
    throw argument_error("out overlaps x; an output must not share memory with an input");
  if (written.overlaps(scales))
    throw argument_error("out's data overlaps its scales; they must not share memory");
  plan.rows = element_count("x", x.shape) / std::max<std::int64_t>(x.shape.back(), 1);
  if (x.shape.back() == 0) plan.rows = 0;
  return plan;
}

MergePlan check_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses,
                      const OutputView& out, const std::optional<OutputView>& lse) {
  if (outs.empty()) throw argument_error("outs is empty; merge needs at least one result");
  if (lses.size() != outs.size())
    throw argument_error("outs has " + std::to_string(outs.size()) + " results but lses has " +
                         std::to_string(lses.size()) + "; one LSE per result");
  MergePlan plan;
  plan.dtype = outs[0].dtype;
  const Dims& shape = outs[0].shape;
  if (shape.empty()) throw argument_error("outs[0] must have at least 1 dim (..., Ev); got a scalar");
  const Dims lse_shape(shape.begin(), shape.end() - 1);
  check_float_dtype("outs[0]", plan.dtype);
  std::vector<Extent> read;
  for (std::size_t i = 0; i < outs.size(); ++i) {
    const std::string o = "outs[" + std::to_string(i) + "]", l = "lses[" + std::to_string(i) + "]";
    check_view(o.c_str(), outs[i]);
    check_view(l.c_str(), lses[i]);
    for (const auto* t : {&outs[i], &lses[i]}) {
      const std::string& name = t == &outs[i] ? o : l;
      if (t->dtype != plan.dtype)
        throw dtype_error(name + " has dtype " + dtype_name(t->dtype) + " but outs[0] has " +
                          dtype_name(plan.dtype) + "; every out and LSE has the same dtype");
      if (t->scale) throw argument_error(name + " has scales; merge reads float32 or float64");
    }
    if (outs[i].shape != shape)
      throw argument_error(described(o.c_str(), outs[i].shape) + " does not match " +
                           described("outs[0]", shape) + "; every out has the same shape");
    if (lses[i].shape != lse_shape)
      throw argument_error(described(l.c_str(), lses[i].shape) + " does not fit " +
                           described(o.c_str(), shape) + ": expected " + format_shape(lse_shape) +
                           ", every dim of out but the last");
    read.push_back(extent_of(o.c_str(), outs[i]));
    read.push_back(extent_of(l.c_str(), lses[i]));
    Dims strides = lses[i].strides;
    strides.push_back(1);
    plan.lse_strides.push_back(std::move(strides));
  }
  const Problem typed = [&] {
    Problem p;
    p.dtype = plan.dtype;
    return p;
  }();
  check_result_buffer("out", out, typed, shape);
  std::vector<std::pair<const char*, Extent>> written{{"out", extent_of("out", out)}};
  if (lse) {
    check_result_buffer("lse", *lse, typed, lse_shape, Result::lse);
    written.emplace_back("lse", extent_of("lse", *lse));
    if (written[0].second.overlaps(written[1].second))
      throw argument_error("lse overlaps out; the two outputs must not share memory");
  }
  for (const auto& [name, extent] : written)
    for (const Extent& r : read)
      if (extent.overlaps(r))
        throw argument_error(std::string(name) + " overlaps one of outs and lses; an output must "
                             "not share memory with an input");
  plan.Ev = shape.back();
  plan.rows = element_count("outs[0]", lse_shape);
  plan.lse_shape = lse_shape;
  plan.lse_shape.push_back(1);
  return plan;
}

Problem check_attention(const TensorView& query, const TensorView& key, const TensorView& value,
                        const OutputView* out, const Options& options) {
  Problem p = check_qkv(query, key, &value);
  check_options(p, options, query.shape);
  const Dims expected = result_shape(query.shape, p.Ev);
  check_result_size("a result", expected, p.dtype, query.shape, "value", value.shape);
  if (!out) return p;

  check_result_buffer("out", *out, p, expected);
  const Extent out_extent = extent_of("out", *out);
  check_no_overlap("out", out_extent, query, key, &value, options);
  p.out = out->data;
  p.out_dtype = out->dtype;
  p.out_rows = {p.Hq * p.L * p.Ev, p.L * p.Ev, p.Ev};
  p.lse_rows = {p.Hq * p.L, p.L, 1};
  if (options.lse) {
    const OutputView& lse = *options.lse;
    const Dims lse_shape(query.shape.begin(), query.shape.end() - 1);
    check_result_buffer("lse", lse, p, lse_shape, Result::lse);
    const Extent lse_extent = extent_of("lse", lse);
    check_no_overlap("lse", lse_extent, query, key, &value, options);
    if (lse_extent.overlaps(out_extent))
      throw argument_error("lse overlaps out; the two outputs must not share memory");
    p.lse = lse.data;
  }
  return p;
}

Problem check_weights(const TensorView& query, const TensorView& key, const OutputView* weights,
                      const Options& options) {
  if (options.lse)
    throw argument_error("lse is an output of attention(), not of attention_weights()");
  Problem p = check_qkv(query, key, nullptr);
  check_options(p, options, query.shape);
  const Dims expected = result_shape(query.shape, p.S);
  check_result_size("attention weights", expected, p.dtype, query.shape, "key", key.shape);
  if (!weights) return p;

  check_result_buffer("weights", *weights, p, expected);
  check_no_overlap("weights", extent_of("weights", *weights), query, key, nullptr, options);
  p.out = weights->data;
  p.out_dtype = weights->dtype;
  p.out_rows = {p.Hq * p.L * p.S, p.L * p.S, p.S};
  return p;
}

}  // namespace dotattn::detail
