"""The public functions: argument preparation and documentation over the
compiled core. Shapes, dtypes, masks and outputs are checked in C++
(cpp/src/check.cpp), so C++ callers get the same messages."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from . import _core
from ._quantized import QuantizedKV

if TYPE_CHECKING:  # names for the annotations only; nothing here exists at run time
    from typing import TypeVar, Union

    from numpy.typing import ArrayLike, DTypeLike, NDArray

    # The dtypes dotattn computes in: a result has its query's.
    _Float = TypeVar("_Float", np.float32, np.float64)
    _IsCausal = Union[bool, np.bool_, Literal["upper_left", "lower_right"]]
    _Scale = Union[float, np.floating[Any], np.integer[Any], None]
    _Side = Union[int, np.integer[Any], None]
    _Window = Union[tuple[_Side, _Side], list[_Side], None]

__all__ = [
    "attention",
    "attention_paged",
    "attention_varlen",
    "attention_weights",
    "get_num_threads",
    "merge",
    "set_num_threads",
    "show_config",
]


def _needs_copy(a: NDArray[Any], *, unit_last_stride: bool) -> bool:
    """Whether the core cannot read `a` in place: a non-native byte order, a
    misaligned buffer, byte strides that are not whole elements or, for
    query/key/value, a non-unit stride in the last dim."""
    flags = a.flags
    if not a.dtype.isnative or not flags.aligned:
        return True
    if flags.c_contiguous:  # the common case, answered without looking at strides
        return False
    if any(s % a.itemsize for s in a.strides):
        return True
    return unit_last_stride and a.ndim > 0 and a.size > 0 and a.shape[-1] > 1 and a.strides[-1] != a.itemsize


_KV_DTYPES = "float32, float16, bfloat16 (ml_dtypes), int8 (dotattn.QuantizedKV) or float64"
_QUERY_DTYPES = "float32, float64, float16 or bfloat16 (ml_dtypes)"


def _readable(
    x: Any,
    name: str,
    *,
    is_mask: bool = False,
    stored: bool = False,
    half: bool = False,
    any_strides: bool = False,
) -> NDArray[Any]:
    """`x` as an array the core reads in place; copied once only when it must
    be. stored: key or value, which may also be float16, bfloat16 or, as a
    QuantizedKV's data, int8. half: float16 and bfloat16 are taken (query,
    masks). any_strides: the core reads the last dim through its stride too
    (masks, merge's inputs, per-head vectors)."""
    a = np.asarray(x)
    is_float = a.dtype.kind == "f" and a.dtype.itemsize in (4, 8)
    is_16_bit = a.dtype.name in ("float16", "bfloat16")
    if not (is_float or (is_mask and a.dtype.kind == "b") or ((stored or half or is_mask) and is_16_bit)):
        if stored and a.dtype == np.int8:
            raise TypeError(
                f"{name} has dtype int8 without its scales; pass dotattn.QuantizedKV(data, scale)"
            )
        expected = (
            "bool or a float dtype"
            if is_mask
            else _KV_DTYPES
            if stored
            else _QUERY_DTYPES
            if half
            else "float32 or float64"
        )
        raise TypeError(f"{name} has dtype {a.dtype}; expected {expected}")
    if _needs_copy(a, unit_last_stride=not (is_mask or any_strides)):
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
    return a


def _stored(x: Any, name: str) -> tuple[NDArray[Any], NDArray[Any] | None]:
    """key or value as the core takes it: the array, and an int8 one's scales."""
    if isinstance(x, QuantizedKV):
        return x.data, x.scale  # checked, and read in place, when the QuantizedKV was made
    return _readable(x, name, stored=True), None


def _causal(is_causal: Any, *, packed: bool = False) -> _core.Causal:
    """packed: the varlen and paged calls, whose True is flash-attn's
    bottom-right alignment."""
    if isinstance(is_causal, (bool, np.bool_)):
        if not is_causal:
            return _core.Causal.none
        return _core.Causal.lower_right if packed else _core.Causal.upper_left
    if isinstance(is_causal, str) and is_causal in ("upper_left", "lower_right"):
        return _core.Causal.__members__[is_causal]
    message = f"is_causal must be False, True, 'upper_left' or 'lower_right'; got {is_causal!r}"
    raise (ValueError if isinstance(is_causal, str) else TypeError)(message)


def _real(x: Any, name: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number or None; got {x!r}")
    return float(x)


def _window(window: Any) -> tuple[int, int] | None:
    """(left, right) with None as -1 (unbounded); the core checks the values."""
    if window is None:
        return None
    if isinstance(window, np.ndarray) and window.ndim == 1:
        window = window.tolist()
    message = f"window must be a pair (left, right) of ints or None; got {window!r}"
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(message)
    sides = []
    for side in window:
        if side is None:
            sides.append(-1)
        elif isinstance(side, numbers.Integral) and not isinstance(side, (bool, np.bool_)):
            sides.append(int(side))
        else:
            raise TypeError(message)
    return sides[0], sides[1]


def _per_head(x: Any, name: str) -> NDArray[Any] | None:
    """alibi_slopes or sinks: (Hq,) float32 or float64; ints read as float64."""
    if x is None:
        return None
    a = np.asarray(x)
    if a.dtype.kind in "iu":
        a = a.astype(np.float64)
    return _readable(a, name, any_strides=True)


def _score_options(window: Any, softcap: Any, alibi_slopes: Any, sinks: Any) -> _core.ScoreOptions:
    return _core.ScoreOptions(
        _window(window),
        _real(softcap, "softcap"),
        _per_head(alibi_slopes, "alibi_slopes"),
        _per_head(sinks, "sinks"),
    )


def _indices(x: Any, name: str, *, table: bool = False) -> NDArray[np.signedinteger[Any]]:
    """An index array as the core reads it: cu_seqlens and seq_lens_k int32
    or int64 in place (other integer dtypes converted to int64); a block
    table int32 with unit stride in its last dim (converted when its values
    fit)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu" and a.size:  # an empty list is float64 to NumPy
        raise TypeError(f"{name} has dtype {a.dtype}; expected an integer dtype")
    target = np.dtype(np.int32) if table or a.dtype == np.int32 else np.dtype(np.int64)
    if a.dtype != target:
        info = np.iinfo(target)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise ValueError(f"{name} holds values that do not fit {target}")
        a = a.astype(target)
    if _needs_copy(a, unit_last_stride=table):
        a = np.array(a, dtype=target, order="C", copy=True)
    return a


def _output(out: Any) -> NDArray[Any] | None:
    if out is not None and not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray; got {type(out).__name__}")
    return out


def _out_dtype(out_dtype: Any, out: Any) -> np.dtype[Any] | None:
    """out_dtype as a NumPy dtype (the core checks which it may be)."""
    if out_dtype is None:
        return None
    dtype: np.dtype[Any] = np.dtype(out_dtype)
    if out is not None and isinstance(out, np.ndarray) and out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype} but out_dtype is {dtype}; pass one or make them agree")
    return dtype


# The overloads tell type checkers what attention() returns: an array of the
# query's dtype, or (out, lse) with return_lse=True.
@overload
def attention(
    query: NDArray[_Float],
    key: ArrayLike,
    value: ArrayLike,
    *,
    attn_mask: ArrayLike | None = ...,
    is_causal: _IsCausal = ...,
    scale: _Scale = ...,
    window: _Window = ...,
    softcap: _Scale = ...,
    alibi_slopes: ArrayLike | None = ...,
    sinks: ArrayLike | None = ...,
    out: NDArray[Any] | None = ...,
    out_dtype: DTypeLike | None = ...,
    return_lse: Literal[False] = ...,
) -> NDArray[_Float]: ...
@overload
def attention(
    query: NDArray[_Float],
    key: ArrayLike,
    value: ArrayLike,
    *,
    attn_mask: ArrayLike | None = ...,
    is_causal: _IsCausal = ...,
    scale: _Scale = ...,
    window: _Window = ...,
    softcap: _Scale = ...,
    alibi_slopes: ArrayLike | None = ...,
    sinks: ArrayLike | None = ...,
    out: NDArray[Any] | None = ...,
    out_dtype: DTypeLike | None = ...,
    return_lse: Literal[True],
) -> tuple[NDArray[_Float], NDArray[_Float]]: ...
@overload
def attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    *,
    attn_mask: ArrayLike | None = ...,
    is_causal: _IsCausal = ...,
    scale: _Scale = ...,
    window: _Window = ...,
    softcap: _Scale = ...,
    alibi_slopes: ArrayLike | None = ...,
    sinks: ArrayLike | None = ...,
    out: NDArray[Any] | None = ...,
    out_dtype: DTypeLike | None = ...,
    return_lse: Literal[False] = ...,
) -> NDArray[np.floating[Any]]: ...
@overload
def attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    *,
    attn_mask: ArrayLike | None = ...,
    is_causal: _IsCausal = ...,
    scale: _Scale = ...,
    window: _Window = ...,
    softcap: _Scale = ...,
    alibi_slopes: ArrayLike | None = ...,
    sinks: ArrayLike | None = ...,
    out: NDArray[Any] | None = ...,
    out_dtype: DTypeLike | None = ...,
    return_lse: Literal[True],
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]]]: ...
@overload
def attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    *,
    attn_mask: ArrayLike | None = ...,
    is_causal: _IsCausal = ...,
    scale: _Scale = ...,
    window: _Window = ...,
    softcap: _Scale = ...,
    alibi_slopes: ArrayLike | None = ...,
    sinks: ArrayLike | None = ...,
    out: NDArray[Any] | None = ...,
    out_dtype: DTypeLike | None = ...,
    return_lse: bool = ...,
) -> NDArray[np.floating[Any]] | tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]]]: ...
def attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    *,
    attn_mask: ArrayLike | None = None,
    is_causal: _IsCausal = False,
    scale: _Scale = None,
    window: _Window = None,
    softcap: _Scale = None,
    alibi_slopes: ArrayLike | None = None,
    sinks: ArrayLike | None = None,
    out: NDArray[Any] | None = None,
    out_dtype: DTypeLike | None = None,
    return_lse: bool = False,
) -> NDArray[Any] | tuple[NDArray[Any], NDArray[Any]]:
    """Scaled dot-product attention: ``softmax(query @ key.T * scale + mask) @ value``.

    Parameters
    ----------
    query : array_like, shape (..., Hq, L, E) or (L, E)
        float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``). A
        16-bit query computes in float32: it is widened as it is read, the
        softmax and the sums run in float32, and the result is rounded once
        (to nearest even) into its dtype.
    key : array_like or QuantizedKV, shape (..., Hkv, S, E) or (S, E)
    value : array_like or QuantizedKV, shape (..., Hkv, S, Ev) or (S, Ev)
        As stored: with a float32, float16 or bfloat16 query, each of key
        and value may be
        float32, float16, bfloat16 (``ml_dtypes.bfloat16``) or int8 with
        its scales (:class:`QuantizedKV`, :func:`quantize_kv`), each its own
        format, widened to float32 block by block inside the kernels (never
        copied whole). A float64 query takes float64 key and value. The
        leading batch dims ``...`` are equal. Hq must be a multiple of Hkv:
        query head ``h`` reads key/value head ``h // (Hq // Hkv)``
        (grouped-query and multi-query attention), without copying key or
        value.
    attn_mask : array_like, optional
        Broadcastable to (..., Hq, L, S). Boolean: True means the query may
        attend to the key. Float (the inputs' dtype; with a 16-bit query,
        its dtype or float32): added to the scores, ``-inf`` masks.
        Broadcast through strides, never materialised.
    is_causal : bool or str, default False
        ``True`` or ``"upper_left"``: query ``i`` sees keys ``j <= i``
        (PyTorch's ``is_causal``). ``"lower_right"``: query ``i`` sees keys
        ``j <= i + S - L``, the KV-cache convention. Combines with attn_mask.
    scale : float, optional
        Multiplies the scores; default ``1 / sqrt(E)``. Must be finite.
    window : (int or None, int or None), optional
        A sliding window ``(left, right)``: query ``i`` sees key ``j`` only
        for ``i' - left <= j <= i' + right``, where ``i' = i`` with
        ``is_causal=True``/``"upper_left"`` and ``i' = i + S - L`` otherwise
        (bottom-right aligned, as flash-attn's ``window_size``). ``None`` or
        ``-1`` leaves a side unbounded; a causal rule bounds the right side
        at 0. Keys outside every row's window are never read, so the cost
        grows with the window, not with S.
    softcap : float, optional
        Logit soft-capping (Gemma 2): each scaled score ``s`` becomes
        ``softcap * tanh(s / softcap)``; ``softcap > 0``.
    alibi_slopes : array_like, optional
        ALiBi, shape (Hq,), float32 or float64: adds
        ``-alibi_slopes[h] * |i' - j|`` to the score of head ``h`` (``i'`` as
        for ``window``), after the soft cap and before ``attn_mask``.
    sinks : array_like, optional
        Attention sinks (gpt-oss), shape (Hq,), float32 or float64, finite:
        one extra logit ``sinks[h]`` in each row's softmax denominator, with
        no value: ``out = sum_j exp(s_j) v_j / (exp(sinks[h]) + sum_j
        exp(s_j))``. The LSE includes it; a row that sees no key gets zeros
        and an LSE of ``sinks[h]``. When merging shards (:func:`merge`), pass
        the sinks to one shard only.
    out : numpy.ndarray, optional
        Writable, C-contiguous, of the result's shape and dtype, sharing no
        memory with an input; written in place and returned.
    out_dtype : dtype, optional
        The result's dtype: the query's (default), or float32 for a float16
        or bfloat16 query. Given with ``out``, it must be out's dtype.
    return_lse : bool, default False
        Also return the log-sum-exp of the scaled, masked scores, shape
        (..., Hq, L): float64 for a float64 query, float32 otherwise.

    Returns
    -------
    out : numpy.ndarray, shape (..., Hq, L, Ev) or (L, Ev)
        In out_dtype (default: the query's dtype). A query row that sees no
        key (fully masked, or S == 0) is zeros, with an LSE of -inf.
    (out, lse) if return_lse.

    Notes
    -----
    A float32, float16 or bfloat16 query computes in float32 (whatever key
    and value are stored as) with a max-subtracted online softmax that
    never forms the L x S score matrix; float64 in float64. Inputs whose last
    dim has unit stride are read in place whatever their other strides (e.g.
    ``x.transpose(0, 2, 1, 3)``); other layouts (a strided last dim,
    non-native byte order, misaligned data) are copied once. The GIL is
    released while computing. Bad arguments raise ValueError or TypeError
    naming the argument and shapes, and leave ``out`` untouched.
    """
    k, k_scale = _stored(key, "key")
    v, v_scale = _stored(value, "value")
    result, lse = _core.attention(
        _readable(query, "query", half=True),
        k,
        v,
        k_scale,
        v_scale,
        None if attn_mask is None else _readable(attn_mask, "attn_mask", is_mask=True),
        _causal(is_causal),
        _real(scale, "scale"),
        _score_options(window, softcap, alibi_slopes, sinks),
        _output(out),
        _out_dtype(out_dtype, out),
        bool(return_lse),
    )
    if not return_lse:
        return result
    assert lse is not None  # the core returns it when asked
    return result, lse


@overload
def attention_weights(
    query: NDArray[_Float],
    key: ArrayLike,
    *,
    attn_mask: ArrayLike | None = ...,
    is_causal: _IsCausal = ...,
    scale: _Scale = ...,
    window: _Window = ...,
    softcap: _Scale = ...,
    alibi_slopes: ArrayLike | None = ...,
    sinks: ArrayLike | None = ...,
    out_dtype: DTypeLike | None = ...,
) -> NDArray[_Float]: ...
@overload
def attention_weights(
    query: ArrayLike,
    key: ArrayLike,
    *,
    attn_mask: ArrayLike | None = ...,
    is_causal: _IsCausal = ...,
    scale: _Scale = ...,
    window: _Window = ...,
    softcap: _Scale = ...,
    alibi_slopes: ArrayLike | None = ...,
    sinks: ArrayLike | None = ...,
    out_dtype: DTypeLike | None = ...,
) -> NDArray[np.floating[Any]]: ...
def attention_weights(
    query: ArrayLike,
    key: ArrayLike,
    *,
    attn_mask: ArrayLike | None = None,
    is_causal: _IsCausal = False,
    scale: _Scale = None,
    window: _Window = None,
    softcap: _Scale = None,
    alibi_slopes: ArrayLike | None = None,
    sinks: ArrayLike | None = None,
    out_dtype: DTypeLike | None = None,
) -> NDArray[Any]:
    """The attention weights ``softmax(query @ key.T * scale + mask)``.

    How much each query token draws from each key token: shape
    (..., Hq, L, S) (or (L, S) for 2-D inputs), each row summing to 1, a row
    that sees no key all zeros (with ``sinks``, rows sum to less than 1: the
    sink takes the rest). Arguments as in :func:`attention`;
    ``attention(q, k, v)`` equals ``attention_weights(q, k) @ v`` up to
    rounding, for any masks. The weights are float32 for a float32,
    float16 or bfloat16 query (``out_dtype`` may ask for the query's 16-bit
    dtype), float64 for a float64 one.
    """
    k, k_scale = _stored(key, "key")
    return _core.attention_weights(
        _readable(query, "query", half=True),
        k,
        k_scale,
        None if attn_mask is None else _readable(attn_mask, "attn_mask", is_mask=True),
        _causal(is_causal),
        _real(scale, "scale"),
        _score_options(window, softcap, alibi_slopes, sinks),
        _out_dtype(out_dtype, None),
    )


def attention_varlen(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    cu_seqlens_q: ArrayLike,
    cu_seqlens_k: ArrayLike,
    *,
    is_causal: _IsCausal = False,
    scale: _Scale = None,
    window: _Window = None,
    softcap: _Scale = None,
    alibi_slopes: ArrayLike | None = None,
    sinks: ArrayLike | None = None,
    out: NDArray[Any] | None = None,
    out_dtype: DTypeLike | None = None,
    return_lse: bool = False,
) -> Any:
    """Attention over a packed batch of sequences of different lengths.

    The varlen layout of flash-attn and vLLM: sequence ``b``'s queries are
    rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` of ``query``, its keys and
    values rows ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]`` of ``key`` and
    ``value``; each sequence is :func:`attention` of its own L and S (the
    causal rule and window aligned by them), and no padding is computed.

    Parameters
    ----------
    query : array_like, shape (total_q, Hq, E)
    key, value : array_like or QuantizedKV, shape (total_k, Hkv, E) / (total_k, Hkv, Ev)
        Any format :func:`attention` reads.
    cu_seqlens_q, cu_seqlens_k : array_like of int, shape (B + 1,)
        Offsets rising from 0 to total_q and total_k (int32 is read in
        place, other integer dtypes converted).
    is_causal, scale, window, softcap, alibi_slopes, sinks
        As in :func:`attention`, for every sequence; there is no attn_mask.
    out : numpy.ndarray, optional
        (total_q, Hq, Ev), C-contiguous, of the result's dtype.
    out_dtype : dtype, optional
        As in :func:`attention`: the query's dtype, or float32 for a 16-bit
        query.
    return_lse : bool, default False
        Also return the LSE, shape (Hq, total_q) (flash-attn's layout).

    Returns
    -------
    out, or (out, lse) if return_lse.
    """
    k, k_scale = _stored(key, "key")
    v, v_scale = _stored(value, "value")
    result, lse = _core.attention_varlen(
        _readable(query, "query", half=True),
        k,
        v,
        k_scale,
        v_scale,
        _indices(cu_seqlens_q, "cu_seqlens_q"),
        _indices(cu_seqlens_k, "cu_seqlens_k"),
        _causal(is_causal, packed=True),
        _real(scale, "scale"),
        _score_options(window, softcap, alibi_slopes, sinks),
        _output(out),
        _out_dtype(out_dtype, out),
        bool(return_lse),
    )
    return (result, lse) if return_lse else result


def attention_paged(
    query: ArrayLike,
    key_cache: ArrayLike,
    value_cache: ArrayLike,
    block_table: ArrayLike,
    seq_lens_k: ArrayLike,
    cu_seqlens_q: ArrayLike | None = None,
    *,
    is_causal: _IsCausal = False,
    scale: _Scale = None,
    window: _Window = None,
    softcap: _Scale = None,
    alibi_slopes: ArrayLike | None = None,
    sinks: ArrayLike | None = None,
    out: NDArray[Any] | None = None,
    out_dtype: DTypeLike | None = None,
    return_lse: bool = False,
) -> Any:
    """Attention against a paged KV cache addressed through a block table.

    vLLM's layout: the cache is a pool of pages of ``page_size`` token
    slots; sequence ``b``'s key ``j`` (``j < seq_lens_k[b]``) is slot ``j %
    page_size`` of page ``block_table[b, j // page_size]``. Pages are read
    in place, never gathered into a contiguous copy.

    Parameters
    ----------
    query : array_like, shape (total_q, Hq, E)
        The sequences' queries packed token-major; by default one per
        sequence (decoding: ``total_q == B``).
    key_cache, value_cache : array_like or QuantizedKV
        Shapes (num_pages, page_size, Hkv, E) and (num_pages, page_size,
        Hkv, Ev), in any format :func:`attention` reads (an int8
        QuantizedKV's scales (num_pages, page_size, Hkv, groups)).
    block_table : array_like of int, shape (B, max_pages)
        Page indices, int32 (read in place; other integer dtypes
        converted); entries past a sequence's last page are not read.
    seq_lens_k : array_like of int, shape (B,)
        Keys per sequence, at most max_pages * page_size.
    cu_seqlens_q : array_like of int, shape (B + 1,), optional
        Query offsets as in :func:`attention_varlen` (prefill, chunked
        prefill, speculative decoding); default ``0, 1, ..., B``.
    is_causal, scale, window, softcap, alibi_slopes, sinks
        As in :func:`attention_varlen`, per sequence (``True`` is the
        bottom-right alignment: a chunk of queries at the end of its
        sequence).
    out, out_dtype, return_lse
        As in :func:`attention_varlen`.

    Returns
    -------
    out (total_q, Hq, Ev), or (out, lse (Hq, total_q)) if return_lse.
    Page indices outside the cache and lengths beyond a sequence's pages
    raise ValueError before anything is read.
    """
    q = _readable(query, "query", half=True)
    table = _indices(block_table, "block_table", table=True)
    if cu_seqlens_q is None:
        cu_seqlens_q = np.arange(table.shape[0] + 1 if table.ndim else 1, dtype=np.int32)
    k, k_scale = _stored(key_cache, "key_cache")
    v, v_scale = _stored(value_cache, "value_cache")
    result, lse = _core.attention_paged(
        q,
        _indices(cu_seqlens_q, "cu_seqlens_q"),
        k,
        v,
        k_scale,
        v_scale,
        table,
        _indices(seq_lens_k, "seq_lens_k"),
        _causal(is_causal, packed=True),
        _real(scale, "scale"),
        _score_options(window, softcap, alibi_slopes, sinks),
        _output(out),
        _out_dtype(out_dtype, out),
        bool(return_lse),
    )
    return (result, lse) if return_lse else result


def merge(
    outs: list[ArrayLike] | tuple[ArrayLike, ...],
    lses: list[ArrayLike] | tuple[ArrayLike, ...],
    *,
    out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """The exact combination of attention results over disjoint key sets.

    Split-K or sharded KV: ``attention`` of the same queries over key sets
    ``K_1, K_2, ...`` with ``return_lse=True`` gives ``(outs[i],
    lses[i])``; ``merge`` returns ``(out, lse)`` equal to attention over
    their union. With ``m = max_i lses[i]`` and ``w_i = exp(lses[i] - m)``:
    ``out = sum_i w_i outs[i] / sum_i w_i`` and ``lse = m + log(sum_i
    w_i)``.

    Parameters
    ----------
    outs : sequence of array_like, each of shape (..., Ev)
        All float32 or all float64, all of one shape; any strides.
    lses : sequence of array_like, each of shape (...)
        Every dim of its out but the last, same dtype; any strides (e.g. a
        transposed view).
    out : numpy.ndarray, optional
        Writable, C-contiguous, of the outs' shape and dtype, sharing no
        memory with an input; written in place and returned.

    Returns
    -------
    (out, lse)
        A shard whose LSE is -inf (it saw no key) contributes nothing,
        whatever its out holds; a row whose every LSE is -inf gets zeros and
        -inf, as a fully masked row of :func:`attention` does. NaN
        propagates.
    """
    if not isinstance(outs, (list, tuple)) or not isinstance(lses, (list, tuple)):
        raise TypeError("merge: outs and lses must be lists or tuples of arrays")
    return _core.merge(
        [_readable(o, f"outs[{i}]", any_strides=True) for i, o in enumerate(outs)],
        [_readable(lse, f"lses[{i}]", any_strides=True) for i, lse in enumerate(lses)],
        _output(out),
    )


def get_num_threads() -> int:
    """Threads one call uses: the value of set_num_threads(), or else
    OpenMP's default (which honours OMP_NUM_THREADS). In a process forked
    after a call has run on more than one thread: 1, whatever was set (GNU
    libgomp's thread pool does not survive fork())."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n >= 1`` threads per call from now on, in every Python thread."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: n must be an int; got {n!r}")
    _core.set_num_threads(int(n))


def supported_isas() -> list[str]:
    """The SIMD kernel sets this CPU runs, best first: some of ``"avx512"``,
    ``"avx2"`` (and ``"avx512_emulated"`` in test builds), and always
    ``"scalar"`` (portable, last)."""
    return _core.supported_isas()


def get_isa() -> str:
    """The kernel set float32 calls use: the best this CPU supports, unless
    the environment variable ``DOTATTN_ISA`` or :func:`set_isa` chose
    another. float64 always runs the portable kernels."""
    return _core.get_isa()


def set_isa(name: str) -> None:
    """Use the kernel set ``name`` (one of :func:`supported_isas`) from now
    on. Raises ValueError for an unknown name or one this CPU lacks."""
    if not isinstance(name, str):
        raise TypeError(f"set_isa: name must be a str; got {name!r}")
    _core.set_isa(name)


@overload
def show_config(mode: Literal["stdout"] = ...) -> None: ...
@overload
def show_config(mode: Literal["dicts"]) -> dict[str, Any]: ...
@overload
def show_config(mode: str) -> dict[str, Any] | None: ...
def show_config(mode: str = "stdout") -> dict[str, Any] | None:
    """The build and the machine as dotattn sees them: version, compiler,
    build flags, OpenMP, CPU and its features, the kernel sets supported and
    the one in use, threads.

    ``mode="stdout"`` prints them; ``mode="dicts"`` returns them as a dict.
    """
    info = _core.runtime_info()
    info["numpy"] = np.__version__
    if mode == "dicts":
        return info
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts'; got {mode!r}")
    width = max(len(k) for k in info)
    for k, v in info.items():
        text = " ".join(v) if isinstance(v, list) else v
        print(f"{k:>{width}}: {text}")
    return None
