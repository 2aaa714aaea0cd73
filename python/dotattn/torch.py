"""dotattn.torch: dotattn on ``torch.Tensor``s.

- :func:`attention`, :func:`attention_varlen` and :func:`attention_paged`
  take CPU tensors and the options of the NumPy functions of the same
  names. Tensors are read in place, strides kept (a ``(B, L, H, E)`` layer
  output seen as ``(B, H, L, E)`` through ``transpose(1, 2)`` is not
  copied); a bfloat16 tensor is seen as ``ml_dtypes.bfloat16`` through an
  int16 view of its storage. The result is a tensor over the memory dotattn
  wrote: no copy on the way out either.
- :func:`attention` runs as the custom op ``torch.ops.dotattn.attention``
  (with a fake implementation), so ``torch.compile(..., fullgraph=True)``
  traces through it; its result never aliases an input.
- :func:`register_transformers` registers an attention function and its
  mask function with Hugging Face transformers under the name
  ``"dotattn"``: ``from_pretrained(..., attn_implementation="dotattn")``.

There is no backward: a tensor that requires grad is refused unless grad
mode is off (``torch.no_grad()`` or ``torch.inference_mode()``). Importing
this module imports torch; ``import dotattn`` does not import this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from . import _api

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "attention",
    "attention_paged",
    "attention_varlen",
    "register_transformers",
    "transformers_attention",
]


def _bfloat16() -> Any:
    try:
        import ml_dtypes
    except ImportError as e:
        raise TypeError(
            "a bfloat16 tensor needs ml_dtypes for dotattn to read it: pip install ml_dtypes"
        ) from e
    return ml_dtypes.bfloat16


def _numpy(t: Any, name: str) -> NDArray[Any]:
    """t as a NumPy array over the same memory, with the same strides."""
    _check_tensors("attention", **{name: t})
    if t.layout != torch.strided:
        raise TypeError(f"{name} has layout {t.layout}; dotattn reads strided (dense) tensors")
    t = t.detach().resolve_conj().resolve_neg()
    array: NDArray[Any] = (
        t.view(torch.int16).numpy().view(_bfloat16()) if t.dtype == torch.bfloat16 else t.numpy()
    )
    return array


def _optional(t: Any, name: str) -> NDArray[Any] | None:
    return None if t is None else _numpy(t, name)


def _tensor(a: NDArray[Any]) -> torch.Tensor:
    """A tensor over a's memory."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _numpy_dtype(dtype: Any) -> Any:
    """out_dtype as NumPy names it: a torch.dtype is mapped, anything else
    passed on for dotattn to check."""
    if not isinstance(dtype, torch.dtype):
        return dtype
    if dtype == torch.bfloat16:
        return _bfloat16()
    return torch.empty((), dtype=dtype).numpy().dtype


