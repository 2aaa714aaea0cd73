"""Side-by-side float32 timing of dotattn and PyTorch's CPU scaled_dot_product_attention
on the standard shapes, with NumPy's 4096^3 sgemm as the machine's GEMM rate.

    pip install torch==2.13.0   # for this script only; never a dotattn dependency
    python bench/compare_torch.py [--threads N]

Same inputs, same thread count, one process; the two systems alternate run by run
and the medians are compared. FLOPs = 4*B*Hq*L*S*E, halved for causal L == S; the
decode shapes also report GB/s of K+V read.
"""

import argparse
import statistics
import time

import dotattn
import numpy as np
import torch

SHAPES = {  # B, Hq, Hkv, L, S, E, causal
    "prefill": (1, 16, 16, 1024, 1024, 64, False),
    "causal": (1, 32, 32, 2048, 2048, 128, True),
    "long": (1, 8, 8, 8192, 8192, 64, False),
    "decode": (1, 32, 8, 1, 4096, 128, False),
    "decode_b8": (8, 32, 8, 1, 2048, 128, False),
    "tiny": (1, 1, 1, 16, 16, 64, False),
}
RUNS = {"causal": 3, "long": 3, "tiny": 201}


def seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    threads = parser.parse_args().threads
    torch.set_num_threads(threads)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    dotattn.set_num_threads(threads)

    a = np.random.default_rng(1).standard_normal((4096, 4096), dtype=np.float32)
    gemm = 2 * 4096**3 / statistics.median(seconds(np.matmul, a, a) for _ in range(5)) / 1e9
    print(f"threads {threads}; numpy sgemm 4096: {gemm:.1f} GFLOP/s\n")
    print(
        "| shape | dotattn ms | GFLOP/s | % sgemm | K+V GB/s | torch ms | GFLOP/s | dotattn speed / torch |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (B, Hq, Hkv, L, S, E, causal) in SHAPES.items():
        rng = np.random.default_rng(0)
        q = rng.standard_normal((B, Hq, L, E), dtype=np.float32)
        k = rng.standard_normal((B, Hkv, S, E), dtype=np.float32)
        v = rng.standard_normal((B, Hkv, S, E), dtype=np.float32)
        tq, tk, tv = map(torch.from_numpy, (q, k, v))
        ours, theirs = [], []
        for _ in range(RUNS.get(name, 9)):
            ours.append(seconds(dotattn.attention, q, k, v, is_causal=causal))
            theirs.append(seconds(sdpa, tq, tk, tv, is_causal=causal, enable_gqa=Hq != Hkv))
        o, t = statistics.median(ours), statistics.median(theirs)
        gflop = 4 * B * Hq * L * S * E * (0.5 if causal and L == S else 1.0) / 1e9
        kv_gb = 2 * B * Hkv * S * E * 4 / 1e9
        print(
            f"| {name} | {o * 1e3:.3f} | {gflop / o:.1f} | {100 * gflop / o / gemm:.0f}% | {kv_gb / o:.2f} "
            f"| {t * 1e3:.3f} | {gflop / t:.1f} | {t / o:.2f}x |"
        )


if __name__ == "__main__":
    main()
