"""dotattn.reference: the executable definition of dotattn's semantics.

A plain NumPy float64 implementation of :func:`dotattn.attention` and
:func:`dotattn.attention_weights` with the same arguments and rules. It forms
the whole L x S score matrix, so it is slow and memory-hungry: it is the
oracle the tests and ``python -m dotattn`` compare against, not a kernel.
Results are float64 (written into ``out`` when given).

The rules it defines, step by step, for each query row i of L (key j of S,
query head h of Hq; 2-D inputs have Hq = 1):

1. scores = (query @ key.T) * scale, with scale = 1/sqrt(E) by default;
   query head h reads key/value head h // (Hq // Hkv).
2. The row's position among the keys is i' = i when is_causal is True or
   "upper_left", and i' = i + S - L otherwise (False or "lower_right":
   the bottom-right alignment of a KV cache). Rules 4 and 6 use it.
3. softcap c (a finite float > 0): scores = c * tanh(scores / c).
4. alibi_slopes (Hq,): scores += -alibi_slopes[h] * |i' - j|.
5. A float attn_mask is added to the scores.
6. Keys hidden by a boolean attn_mask (False), by is_causal (j > i') or by
   window = (left, right) (visible only if i' - left <= j <= i' + right; a
   side that is None or -1 is unbounded) get -inf.
7. sinks (Hq,): one more logit per head, sink_h, joins each row's softmax
   denominator and contributes no value. m = max(the row's max, sink_h)
   (the row's max without sinks); a row with m == -inf sees nothing: its
   weights are 0, its output 0 and its LSE -inf. A row that sees no key but
   has weights 0, output 0 and LSE sink_h. A NaN or +inf score makes the
   row NaN. Sinks must be finite.
8. weights = exp(scores - m) / (sum(exp(scores - m)) + exp(sink_h - m));
   LSE = m + log(that sum) (without sinks, the exp(sink_h - m) term is 0).
9. out = weights @ value, where a zero weight contributes nothing: the
   value of a key a row does not see never reaches it, even if it is NaN or
   inf (so garbage in masked-out KV-cache slots stays out of the output).

alibi_slopes and sinks are 1-D of length Hq, of any float dtype (taken as
float64), broadcast over the query's head dim -3.

:func:`merge` combines results computed over disjoint key sets into the
result over their union, exactly: m = max_i lse_i, w_i = exp(lse_i - m),
out = sum_i w_i out_i / sum_i w_i, skipping every term with w_i == 0 (the
out of a shard whose row saw nothing may be garbage, even NaN, and never
leaks), lse = m + log(sum_i w_i). A row whose lse_i are all -inf: out 0 and
lse -inf; a NaN or +inf lse_i makes the row NaN.

:func:`attention_varlen` runs :func:`attention` on each sequence b of a
packed batch, q[cu_seqlens_q[b]:cu_seqlens_q[b + 1]] against
k[cu_seqlens_k[b]:cu_seqlens_k[b + 1]] (token-major, (total, H, E)), each
with its own causal alignment (L and S of that sequence).

Query, key, value and mask are taken as stored: float16 and bfloat16 widen
exactly to float64, and an int8 :class:`dotattn.QuantizedKV` stands for data * scale
(computed in float64, so exactly). :func:`quantize_int8` defines the int8
quantisation that :func:`dotattn.quantize_kv` computes.

This module also holds the accuracy the kernels are held to against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "attention",
    "attention_weights",
    "attention_varlen",
    "attention_paged",
    "merge",
    "quantize_int8",
    "stored_values",
    "TOLERANCES",
    "errors",
]

# How close dotattn must come to this reference, per result dtype: the
# normwise relative error ||out - ref|| / ||ref||, and the largest elementwise
# error relative to the largest |ref| in the result. A float16 or bfloat16
# result is computed in float32 and rounded once to nearest, which alone is
# off by up to 2^-11 (float16) or 2^-9 (bfloat16) of each value: the bounds
# are twice that. (A float32 result of 16-bit inputs is held to float32's.)
TOLERANCES = {
    np.dtype(np.float32): {"relative": 1e-5, "elementwise": 1e-5},
    np.dtype(np.float64): {"relative": 1e-12, "elementwise": 1e-12},
    np.dtype(np.float16): {"relative": 1e-3, "elementwise": 1e-3},
}
try:  # bfloat16 arrays need ml_dtypes, which dotattn does not depend on
    import ml_dtypes

    TOLERANCES[np.dtype(ml_dtypes.bfloat16)] = {"relative": 4e-3, "elementwise": 4e-3}
except ImportError:
    pass


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
    window: Any = None,
    softcap: float | None = None,
    alibi_slopes: Any = None,
    sinks: Any = None,
    out: np.ndarray | None = None,
    return_lse: bool = False,
) -> Any:
    """Reference for :func:`dotattn.attention`, in float64."""
    weights, lse = _softmax(query, key, attn_mask, is_causal, scale, window, softcap, alibi_slopes, sinks)
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
    window: Any = None,
    softcap: float | None = None,
    alibi_slopes: Any = None,
    sinks: Any = None,
) -> np.ndarray:
    """Reference for :func:`dotattn.attention_weights`, in float64. With
    sinks a row's weights sum to less than 1."""
    weights, _ = _softmax(query, key, attn_mask, is_causal, scale, window, softcap, alibi_slopes, sinks)
    return weights


