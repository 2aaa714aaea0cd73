"""python -m dotattn bench: time dotattn against PyTorch's CPU
scaled_dot_product_attention and the NumPy reference on the standard shapes.

All systems run in one process on the same float32 inputs (PyTorch gets
torch.from_numpy views of the same arrays); dotattn and PyTorch use the same
thread count, NumPy that of its BLAS. Each system is called once to warm up;
then the systems alternate run by run, and the medians are compared. A run
lasts at least 20 ms: on a fast shape it calls the system many times and
counts the time per call. After each run the benchmark pauses until the idle
worker threads of that system stop spinning, so that they do not steal the
next system's cores: 5 ms after dotattn and PyTorch (OpenMP), 0.2 s after
NumPy (OpenBLAS spins for about 0.1 s).

--kv-dtype float16|bfloat16|int8 stores dotattn's key and value in that
format (bfloat16 as ml_dtypes.bfloat16, int8 through dotattn.quantize_kv with
its default group, 32 where 32 divides E), converted from the float32 inputs
once per shape, outside the timed region; PyTorch and the NumPy reference
keep the float32 inputs.

--inference [CASE ...] times the serving entry points and score options
instead (paged decode against contiguous, varlen against padded, a sliding
window against full attention, softcap/ALiBi/sinks against plain); see
dotattn._bench_inference.

--kernels reports each kernel set's efficiency instead: its score tile, P·V
and softmax steps against a register-only FMA peak loop of the same set,
prefill against sgemm, cold decode against the streaming read; see
dotattn._bench_kernels.

--cold evicts the last-level cache before each timed call of dotattn and
PyTorch, as in a decoding model, whose per-layer KV caches do not stay in
cache between one layer's calls: dotattn._core.stream_read reads a buffer of
--flush-mib MiB (default 512, far more than an L3) on dotattn's threads,
which, before a PyTorch call, are given 5 ms to stop spinning. Each call is
then timed on its own, not batched into 20 ms runs. The NumPy reference is
timed as without --cold.

PyTorch is optional, never a dependency of dotattn: it is timed when
`import torch` works. The NumPy reference computes in float64 and forms the
whole L×S score matrix; it is timed only where one call is estimated to take
under 2 s. NumPy's float32 4096×4096 GEMM gives the machine's rate.

FLOPs = 4·B·Hq·L·S·E, halved for causal L == S. The decode shapes (L = 1)
also report the bytes of K and V per call, as each system is given them
(dotattn's as stored: for int8 the data and its float32 scales, e.g.
k.data.nbytes + k.scale.nbytes; PyTorch's and the reference's float32),
those bytes over the median time in GB/s (10^9 bytes per second), and that
rate as a percentage of the streaming read bandwidth measured in the same
run: the median of 5 timed dotattn._core.stream_read calls over a buffer of
--stream-mib MiB (default 1024), on dotattn's thread count, measured only
when a decode shape is timed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import dotattn
from dotattn import _bench_inference, reference


@dataclass(frozen=True)
class Shape:
    name: str
    B: int
    Hq: int
    Hkv: int
    L: int
    S: int
    E: int  # and Ev = E
    causal: bool = False
    repeat: int = 9  # timed runs per system unless --repeat says otherwise

    @property
    def dims(self) -> str:
        return f"{self.B},{self.Hq},{self.Hkv},{self.L},{self.S},{self.E}"

    @property
    def flops(self) -> float:
        full = 4.0 * self.B * self.Hq * self.L * self.S * self.E
        return full / 2 if self.causal and self.L == self.S else full

    @property
    def is_decode(self) -> bool:
        return self.L == 1


STANDARD_SHAPES = {
    shape.name: shape
    for shape in [
        Shape("prefill", 1, 16, 16, 1024, 1024, 64),
        Shape("causal", 1, 32, 32, 2048, 2048, 128, causal=True, repeat=3),
        Shape("long", 1, 8, 8, 8192, 8192, 64, repeat=3),
        Shape("decode", 1, 32, 8, 1, 4096, 128, repeat=15),
        Shape("decode_b8", 8, 32, 8, 1, 2048, 128),
        Shape("decode_long", 1, 32, 8, 1, 16384, 128),
        Shape("tiny", 1, 1, 1, 16, 16, 64, repeat=15),
    ]
}

# The --plot sweep: the prefill head configuration at L = S, without and
# with the causal mask.
SWEEP_HEADS = {"B": 1, "Hq": 16, "Hkv": 16, "E": 64}
SWEEP_LENGTHS = [128, 256, 512, 1024, 2048]
SWEEP_REPEAT = 5

SYSTEMS = ["dotattn", "torch", "numpy_ref"]
REFERENCE_LIMIT_S = 2.0  # the reference is skipped where one call would take longer,
REFERENCE_BUDGET_S = 5.0  # and runs fewer times than the others where they would take longer
RUN_S = 0.02  # shortest run; a fast system is called several times per run
MAX_CALLS = 10_000
OPENMP_PAUSE_S = 0.005  # pauses after a run, see the docstring
OPENBLAS_PAUSE_S = 0.2
PAUSE_S = {"dotattn": OPENMP_PAUSE_S, "torch": OPENMP_PAUSE_S, "numpy_ref": OPENBLAS_PAUSE_S}
KV_DTYPES = ["float32", "float16", "bfloat16", "int8"]
COLD_SYSTEMS = {"dotattn", "torch"}  # the ones --cold evicts the cache for
FLUSH_MIB = 512
STREAM_MIB = 1024
STREAM_RUNS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m dotattn bench`. --threads and --repeat
    default to argparse.SUPPRESS so that the same options given before
    `bench` (options of `python -m dotattn` itself) are not overwritten."""
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="NAME",
        choices=list(STANDARD_SHAPES),
        default=list(STANDARD_SHAPES),
        help=f"standard shapes to time (default: all of {', '.join(STANDARD_SHAPES)})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=argparse.SUPPRESS,
        help="threads for dotattn and torch alike (default: dotattn.get_num_threads(), OpenMP's default)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=argparse.SUPPRESS,
        help="timed runs per shape and system (default: per shape, from 3 for long and causal to 15)",
    )
    parser.add_argument("--isa", metavar="NAME", help="run dotattn with this kernel set (dotattn.set_isa)")
    parser.add_argument(
        "--kv-dtype",
        choices=KV_DTYPES,
        default="float32",
        help="store dotattn's key and value in this format (default float32; bfloat16 needs ml_dtypes, "
        "int8 is dotattn.quantize_kv's); torch and the reference keep float32",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="the query's dtype (and the result's) for dotattn, and q, k and v's for torch (default "
        "float32; bfloat16 needs ml_dtypes); dotattn's K/V stay as --kv-dtype says",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the last-level cache (read --flush-mib MiB) before each timed dotattn and torch call",
    )
    parser.add_argument(
        "--flush-mib",
        type=int,
        default=FLUSH_MIB,
        metavar="MIB",
        help=f"size of the buffer --cold reads; far more than the L3 (default {FLUSH_MIB})",
    )
    parser.add_argument(
        "--stream-mib",
        type=int,
        default=STREAM_MIB,
        metavar="MIB",
        help=f"size of the buffer that gives the streaming read bandwidth; far more than the L3 "
        f"(default {STREAM_MIB})",
    )
    parser.add_argument("--json", metavar="FILE", help="write the machine, settings and all samples to FILE")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also sweep L = S on the prefill heads and plot GFLOP/s per system (needs matplotlib)",
    )
    parser.add_argument("--no-torch", action="store_true", help="do not time PyTorch even if it is installed")
    parser.add_argument(
        "--sweep",
        nargs="+",
        type=int,
        default=SWEEP_LENGTHS,
        metavar="L",
        help=f"sequence lengths of the --plot sweep (default: {' '.join(map(str, SWEEP_LENGTHS))})",
    )
    _bench_inference.add_arguments(parser)
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="each kernel set's steps against its FMA peak loop, prefill against sgemm, cold decode "
        "against the streaming read (dotattn._bench_kernels)",
    )
    parser.add_argument(
        "--sgemm-size",
        type=int,
        default=4096,
        metavar="N",
        help="size of the square float32 GEMM that gives the machine's rate (default 4096)",
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Runs the benchmark that `args` asks for. The thread counts of dotattn
    and torch and dotattn's ISA are restored afterwards."""
    threads, repeat = getattr(args, "threads", None), getattr(args, "repeat", None)
    counts = [("--threads", threads), ("--repeat", repeat), ("--sgemm-size", args.sgemm_size)]
    for option, value in [*counts, ("--flush-mib", args.flush_mib), ("--stream-mib", args.stream_mib)]:
        if value is not None and value < 1:
            parser.error(f"{option} needs a positive integer, got {value}")
    if min(args.sweep) < 1:
        parser.error("--sweep needs positive lengths")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error('--plot needs matplotlib: pip install "dotattn[bench]" (or pip install matplotlib)')
    if "bfloat16" in (args.kv_dtype, args.dtype) and importlib.util.find_spec("ml_dtypes") is None:
        parser.error("--kv-dtype bfloat16 needs ml_dtypes: pip install ml_dtypes")
    torch = None if args.no_torch else _import_torch()

    threads_before, isa_before = dotattn.get_num_threads(), dotattn.get_isa()
    torch_threads_before = torch.get_num_threads() if torch else None
    try:
        if args.isa is not None:
            try:
                dotattn.set_isa(args.isa)
            except ValueError as error:
                parser.error(f"--isa {args.isa}: {error}")
        threads = threads or dotattn.get_num_threads()
        dotattn.set_num_threads(threads)
        if torch:
            torch.set_num_threads(threads)
        if args.inference is not None:
            return _bench_inference.run(args, repeat)
        if args.kernels:
            from dotattn import _bench_kernels  # it builds on this module

            return _bench_kernels.run(args, repeat, threads)
        return _benchmark(args, repeat, threads, torch)
    finally:
        dotattn.set_num_threads(threads_before)
        dotattn.set_isa(isa_before)
        if torch:
            torch.set_num_threads(torch_threads_before)


def _benchmark(args: argparse.Namespace, repeat: int | None, threads: int, torch: Any) -> int:
    machine = machine_info()
    isas = ", ".join(dotattn.supported_isas())
    print(f"dotattn {dotattn.__version__}, isa {dotattn.get_isa()} (this CPU runs: {isas})")
    print(f"cpu: {machine['cpu']}, {machine['cores']} cores; threads: {threads}")
    print(f"numpy {np.__version__}; torch {torch.__version__ if torch else 'not timed'}", flush=True)
    sgemm = measure_sgemm(args.sgemm_size)
    print(f"numpy sgemm {args.sgemm_size}: {sgemm['gflops']:.1f} GFLOP/s", flush=True)
    shapes = [STANDARD_SHAPES[name] for name in dict.fromkeys(args.shapes)]  # as given, once each
    stream = measure_stream(args.stream_mib) if any(shape.is_decode for shape in shapes) else None
    if stream:
        print(f"stream_read {stream['mib']} MiB: {stream['gbps']:.2f} GB/s on {threads} threads", flush=True)
    cache = f"cache evicted ({args.flush_mib} MiB read) before each call" if args.cold else "warm cache"
    print(f"query {args.dtype}; dotattn K/V stored as {args.kv_dtype}; {cache}\n", flush=True)

    evict = cache_evictor(args.flush_mib) if args.cold else None
    bandwidth = stream["gbps"] if stream else None
    results = time_shapes(shapes, repeat, torch, args.kv_dtype, evict, sgemm["gflops"], bandwidth, args.dtype)

    sweep = None
    if args.plot:
        heads = SWEEP_HEADS
        print(f"\nSweep for --plot, B,Hq,Hkv,E = {heads['B']},{heads['Hq']},{heads['Hkv']},{heads['E']}:")
        sweep = time_shapes(sweep_shapes(args.sweep), repeat, torch, args.kv_dtype, evict, sgemm["gflops"])
        title = (
            f"dotattn {dotattn.__version__} ({dotattn.get_isa()}), {threads} threads, {machine['cpu']}\n"
            f"float32 (dotattn's K/V {args.kv_dtype}{', cold' if args.cold else ''}), "
            f"B={heads['B']}, Hq=Hkv={heads['Hq']}, E={heads['E']}, L = S"
        )
        plot(sweep, sgemm["gflops"], title, args.plot)
        print(f"\nwrote {args.plot}")

    if args.json:
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "options": {key: value for key, value in vars(args).items() if key not in ("command", "seed")},
            "machine": machine,
            "threads": threads,
            "dotattn": dotattn.__version__,
            "isa": dotattn.get_isa(),
            "supported_isas": dotattn.supported_isas(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__ if torch else None,
            "sgemm": sgemm,
            "kv_dtype": args.kv_dtype,
            "dtype": args.dtype,
            "cold": args.cold,
            "stream": stream,
            "shapes": results,
            "sweep": sweep,
        }
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
            file.write("\n")
        print(f"wrote {args.json}")
    return 0


def machine_info() -> dict[str, Any]:
    """The CPU model and flags: lscpu's, else /proc/cpuinfo's."""
    cpu = flags = None
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        fields = dict(_split_fields(text.splitlines()))
        cpu, flags = fields.get("Model name"), fields.get("Flags")
    except (OSError, subprocess.SubprocessError):
        pass
    if cpu is None or flags is None:
        try:
            with open("/proc/cpuinfo") as file:
                fields = dict(_split_fields(file))  # the last processor's, all alike
            cpu, flags = cpu or fields.get("model name"), flags or fields.get("flags")
        except OSError:
            pass
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "flags": flags.split() if flags else None,
        "platform": platform.platform(),
    }


