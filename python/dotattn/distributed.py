"""dotattn.distributed: exact attention over shards held by the ranks of a
torch.distributed process group.

Two methods, both exact up to float32 rounding, both combining partial
results by their log-sum-exp (:func:`dotattn.merge`):

- :func:`sharded_decode` (flash-decoding across hosts): every rank holds a
  shard of the keys and values, attends the same queries over it, and one
  all-gather (or gather) of ``(out, lse)`` combines the shards (after a
  small one that checks that every rank passed the same query shape). The
  bytes moved are B x Hq x L x (Ev + 1) floats per rank, whatever the
  shards' S.
- :func:`ring_attention` (Ring Attention, context parallelism): the
  sequence is sharded; the queries stay, the key/value shards travel round
  the ring by ``isend``/``irecv`` while the shard at hand is computed. Under
  ``is_causal=True`` the sequence is split in 2 x world chunks and rank r
  holds chunks r and 2 x world - 1 - r (:func:`zigzag_shard`), which gives
  every rank the same causal work.

Needs PyTorch (``torch.distributed``, the gloo backend on the CPU) and a
process group initialised by the caller (``torchrun`` sets the
environment that ``torch.distributed.init_process_group("gloo")`` reads);
``import dotattn`` does not import this module. Arrays are NumPy, as in the
rest of dotattn; key and value take every format :func:`dotattn.attention`
takes (float32, float16, bfloat16, :class:`dotattn.QuantizedKV`). A failed
collective (a peer rank that raised, exited or timed out: the group's
``timeout``) raises RuntimeError naming the call, the rank and the step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _api
from ._quantized import QuantizedKV

__all__ = ["ring_attention", "sharded_decode", "zigzag_shard", "zigzag_unshard"]

# Options that place keys by position (the causal rule, the window, ALiBi):
# a key shard of sharded_decode holds keys whose positions it does not know.
_POSITIONAL = ("is_causal", "window", "alibi_slopes")
_MOST_DIMS = 64  # NumPy 2's most dims


def _torch() -> tuple[Any, Any]:
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:  # pragma: no cover - the tests skip without torch
        raise ImportError(
            "dotattn.distributed needs PyTorch (torch.distributed with the gloo backend): pip install torch"
        ) from e
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "dotattn.distributed: no default process group; call "
            "torch.distributed.init_process_group('gloo') first (torchrun sets its environment)"
        )
    return torch, dist


class _Collectives:
    """The group's rank and size, and its collectives with their failures
    turned into RuntimeErrors that name the call, the rank and the step."""

    def __init__(self, call: str, group: Any) -> None:
        self.torch, self.dist = _torch()
        self.call = call
        self.group = group
        self.rank = self.dist.get_rank(group)
        self.world = self.dist.get_world_size(group)

    def global_rank(self, rank: int) -> int:
        return rank if self.group is None else int(self.dist.get_global_rank(self.group, rank))

    def run(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            raise RuntimeError(
                f"dotattn.distributed.{self.call}: {what} failed on rank {self.rank} of {self.world} "
                f"(a peer rank may have raised, exited or timed out): {e}"
            ) from e

    # The gathered arrays as list[Any]: what dotattn.merge takes.
    def all_gather(self, x: NDArray[Any], what: str) -> list[Any]:
        parts = [self.torch.empty_like(self.torch.from_numpy(x)) for _ in range(self.world)]
        self.run(what, self.dist.all_gather, parts, self.torch.from_numpy(x), group=self.group)
        return [p.numpy() for p in parts]

    def gather(self, x: NDArray[Any], dst: int, what: str) -> list[Any] | None:
        tensor = self.torch.from_numpy(x)
        parts = [self.torch.empty_like(tensor) for _ in range(self.world)] if self.rank == dst else None
        self.run(what, self.dist.gather, tensor, parts, dst=self.global_rank(dst), group=self.group)
        return [p.numpy() for p in parts] if parts is not None else None

    def agree(self, values: list[int], what: str) -> NDArray[np.int64]:
        """Every rank's `values` (all of one length), as a (world, n) array."""
        return np.stack(self.all_gather(np.asarray(values, dtype=np.int64), what))


