// dotattn._core: the C++ API over NumPy arrays, without copies. Arrays come
// in as they are (noconvert); the Python layer (python/dotattn/_api.py) has
// already copied the few layouts the core cannot read in place. The GIL is
// released while the core computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dotattn/dotattn.hpp"

namespace py = pybind11;

namespace {

dotattn::DType dtype_of(const py::array& a, const char* name) {
  const py::dtype dt = a.dtype();
  // equal() also tells byte orders apart, so only native arrays pass.
  if (dt.equal(py::dtype::of<float>())) return dotattn::DType::float32;
  if (dt.equal(py::dtype::of<double>())) return dotattn::DType::float64;
  if (dt.equal(py::dtype::of<bool>())) return dotattn::DType::boolean;
  if (dt.equal(py::dtype("float16"))) return dotattn::DType::float16;
  if (dt.equal(py::dtype::of<std::int8_t>())) return dotattn::DType::int8;
  if (dt.equal(py::dtype::of<std::int32_t>())) return dotattn::DType::int32;
  if (dt.equal(py::dtype::of<std::int64_t>())) return dotattn::DType::int64;
  // ml_dtypes.bfloat16, recognised by name: ml_dtypes is not a dependency.
  if (dt.itemsize() == 2 && py::str(dt.attr("name")).cast<std::string>() == "bfloat16")
    return dotattn::DType::bfloat16;
  throw dotattn::dtype_error(std::string(name) + " has dtype " + py::str(dt).cast<std::string>() +
                             "; expected float32, float64, float16, bfloat16, int8, int32, "
                             "int64 or bool in native byte order");
}

// "name (2, 3)", as the core's messages name an argument.
std::string described(const py::array& a, const char* name) {
  return std::string(name) + " " + py::str(a.attr("shape")).cast<std::string>();
}

dotattn::Dims shape_of(const py::array& a) {
  return dotattn::Dims(a.shape(), a.shape() + a.ndim());
}

// Element strides of a. The Python layer copies arrays whose byte strides
// are not whole elements (and misaligned ones), so these checks only make
// sure the core never reads such an array.
dotattn::Dims element_strides(const py::array& a, const char* name) {
  dotattn::Dims strides(static_cast<std::size_t>(a.ndim()));
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (a.strides(d) % a.itemsize() != 0)
      throw dotattn::argument_error(described(a, name) +
                                    " has a stride that is not a whole number of elements");
    strides[static_cast<std::size_t>(d)] = a.strides(d) / a.itemsize();
  }
  return strides;
}

bool aligned(const py::array& a) { return a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_; }

dotattn::TensorView input_view(const py::array& a, const char* name) {
  const dotattn::DType dtype = dtype_of(a, name);
  if (!aligned(a))
    throw dotattn::argument_error(described(a, name) + " must be aligned to its dtype");
  return {a.data(), dtype, shape_of(a), element_strides(a, name), std::nullopt};
}

// key or value, with the scales of an int8 one (dotattn.QuantizedKV's).
dotattn::TensorView stored_view(const py::array& a, const std::optional<py::array>& scale,
                                const char* name) {
  dotattn::TensorView t = input_view(a, name);
  if (scale) {
    const std::string scale_name = std::string(name) + " scale";
    const dotattn::TensorView s = input_view(*scale, scale_name.c_str());
    if (s.dtype != dotattn::DType::float32)
      throw dotattn::dtype_error(scale_name + " has dtype " + dotattn::dtype_name(s.dtype) +
                                 "; expected float32");
    t.scale = dotattn::ScaleView{static_cast<const float*>(s.data), s.shape, s.strides};
  }
  return t;
}

// A writable array of any strides (quantize's outputs: a slot of a cache).
template <class T>
T* writable_data(py::array& a, const char* name) {
  if (!a.writeable()) throw dotattn::argument_error(described(a, name) + " is read-only");
  if (!aligned(a)) throw dotattn::argument_error(described(a, name) + " must be aligned to its dtype");
  return static_cast<T*>(a.mutable_data());
}

dotattn::OutputView output_view(py::array& a, const char* name) {
  const dotattn::DType dtype = dtype_of(a, name);
  if (!a.writeable()) throw dotattn::argument_error(described(a, name) + " is read-only");
  if (!(a.flags() & py::array::c_style))
    throw dotattn::argument_error(described(a, name) + " must be C-contiguous");
  if (!aligned(a))
    throw dotattn::argument_error(described(a, name) + " must be aligned to its dtype");
  return {a.mutable_data(), dtype, shape_of(a)};
}