def _split_fields(lines):
    for line in lines:
        key, colon, value = line.partition(":")
        if colon:
            yield key.strip(), value.strip()


def seconds(fn: Callable[[], Any], calls: int = 1) -> float:
    """Wall-clock seconds per call of fn, over `calls` calls in a row."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure_sgemm(n: int, runs: int = 3) -> dict[str, Any]:
    """NumPy's float32 n×n @ n×n: one warm-up, then the median of `runs`."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    np.matmul(a, b)  # warm-up
    samples = []
    for _ in range(runs):
        samples.append(seconds(lambda: a @ b))
        time.sleep(OPENBLAS_PAUSE_S)
    median = statistics.median(samples)
    return {"n": n, "gflops": 2 * n**3 / median / 1e9, "median_s": median, "samples_s": samples}


def measure_stream(mib: int, runs: int = STREAM_RUNS) -> dict[str, Any]:
    """The streaming read bandwidth of dotattn._core.stream_read over a
    buffer of `mib` MiB, on dotattn's thread count: one warm-up, then the
    median of `runs`."""
    buffer = pages_written(mib)
    dotattn._core.stream_read(buffer)  # warm-up
    samples = [seconds(lambda: dotattn._core.stream_read(buffer)) for _ in range(runs)]
    median = statistics.median(samples)
    return {"mib": mib, "gbps": buffer.nbytes / median / 1e9, "median_s": median, "samples_s": samples}