def _checked_options(call: str, options: dict[str, Any], refused: tuple[str, ...]) -> dict[str, Any]:
    for name in ("out", "return_lse"):
        if name in options:
            raise TypeError(
                f"dotattn.distributed.{call}: {name} is not an option here; the result is returned"
            )
    for name in refused:
        if options.get(name) not in (None, False):
            raise ValueError(
                f"dotattn.distributed.{call}: {name} is not supported: it places keys by their "
                "positions, which a shard does not know; pass the shard's part of a mask as attn_mask"
            )
    return options


def sharded_decode(
    query: NDArray[Any],
    key_shard: Any,
    value_shard: Any,
    group: Any = None,
    *,
    dst: int | None = None,
    **options: Any,
) -> tuple[NDArray[Any], NDArray[Any]] | None:
    """Attention of the same queries over key/value shards held by the ranks.

    Every rank of ``group`` calls it with the same ``query`` and its own
    shard; the result equals :func:`dotattn.attention` over the keys and
    values of all shards (in any order: a shard may hold any subset of the
    keys, and may be empty). Each rank attends over its shard, then one
    all-gather (``dst=None``) or gather to ``dst`` of the ``(out, lse)`` pairs
    feeds :func:`dotattn.merge`.

    Parameters
    ----------
    query : numpy.ndarray, shape (..., Hq, L, E)
        The same on every rank.
    key_shard, value_shard : array_like or QuantizedKV, shape (..., Hkv, S_r, E) and (..., Hkv, S_r, Ev)
        This rank's keys and values, in any format :func:`dotattn.attention`
        takes; S_r may differ between ranks, and be 0.
    group : torch.distributed.ProcessGroup, optional
        Default: the default group.
    dst : int, optional
        A rank of ``group``: only it gets the result (a gather instead of an
        all-gather); the others get None.
    **options
        ``scale``, ``softcap``, ``sinks`` (joined once, on the group's rank
        0) and ``attn_mask`` (this shard's part: broadcastable to (..., Hq,
        L, S_r)), as in :func:`dotattn.attention`. ``is_causal``, ``window``
        and ``alibi_slopes`` are refused: they depend on the keys' positions.

    Returns
    -------
    (out, lse) or None
        ``out`` (..., Hq, L, Ev) and ``lse`` (..., Hq, L), as
        ``attention(..., return_lse=True)`` gives them.
    """
    options = _checked_options("sharded_decode", dict(options), _POSITIONAL)
    comm = _Collectives("sharded_decode", group)
    if dst is not None and not 0 <= dst < comm.world:
        raise ValueError(
            f"dotattn.distributed.sharded_decode: dst={dst} is not a rank of the group of {comm.world}"
        )
    query = np.asarray(query)
    dims = comm.agree(
        [query.ndim, *query.shape, *([0] * (_MOST_DIMS - query.ndim))], "the check of query shapes"
    )
    if (dims != dims[0]).any():
        raise ValueError(
            f"dotattn.distributed.sharded_decode: query shapes differ between ranks: rank {comm.rank} has "
            f"{query.shape}; every rank must pass the same queries"
        )
    if comm.rank != 0:
        options.pop("sinks", None)  # one extra logit per head: counted once
    out, lse = _api.attention(query, key_shard, value_shard, return_lse=True, **options)
    # out and lse travel as one array (..., Ev + 1): one collective.
    packed = np.concatenate([out, lse[..., None]], axis=-1)
    if dst is None:
        parts = comm.all_gather(packed, "the all-gather of (out, lse)")
    else:
        gathered = comm.gather(packed, dst, "the gather of (out, lse)")
        if gathered is None:
            return None
        parts = gathered
    Ev = out.shape[-1]
    outs: list[Any] = [p[..., :Ev] for p in parts]
    lses: list[Any] = [p[..., Ev] for p in parts]
    return _api.merge(outs, lses)


