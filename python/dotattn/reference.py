"""dotattn.reference: the executable definition of dotattn's semantics.

A plain NumPy float64 implementation of :func:`dotattn.attention` and
:func:`dotattn.attention_weights` with the same arguments and rules. It forms
the whole L x S score matrix, so it is slow and memory-hungry: it is the
oracle the tests and ``python -m dotattn`` compare against, not a kernel.
Results are float64 (written into ``out`` when given).

The rules it defines, step by step, for each query row:

1. scores = (query @ key.T) * scale, with scale = 1/sqrt(E) by default;
   query head h reads key/value head h // (Hq // Hkv).
2. A float attn_mask is added to the scores.
3. Keys hidden by a boolean attn_mask (False) or by is_causal get -inf.
4. m = the row's max; a row with m == -inf sees no key: its weights are 0,
   its output 0 and its LSE -inf. A NaN or +inf score makes the row NaN.
5. weights = exp(scores - m) / sum(exp(scores - m)); LSE = m + log(sum).
6. out = weights @ value, where a zero weight contributes nothing: the
   value of a key a row does not see never reaches it, even if it is NaN or
   inf (so garbage in masked-out KV-cache slots stays out of the output).

Key and value are taken as stored: float16 and bfloat16 widen exactly to
float64, and an int8 :class:`dotattn.QuantizedKV` stands for data * scale
(computed in float64, so exactly). :func:`quantize_int8` defines the int8
quantisation that :func:`dotattn.quantize_kv` computes.

This module also holds the accuracy the kernels are held to against it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["attention", "attention_weights", "quantize_int8", "stored_values", "TOLERANCES", "errors"]

# How close dotattn must come to this reference, per input dtype: the
# normwise relative error ||out - ref|| / ||ref||, and the largest elementwise
# error relative to the largest |ref| in the result.
TOLERANCES = {
    np.dtype(np.float32): {"relative": 1e-5, "elementwise": 1e-5},
    np.dtype(np.float64): {"relative": 1e-12, "elementwise": 1e-12},
}


def errors(out: Any, ref: Any) -> tuple[float, float]:
    """(||out - ref|| / ||ref||, max|out - ref| / max|ref|) over the finite
    entries of ref; (0, 0) when they match exactly, inf when only ref is 0."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    finite = np.isfinite(ref)
    diff = out[finite] - ref[finite]
    if not diff.size or not np.any(diff):
        return 0.0, 0.0
    largest = np.abs(ref[finite]).max()
    if largest == 0:
        return math.inf, math.inf
    # Norms of values scaled to at most 1: the squares cannot underflow.
    relative = np.linalg.norm(diff / largest) / np.linalg.norm(ref[finite] / largest)
    return float(relative), float(np.abs(diff).max() / largest)


def attention(
    query: Any,
    key: Any,
    value: Any,
    *,
    attn_mask: Any = None,
    is_causal: bool | str = False,
    scale: float | None = None,
    out: np.ndarray | None = None,
    return_lse: bool = False,
) -> Any:
    """Reference for :func:`dotattn.attention`, in float64."""
    weights, lse = _softmax(query, key, attn_mask, is_causal, scale)
    v = _per_query_head(stored_values(value), weights)
    result = _weighted_sum(weights, v)
    if out is not None:
        out[...] = result
        result = out
    return (result, lse) if return_lse else result


def attention_weights(
    query: Any,
    key: Any,
    *,
    attn_mask: Any = None,
    is_causal: bool | str = False,
    scale: float | None = None,
) -> np.ndarray:
    """Reference for :func:`dotattn.attention_weights`, in float64."""
    weights, _ = _softmax(query, key, attn_mask, is_causal, scale)
    return weights