def attention_varlen(
    q: Any,
    k: Any,
    v: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    *,
    is_causal: bool | str = False,
    scale: float | None = None,
    window: Any = None,
    softcap: float | None = None,
    alibi_slopes: Any = None,
    sinks: Any = None,
    return_lse: bool = False,
) -> Any:
    """Reference for :func:`dotattn.attention_varlen`, in float64: q
    (total_q, Hq, E), k (total_k, Hkv, E), v (total_k, Hkv, Ev) hold B
    sequences packed token-major, sequence b in rows cu_seqlens[b] to
    cu_seqlens[b + 1]; each runs :func:`attention` on its own (causal
    alignment by its own L and S). Returns out (total_q, Hq, Ev) and, with
    return_lse, the LSE (Hq, total_q)."""
    query = np.asarray(q, dtype=np.float64)
    key, value = stored_values(k), stored_values(v)
    if query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
        raise ValueError(
            f"q, k and v must be 3-D (total, H, E); got shapes {query.shape}, {key.shape}, {value.shape}"
        )
    if is_causal is True:  # flash-attn's causal=True: bottom-right aligned
        is_causal = "lower_right"
    cq = _cu_seqlens(cu_seqlens_q, "cu_seqlens_q", query.shape[0])
    ck = _cu_seqlens(cu_seqlens_k, "cu_seqlens_k", key.shape[0])
    if cq.size != ck.size:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must have the same length; got {cq.size} and {ck.size}"
        )
    Hq, Ev = query.shape[1], value.shape[2]
    result = np.zeros((query.shape[0], Hq, Ev))
    lse = np.full((Hq, query.shape[0]), -np.inf)
    for b in range(cq.size - 1):
        rows, keys = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        out_b, lse_b = attention(
            query[rows].transpose(1, 0, 2),
            key[keys].transpose(1, 0, 2),
            value[keys].transpose(1, 0, 2),
            is_causal=is_causal,
            scale=scale,
            window=window,
            softcap=softcap,
            alibi_slopes=alibi_slopes,
            sinks=sinks,
            return_lse=True,
        )
        result[rows] = out_b.transpose(1, 0, 2)
        lse[:, rows] = lse_b
    return (result, lse) if return_lse else result