py::array empty_like_result(const py::array& query, const dotattn::Dims& shape) {
  return py::array(query.dtype(), std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

py::array empty_result(const py::dtype& dtype, const dotattn::Dims& shape) {
  return py::array(dtype, std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// The dtype a call computes in, and its LSE's: float64 for a float64
// query, float32 for any other (float16 and bfloat16 ones too).
py::dtype computed_dtype(const py::array& query) {
  return query.dtype().equal(py::dtype::of<double>()) ? py::dtype::of<double>() : py::dtype::of<float>();
}

// A new result's dtype: out_dtype if given (the core checks it), else
// `fallback`.
py::dtype result_dtype(const std::optional<py::dtype>& out_dtype, const py::dtype& fallback) {
  return out_dtype ? *out_dtype : fallback;
}

// The options after scale, as the Python layer passes them.
struct ScoreOptions {
  std::optional<std::pair<std::int64_t, std::int64_t>> window;
  std::optional<double> softcap;
  std::optional<py::array> alibi_slopes, sinks;
};

dotattn::Options make_options(const std::optional<py::array>& mask, dotattn::Causal causal,
                              std::optional<double> scale, const ScoreOptions& more) {
  dotattn::Options options;
  if (mask) options.mask = input_view(*mask, "attn_mask");
  options.causal = causal;
  options.scale = scale;
  if (more.window) options.window = dotattn::Window{more.window->first, more.window->second};
  options.softcap = more.softcap;
  if (more.alibi_slopes) options.alibi_slopes = input_view(*more.alibi_slopes, "alibi_slopes");
  if (more.sinks) options.sinks = input_view(*more.sinks, "sinks");
  return options;
}

py::tuple attention(const py::array& query, const py::array& key, const py::array& value,
                    const std::optional<py::array>& key_scale,
                    const std::optional<py::array>& value_scale,
                    const std::optional<py::array>& mask, dotattn::Causal causal,
                    std::optional<double> scale, const ScoreOptions& more,
                    std::optional<py::array> out, const std::optional<py::dtype>& out_dtype,
                    bool return_lse) {
  const dotattn::TensorView q = input_view(query, "query");
  const dotattn::TensorView k = stored_view(key, key_scale, "key");
  const dotattn::TensorView v = stored_view(value, value_scale, "value");
  dotattn::Options options = make_options(mask, causal, scale, more);
  const dotattn::Dims shape = dotattn::attention_shape(q, k, v, options);

  py::array result = out ? *out : empty_result(result_dtype(out_dtype, query.dtype()), shape);
  py::object lse = py::none();
  if (return_lse) {
    py::array lse_array = empty_result(computed_dtype(query), dotattn::Dims(shape.begin(), shape.end() - 1));
    options.lse = output_view(lse_array, "lse");
    lse = lse_array;
  }
  const dotattn::OutputView o = output_view(result, "out");
  {
    py::gil_scoped_release unlocked;
    dotattn::attention(q, k, v, o, options);
  }
  return py::make_tuple(result, lse);
}

py::array attention_weights(const py::array& query, const py::array& key,
                            const std::optional<py::array>& key_scale,
                            const std::optional<py::array>& mask, dotattn::Causal causal,
                            std::optional<double> scale, const ScoreOptions& more,
                            const std::optional<py::dtype>& out_dtype) {
  const dotattn::TensorView q = input_view(query, "query");
  const dotattn::TensorView k = stored_view(key, key_scale, "key");
  const dotattn::Options options = make_options(mask, causal, scale, more);
  py::array weights = empty_result(result_dtype(out_dtype, computed_dtype(query)),
                                   dotattn::attention_weights_shape(q, k, options));
  const dotattn::OutputView w = output_view(weights, "weights");
  {
    py::gil_scoped_release unlocked;
    dotattn::attention_weights(q, k, w, options);
  }
  return weights;
}

// (total_q, Hq, Ev) for a packed call whose query and value have the dims
// it takes; otherwise nothing, and the core's checks name what is wrong.
dotattn::Dims packed_result_shape(const py::array& query, const py::array& value, py::ssize_t value_dims) {
  if (query.ndim() != 3 || value.ndim() != value_dims) return {0};
  return {query.shape(0), query.shape(1), value.shape(value_dims - 1)};
}

// The result and LSE arrays of a packed call, and the options pointing at the LSE.
py::tuple packed_outputs(const py::array& query, const dotattn::Dims& shape,
                         std::optional<py::array> out, const std::optional<py::dtype>& out_dtype,
                         bool return_lse, dotattn::Options& options, py::array& result) {
  result = out ? *out : empty_result(result_dtype(out_dtype, query.dtype()), shape);
  py::object lse = py::none();
  if (return_lse) {
    py::array lse_array = empty_result(
        computed_dtype(query), shape.size() == 3 ? dotattn::Dims{shape[1], shape[0]} : dotattn::Dims{0});
    options.lse = output_view(lse_array, "lse");
    lse = lse_array;
  }
  return py::make_tuple(result, lse);
}

py::tuple attention_varlen(const py::array& query, const py::array& key, const py::array& value,
                           const std::optional<py::array>& key_scale,
                           const std::optional<py::array>& value_scale,
                           const py::array& cu_seqlens_q, const py::array& cu_seqlens_k,
                           dotattn::Causal causal, std::optional<double> scale,
                           const ScoreOptions& more, std::optional<py::array> out,
                           const std::optional<py::dtype>& out_dtype, bool return_lse) {
  const dotattn::TensorView q = input_view(query, "query");
  const dotattn::TensorView k = stored_view(key, key_scale, "key");
  const dotattn::TensorView v = stored_view(value, value_scale, "value");
  const dotattn::TensorView cq = input_view(cu_seqlens_q, "cu_seqlens_q");
  const dotattn::TensorView ck = input_view(cu_seqlens_k, "cu_seqlens_k");
  dotattn::Options options = make_options(std::nullopt, causal, scale, more);
  py::array result;
  py::tuple results = packed_outputs(query, packed_result_shape(query, value, 3), out, out_dtype,
                                     return_lse, options, result);
  const dotattn::OutputView o = output_view(result, "out");
  {
    py::gil_scoped_release unlocked;
    dotattn::attention_varlen(q, k, v, cq, ck, o, options);
  }
  return results;
}

py::tuple attention_paged(const py::array& query, const py::array& cu_seqlens_q,
                          const py::array& key_cache, const py::array& value_cache,
                          const std::optional<py::array>& key_scale,
                          const std::optional<py::array>& value_scale,
                          const py::array& block_table, const py::array& seq_lens_k,
                          dotattn::Causal causal, std::optional<double> scale,
                          const ScoreOptions& more, std::optional<py::array> out,
                          const std::optional<py::dtype>& out_dtype, bool return_lse) {
  const dotattn::TensorView q = input_view(query, "query");
  const dotattn::TensorView cq = input_view(cu_seqlens_q, "cu_seqlens_q");
  const dotattn::TensorView k = stored_view(key_cache, key_scale, "key_cache");
  const dotattn::TensorView v = stored_view(value_cache, value_scale, "value_cache");
  const dotattn::TensorView table = input_view(block_table, "block_table");
  const dotattn::TensorView lengths = input_view(seq_lens_k, "seq_lens_k");
  dotattn::Options options = make_options(std::nullopt, causal, scale, more);
  py::array result;
  py::tuple results = packed_outputs(query, packed_result_shape(query, value_cache, 4), out,
                                     out_dtype, return_lse, options, result);
  const dotattn::OutputView o = output_view(result, "out");
  {
    py::gil_scoped_release unlocked;
    dotattn::attention_paged(q, cq, k, v, table, lengths, o, options);
  }
  return results;
}

// (out, lse): the merge of results over disjoint key sets; out is new
// unless given.
py::tuple merge(const std::vector<py::array>& outs, const std::vector<py::array>& lses,
                std::optional<py::array> out) {
  std::vector<dotattn::TensorView> o, l;
  for (std::size_t i = 0; i < outs.size(); ++i)
    o.push_back(input_view(outs[i], ("outs[" + std::to_string(i) + "]").c_str()));
  for (std::size_t i = 0; i < lses.size(); ++i)
    l.push_back(input_view(lses[i], ("lses[" + std::to_string(i) + "]").c_str()));
  if (o.empty()) throw dotattn::argument_error("outs is empty; merge needs at least one result");
  py::array result = out ? *out : empty_like_result(outs[0], o[0].shape);
  const dotattn::Dims lse_shape(o[0].shape.begin(), o[0].shape.empty() ? o[0].shape.end() : o[0].shape.end() - 1);
  py::array lse = empty_like_result(outs[0], lse_shape);
  const dotattn::OutputView out_view = output_view(result, "out");
  const dotattn::OutputView lse_view = output_view(lse, "lse");
  {
    py::gil_scoped_release unlocked;
    dotattn::merge(o, l, out_view, lse_view);
  }
  return py::make_tuple(result, lse);
}

std::int64_t quantization_group(const py::array& data, const py::array& scale) {
  return dotattn::quantization_group(stored_view(data, scale, "data"));
}

void quantize_int8(const py::array& x, py::array& data, py::array& scale) {
  const dotattn::TensorView in = input_view(x, "x");
  dotattn::QuantizedOutput out;
  out.data = writable_data<std::int8_t>(data, "out data");
  out.strides = element_strides(data, "out data");
  out.scale = writable_data<float>(scale, "out scale");
  out.scale_shape = shape_of(scale);
  out.scale_strides = element_strides(scale, "out scale");
  if (shape_of(data) != in.shape)
    throw dotattn::argument_error(described(data, "out data") + " does not match " +
                                  described(x, "x"));
  py::gil_scoped_release unlocked;
  dotattn::quantize_int8(in, out);
}

std::uint64_t stream_read(const py::array& a) {
  if (!(a.flags() & py::array::c_style))
    throw dotattn::argument_error(described(a, "a") + " must be C-contiguous");
  const auto bytes = static_cast<std::size_t>(a.nbytes());
  py::gil_scoped_release unlocked;
  return dotattn::stream_read(a.data(), bytes);
}

py::dict kernel_rates(const std::string& isa, std::int64_t rows, std::int64_t keys, std::int64_t E,
                      double seconds) {
  dotattn::KernelRates r;
  {
    py::gil_scoped_release unlocked;
    r = dotattn::kernel_rates(isa, rows, keys, E, seconds);
  }
  py::dict d;
  d["isa"] = r.isa;
  d["peak_gflops"] = r.peak_gflops;
  d["score_gflops"] = r.score_gflops;
  d["pv_gflops"] = r.pv_gflops;
  d["softmax_gscores"] = r.softmax_gscores;
  return d;
}

// The fields of dotattn::Tuning, in order, for get_tuning / set_tuning.
constexpr std::pair<const char*, std::int64_t dotattn::Tuning::*> kTuningFields[] = {
    {"row_block", &dotattn::Tuning::row_block},
    {"key_block_bytes", &dotattn::Tuning::key_block_bytes},
    {"decode_key_block_bytes", &dotattn::Tuning::decode_key_block_bytes},
    {"min_split_keys", &dotattn::Tuning::min_split_keys},
    {"key_bytes_ahead", &dotattn::Tuning::key_bytes_ahead},
    {"value_bytes_ahead", &dotattn::Tuning::value_bytes_ahead},
    {"value_chunk_bytes", &dotattn::Tuning::value_chunk_bytes},
};

py::dict get_tuning(const std::string& isa) {
  const dotattn::Tuning t = dotattn::get_tuning(isa);
  py::dict d;
  for (const auto& [name, field] : kTuningFields) d[name] = t.*field;
  return d;
}

// Fields left out keep their values; an unknown one is refused.
void set_tuning(const std::string& isa, const py::dict& values) {
  dotattn::Tuning t = dotattn::get_tuning(isa);
  for (const auto& [key, value] : values) {
    const std::string name = py::str(key);
    bool known = false;
    for (const auto& [field_name, field] : kTuningFields)
      if (name == field_name) {
        t.*field = value.cast<std::int64_t>();
        known = true;
      }
    if (!known) throw dotattn::argument_error("set_tuning: unknown parameter \"" + name + "\"");
  }
  dotattn::set_tuning(isa, t);
}

py::dict runtime_info() {
  const dotattn::RuntimeInfo info = dotattn::runtime_info();
  py::dict d;
  d["version"] = info.version;
  d["compiler"] = info.compiler;
  d["build_type"] = info.build_type;
  d["build_flags"] = info.build_flags;
  d["openmp"] = info.openmp;
  d["cpu"] = info.cpu;
  d["cpu_features"] = info.cpu_features;
  d["isa"] = info.isa;
  d["supported_isas"] = info.supported_isas;
  d["num_threads"] = info.num_threads;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "dotattn's compiled core; use the functions in the dotattn package.";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const dotattn::dtype_error& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  py::enum_<dotattn::Causal>(m, "Causal")
      .value("none", dotattn::Causal::none)
      .value("upper_left", dotattn::Causal::upper_left)
      .value("lower_right", dotattn::Causal::lower_right);

  py::class_<ScoreOptions>(m, "ScoreOptions")
      .def(py::init([](std::optional<std::pair<std::int64_t, std::int64_t>> window,
                       std::optional<double> softcap, std::optional<py::array> alibi_slopes,
                       std::optional<py::array> sinks) {
             return ScoreOptions{window, softcap, std::move(alibi_slopes), std::move(sinks)};
           }),
           py::arg("window"), py::arg("softcap"), py::arg("alibi_slopes").noconvert(),
           py::arg("sinks").noconvert());

  m.def("attention", &attention, py::arg("query").noconvert(), py::arg("key").noconvert(),
        py::arg("value").noconvert(), py::arg("key_scale").noconvert(),
        py::arg("value_scale").noconvert(), py::arg("attn_mask").noconvert(), py::arg("causal"),
        py::arg("scale"), py::arg("options"), py::arg("out").noconvert(), py::arg("out_dtype"),
        py::arg("return_lse"));
  m.def("attention_weights", &attention_weights, py::arg("query").noconvert(),
        py::arg("key").noconvert(), py::arg("key_scale").noconvert(),
        py::arg("attn_mask").noconvert(), py::arg("causal"), py::arg("scale"), py::arg("options"),
        py::arg("out_dtype"));
  m.def("attention_varlen", &attention_varlen, py::arg("query").noconvert(),
        py::arg("key").noconvert(), py::arg("value").noconvert(), py::arg("key_scale").noconvert(),
        py::arg("value_scale").noconvert(), py::arg("cu_seqlens_q").noconvert(),
        py::arg("cu_seqlens_k").noconvert(), py::arg("causal"), py::arg("scale"),
        py::arg("options"), py::arg("out").noconvert(),
        py::arg("out_dtype"), py::arg("return_lse"));
  m.def("attention_paged", &attention_paged, py::arg("query").noconvert(),
        py::arg("cu_seqlens_q").noconvert(), py::arg("key_cache").noconvert(),
        py::arg("value_cache").noconvert(), py::arg("key_scale").noconvert(),
        py::arg("value_scale").noconvert(), py::arg("block_table").noconvert(),
        py::arg("seq_lens_k").noconvert(), py::arg("causal"), py::arg("scale"),
        py::arg("options"), py::arg("out").noconvert(),
        py::arg("out_dtype"), py::arg("return_lse"));
  m.def("merge", &merge, py::arg("outs").noconvert(), py::arg("lses").noconvert(),
        py::arg("out").noconvert());
  m.def("quantization_group", &quantization_group, py::arg("data").noconvert(),
        py::arg("scale").noconvert());
  m.def("quantize_int8", &quantize_int8, py::arg("x").noconvert(), py::arg("data").noconvert(),
        py::arg("scale").noconvert());
  m.def("stream_read", &stream_read, py::arg("a").noconvert());
  m.def("get_tuning", &get_tuning, py::arg("isa"));
  m.def("set_tuning", &set_tuning, py::arg("isa"), py::arg("values"));
  m.def("kernel_rates", &kernel_rates, py::arg("isa"), py::arg("rows"), py::arg("keys"), py::arg("E"),
        py::arg("seconds"));
  m.def("get_num_threads", &dotattn::get_num_threads);
  m.def("set_num_threads", &dotattn::set_num_threads, py::arg("n"));
  m.def("supported_isas", &dotattn::supported_isas);
  m.def("get_isa", &dotattn::get_isa);
  m.def("set_isa", &dotattn::set_isa, py::arg("name"));
  m.def("runtime_info", &runtime_info);
  m.attr("__version__") = DOTATTN_VERSION;
}