def _softmax(
    query: Any, key: Any, attn_mask: Any, is_causal: Any, scale: Any
) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(query, dtype=np.float64)
    k = _per_query_head(stored_values(key), q)
    L, E = q.shape[-2:]
    S = k.shape[-2]
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)

    with np.errstate(all="ignore"):  # non-finite inputs propagate by design
        scores = (q @ np.swapaxes(k, -1, -2)) * scale
        visible = _causal_visible(is_causal, L, S)
        if attn_mask is not None:
            mask = np.asarray(attn_mask)
            if mask.dtype == bool:
                visible = visible & mask
            else:
                scores = scores + mask.astype(np.float64)
        scores = np.where(visible, scores, -np.inf)

        m = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)
        sees_a_key = m != -np.inf  # NaN counts: it propagates
        p = np.exp(scores - np.where(sees_a_key, m, 0.0))
        total = np.sum(p, axis=-1, keepdims=True)
        weights = np.where(sees_a_key, p / total, 0.0)
        lse = np.where(sees_a_key, m + np.log(total), -np.inf)[..., 0]
    return weights, lse


def stored_values(x: Any) -> np.ndarray:
    """The values a key or value holds, in float64: an int8 QuantizedKV's
    data * scale exactly, any other array widened."""
    if hasattr(x, "scale") and hasattr(x, "group"):  # a dotattn.QuantizedKV
        data = np.asarray(x.data, dtype=np.float64)
        scale = np.asarray(x.scale, dtype=np.float64)
        with np.errstate(all="ignore"):  # a non-finite scale gives what the cache holds
            return data * (np.repeat(scale, x.group, axis=-1) if data.shape[-1] else scale)
    return np.asarray(x, dtype=np.float64)


def quantize_int8(x: Any, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The int8 quantisation of dotattn.quantize_kv, step by step in float32:
    scale = max|x| / 127 over each group of `group` consecutive elements of
    the last dim (0 for a zero group), data = x / scale rounded half to
    even, within [-127, 127] (0 where the scale is 0). Returns (data, scale)."""
    x = np.asarray(x).astype(np.float32)
    E = x.shape[-1]
    groups = x.reshape(*x.shape[:-1], E // group, group)
    scale = np.abs(groups).max(axis=-1, initial=np.float32(0)) / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint(groups / scale[..., None])
    q = np.where(scale[..., None] > 0, np.clip(q, -127, 127), 0)
    return q.astype(np.int8).reshape(x.shape), scale.astype(np.float32)


def _weighted_sum(weights: np.ndarray, v: np.ndarray) -> np.ndarray:
    """weights @ v, except that a zero weight times a non-finite value is 0
    rather than NaN: the non-finite values are summed separately, over the
    nonzero weights only, by IEEE rules (inf + -inf is NaN)."""
    finite = np.isfinite(v)
    with np.errstate(all="ignore"):  # non-finite inputs propagate by design
        result = weights @ np.where(finite, v, 0.0)
        if finite.all():
            return result
        used = (weights != 0).astype(np.float64)
        pos = (used @ np.isposinf(v) > 0) | (result == np.inf)
        neg = (used @ np.isneginf(v) > 0) | (result == -np.inf)
        nan = (used @ np.isnan(v) > 0) | np.isnan(result) | (pos & neg)
    return np.where(nan, np.nan, np.where(pos, np.inf, np.where(neg, -np.inf, result)))


def _causal_visible(is_causal: Any, L: int, S: int) -> np.ndarray:
    """(L, S) booleans: may query row i see key j under is_causal."""
    i = np.arange(L)[:, None]
    j = np.arange(S)[None, :]
    if is_causal is False:
        return np.ones((L, S), dtype=bool)
    if is_causal is True or is_causal == "upper_left":
        return j <= i
    if is_causal == "lower_right":
        return j <= i + (S - L)
    raise ValueError(f"is_causal must be False, True, 'upper_left' or 'lower_right'; got {is_causal!r}")


def _per_query_head(kv: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Repeat each key/value head for the Hq // Hkv query heads that read it
    (GQA); `like` has the query heads in its dim -3."""
    if kv.ndim < 3 or kv.shape[-3] in (0, like.shape[-3]):
        return kv
    return np.repeat(kv, like.shape[-3] // kv.shape[-3], axis=-3)