def _check_tensors(function: str, **tensors: Any) -> None:
    """Each given argument is a CPU tensor, and none requires grad while
    grad mode is on: dotattn has no backward."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}; dotattn computes on the CPU")
        if t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"dotattn.torch.{function}: {name} requires grad, and dotattn has no backward; "
                "call it under torch.no_grad() or torch.inference_mode()"
            )


def _causal_name(is_causal: Any) -> str:
    """is_causal as the custom op's string: the name of the NumPy API's
    causal rule, which checks the value."""
    return str(_api._causal(is_causal).name)


def _window_sides(window: Any) -> tuple[int, int]:
    """window as the custom op's two ints, -1 for an unbounded side (what
    None means too); the NumPy API checks the values."""
    sides = _api._window(window)
    return (-1, -1) if sides is None else sides


def _band_left(mask: NDArray[Any] | None, L: int, S: int) -> int | None:
    """Whether a boolean mask, the same for every batch and head, is the
    causal rule alone or with a sliding window: row i true exactly at keys
    max(0, i - left) <= j <= i. Returns left (-1: no window), or None when
    it is any other mask.

    transformers passes these rules as such masks: the causal rule while
    torch.compile traces (rather than None), and a sliding window (Mistral,
    Qwen2, Gemma 2) whenever the keys outnumber it. Run as rules, they skip
    the keys past the diagonal and outside the window, where a mask has
    every key computed and then masked (measured: the prompt of a
    Llama-shaped model, 1024 tokens, attention 185 ms with the mask against
    94 with the rule). Three passes over one (L, S) plane; the other batches
    and heads must be that plane through a zero stride."""
    if mask is None or mask.dtype != np.bool_ or mask.ndim < 2 or mask.shape[-2:] != (L, S) or L < 2:
        return None
    if any(n > 1 and stride != 0 for n, stride in zip(mask.shape[:-2], mask.strides[:-2])):
        return None
    plane = mask[(0,) * (mask.ndim - 2)]
    rows = np.arange(L)
    first = plane.argmax(axis=1)  # the first true (0 where there is none)
    last = S - 1 - plane[:, ::-1].argmax(axis=1)
    # Every row's trues: one run, ending on the diagonal.
    if not (np.array_equal(plane.sum(axis=1), last - first + 1) and np.array_equal(last, rows)):
        return None  # (L <= S here: a row past the keys would end before its diagonal)
    starts = rows - first
    cut = first > 0  # rows whose window, not key 0, bounds them
    if not cut.any():
        return -1
    left = int(starts[cut][0])
    return left if bool(np.all(starts[cut] == left) and np.all(starts[~cut] <= left)) else None


def _numpy_rules(is_causal: str, window_left: int, window_right: int) -> tuple[Any, Any]:
    """is_causal and window as the NumPy API takes them (typed Any: mypy
    gives up resolving attention()'s overloads over their unions)."""
    window = None if window_left == window_right == -1 else (window_left, window_right)
    return (False if is_causal == "none" else is_causal), window


def _run(*args: Any) -> torch.Tensor:
    """The custom op while torch.compile traces, so that the graph holds it
    as one node; otherwise its implementation, called directly: the
    dispatcher's path to a Python custom op costs about 0.1 ms a call
    (measured: decoding one token against 1024 keys, 0.27 ms through it and
    0.15 ms without)."""
    if torch.compiler.is_compiling():
        return torch.ops.dotattn.attention(*args)  # type: ignore[no-any-return]
    result: torch.Tensor = _attend(*args)
    return result


@torch.library.custom_op("dotattn::attention", mutates_args=())
def _attention_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor],  # noqa: UP045 - custom_op reads these annotations at run time
    is_causal: str,
    scale: Optional[float],  # noqa: UP045
    window_left: int,
    window_right: int,
    softcap: Optional[float],  # noqa: UP045
    alibi_slopes: Optional[torch.Tensor],  # noqa: UP045
    sinks: Optional[torch.Tensor],  # noqa: UP045
    out_dtype: Optional[torch.dtype],  # noqa: UP045
) -> torch.Tensor:
    """The custom op behind attention(): every argument spelled out, the
    causal rule by name and the window as two ints."""
    result: torch.Tensor = _attend(
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        window_left,
        window_right,
        softcap,
        alibi_slopes,
        sinks,
        out_dtype,
    )
    return result


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: str,
    scale: float | None,
    window_left: int,
    window_right: int,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    out_dtype: torch.dtype | None,
    out: torch.Tensor | None = None,
    return_lse: bool = False,
) -> Any:
    """attention() in eager mode and the custom op's implementation: its
    result as a tensor over what dotattn wrote, or (out, lse)."""
    mask = _optional(attn_mask, "attn_mask")
    # Without a window or ALiBi: those place rows by the causal alignment.
    positional = window_left != -1 or window_right != -1 or alibi_slopes is not None
    left = None if is_causal != "none" or positional else _band_left(mask, query.shape[-2], key.shape[-2])
    if left is not None:
        mask, is_causal, window_left, window_right = None, "upper_left", left, -1
    causal, window = _numpy_rules(is_causal, window_left, window_right)
    result, lse = _api.attention(
        _numpy(query, "query"),
        _numpy(key, "key"),
        _numpy(value, "value"),
        attn_mask=mask,
        is_causal=causal,
        scale=scale,
        window=window,
        softcap=softcap,
        alibi_slopes=_optional(alibi_slopes, "alibi_slopes"),
        sinks=_optional(sinks, "sinks"),
        out=_optional(out, "out"),
        out_dtype=_numpy_dtype(out_dtype),
        return_lse=True,
    )
    return _results(out, result, lse, return_lse)


