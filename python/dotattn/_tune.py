"""python -m dotattn tune: sweep the parameters of a kernel set (dotattn.Tuning
in C++: row and key blocks, split-K ranges, the decoding kernels' prefetch
distances and P·V chunk) on this machine, and print the best values with
their measured gain over the set's current table, ready to paste into its
cpp/src/kernels/vec_<isa>.hpp.

Each parameter is swept in turn, the others held at their best so far
(coordinate descent, in the order of PARAMETERS), in the regime it serves:
the row and key blocks on prefill shapes with the operands in cache; the
decoding parameters on decode shapes with the last-level cache evicted
before every call (as --cold in python -m dotattn bench), over K/V stored
as float32 and as bfloat16 (float16 without ml_dtypes) and int8. A
candidate's figure is the geometric mean over its regime's shapes of each
shape's median time; the candidates alternate round by round, so that all
see the same machine state. A value replaces the current one only if it is
faster by more than --threshold (default 2%), which keeps noise out of the
table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any, Callable

import numpy as np

import dotattn
from dotattn import _bench

# (shape, K/V format): the standard shapes of python -m dotattn bench, or
# shaped like them.
PREFILL = [
    (_bench.STANDARD_SHAPES["prefill"], "float32"),
    (_bench.Shape("prefill_e128", 1, 8, 8, 1024, 1024, 128, causal=True), "float32"),
]
DECODE = [
    (_bench.STANDARD_SHAPES["decode"], "float32"),
    (_bench.STANDARD_SHAPES["decode_b8"], "float32"),
    (_bench.STANDARD_SHAPES["decode_long"], "bfloat16"),
    (_bench.STANDARD_SHAPES["decode_long"], "int8"),
]

# (parameter, candidates, regime): the candidates around today's values
# of every set; the current value is always tried too.
PARAMETERS: list[tuple[str, list[int], str]] = [
    ("row_block", [48, 64, 96, 128, 192], "prefill"),
    ("key_block_bytes", [32768, 49152, 65536, 98304, 131072], "prefill"),
    ("decode_key_block_bytes", [65536, 131072, 262144, 524288], "decode"),
    ("key_bytes_ahead", [1536, 3072, 4096, 6144, 8192], "decode"),
    ("value_bytes_ahead", [2048, 4096, 6144, 8192], "decode"),
    ("value_chunk_bytes", [1024, 2048, 4096], "decode"),
    ("min_split_keys", [256, 512, 1024, 2048], "decode"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--isa", metavar="NAME", help="the kernel set to tune (default: the one in use)")
    parser.add_argument("--threads", type=int, help="threads per call (default: OpenMP's)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per parameter (default 5)")
    parser.add_argument(
        "--only", nargs="+", metavar="PARAM", choices=[p for p, _, _ in PARAMETERS], help="sweep only these"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.02, help="least gain that changes a value (0.02)"
    )
    parser.add_argument("--flush-mib", type=int, default=512, help="MiB read to evict the cache (512)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.rounds < 1 or (args.threads is not None and args.threads < 1) or args.flush_mib < 1:
        parser.error("--rounds, --threads and --flush-mib need positive integers")
    isa = args.isa or dotattn.get_isa()
    if isa not in dotattn.supported_isas():
        parser.error(f"--isa {isa}: this CPU runs {', '.join(dotattn.supported_isas())}")
    threads_before, isa_before = dotattn.get_num_threads(), dotattn.get_isa()
    table_before = dotattn._core.get_tuning(isa)
    try:
        dotattn.set_isa(isa)
        if args.threads is not None:
            dotattn.set_num_threads(args.threads)
        return _tune(args, isa, table_before)
    finally:
        dotattn._core.set_tuning(isa, table_before)
        dotattn.set_num_threads(threads_before)
        dotattn.set_isa(isa_before)


def _tune(args: argparse.Namespace, isa: str, table: dict[str, int]) -> int:
    machine = _bench.machine_info()
    threads = dotattn.get_num_threads()
    print(f"dotattn {dotattn.__version__}: tuning {isa} on {machine['cpu']}, {threads} threads")
    print(f"current table: {_as_cpp(table)}", flush=True)
    rng = np.random.default_rng(0)
    evict = _bench.cache_evictor(args.flush_mib)
    calls = {
        "prefill": [_call(s, kv, rng) for s, kv in PREFILL],
        "decode": [_call(s, kv, rng, available=_has_ml_dtypes()) for s, kv in DECODE],
    }
    best = dict(table)
    swept: set[str] = set()
    for name, candidates, regime in PARAMETERS:
        if args.only and name not in args.only:
            continue
        values = sorted(set(candidates) | {best[name]})
        times = _sweep(isa, best, name, values, calls[regime], regime == "decode", evict, args.rounds)
        swept.add(regime)
        current = times[best[name]]
        fastest = min(values, key=lambda v: times[v])
        print(f"\n{name} ({regime}{', cold' if regime == 'decode' else ''}): geometric mean of medians, ms")
        for v in values:
            mark = " <- current" if v == best[name] else ""
            print(f"  {v:>8}: {times[v] * 1e3:9.3f}  {current / times[v]:5.3f}x{mark}")
        if current / times[fastest] > 1 + args.threshold:
            best[name] = fastest
            print(f"  -> {fastest} ({current / times[fastest]:.3f}x)")
        else:
            print(f"  -> keep {best[name]} (nothing faster by more than {args.threshold:.0%})")
    print(f"\nbest table for {isa}: {_as_cpp(best)}")
    for regime, shapes in (("prefill", PREFILL), ("decode", DECODE)):
        if regime not in swept:
            continue
        after = _measure(isa, best, calls[regime], regime == "decode", evict, args.rounds, against=table)
        print(
            f"gain over the current table, {regime} ({', '.join(f'{s.name} {kv}' for s, kv in shapes)}): "
            f"{after['current'] / after['new']:.3f}x"
        )
    return 0


def _has_ml_dtypes() -> bool:
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return False
    return True


def _call(
    shape: _bench.Shape, kv_dtype: str, rng: np.random.Generator, available: bool = True
) -> Callable[[], Any]:
    kv_dtype = kv_dtype if kv_dtype != "bfloat16" or available else "float16"
    q = rng.standard_normal((shape.B, shape.Hq, shape.L, shape.E), dtype=np.float32)
    k = rng.standard_normal((shape.B, shape.Hkv, shape.S, shape.E), dtype=np.float32)
    v = rng.standard_normal((shape.B, shape.Hkv, shape.S, shape.E), dtype=np.float32)
    k, v = _bench.stored_as(k, kv_dtype), _bench.stored_as(v, kv_dtype)
    out = np.empty_like(q)
    return lambda: dotattn.attention(q, k, v, is_causal=shape.causal, out=out)


def _median_seconds(fn: Callable[[], Any], cold: bool, evict: Callable[[], Any]) -> float:
    """Cold: the median of 5 calls, each after evicting the cache. Hot: the
    median of 5 runs of at least 20 ms each, per call."""
    samples = []
    fn()
    for _ in range(5):
        if cold:
            evict()
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        else:
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < 0.02 or count == 0:
                fn()
                count += 1
            samples.append(elapsed / count)
    return statistics.median(samples)


def _sweep(
    isa: str,
    best: dict[str, int],
    name: str,
    values: list[int],
    calls: list[Callable[[], Any]],
    cold: bool,
    evict: Callable[[], Any],
    rounds: int,
) -> dict[int, float]:
    samples: dict[int, list[list[float]]] = {v: [[] for _ in calls] for v in values}
    for r in range(rounds):
        order = values if r % 2 == 0 else values[::-1]
        for v in order:
            dotattn._core.set_tuning(isa, {**best, name: v})
            for i, fn in enumerate(calls):
                samples[v][i].append(_median_seconds(fn, cold, evict))
    dotattn._core.set_tuning(isa, best)
    return {v: _geometric_mean([statistics.median(s) for s in samples[v]]) for v in values}


def _measure(
    isa: str,
    best: dict[str, int],
    calls: list[Callable[[], Any]],
    cold: bool,
    evict: Callable[[], Any],
    rounds: int,
    against: dict[str, int],
) -> dict[str, float]:
    samples: dict[str, list[list[float]]] = {"current": [[] for _ in calls], "new": [[] for _ in calls]}
    for r in range(rounds):
        for label in ("current", "new") if r % 2 == 0 else ("new", "current"):
            dotattn._core.set_tuning(isa, against if label == "current" else best)
            for i, fn in enumerate(calls):
                samples[label][i].append(_median_seconds(fn, cold, evict))
    return {label: _geometric_mean([statistics.median(s) for s in per]) for label, per in samples.items()}


def _geometric_mean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _as_cpp(table: dict[str, int]) -> str:
    """The table as the line of vec_<isa>.hpp that sets it (get_tuning's
    dict is in the order of dotattn::Tuning's fields)."""
    return "static constexpr Tuning kTuning{" + ", ".join(str(v) for v in table.values()) + "};"