def zigzag_shard(x: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s part of ``x`` (..., N, D) for a causal
    :func:`ring_attention`: the rows of chunks ``rank`` and ``2 * world - 1
    - rank`` of ``numpy.array_split(x, 2 * world, axis=-2)``, in that order.
    Each rank then holds an early and a late part of the sequence, so that
    all have the same causal work. ``x`` may be a :class:`QuantizedKV`."""
    bounds = _chunk_bounds(x.shape[-2], world)
    first, second = bounds[rank], bounds[2 * world - 1 - rank]
    return _concat_rows([_rows(x, *first), _rows(x, *second)])


def zigzag_unshard(parts: list[NDArray[Any]]) -> NDArray[Any]:
    """The inverse of :func:`zigzag_shard`: the full (..., N, D) array from
    every rank's part (e.g. ring_attention's outputs, gathered)."""
    world = len(parts)
    lengths = [p.shape[-2] for p in parts]
    bounds = _chunk_bounds(sum(lengths), world)
    chunks: list[NDArray[Any] | None] = [None] * (2 * world)
    for r, part in enumerate(parts):
        a, b = bounds[r], bounds[2 * world - 1 - r]
        split = a[1] - a[0]
        chunks[r] = part[..., :split, :]
        chunks[2 * world - 1 - r] = part[..., split : split + b[1] - b[0], :]
    return np.concatenate([c for c in chunks if c is not None], axis=-2)


def _chunk_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """The [begin, end) rows of numpy.array_split's 2 x world chunks of n rows."""
    edges = np.cumsum([0] + [len(c) for c in np.array_split(np.empty(n, dtype=np.uint8), 2 * world)])
    return [(int(edges[i]), int(edges[i + 1])) for i in range(2 * world)]


def _rows(x: Any, begin: int, end: int) -> Any:
    """Rows [begin, end) of the second-to-last dim of an array or QuantizedKV."""
    return x[(slice(None),) * (len(x.shape) - 2) + (slice(begin, end),)]


def _concat_rows(parts: list[Any]) -> Any:
    if isinstance(parts[0], QuantizedKV):
        return QuantizedKV(
            np.concatenate([p.data for p in parts], axis=-2),
            np.concatenate([p.scale for p in parts], axis=-2),
        )
    return np.concatenate(parts, axis=-2)


def _arrays(x: Any) -> list[NDArray[Any]]:
    """The C-contiguous arrays that carry a key or value shard over the wire."""
    parts = [x.data, x.scale] if isinstance(x, QuantizedKV) else [np.asarray(x)]
    return [np.ascontiguousarray(p) for p in parts]


def _from_arrays(like: Any, arrays: list[NDArray[Any]]) -> Any:
    return QuantizedKV(arrays[0], arrays[1]) if isinstance(like, QuantizedKV) else arrays[0]


class _Ring:
    """Passes key/value shards round the ring, rank r to r + 1: each step's
    transfers are posted before the step's compute and waited for after."""

    def __init__(self, comm: _Collectives, lengths: list[int]) -> None:
        self.comm = comm
        self.lengths = lengths  # every rank's shard rows
        self.next = comm.global_rank((comm.rank + 1) % comm.world)
        self.prev = comm.global_rank((comm.rank - 1) % comm.world)

    def start(self, shards: list[Any], source: int, step: int) -> tuple[list[Any], list[Any], list[Any]]:
        """Sends `shards` (from rank `source`) on and posts the receives of
        the previous rank's, from rank source - 1."""
        torch, dist = self.comm.torch, self.comm.dist
        rows = self.lengths[(source - 1) % self.comm.world]
        sends, recvs, received = [], [], []
        what = f"ring step {step}: sending to rank {self.next} / receiving from rank {self.prev}"
        for shard in shards:
            arrays = _arrays(shard)
            buffers = [np.empty(a.shape[:-2] + (rows, a.shape[-1]), dtype=a.dtype) for a in arrays]
            # Both ends know every shard's size: empty ones are not sent.
            for a in (a for a in arrays if a.size):
                tensor = _bytes(torch, a)  # kept until the send is waited for
                sends.append(
                    (tensor, self.comm.run(what, dist.isend, tensor, self.next, group=self.comm.group))
                )
            for b in (b for b in buffers if b.size):
                tensor = _bytes(torch, b)
                recvs.append(
                    (tensor, self.comm.run(what, dist.irecv, tensor, self.prev, group=self.comm.group))
                )
            received.append((shard, buffers))
        return sends, recvs, received

    def finish(self, pending: tuple[list[Any], list[Any], list[Any]], step: int) -> list[Any]:
        sends, recvs, received = pending
        for _, work in recvs + sends:
            self.comm.run(f"ring step {step}: waiting for the transfers", work.wait)
        return [_from_arrays(like, buffers) for like, buffers in received]