@_attention_op.register_fake
def _attention_fake(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: str,
    scale: float | None,
    window_left: int,
    window_right: int,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    out_dtype: torch.dtype | None,
) -> torch.Tensor:
    # A new C-contiguous tensor, as the real op returns.
    return query.new_empty((*query.shape[:-1], value.shape[-1]), dtype=out_dtype or query.dtype)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool | str = False,
    scale: float | None = None,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_lse: bool = False,
) -> Any:
    """:func:`dotattn.attention` on CPU tensors.

    query (..., Hq, L, E), key (..., Hkv, S, E), value (..., Hkv, S, Ev):
    float32, float16 or bfloat16 (float64 query with float64 key and
    value), read in place whatever their strides as long as the last dim
    has unit stride; key and value are not repeated for grouped-query
    attention. attn_mask: bool (True attends) or float (added), broadcast
    through its strides (an ``expand``-ed mask is not materialised). The
    options are those of :func:`dotattn.attention`; out_dtype is a
    ``torch.dtype`` (the query's, or float32 for a 16-bit query).

    Returns a tensor (..., Hq, L, Ev) that shares memory with nothing you
    passed in; with ``out``, that tensor, written in place; with
    ``return_lse``, ``(out, lse)``. Without out and return_lse, under
    torch.compile, the call is the custom op ``torch.ops.dotattn.attention``
    (one node of the graph); in eager mode its implementation is called
    directly, without the dispatcher's 0.1 ms.
    """
    _check_tensors(
        "attention",
        query=query,
        key=key,
        value=value,
        attn_mask=attn_mask,
        alibi_slopes=alibi_slopes,
        sinks=sinks,
    )
    causal = _causal_name(is_causal)
    left, right = _window_sides(window)
    if out is None and not return_lse:
        return _run(
            query, key, value, attn_mask, causal, scale, left, right, softcap, alibi_slopes, sinks, out_dtype
        )
    return _attend(
        query,
        key,
        value,
        attn_mask,
        causal,
        scale,
        left,
        right,
        softcap,
        alibi_slopes,
        sinks,
        out_dtype,
        out=out,
        return_lse=return_lse,
    )


def _results(out: torch.Tensor | None, result: NDArray[Any], lse: NDArray[Any], return_lse: bool) -> Any:
    """The result as a tensor (out itself where given), with the LSE if asked."""
    result_tensor = out if out is not None else _tensor(result)
    return (result_tensor, _tensor(lse)) if return_lse else result_tensor


def _packed_call(
    function: Any,
    name: str,
    tensors: dict[str, Any],
    *,
    alibi_slopes: Any,
    sinks: Any,
    out: Any,
    out_dtype: Any,
    return_lse: bool,
    **rules: Any,
) -> Any:
    """function (attention_varlen or attention_paged) on the NumPy views of
    `tensors` (given in its positional order), the result as tensors."""
    _check_tensors(name, **tensors, alibi_slopes=alibi_slopes, sinks=sinks)
    result, lse = function(
        *[_optional(t, n) for n, t in tensors.items()],
        alibi_slopes=_optional(alibi_slopes, "alibi_slopes"),
        sinks=_optional(sinks, "sinks"),
        out=_optional(out, "out"),
        out_dtype=_numpy_dtype(out_dtype),
        return_lse=True,
        **rules,
    )
    return _results(out, result, lse, return_lse)