def attention_paged(
    q: Any,
    key_cache: Any,
    value_cache: Any,
    block_table: Any,
    seq_lens_k: Any,
    cu_seqlens_q: Any = None,
    *,
    return_lse: bool = False,
    **options: Any,
) -> Any:
    """Reference for :func:`dotattn.attention_paged`, in float64: each
    sequence's keys gathered from its pages (key j is slot j % page_size of
    page block_table[b, j // page_size]), then :func:`attention_varlen`.
    options: is_causal, scale, window, softcap, alibi_slopes, sinks."""
    kc, vc = stored_values(key_cache), stored_values(value_cache)
    table = np.asarray(block_table)
    lengths = np.asarray(seq_lens_k).astype(np.int64)
    page_size = kc.shape[1]
    if cu_seqlens_q is None:
        cu_seqlens_q = np.arange(lengths.size + 1)
    keys, values = [], []
    for b, n in enumerate(lengths):
        j = np.arange(n)
        pages = table[b, j // page_size] if n else np.zeros(0, dtype=np.int64)
        keys.append(kc[pages, j % page_size])
        values.append(vc[pages, j % page_size])
    cu_k = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return attention_varlen(
        q,
        np.concatenate(keys) if keys else kc[:0, 0],
        np.concatenate(values) if values else vc[:0, 0],
        np.asarray(cu_seqlens_q),
        cu_k,
        return_lse=return_lse,
        **options,
    )


def merge(outs: Any, lses: Any) -> tuple[np.ndarray, np.ndarray]:
    """Reference for :func:`dotattn.merge`, in float64: the (out, lse) of
    attention over the union of disjoint key sets, from each set's (out_i,
    lse_i). outs: a sequence of equal-shape (..., Ev) arrays, or one stacked
    array (iterated on axis 0); lses: the matching (...) arrays."""
    o = _stack(outs, "outs")
    lse_in = _stack(lses, "lses")
    if o.shape[0] != lse_in.shape[0]:
        raise ValueError(f"outs and lses must hold as many arrays; got {o.shape[0]} and {lse_in.shape[0]}")
    if o.ndim < 2 or lse_in.shape[1:] != o.shape[1:-1]:
        raise ValueError(
            f"each of lses must have the shape of outs without its last dim; got outs of shape "
            f"{o.shape[1:]} and lses of shape {lse_in.shape[1:]}"
        )
    with np.errstate(all="ignore"):  # non-finite inputs propagate by design
        m = np.max(lse_in, axis=0)  # NaN propagates
        sees_a_key = m != -np.inf
        w = np.exp(lse_in - np.where(sees_a_key, m, 0.0))  # an lse of +inf gives NaN
        terms = np.where((w == 0)[..., None], 0.0, w[..., None] * o)  # w == 0: skipped, even a NaN out
        total = np.sum(w, axis=0)
        result = np.where(sees_a_key[..., None], np.sum(terms, axis=0) / total[..., None], 0.0)
        lse = np.where(sees_a_key, m + np.log(total), -np.inf)
    return result, lse


def _stack(xs: Any, name: str) -> np.ndarray:
    """The arrays of a sequence (or of a stacked array's axis 0) as one
    float64 array with the sequence on axis 0."""
    if isinstance(xs, np.ndarray):
        if xs.ndim == 0:
            raise ValueError(f"{name} must be a sequence of arrays or a stacked array; got a 0-d array")
        arrays = list(xs)
    elif isinstance(xs, Sequence):
        arrays = [np.asarray(x) for x in xs]
    else:
        raise TypeError(f"{name} must be a sequence of arrays or a stacked array; got {type(xs).__name__}")
    if not arrays:
        raise ValueError(f"{name} is empty: merge needs at least one array")
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"the arrays of {name} must have one shape; got {[a.shape for a in arrays]}")
    return np.stack([np.asarray(a, dtype=np.float64) for a in arrays])


