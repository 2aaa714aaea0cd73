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

    from numpy.typing import ArrayLike, NDArray

    # The dtypes dotattn computes in: a result has its query's.
    _Float = TypeVar("_Float", np.float32, np.float64)
    _IsCausal = Union[bool, np.bool_, Literal["upper_left", "lower_right"]]
    _Scale = Union[float, np.floating[Any], np.integer[Any], None]

__all__ = [
    "attention",
    "attention_weights",
    "get_num_threads",
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


def _readable(x: Any, name: str, *, is_mask: bool = False, stored: bool = False) -> NDArray[Any]:
    """`x` as an array the core reads in place; copied once only when it must
    be. stored: key or value, which may also be float16, bfloat16 or, as a
    QuantizedKV's data, int8."""
    a = np.asarray(x)
    is_float = a.dtype.kind == "f" and a.dtype.itemsize in (4, 8)
    is_16_bit = a.dtype.name in ("float16", "bfloat16")
    if not (is_float or (is_mask and a.dtype.kind == "b") or (stored and is_16_bit)):
        if stored and a.dtype == np.int8:
            raise TypeError(
                f"{name} has dtype int8 without its scales; pass dotattn.QuantizedKV(data, scale)"
            )
        expected = (
            "bool or the inputs' float dtype" if is_mask else _KV_DTYPES if stored else "float32 or float64"
        )
        raise TypeError(f"{name} has dtype {a.dtype}; expected {expected}")
    if _needs_copy(a, unit_last_stride=not is_mask):
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
    return a


def _stored(x: Any, name: str) -> tuple[NDArray[Any], NDArray[Any] | None]:
    """key or value as the core takes it: the array, and an int8 one's scales."""
    if isinstance(x, QuantizedKV):
        return x.data, x.scale  # checked, and read in place, when the QuantizedKV was made
    return _readable(x, name, stored=True), None


def _causal(is_causal: Any) -> _core.Causal:
    if isinstance(is_causal, (bool, np.bool_)):
        return _core.Causal.upper_left if is_causal else _core.Causal.none
    if isinstance(is_causal, str) and is_causal in ("upper_left", "lower_right"):
        return _core.Causal.__members__[is_causal]
    message = f"is_causal must be False, True, 'upper_left' or 'lower_right'; got {is_causal!r}"
    raise (ValueError if isinstance(is_causal, str) else TypeError)(message)


def _scale(scale: Any) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None; got {scale!r}")
    return float(scale)


def _output(out: Any) -> NDArray[Any] | None:
    if out is not None and not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray; got {type(out).__name__}")
    return out


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
    out: NDArray[Any] | None = ...,
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
    out: NDArray[Any] | None = ...,
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
    out: NDArray[Any] | None = ...,
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
    out: NDArray[Any] | None = ...,
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
    out: NDArray[Any] | None = ...,
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
    out: NDArray[Any] | None = None,
    return_lse: bool = False,
) -> NDArray[Any] | tuple[NDArray[Any], NDArray[Any]]:
    """Scaled dot-product attention: ``softmax(query @ key.T * scale + mask) @ value``.

    Parameters
    ----------
    query : array_like, shape (..., Hq, L, E) or (L, E)
        float32 or float64.
    key : array_like or QuantizedKV, shape (..., Hkv, S, E) or (S, E)
    value : array_like or QuantizedKV, shape (..., Hkv, S, Ev) or (S, Ev)
        As stored: with a float32 query, each of key and value may be
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
        attend to the key. Float (the inputs' dtype): added to the scores,
        ``-inf`` masks. Broadcast through strides, never materialised.
    is_causal : bool or str, default False
        ``True`` or ``"upper_left"``: query ``i`` sees keys ``j <= i``
        (PyTorch's ``is_causal``). ``"lower_right"``: query ``i`` sees keys
        ``j <= i + S - L``, the KV-cache convention. Combines with attn_mask.
    scale : float, optional
        Multiplies the scores; default ``1 / sqrt(E)``. Must be finite.
    out : numpy.ndarray, optional
        Writable, C-contiguous, of the result's shape and dtype, sharing no
        memory with an input; written in place and returned.
    return_lse : bool, default False
        Also return the log-sum-exp of the scaled, masked scores, shape
        (..., Hq, L), in the inputs' dtype.

    Returns
    -------
    out : numpy.ndarray, shape (..., Hq, L, Ev) or (L, Ev)
        In the inputs' dtype. A query row that sees no key (fully masked, or
        S == 0) is zeros, with an LSE of -inf.
    (out, lse) if return_lse.

    Notes
    -----
    A float32 query computes in float32 (whatever key and value are stored
    as) with a max-subtracted online softmax that
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
        _readable(query, "query"),
        k,
        v,
        k_scale,
        v_scale,
        None if attn_mask is None else _readable(attn_mask, "attn_mask", is_mask=True),
        _causal(is_causal),
        _scale(scale),
        _output(out),
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
) -> NDArray[_Float]: ...
@overload
def attention_weights(
    query: ArrayLike,
    key: ArrayLike,
    *,
    attn_mask: ArrayLike | None = ...,
    is_causal: _IsCausal = ...,
    scale: _Scale = ...,
) -> NDArray[np.floating[Any]]: ...
def attention_weights(
    query: ArrayLike,
    key: ArrayLike,
    *,
    attn_mask: ArrayLike | None = None,
    is_causal: _IsCausal = False,
    scale: _Scale = None,
) -> NDArray[Any]:
    """The attention weights ``softmax(query @ key.T * scale + mask)``.

    How much each query token draws from each key token: shape
    (..., Hq, L, S) (or (L, S) for 2-D inputs), each row summing to 1, a row
    that sees no key all zeros. Arguments as in :func:`attention`;
    ``attention(q, k, v)`` equals ``attention_weights(q, k) @ v`` up to
    rounding, for any masks.
    """
    k, k_scale = _stored(key, "key")
    return _core.attention_weights(
        _readable(query, "query"),
        k,
        k_scale,
        None if attn_mask is None else _readable(attn_mask, "attn_mask", is_mask=True),
        _causal(is_causal),
        _scale(scale),
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
    ``"avx2"``, and always ``"scalar"`` (portable, last)."""
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