def attention_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    is_causal: bool | str = False,
    scale: float | None = None,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_lse: bool = False,
) -> Any:
    """:func:`dotattn.attention_varlen` on CPU tensors: query (total_q,
    Hq, E), key and value (total_k, Hkv, E / Ev), cu_seqlens int32 or int64
    tensors; read in place, the result a tensor over dotattn's output."""
    return _packed_call(
        _api.attention_varlen,
        "attention_varlen",
        {
            "query": query,
            "key": key,
            "value": value,
            "cu_seqlens_q": cu_seqlens_q,
            "cu_seqlens_k": cu_seqlens_k,
        },
        is_causal=is_causal,
        scale=scale,
        window=window,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        sinks=sinks,
        out=out,
        out_dtype=out_dtype,
        return_lse=return_lse,
    )


def attention_paged(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens_k: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None = None,
    *,
    is_causal: bool | str = False,
    scale: float | None = None,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_lse: bool = False,
) -> Any:
    """:func:`dotattn.attention_paged` on CPU tensors (vLLM's layout: a
    cache of pages, a block table of page numbers); read in place, the
    result a tensor over dotattn's output."""
    return _packed_call(
        _api.attention_paged,
        "attention_paged",
        {
            "query": query,
            "key_cache": key_cache,
            "value_cache": value_cache,
            "block_table": block_table,
            "seq_lens_k": seq_lens_k,
            "cu_seqlens_q": cu_seqlens_q,
        },
        is_causal=is_causal,
        scale=scale,
        window=window,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        sinks=sinks,
        out=out,
        out_dtype=out_dtype,
        return_lse=return_lse,
    )


def transformers_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function registered with transformers: the
    signature of its ``AttentionInterface``.

    query (B, Hq, L, E), a view of the projection's (B, L, Hq, E); key and
    value (B, Hkv, S, E) as the cache holds them, not repeated for GQA.
    attention_mask is what the registered mask function (transformers'
    ``sdpa_mask``) built: a boolean (B, 1, L, S) with True where a query
    attends, which carries padding, the causal rule and the sliding window;
    or None when nothing is masked but, for L > 1, the causal rule, aligned
    upper left (query i sees keys j <= i: with L = S, or a prefill into a
    static cache, whose slots past L are empty). ``sliding_window`` is
    therefore already in the mask. softcap is Gemma 2's logit soft cap,
    s_aux gpt-oss's sinks. Returns ((B, L, Hq, Ev) contiguous, None).
    """
    if dropout:
        raise ValueError(
            f"dotattn does not apply attention dropout (got dropout={dropout}); use it for inference"
        )
    if kwargs.get("position_bias") is not None:
        raise ValueError("dotattn does not take a position_bias; use the 'sdpa' or 'eager' implementation")
    _check_tensors("transformers_attention", query=query, key=key, value=value)
    wants_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = "upper_left" if attention_mask is None and query.shape[2] > 1 and wants_causal else "none"
    sinks = None if s_aux is None else s_aux.detach().to(torch.float32)
    out = _run(query, key, value, attention_mask, causal, scaling, -1, -1, softcap, None, sinks, None)
    return out.transpose(1, 2).contiguous(), None


def register_transformers(name: str = "dotattn") -> None:
    """Registers :func:`transformers_attention` and its mask function
    (transformers' ``sdpa_mask``: a boolean mask, or None where the causal
    rule alone applies) under `name`, so that any model whose attention
    goes through ``AttentionInterface`` (Llama, Qwen2, Mistral, Gemma 2,
    gpt-oss, ...) runs with ``attn_implementation=name``. Needs
    transformers 4.53 or newer."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:
        raise ImportError(
            "dotattn.torch.register_transformers needs transformers >= 4.53 (AttentionMaskInterface)"
        ) from e
    AttentionInterface.register(name, transformers_attention)
    AttentionMaskInterface.register(name, sdpa_mask)