def _softmax(
    query: Any,
    key: Any,
    attn_mask: Any,
    is_causal: Any,
    scale: Any,
    window: Any = None,
    softcap: Any = None,
    alibi_slopes: Any = None,
    sinks: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(query, dtype=np.float64)
    k = _per_query_head(stored_values(key), q)
    L, E = q.shape[-2:]
    S = k.shape[-2]
    Hq = q.shape[-3] if q.ndim >= 3 else 1
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    visible = _causal_visible(is_causal, L, S)
    # i' of rule 2: the row's position among the keys.
    row = np.arange(L)[:, None] + (0 if is_causal is True or is_causal == "upper_left" else S - L)
    col = np.arange(S)[None, :]
    left, right = _window(window)
    softcap = _softcap(softcap)
    slopes = _per_head(alibi_slopes, "alibi_slopes", Hq, q.ndim)
    sink = _per_head(sinks, "sinks", Hq, q.ndim)
    if sink is not None and not np.isfinite(sink).all():
        raise ValueError("sinks must be finite")

    with np.errstate(all="ignore"):  # non-finite inputs propagate by design
        scores = (q @ np.swapaxes(k, -1, -2)) * scale
        if softcap is not None:
            scores = softcap * np.tanh(scores / softcap)
        if slopes is not None:
            scores = scores - slopes * np.abs(row - col)
        if attn_mask is not None:
            mask = np.asarray(attn_mask)
            if mask.dtype == bool:
                visible = visible & mask
            else:
                scores = scores + mask.astype(np.float64)
        if left is not None:
            visible = visible & (col >= row - left)
        if right is not None:
            visible = visible & (col <= row + right)
        scores = np.where(visible, scores, -np.inf)

        m = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)
        if sink is None:
            sink_term = 0.0
        else:
            sink = np.broadcast_to(sink, m.shape)
            m = np.maximum(m, sink)  # a NaN row max stays NaN
        sees_a_key = m != -np.inf  # NaN counts: it propagates
        shift = np.where(sees_a_key, m, 0.0)
        p = np.exp(scores - shift)
        if sink is not None:
            sink_term = np.exp(sink - shift)
        total = np.sum(p, axis=-1, keepdims=True) + sink_term
        weights = np.where(sees_a_key, p / total, 0.0)
        lse = np.where(sees_a_key, m + np.log(total), -np.inf)[..., 0]
    return weights, lse


def _window(window: Any) -> tuple[int | None, int | None]:
    """(left, right) of a window, None for an unbounded side."""
    if window is None:
        return None, None
    if isinstance(window, np.ndarray) and window.ndim == 1:
        window = window.tolist()
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2:
        raise TypeError(f"window must be None or a pair (left, right); got {window!r}")
    sides: list[int | None] = []
    for side in window:
        if side is None:
            sides.append(None)
            continue
        if isinstance(side, (bool, np.bool_)) or not isinstance(side, (int, np.integer)):
            raise TypeError(f"window sides must be int or None; got {window!r}")
        if side < -1:
            raise ValueError(f"window sides must be >= -1 (-1 or None: unbounded); got {window!r}")
        sides.append(None if side == -1 else int(side))
    return sides[0], sides[1]


def _softcap(softcap: Any) -> float | None:
    if softcap is None:
        return None
    c = float(softcap)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"softcap must be a finite float > 0; got {softcap!r}")
    return c


def _per_head(x: Any, name: str, Hq: int, ndim: int) -> np.ndarray | None:
    """A per-query-head vector (Hq,) in float64, shaped to broadcast over
    the scores (head dim -3; a 2-D query has one head)."""
    if x is None:
        return None
    a = np.asarray(x, dtype=np.float64)
    if a.shape != (Hq,):
        raise ValueError(f"{name} must have shape (Hq,) = ({Hq},); got {a.shape}")
    return a.reshape(Hq, 1, 1) if ndim >= 3 else a.reshape(1, 1)


def _cu_seqlens(cu: Any, name: str, total: int) -> np.ndarray:
    a = np.asarray(cu)
    if a.ndim != 1 or a.size < 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array of length B + 1; got {a.dtype} {a.shape}")
    if a[0] != 0 or a[-1] != total or np.any(np.diff(a) < 0):
        raise ValueError(f"{name} must rise from 0 to {total} (the packed length); got {a.tolist()}")
    return a.astype(np.int64)


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
