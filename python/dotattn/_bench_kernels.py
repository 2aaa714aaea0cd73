"""python -m dotattn bench --kernels: how close each kernel set this CPU runs
comes to the machine, step by step.

For each set, on one thread, with the operands in cache
(dotattn._core.kernel_rates, a tile of 96 query rows x 72 keys, E = Ev = 64
and 128): the register-only FMA peak loop of that set; the score tile and
the P·V step in GFLOP/s and as % of that peak; the softmax step (exp_sum:
exponentiate and sum the tile's scores) in G scores/s. Then whole calls on --threads threads: prefill
(the standard shape) in GFLOP/s, as % of the peak times the threads and of
NumPy's sgemm measured in the same run; and cold decode_long (the last-level
cache evicted before each call) in GB/s of K and V as stored, as % of the
streaming read bandwidth measured in the same run. The sets alternate call
by call, medians of --repeat runs (default 5).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable

import numpy as np

import dotattn

from . import _bench

TILE_ROWS, TILE_KEYS = 96, 72
TILE_SECONDS = 0.25
# Whole calls: many rows with the operands in cache (GFLOP/s), and decoding
# cold (GB/s).
WHOLE_CALLS = [_bench.STANDARD_SHAPES["prefill"], _bench.STANDARD_SHAPES["decode_long"]]


def run(args: argparse.Namespace, repeat: int | None, threads: int) -> int:
    repeat = repeat or 5
    isas = kernel_sets(args)
    machine = _bench.machine_info()
    print(f"dotattn {dotattn.__version__}; cpu: {machine['cpu']}, {machine['cores']} cores")
    print(f"kernel sets: {', '.join(isas)}\n")

    print(f"One thread, one tile in cache ({TILE_ROWS} rows x {TILE_KEYS} keys):")
    print(
        f"{'isa':>16} {'E':>4} {'FMA peak':>9} {'score':>7} {'%peak':>6} "
        f"{'P·V':>7} {'%peak':>6} {'softmax':>10}"
    )
    print(f"{'':>16} {'':>4} {'GFLOP/s':>9} {'GFLOP/s':>7} {'':>6} {'GFLOP/s':>7} {'':>6} {'Gscores/s':>10}")
    peaks: dict[str, float] = {}
    for isa in isas:
        for E in (64, 128):
            r = dotattn._core.kernel_rates(isa, TILE_ROWS, TILE_KEYS, E, TILE_SECONDS)
            peaks[isa] = max(peaks.get(isa, 0.0), r["peak_gflops"])
            print(
                f"{isa:>16} {E:>4} {r['peak_gflops']:9.1f} {r['score_gflops']:7.1f} "
                f"{100 * r['score_gflops'] / r['peak_gflops']:5.0f}% {r['pv_gflops']:7.1f} "
                f"{100 * r['pv_gflops'] / r['peak_gflops']:5.0f}% {r['softmax_gscores']:10.2f}",
                flush=True,
            )

    sgemm = _bench.measure_sgemm(args.sgemm_size)
    stream = _bench.measure_stream(args.stream_mib)
    print(
        f"\n{threads} threads; numpy sgemm {args.sgemm_size}: {sgemm['gflops']:.1f} GFLOP/s; "
        f"stream_read {stream['mib']} MiB: {stream['gbps']:.2f} GB/s"
    )
    rng = np.random.default_rng(0)
    evict = _bench.cache_evictor(args.flush_mib)
    print(
        f"{'isa':>16} {'shape':>12} {'ms':>9} {'GFLOP/s':>8} {'%peak':>6} {'%sgemm':>7} "
        f"{'GB/s':>7} {'%stream':>8}"
    )
    for shape in WHOLE_CALLS:
        call, nbytes = _call(shape, rng)
        median = _alternating(isas, call, repeat, evict=evict if shape.is_decode else None)
        for isa in isas:
            gflops = shape.flops / median[isa] / 1e9
            line = f"{isa:>16} {shape.name:>12} {median[isa] * 1e3:9.3f} {gflops:8.1f} "
            if shape.is_decode:  # cold, bound by reading K and V
                gbps = nbytes / median[isa] / 1e9
                line += f"{'':>6} {'':>7} {gbps:7.2f} {100 * gbps / stream['gbps']:7.0f}%"
            else:
                line += (
                    f"{100 * gflops / (peaks[isa] * threads):5.0f}% {100 * gflops / sgemm['gflops']:6.0f}%"
                )
            print(line, flush=True)
    return 0


def kernel_sets(args: argparse.Namespace) -> list[str]:
    """--isa's set, else every set this CPU runs but the test-only
    avx512_emulated (in builds that have it), which only a slower copy of
    avx512 would add."""
    if args.isa:
        return [args.isa]
    return [isa for isa in dotattn.supported_isas() if isa != "avx512_emulated"]


def _call(shape: Any, rng: np.random.Generator) -> tuple[Callable[[], Any], int]:
    q = rng.standard_normal((shape.B, shape.Hq, shape.L, shape.E), dtype=np.float32)
    k = rng.standard_normal((shape.B, shape.Hkv, shape.S, shape.E), dtype=np.float32)
    v = rng.standard_normal((shape.B, shape.Hkv, shape.S, shape.E), dtype=np.float32)
    out = np.empty_like(q)
    return (lambda: dotattn.attention(q, k, v, is_causal=shape.causal, out=out)), k.nbytes + v.nbytes


def _alternating(
    isas: list[str], fn: Callable[[], Any], repeat: int, evict: Callable[[], Any] | None
) -> dict[str, float]:
    """Median seconds per call of fn on each set, the sets taking turns."""
    samples: dict[str, list[float]] = {isa: [] for isa in isas}
    for isa in isas:
        dotattn.set_isa(isa)
        fn()  # warm-up
    for _ in range(repeat):
        for isa in isas:
            dotattn.set_isa(isa)
            if evict:
                evict()
            samples[isa].append(_bench.seconds(fn))
    return {isa: statistics.median(s) for isa, s in samples.items()}
