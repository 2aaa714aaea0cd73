// Argument checks shared by the C++ API and the Python module: every message
// names the argument and the shapes involved, and nothing is written before
// all of them pass.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

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

// A key or value's dtype against the query's: a float64 query reads
// float64 ones; a float32 query float32, float16, bfloat16 or int8 ones,
// each its own.
void check_kv_dtype(const char* name, const TensorView& t, DType query) {
  if (t.dtype == DType::boolean)
    throw dtype_error(std::string(name) + " has dtype bool; expected float32, float16, bfloat16, "
                      "int8 (with its scales) or float64");
  if (query == DType::float64 && t.dtype != DType::float64)
    throw dtype_error(std::string(name) + " has dtype " + dtype_name(t.dtype) +
                      " but query is float64, which needs float64 key and value (float16, "
                      "bfloat16 and int8 key/value need a float32 query)");
  if (query == DType::float32 && t.dtype == DType::float64)
    throw dtype_error(std::string(name) + " has dtype float64 but query is float32, which reads "
                      "float32, float16, bfloat16 or int8 key and value");
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
  check_float_dtype("query", q.dtype);
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
  p.dtype = q.dtype;
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
    throw argument_error("scale=" + format_number(s) + " overflows float32, the inputs' dtype");
  p.scale = s;
}

// Broadcasts the mask to (batch..., Hq, L, S) through zero strides, as NumPy
// broadcasting would, without materialising it.
void check_mask(Problem& p, const Options& options, const Dims& query_shape) {
  if (!options.mask) return;
  const TensorView& m = *options.mask;
  check_view("attn_mask", m);
  if (m.dtype != DType::boolean && m.dtype != p.dtype)
    throw dtype_error(std::string("attn_mask has dtype ") + dtype_name(m.dtype) +
                      "; expected bool (True = may attend) or the inputs' dtype " +
                      dtype_name(p.dtype) + " (added to the scores)");

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

void check_options(Problem& p, const Options& options, const Dims& query_shape) {
  check_scale(p, options);
  check_mask(p, options, query_shape);
  p.causal = options.causal;
}

void check_result_buffer(const char* name, const OutputView& o, const Problem& p,
                         const Dims& expected) {
  check_buffer(name, o.data, o.shape);
  if (o.dtype != p.dtype)
    throw dtype_error(std::string(name) + " has dtype " + dtype_name(o.dtype) +
                      " but the result is " + dtype_name(p.dtype));
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
}

}  // namespace

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
  if (options.lse) {
    const OutputView& lse = *options.lse;
    const Dims lse_shape(query.shape.begin(), query.shape.end() - 1);
    check_result_buffer("lse", lse, p, lse_shape);
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
  return p;
}

}  // namespace dotattn::detail
