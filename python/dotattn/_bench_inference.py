"""python -m dotattn bench --inference: the serving entry points and score
options of dotattn, each timed against the dotattn call it replaces, in the
same process and the same time window.

Each case is a set of variants of one computation (or of one shape), timed
as the standard benchmark times its systems: one warm-up call, then the
variants alternate run by run and the medians are compared; a run lasts at
least 20 ms, except with --cold, where each call is timed on its own after
the last-level cache is evicted. The ratio column is the first variant's
median over each variant's: above 1 the variant is faster.

- paged_decode: decoding (one query per sequence) against a paged cache of
  pages of 16 tokens scattered at random over the pool
  (dotattn.attention_paged) against the same K/V bytes as one contiguous
  (B, Hkv, S, E) batch (dotattn.attention), in --kv-dtype's format. Bytes
  and GB/s are those of K and V as stored; % stream is of the streaming
  read bandwidth measured in the same run.
- varlen: 8 causal sequences of 64 to 2048 tokens packed
  (dotattn.attention_varlen) against the same sequences padded to 2048 in
  one batch (dotattn.attention with a boolean key mask and is_causal).
- window: causal prefill at L = S = 16384 with window=(1024, 0) against
  full causal attention and full attention without a mask.
- options: the prefill shape plain, with softcap, with ALiBi, with sinks
  and with all three.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import dotattn

from . import _bench

PAGE_SIZE = 16
CASES = ["paged_decode", "varlen", "window", "options"]


@dataclass
class Case:
    name: str
    dims: str
    variants: dict[str, Callable[[], Any]]
    repeat: int
    kv_bytes: int | None = None  # decode: K and V as stored, per call
    cold: bool = False


def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--inference",
        nargs="*",
        metavar="CASE",
        choices=CASES,
        help=f"time the inference cases instead of the standard shapes (default: all of {', '.join(CASES)})",
    )


def run(args: Any, repeat: int | None) -> int:
    """The --inference cases, with dotattn's threads and ISA already set."""
    names = args.inference or CASES
    rng = np.random.default_rng(0)
    machine = _bench.machine_info()
    print(f"dotattn {dotattn.__version__}, isa {dotattn.get_isa()}; threads {dotattn.get_num_threads()}")
    print(f"cpu: {machine['cpu']}, {machine['cores']} cores")
    stream = _bench.measure_stream(args.stream_mib) if "paged_decode" in names else None
    if stream:
        print(f"stream_read {stream['mib']} MiB: {stream['gbps']:.2f} GB/s")
    evict = _bench.cache_evictor(args.flush_mib) if args.cold else None
    print(f"K/V of the decode case stored as {args.kv_dtype}; {'cold' if args.cold else 'warm'} cache\n")
    print("| case | dims | variant | ms | vs first | K+V GB/s | % stream |")
    print("|---|---|---|---:|---:|---:|---:|", flush=True)
    for name in names:
        case = BUILDERS[name](rng, args.kv_dtype)
        medians = time_variants(case, repeat or case.repeat, evict if case.cold else None)
        first = next(iter(medians.values()))
        for variant, median in medians.items():
            gbps = case.kv_bytes / median / 1e9 if case.kv_bytes else None
            cells = [
                case.name,
                case.dims,
                variant,
                f"{median * 1e3:.3f}",
                f"{first / median:.2f}x",
                f"{gbps:.2f}" if gbps else "",
                f"{100 * gbps / stream['gbps']:.0f}%" if gbps and stream else "",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


def time_variants(case: Case, repeat: int, evict: Callable[[], Any] | None) -> dict[str, float]:
    """Median seconds per call of each variant, the variants alternating."""
    calls_per_run = {}
    for variant, fn in case.variants.items():
        calls_per_run[variant] = 1 if evict else _bench.warm_up(fn)
        if evict:
            fn()
        time.sleep(_bench.OPENMP_PAUSE_S)
    samples: dict[str, list[float]] = {variant: [] for variant in case.variants}
    for _ in range(repeat):
        for variant, fn in case.variants.items():
            if evict:
                evict()
            samples[variant].append(_bench.seconds(fn, calls_per_run[variant]))
            time.sleep(_bench.OPENMP_PAUSE_S)
    return {variant: statistics.median(times) for variant, times in samples.items()}


def paged_decode(rng: np.random.Generator, kv_dtype: str) -> Case:
    """B sequences of S keys: as one contiguous batch, and as pages
    scattered at random over a pool of exactly their pages."""
    B, Hq, Hkv, S, E = 8, 32, 8, 2048, 128
    q = rng.standard_normal((B, Hq, 1, E), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, S, E), dtype=np.float32)
    v = rng.standard_normal((B, Hkv, S, E), dtype=np.float32)
    pages_per_seq = S // PAGE_SIZE
    # Page p of the pool holds slot block page_of[p] of the batch.
    order = rng.permutation(B * pages_per_seq)
    table = np.empty((B, pages_per_seq), dtype=np.int32)
    table.reshape(-1)[order] = np.arange(B * pages_per_seq, dtype=np.int32)

    def pool(x: np.ndarray) -> np.ndarray:
        """The pages in vLLM's CPU layout, (num_pages, Hkv, page_size, E),
        seen as the (num_pages, page_size, Hkv, E) attention_paged takes."""
        blocks = x.reshape(B, Hkv, pages_per_seq, PAGE_SIZE, E).transpose(0, 2, 1, 3, 4)
        pages = np.ascontiguousarray(blocks.reshape(B * pages_per_seq, Hkv, PAGE_SIZE, E)[order])
        return pages

    k_pages, v_pages = (slots_then_heads(_bench.stored_as(pool(x), kv_dtype)) for x in (k, v))
    k_flat, v_flat = (_bench.stored_as(x, kv_dtype) for x in (k, v))
    lengths = np.full(B, S, dtype=np.int32)
    q_packed = np.ascontiguousarray(q[:, :, 0])
    return Case(
        "paged_decode",
        f"{B},{Hq},{Hkv},1,{S},{E} {kv_dtype}",
        {
            "contiguous": lambda: dotattn.attention(q, k_flat, v_flat),
            f"paged ({PAGE_SIZE}-token pages)": lambda: dotattn.attention_paged(
                q_packed, k_pages, v_pages, table, lengths
            ),
        },
        repeat=15,
        kv_bytes=_bench.stored_bytes(k_flat) + _bench.stored_bytes(v_flat),
        cold=True,
    )