def cache_evictor(mib: int) -> Callable[[], Any]:
    """--cold: a function that evicts the cache by reading `mib` MiB."""
    buffer = pages_written(mib)
    return lambda: dotattn._core.stream_read(buffer)


def pages_written(mib: int) -> np.ndarray:
    """A buffer of `mib` MiB whose every page is written, and so its own: the
    untouched pages of np.zeros would all map the kernel's one zero page,
    whose reads hit the cache."""
    return np.ones(mib * 2**20 // 8, dtype=np.uint64)


def sweep_shapes(lengths: list[int]) -> list[Shape]:
    """The --plot sweep: the prefill heads at L = S, without and with the causal mask."""
    shapes = []
    for causal in (False, True):
        for n in lengths:
            name = f"L={n} causal" if causal else f"L={n}"
            shapes.append(Shape(name, L=n, S=n, causal=causal, repeat=SWEEP_REPEAT, **SWEEP_HEADS))
    return shapes


def time_shapes(
    shapes: list[Shape],
    repeat: int | None,
    torch: Any,
    kv_dtype: str,
    evict: Callable[[], Any] | None,
    sgemm_gflops: float,
    stream_gbps: float | None = None,
    q_dtype: str = "float32",
) -> list[dict]:
    """Times each shape (`repeat` runs, else the shape's own), printing its
    row of the table as soon as it is done. `evict`: --cold's, or None."""
    table = Table(shapes, sgemm_gflops)
    results = []
    for shape in shapes:
        results.append(
            time_shape(shape, repeat or shape.repeat, torch, kv_dtype, evict, stream_gbps, q_dtype)
        )
        table.row(shape, results[-1])
    return results


def time_shape(
    shape: Shape,
    repeat: int,
    torch: Any,
    kv_dtype: str,
    evict: Callable[[], Any] | None,
    stream_gbps: float | None,
    q_dtype: str = "float32",
) -> dict[str, Any]:
    """Times every system on one shape. Returns the shape and, per system,
    its median, samples and rates, or why it was skipped."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((shape.B, shape.Hq, shape.L, shape.E), dtype=np.float32)
    k = rng.standard_normal((shape.B, shape.Hkv, shape.S, shape.E), dtype=np.float32)
    v = rng.standard_normal((shape.B, shape.Hkv, shape.S, shape.E), dtype=np.float32)
    k_stored, v_stored = stored_as(k, kv_dtype), stored_as(v, kv_dtype)
    kv_bytes = dict.fromkeys(SYSTEMS, k.nbytes + v.nbytes)  # torch and the reference read float32
    kv_bytes["dotattn"] = stored_bytes(k_stored) + stored_bytes(v_stored)

    calls: dict[str, Callable[[], Any]] = {}
    skipped: dict[str, str] = {}
    runs = dict.fromkeys(SYSTEMS, repeat)
    q_stored = stored_as(q, q_dtype)
    calls["dotattn"] = lambda: dotattn.attention(q_stored, k_stored, v_stored, is_causal=shape.causal)
    if torch is None:
        skipped["torch"] = "not timed: torch is not installed, or --no-torch"
    else:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tq, tk, tv = (torch.from_numpy(x).to(getattr(torch, q_dtype)) for x in (q, k, v))
        gqa = {"enable_gqa": True} if shape.Hq != shape.Hkv else {}  # an option since PyTorch 2.5
        calls["torch"] = lambda: sdpa(tq, tk, tv, is_causal=shape.causal, **gqa)
    estimate = estimate_reference_seconds(shape, q, k, v)
    if estimate > REFERENCE_LIMIT_S:
        skipped["numpy_ref"] = f"one call estimated at {estimate:.1f} s, over {REFERENCE_LIMIT_S:g} s"
    else:
        calls["numpy_ref"] = lambda: reference.attention(q, k, v, is_causal=shape.causal)
        runs["numpy_ref"] = max(1, min(repeat, int(REFERENCE_BUDGET_S / max(estimate, 1e-9))))

    cold = {system for system in calls if evict and system in COLD_SYSTEMS}
    calls_per_run = {}
    for system, fn in calls.items():
        if system in cold:
            fn()  # the warm-up; a cold call is timed on its own
            calls_per_run[system] = 1
        else:
            calls_per_run[system] = warm_up(fn)
        time.sleep(PAUSE_S[system])

    samples: dict[str, list[float]] = {system: [] for system in calls}
    for round_ in range(repeat):  # alternating, so that all see the same machine state
        for system, fn in calls.items():
            if round_ < runs[system]:
                if system in cold:
                    evict()
                    if system != "dotattn":  # dotattn's threads read the buffer: let them stop spinning
                        time.sleep(OPENMP_PAUSE_S)
                samples[system].append(seconds(fn, calls_per_run[system]))
                time.sleep(PAUSE_S[system])

    systems: dict[str, Any] = {}
    for system in SYSTEMS:
        if system in skipped:
            systems[system] = {"skipped": skipped[system]}
            continue
        median = statistics.median(samples[system])
        kv_gbps = kv_bytes[system] / median / 1e9 if shape.is_decode else None
        systems[system] = {
            "median_s": median,
            "gflops": shape.flops / median / 1e9,
            "kv_bytes": kv_bytes[system],
            "kv_gbps": kv_gbps,
            "stream_percent": 100 * kv_gbps / stream_gbps if kv_gbps is not None and stream_gbps else None,
            "calls_per_run": calls_per_run[system],
            "samples_s": samples[system],
        }
    return {
        "name": shape.name,
        "B": shape.B,
        "Hq": shape.Hq,
        "Hkv": shape.Hkv,
        "L": shape.L,
        "S": shape.S,
        "E": shape.E,
        "Ev": shape.E,
        "causal": shape.causal,
        "flops": shape.flops,
        "kv_dtype": kv_dtype,
        "kv_bytes": kv_bytes["dotattn"],
        "systems": systems,
    }


def stored_as(x: np.ndarray, kv_dtype: str) -> Any:
    """The float32 x in dotattn's storage format kv_dtype (a query: float32,
    float16 or bfloat16)."""
    if kv_dtype == "int8":
        return dotattn.quantize_kv(x)
    if kv_dtype == "bfloat16":
        import ml_dtypes

        return x.astype(ml_dtypes.bfloat16)
    return x.astype(kv_dtype, copy=False)


def stored_bytes(x: Any) -> int:
    """The bytes a key or value takes as stored: an int8 QuantizedKV's data and scales."""
    return x.data.nbytes + x.scale.nbytes if isinstance(x, dotattn.QuantizedKV) else x.nbytes