def _bytes(torch: Any, a: NDArray[Any]) -> Any:
    """A uint8 tensor over a's memory (any dtype, bfloat16 included)."""
    return torch.from_numpy(a.reshape(-1).view(np.uint8))


def ring_attention(
    query_shard: NDArray[Any],
    key_shard: Any,
    value_shard: Any,
    group: Any = None,
    *,
    is_causal: bool = False,
    **options: Any,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Sequence-sharded attention: each rank's queries over every rank's keys.

    Rank r holds rows of the queries and of the keys and values; the result
    on rank r is its queries' rows of :func:`dotattn.attention` over the
    whole (gathered) keys and values. The key/value shards travel round the
    ring, one step per rank, each step's transfer overlapping the step's
    compute; each step's partial result is merged by LSE.

    Parameters
    ----------
    query_shard : numpy.ndarray, shape (..., Hq, L_r, E)
    key_shard, value_shard : array_like or QuantizedKV, shape (..., Hkv, S_r, E) and (..., Hkv, S_r, Ev)
        Any format :func:`dotattn.attention` takes. Without ``is_causal``
        the shards may be any split of the rows (L_r and S_r may differ, and
        be 0). With ``is_causal=True`` (self-attention: the same sequence
        for queries and keys) every rank's three shards must be its
        :func:`zigzag_shard` of the whole.
    group : torch.distributed.ProcessGroup, optional
    is_causal : bool
        Query position i sees key positions j <= i, positions in the whole
        sequence.
    **options
        ``scale``, ``softcap`` and ``sinks`` (joined once per query row), as
        in :func:`dotattn.attention`. ``window``, ``alibi_slopes`` and
        ``attn_mask`` are refused.

    Returns
    -------
    (out, lse)
        This rank's rows: ``out`` (..., Hq, L_r, Ev), ``lse`` (..., Hq, L_r).
    """
    options = _checked_options("ring_attention", dict(options), ("window", "alibi_slopes", "attn_mask"))
    if not isinstance(is_causal, bool):
        raise TypeError(f"dotattn.distributed.ring_attention: is_causal must be a bool, not {is_causal!r}")
    comm = _Collectives("ring_attention", group)
    query_shard = np.asarray(query_shard)
    if key_shard.shape[-2] != value_shard.shape[-2]:
        raise ValueError(
            f"dotattn.distributed.ring_attention: key_shard {key_shard.shape} and value_shard "
            f"{value_shard.shape} hold different numbers of rows"
        )
    lengths = comm.agree([query_shard.shape[-2], key_shard.shape[-2]], "the exchange of shard lengths")
    if is_causal:
        q_chunks = _zigzag_chunks("query_shard", lengths[:, 0], comm)
        kv_chunks = _zigzag_chunks("key_shard", lengths[:, 1], comm)
        if q_chunks != kv_chunks:
            raise ValueError(
                "dotattn.distributed.ring_attention: is_causal=True needs queries and keys of one sequence, "
                f"sharded alike: the query shards hold {lengths[:, 0].tolist()} rows, the key shards "
                f"{lengths[:, 1].tolist()}"
            )
    ring = _Ring(comm, [int(n) for n in lengths[:, 1]])
    sinks = options.pop("sinks", None)
    results: list[list[tuple[NDArray[Any], NDArray[Any]]]] = [[] for _ in range(2 if is_causal else 1)]
    shards = [key_shard, value_shard]
    for step in range(comm.world):
        source = (comm.rank - step) % comm.world
        pending = ring.start(shards, source, step) if step + 1 < comm.world else None
        first = {"sinks": sinks} if step == 0 and sinks is not None else {}
        if is_causal:
            _causal_step(query_shard, shards, comm, source, q_chunks, results, options, first)
        else:
            results[0].append(
                _api.attention(query_shard, shards[0], shards[1], return_lse=True, **options, **first)
            )
        if pending is not None:
            shards = ring.finish(pending, step)
    merged = [_api.merge([o for o, _ in parts], [lse for _, lse in parts]) for parts in results]
    if len(merged) == 1:
        return merged[0]
    return np.concatenate([m[0] for m in merged], axis=-2), np.concatenate([m[1] for m in merged], axis=-1)


def _merged(parts: list[tuple[NDArray[Any], NDArray[Any]]]) -> tuple[NDArray[Any], NDArray[Any]]:
    outs: list[Any] = [out for out, _ in parts]
    lses: list[Any] = [lse for _, lse in parts]
    return _api.merge(outs, lses)


def _zigzag_chunks(name: str, lengths: NDArray[np.int64], comm: _Collectives) -> list[tuple[int, int]]:
    """Each rank's two chunk lengths, checked against zigzag_shard's split."""
    bounds = _chunk_bounds(int(lengths.sum()), comm.world)
    sizes = [e - b for b, e in bounds]
    chunks = [(sizes[r], sizes[2 * comm.world - 1 - r]) for r in range(comm.world)]
    if any(int(lengths[r]) != a + b for r, (a, b) in enumerate(chunks)):
        raise ValueError(
            f"dotattn.distributed.ring_attention: with is_causal=True, {name} must be each rank's "
            f"zigzag_shard of the sequence: the ranks hold {lengths.tolist()} rows, zigzag_shard of "
            f"{int(lengths.sum())} gives {[a + b for a, b in chunks]}"
        )
    return chunks


def _causal_step(
    query_shard: NDArray[Any],
    shards: list[Any],
    comm: _Collectives,
    source: int,
    chunks: list[tuple[int, int]],
    results: list[list[tuple[NDArray[Any], NDArray[Any]]]],
    options: dict[str, Any],
    first: dict[str, Any],
) -> None:
    """The causal work of one ring step: this rank's query chunks r and
    2W - 1 - r against the arriving key/value chunks s and 2W - 1 - s of
    rank `source`. A key chunk before a query chunk is seen whole, the
    same chunk causally, a later one not at all."""
    world, rank = comm.world, comm.rank
    q_ids = (rank, 2 * world - 1 - rank)
    kv_ids = (source, 2 * world - 1 - source)
    q_split, kv_split = chunks[rank][0], chunks[source][0]
    q_parts = (_rows(query_shard, 0, q_split), _rows(query_shard, q_split, query_shard.shape[-2]))
    rows = shards[0].shape[-2]
    kv_parts = [(_rows(k, 0, kv_split), _rows(k, kv_split, rows)) for k in shards]
    for qi, q in enumerate(q_parts):
        for ki in range(2):
            if kv_ids[ki] > q_ids[qi]:
                continue
            diagonal = kv_ids[ki] == q_ids[qi]
            results[qi].append(
                _api.attention(
                    q,
                    kv_parts[0][ki],
                    kv_parts[1][ki],
                    return_lse=True,
                    is_causal=diagonal,
                    **options,
                    **(first if diagonal else {}),
                )
            )