def slots_then_heads(x: Any) -> Any:
    """A (num_pages, Hkv, page_size, E) pool, or its QuantizedKV, as a view
    (num_pages, page_size, Hkv, E)."""
    if isinstance(x, dotattn.QuantizedKV):
        return dotattn.QuantizedKV(x.data.transpose(0, 2, 1, 3), x.scale.transpose(0, 2, 1, 3))
    return x.transpose(0, 2, 1, 3)


def varlen(rng: np.random.Generator, kv_dtype: str) -> Case:
    lengths = [64, 128, 256, 512, 768, 1024, 1536, 2048]
    H, E, longest = 16, 64, max(lengths)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    q, k, v = (rng.standard_normal((int(cu[-1]), H, E), dtype=np.float32) for _ in range(3))

    def padded(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(lengths), H, longest, E), dtype=np.float32)
        for b, n in enumerate(lengths):
            out[b, :, :n] = x[cu[b] : cu[b + 1]].transpose(1, 0, 2)
        return out

    qp, kp, vp = padded(q), padded(k), padded(v)
    keys_present = (np.arange(longest)[None, :] < np.array(lengths)[:, None])[:, None, None, :]
    return Case(
        "varlen",
        f"8 seqs {lengths[0]}..{longest}, H={H}, E={E}, causal",
        {
            "padded + mask": lambda: dotattn.attention(qp, kp, vp, attn_mask=keys_present, is_causal=True),
            "varlen": lambda: dotattn.attention_varlen(q, k, v, cu, cu, is_causal=True),
        },
        repeat=5,
    )


def window(rng: np.random.Generator, kv_dtype: str) -> Case:
    H, S, E = 4, 16384, 64
    q, k, v = (rng.standard_normal((1, H, S, E), dtype=np.float32) for _ in range(3))
    return Case(
        "window",
        f"1,{H},{H},{S},{S},{E}",
        {
            "full, no mask": lambda: dotattn.attention(q, k, v),
            "full causal": lambda: dotattn.attention(q, k, v, is_causal=True),
            "causal window (1024, 0)": lambda: dotattn.attention(q, k, v, is_causal=True, window=(1024, 0)),
        },
        repeat=3,
    )


def options(rng: np.random.Generator, kv_dtype: str) -> Case:
    shape = _bench.STANDARD_SHAPES["prefill"]
    q = rng.standard_normal((shape.B, shape.Hq, shape.L, shape.E), dtype=np.float32)
    k = rng.standard_normal((shape.B, shape.Hkv, shape.S, shape.E), dtype=np.float32)
    v = rng.standard_normal((shape.B, shape.Hkv, shape.S, shape.E), dtype=np.float32)
    slopes = 2.0 ** -np.arange(1, shape.Hq + 1, dtype=np.float32)
    sinks = rng.standard_normal(shape.Hq).astype(np.float32)
    return Case(
        "options",
        shape.dims,
        {
            "plain": lambda: dotattn.attention(q, k, v),
            "softcap=30": lambda: dotattn.attention(q, k, v, softcap=30.0),
            "alibi_slopes": lambda: dotattn.attention(q, k, v, alibi_slopes=slopes),
            "sinks": lambda: dotattn.attention(q, k, v, sinks=sinks),
            "all three": lambda: dotattn.attention(q, k, v, softcap=30.0, alibi_slopes=slopes, sinks=sinks),
        },
        repeat=9,
    )


BUILDERS: dict[str, Callable[[np.random.Generator, str], Case]] = {
    "paged_decode": paged_decode,
    "varlen": varlen,
    "window": window,
    "options": options,
}
