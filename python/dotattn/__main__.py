"""python -m dotattn: show the configuration, check the kernel against
dotattn.reference on a few shapes, and time both side by side.

Exits with status 1 if a check fails.

python -m dotattn bench: the benchmark against PyTorch and the NumPy
reference on the standard shapes (python -m dotattn bench --help).

python -m dotattn tune: sweeps the kernel set's parameters on this machine
and prints the best table (python -m dotattn tune --help)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import dotattn
from dotattn import _bench, _tune, reference

# (B, Hq, Hkv, L, S, E, Ev, is_causal, mask)
CHECKS = [
    (2, 8, 2, 77, 131, 64, 64, False, False),
    (1, 4, 4, 200, 200, 80, 48, True, False),
    (1, 4, 1, 33, 500, 128, 128, "lower_right", True),
    (3, 8, 2, 1, 1000, 128, 128, False, False),
    (1, 1, 1, 64, 65, 3, 256, False, True),
]

# (name, B, Hq, Hkv, L, S, E, is_causal)
TIMINGS = [
    ("prefill", 1, 8, 8, 512, 512, 64, False),
    ("causal", 1, 8, 8, 512, 512, 64, True),
    ("decode", 1, 32, 8, 1, 4096, 128, False),
    ("tiny", 1, 1, 1, 16, 16, 64, False),
]


def random_qkv(rng, dtype, B, Hq, Hkv, L, S, E, Ev):
    q = rng.standard_normal((B, Hq, L, E)).astype(dtype)
    k = rng.standard_normal((B, Hkv, S, E)).astype(dtype)
    v = rng.standard_normal((B, Hkv, S, Ev)).astype(dtype)
    return q, k, v


def check(rng) -> bool:
    print("\nChecks against dotattn.reference (float64):")
    header = (
        f"{'dtype':>8} {'B,Hq,Hkv,L,S,E,Ev':>24} {'causal':>11} {'mask':>5} {'rel.err':>9} {'max.err':>9}  ok"
    )
    print(header)
    all_ok = True
    # 16-bit queries (bfloat16 where ml_dtypes is installed) compute in
    # float32 and are held to their own dtype's bound.
    for dtype in (np.float32, np.float64, *(d for d in reference.TOLERANCES if d.itemsize == 2)):
        tol = reference.TOLERANCES[np.dtype(dtype)]
        for B, Hq, Hkv, L, S, E, Ev, is_causal, use_mask in CHECKS:
            q, k, v = random_qkv(rng, dtype, B, Hq, Hkv, L, S, E, Ev)
            mask = rng.random((L, S)) < 0.8 if use_mask else None
            out = dotattn.attention(q, k, v, attn_mask=mask, is_causal=is_causal)
            ref = reference.attention(q, k, v, attn_mask=mask, is_causal=is_causal)
            relative, elementwise = reference.errors(out, ref)
            ok = relative <= tol["relative"] and elementwise <= tol["elementwise"]
            all_ok &= ok
            shape = ",".join(map(str, (B, Hq, Hkv, L, S, E, Ev)))
            print(
                f"{np.dtype(dtype).name:>8} {shape:>24} {str(is_causal):>11} {str(use_mask):>5} "
                f"{relative:9.2e} {elementwise:9.2e}  {'yes' if ok else 'NO'}"
            )
    return all_ok


def seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def timing_table(rng, repeat: int) -> None:
    print(f"\nTiming, float32, {dotattn.get_num_threads()} threads, median of {repeat} (alternating runs):")
    print(
        f"{'shape':>8} {'B,Hq,Hkv,L,S,E':>22} {'dotattn ms':>11} {'GFLOP/s':>8} "
        f"{'numpy ref ms':>13} {'speed-up':>9}"
    )
    for name, B, Hq, Hkv, L, S, E, is_causal in TIMINGS:
        q, k, v = random_qkv(rng, np.float32, B, Hq, Hkv, L, S, E, E)
        ours, theirs = [], []
        for _ in range(repeat):  # alternate the two so both see the same machine state
            ours.append(seconds(dotattn.attention, q, k, v, is_causal=is_causal))
            theirs.append(seconds(reference.attention, q, k, v, is_causal=is_causal))
        ours, theirs = statistics.median(ours), statistics.median(theirs)
        flops = 4 * B * Hq * L * S * E * (0.5 if is_causal and L == S else 1.0)
        print(
            f"{name:>8} {','.join(map(str, (B, Hq, Hkv, L, S, E))):>22} {ours * 1e3:11.3f} "
            f"{flops / ours / 1e9:8.2f} {theirs * 1e3:13.3f} {theirs / ours:8.1f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dotattn",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="With no subcommand: the configuration, the checks and the timing table.",
    )
    parser.add_argument("--threads", type=int, help="threads per call (default: OpenMP's)")
    parser.add_argument("--repeat", type=int, help="timed runs per shape (default 7)")
    parser.add_argument("--seed", type=int, default=0)
    subcommands = parser.add_subparsers(dest="command", title="subcommands")
    bench = subcommands.add_parser(
        "bench",
        help="time dotattn against PyTorch and the NumPy reference on the standard shapes",
        description=_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench.add_arguments(bench)
    tune = subcommands.add_parser(
        "tune",
        help="sweep a kernel set's parameters on this machine and print the best table",
        description=_tune.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _tune.add_arguments(tune)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench.run(args, bench)
    if args.command == "tune":
        return _tune.run(args, tune)

    if args.threads is not None:
        dotattn.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    print(f"dotattn {dotattn.__version__}")
    dotattn.show_config()
    ok = check(rng)
    timing_table(rng, 7 if args.repeat is None else max(args.repeat, 1))
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
