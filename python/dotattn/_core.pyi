"""Type stubs for dotattn._core, the compiled module (cpp/bindings/python_module.cpp).

The public functions are those of the dotattn package (python/dotattn/_api.py),
which prepare the arguments: the functions here take arrays as they are
(NumPy arrays only, never converted), every argument given, and raise
TypeError for a dtype they do not take (float32, float64, float16 and
bfloat16 queries; also int8 with float32 scales for key and value; bool for
attn_mask) or a non-native byte order, and ValueError for other bad
arguments. out_dtype None gives the query's dtype (attention_weights: the
dtype computed in, float64 or float32)."""

from typing import Any, ClassVar, Literal, overload

import numpy as np
from numpy.typing import NDArray

__version__: str

class Causal:
    """Which keys a query row sees: none (all), upper_left (j <= i),
    lower_right (j <= i + S - L). A pybind11 enum."""

    none: ClassVar[Causal]
    upper_left: ClassVar[Causal]
    lower_right: ClassVar[Causal]
    __members__: ClassVar[dict[str, Causal]]

    def __init__(self, value: int) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __index__(self) -> int: ...
    def __int__(self) -> int: ...
    def __getstate__(self) -> int: ...
    def __setstate__(self, state: int) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

class ScoreOptions:
    """window, softcap, alibi_slopes and sinks, as dotattn.attention takes
    them (window sides -1 for unbounded)."""

    def __init__(
        self,
        window: tuple[int, int] | None,
        softcap: float | None,
        alibi_slopes: NDArray[np.floating[Any]] | None,
        sinks: NDArray[np.floating[Any]] | None,
    ) -> None: ...

# Returns (out, lse): out is the `out` argument when one is given, else a new
# array of out_dtype or the query's dtype; lse (float32, or float64 for a
# float64 query) is None unless return_lse.
@overload
def attention(
    query: NDArray[Any],
    key: NDArray[Any],
    value: NDArray[Any],
    key_scale: NDArray[np.float32] | None,
    value_scale: NDArray[np.float32] | None,
    attn_mask: NDArray[np.bool_] | NDArray[np.floating[Any]] | None,
    causal: Causal,
    scale: float | None,
    options: ScoreOptions,
    out: NDArray[Any] | None,
    out_dtype: np.dtype[Any] | None,
    return_lse: Literal[False],
) -> tuple[NDArray[np.floating[Any]], None]: ...
@overload
def attention(
    query: NDArray[Any],
    key: NDArray[Any],
    value: NDArray[Any],
    key_scale: NDArray[np.float32] | None,
    value_scale: NDArray[np.float32] | None,
    attn_mask: NDArray[np.bool_] | NDArray[np.floating[Any]] | None,
    causal: Causal,
    scale: float | None,
    options: ScoreOptions,
    out: NDArray[Any] | None,
    out_dtype: np.dtype[Any] | None,
    return_lse: Literal[True],
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]]]: ...
@overload
def attention(
    query: NDArray[Any],
    key: NDArray[Any],
    value: NDArray[Any],
    key_scale: NDArray[np.float32] | None,
    value_scale: NDArray[np.float32] | None,
    attn_mask: NDArray[np.bool_] | NDArray[np.floating[Any]] | None,
    causal: Causal,
    scale: float | None,
    options: ScoreOptions,
    out: NDArray[Any] | None,
    out_dtype: np.dtype[Any] | None,
    return_lse: bool,
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]] | None]: ...
def attention_weights(
    query: NDArray[Any],
    key: NDArray[Any],
    key_scale: NDArray[np.float32] | None,
    attn_mask: NDArray[np.bool_] | NDArray[np.floating[Any]] | None,
    causal: Causal,
    scale: float | None,
    options: ScoreOptions,
    out_dtype: np.dtype[Any] | None,
) -> NDArray[Any]: ...

# Packed and paged calls return (out, lse) as attention does.
def attention_varlen(
    query: NDArray[Any],
    key: NDArray[Any],
    value: NDArray[Any],
    key_scale: NDArray[np.float32] | None,
    value_scale: NDArray[np.float32] | None,
    cu_seqlens_q: NDArray[np.int32],
    cu_seqlens_k: NDArray[np.int32],
    causal: Causal,
    scale: float | None,
    options: ScoreOptions,
    out: NDArray[Any] | None,
    out_dtype: np.dtype[Any] | None,
    return_lse: bool,
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]] | None]: ...
def attention_paged(
    query: NDArray[Any],
    cu_seqlens_q: NDArray[np.int32],
    key_cache: NDArray[Any],
    value_cache: NDArray[Any],
    key_scale: NDArray[np.float32] | None,
    value_scale: NDArray[np.float32] | None,
    block_table: NDArray[np.int32],
    seq_lens_k: NDArray[np.int32],
    causal: Causal,
    scale: float | None,
    options: ScoreOptions,
    out: NDArray[Any] | None,
    out_dtype: np.dtype[Any] | None,
    return_lse: bool,
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]] | None]: ...

# Returns (out, lse): out is the `out` argument when one is given.
def merge(
    outs: list[NDArray[np.floating[Any]]],
    lses: list[NDArray[np.floating[Any]]],
    out: NDArray[np.floating[Any]] | None,
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]]]: ...
def quantization_group(data: NDArray[np.int8], scale: NDArray[np.float32]) -> int: ...
def quantize_int8(x: NDArray[Any], data: NDArray[np.int8], scale: NDArray[np.float32]) -> None: ...

# Reads every byte of a C-contiguous array once on get_num_threads() threads
# (for benchmarks: the read bandwidth); returns a checksum.
def stream_read(a: NDArray[Any]) -> int: ...

# A kernel set's parameter table (dotattn::Tuning): row_block,
# key_block_bytes, decode_key_block_bytes, min_split_keys, key_bytes_ahead, value_bytes_ahead,
# value_chunk_bytes. set_tuning changes the fields it names.
def get_tuning(isa: str) -> dict[str, int]: ...
def set_tuning(isa: str, values: dict[str, int]) -> None: ...

# One thread's rates of kernel set isa's steps on one tile in cache: isa
# (str); peak_gflops, score_gflops, pv_gflops, softmax_gscores (float).
def kernel_rates(isa: str, rows: int, keys: int, E: int, seconds: float) -> dict[str, Any]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def supported_isas() -> list[str]: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...

# Keys: version, compiler, build_type, build_flags, openmp, cpu, isa (str);
# cpu_features, supported_isas (list[str]); num_threads (int).
def runtime_info() -> dict[str, Any]: ...
