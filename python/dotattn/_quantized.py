"""The int8 KV-cache format: dotattn.QuantizedKV and dotattn.quantize_kv.
The checks and the quantisation itself are in C++ (cpp/src/quantize.cpp)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import _core

__all__ = ["QuantizedKV", "quantize_kv"]


class QuantizedKV:
    """A key or value tensor quantised to int8, as attention() reads it.

    ``data`` is int8 of shape (..., S, E); ``scale`` is float32 of shape
    (..., S, E // group): one scale per group of ``group`` consecutive
    elements of one token's head vector, so element ``e`` of a row stands
    for ``data[..., e] * scale[..., e // group]``. ``group`` is inferred from
    the shapes and must divide E. Both arrays may be strided views (a slice
    of a preallocated cache) but need unit stride in their last dim; neither
    is copied.

    Indexing that leaves the last dim alone indexes both arrays:
    ``cache[:, :, :n]`` is the first n tokens of a (B, Hkv, S_max, E) cache,
    a view.

    Quantisation error (``quantize_kv``, against its float32 input; measured
    by tests/test_quantize.py on 2**20 elements per case): each element is
    off by at most half a step, max|x| / 254 of its group. On N(0, 1) data
    the RMS error is 0.53% of the data's RMS with group 32 and 0.64% with
    group E = 128. With one outlier channel of 20x the others in every row
    (as K caches have), the other channels' RMS error is 2.3% with group 32
    and 4.6% with group 128: a small group keeps the outlier's large scale
    to its own group.
    """

    __slots__ = ("data", "scale", "group")

    def __init__(self, data: Any, scale: Any) -> None:
        data = np.asarray(data)
        scale = np.asarray(scale)
        if data.dtype != np.int8:
            raise TypeError(f"QuantizedKV: data has dtype {data.dtype}; expected int8")
        if scale.dtype != np.float32:
            raise TypeError(f"QuantizedKV: scale has dtype {scale.dtype}; expected float32")
        self.data = data
        self.scale = scale
        self.group = int(_core.quantization_group(data, scale))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return int(self.data.ndim)

    def dequantize(self) -> np.ndarray:
        """The float32 values stored: ``data * scale`` per group."""
        scale = np.repeat(self.scale, self.group, axis=-1) if self.data.shape[-1] else self.scale
        values: np.ndarray = self.data.astype(np.float32) * scale
        return values

    def __getitem__(self, index: Any) -> QuantizedKV:
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis or i is None for i in index) or len(index) >= self.data.ndim:
            raise IndexError(
                f"QuantizedKV of shape {self.shape}: index the dims before the last only "
                "(no Ellipsis or newaxis), so that data and scale stay in step"
            )
        return QuantizedKV(self.data[index], self.scale[index])

    def __repr__(self) -> str:
        return f"QuantizedKV(shape={self.shape}, group={self.group})"


def quantize_kv(
    x: Any, dtype: str = "int8", group: int | None = None, out: QuantizedKV | None = None
) -> QuantizedKV:
    """Quantise ``x`` (..., E) to a :class:`QuantizedKV`: symmetric int8 by
    groups of ``group`` consecutive elements of the last dim.

    ``scale = max|x| / 127`` over each group (float32; a zero group gets
    scale 0 and data 0), ``data = round_half_to_even(x / scale)`` within
    [-127, 127]. ``x`` is float32, float16 or bfloat16 (other float dtypes
    are converted to float32 first) and must be finite. ``group`` defaults
    to 32 where 32 divides E, else E (with ``out``, to out's group).

    ``out``: a QuantizedKV of x's shape to write into, e.g. the slot of the
    new token in a preallocated cache, ``quantize_kv(k_new, out=cache[:, :, n:n + 1])``;
    returned. Bad arguments raise TypeError or ValueError before anything is
    written.
    """
    if dtype != "int8":
        raise ValueError(f"quantize_kv: dtype must be 'int8'; got {dtype!r}")
    x = np.asarray(x)
    if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
        raise TypeError(f"quantize_kv: x has dtype {x.dtype}; expected float32, float16 or bfloat16")
    if x.dtype.name not in ("float32", "float16", "bfloat16") or not x.dtype.isnative:
        x = x.astype(np.float32)
    if x.ndim == 0:
        raise ValueError("quantize_kv: x must have at least 1 dim (..., E); got a scalar")
    if x.ndim and x.shape[-1] > 1 and x.strides[-1] != x.itemsize:
        x = np.ascontiguousarray(x)
    E = x.shape[-1]
    if group is not None and (isinstance(group, bool) or not isinstance(group, numbers.Integral)):
        raise TypeError(f"quantize_kv: group must be an int or None; got {group!r}")
    if out is not None:
        if not isinstance(out, QuantizedKV):
            raise TypeError(f"quantize_kv: out must be a QuantizedKV; got {type(out).__name__}")
        if group is not None and group != out.group:
            raise ValueError(f"quantize_kv: group={group} but out has group {out.group}")
        _core.quantize_int8(x, out.data, out.scale)
        return out
    if group is None:
        group = 32 if E % 32 == 0 and E > 0 else max(E, 1)
    if group <= 0 or (E and E % group):
        raise ValueError(f"quantize_kv: group={group} must be positive and divide E={E} (x {x.shape})")
    data = np.empty(x.shape, dtype=np.int8)
    scale = np.empty((*x.shape[:-1], E // group), dtype=np.float32)
    _core.quantize_int8(x, data, scale)
    return QuantizedKV(data, scale)