def warm_up(fn: Callable[[], Any]) -> int:
    """Calls fn once, and then, if that took less than RUN_S, for RUN_S more;
    returns the number of calls that fit in RUN_S (at least 1)."""
    if seconds(fn) >= RUN_S:
        return 1
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < RUN_S and count < MAX_CALLS:
        fn()
        count += 1
    return max(count, 1)


def estimate_reference_seconds(shape: Shape, q, k, v) -> float:
    """One call of the reference on the whole shape, extrapolated from the
    fastest of 3 calls on one head and at most 256 query rows: its cost grows
    with B·Hq·L."""
    rows = min(shape.L, 256)
    part = q[:1, :1, :rows], k[:1, :1], v[:1, :1]
    probe = min(seconds(lambda: reference.attention(*part, is_causal=shape.causal)) for _ in range(3))
    time.sleep(OPENBLAS_PAUSE_S)
    return probe * shape.B * shape.Hq * shape.L / rows


class Table:
    """A Markdown table printed row by row, aligned for the terminal. The
    ratios compare speeds: above 1 means dotattn is faster."""

    HEADER = [
        "shape",
        "B,Hq,Hkv,L,S,E",
        "dotattn ms",
        "GFLOP/s",
        "% sgemm",
        "K+V MB",
        "K+V GB/s",
        "% stream",
        "torch ms",
        "vs torch",
        "numpy ref ms",
        "vs ref",
    ]

    def __init__(self, shapes: list[Shape], sgemm_gflops: float):
        self.sgemm_gflops = sgemm_gflops
        self.widths = [max(len(title), 8) for title in self.HEADER]
        self.widths[0] = max([self.widths[0], *(len(shape.name) for shape in shapes)])
        self.widths[1] = max([self.widths[1], *(len(shape.dims) for shape in shapes)])
        self._print(self.HEADER)
        self._print(["-" * w if i < 2 else "-" * (w - 1) + ":" for i, w in enumerate(self.widths)])

    def row(self, shape: Shape, result: dict[str, Any]) -> None:
        ours, torch, ref = (result["systems"][system] for system in SYSTEMS)
        self._print(
            [
                shape.name,
                shape.dims,
                f"{ours['median_s'] * 1e3:.3f}",
                f"{ours['gflops']:.1f}",
                f"{100 * ours['gflops'] / self.sgemm_gflops:.0f}%",
                f"{ours['kv_bytes'] / 1e6:.1f}" if shape.is_decode else "",
                f"{ours['kv_gbps']:.2f}" if shape.is_decode else "",
                f"{ours['stream_percent']:.0f}%" if shape.is_decode else "",
                _milliseconds(torch),
                _speed_ratio(ours, torch),
                _milliseconds(ref),
                _speed_ratio(ours, ref),
            ]
        )

    def _print(self, cells: list[str]) -> None:
        # The shape's name and dims to the left, numbers to the right.
        left = [cell.ljust(w) for w, cell in zip(self.widths[:2], cells[:2])]
        right = [cell.rjust(w) for w, cell in zip(self.widths[2:], cells[2:])]
        print("| " + " | ".join(left + right) + " |", flush=True)


def _milliseconds(timing: dict[str, Any]) -> str:
    return "skipped" if "skipped" in timing else f"{timing['median_s'] * 1e3:.3f}"


def _speed_ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    return "" if "skipped" in theirs else f"{theirs['median_s'] / ours['median_s']:.2f}x"


def plot(sweep: list[dict[str, Any]], sgemm_gflops: float, title: str, path: str) -> None:
    """GFLOP/s against L for each system, a panel each without and with the
    causal mask, drawn with Agg (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [[r for r in sweep if r["causal"] == causal] for causal in (False, True)]
    panels = [results for results in panels if results]
    figure = Figure(figsize=(6 * len(panels), 4.5), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for axis, results in zip(axes, panels):
        lengths = [r["L"] for r in results]
        for system in SYSTEMS:
            timings = [r["systems"][system] for r in results]
            if all("skipped" in t for t in timings):
                continue
            gflops = [math.nan if "skipped" in t else t["gflops"] for t in timings]
            axis.plot(lengths, gflops, marker="o", label=system)
        label = f"numpy sgemm ({sgemm_gflops:.0f} GFLOP/s)"
        axis.axhline(sgemm_gflops, color="grey", linestyle="--", linewidth=1, label=label)
        axis.set_xscale("log", base=2)
        axis.set_xticks(lengths, [str(n) for n in lengths])
        axis.set_xlabel("L = S")
        axis.set_title("causal" if results[0]["causal"] else "no mask")
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("GFLOP/s")
    axes[0].set_ylim(bottom=0)
    axes[-1].legend()
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=120)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch
