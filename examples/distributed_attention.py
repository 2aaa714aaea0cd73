"""Attention sharded over the ranks of torch.distributed (gloo), checked
against one process: a long-context decode whose KV cache is split over
the ranks (dotattn.distributed.sharded_decode) and a causal prefill whose
sequence is split over them (dotattn.distributed.ring_attention).

Run it with

    torchrun --nproc-per-node 4 examples/distributed_attention.py
    python -m torch.distributed.run --nproc-per-node 2 examples/distributed_attention.py --small

or across hosts with torchrun's --nnodes/--node-rank/--master-addr (gloo
over TCP). Every rank builds the same inputs from one seed, keeps its
shard, and rank 0 also computes the single-process result on the whole
inputs, with all the ranks' threads, while the others wait: the error
printed is against it, and the times are side by side, alternating, medians.

"compute alone" is each rank's ring work without its traffic, "transfer
alone" the traffic without the compute (the same key and value bytes sent
round the ring step by step). When the ring takes about as long as the
compute alone, and less than compute plus transfer, the transfers were
hidden.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import dotattn
import numpy as np
import torch.distributed as dist
from dotattn import distributed

# The single-process baseline runs on every core of this host (rank 0
# alone, the others waiting); each rank runs on its share of them.
ALL_CORES = os.cpu_count() or 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="small shapes and few rounds (a smoke test)")
    parser.add_argument(
        "--kv-dtype", default="float16", choices=["float32", "float16"], help="the decode cache's format"
    )
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9, 2 with --small)")
    return parser.parse_args()


def timed(fn, calls: int) -> float:
    """Seconds per call of `calls` calls in a row, on every rank together
    (from a barrier to the slowest rank's end)."""
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    dist.barrier()
    return (time.perf_counter() - start) / calls


def rows(x, begin, end):
    return x[..., begin:end, :]


def max_error(out: np.ndarray, ref: np.ndarray) -> float:
    """The largest error relative to the largest |ref|; past float32's
    stated tolerance the example fails."""
    error = float(np.abs(out - ref).max() / max(np.abs(ref).max(), np.finfo(np.float32).tiny))
    if error > dotattn.reference.TOLERANCES[np.dtype(np.float32)]["elementwise"]:
        raise SystemExit(f"mismatch against the single process: {error:.3g}")
    return error


def decode(args, rank: int, world: int, threads: int, rounds: int) -> None:
    """One query per head against a cache of S keys, S / world per rank."""
    B, Hq, Hkv, S, E = (1, 8, 2, 4096, 64) if args.small else (1, 32, 8, 65536, 128)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, Hq, 1, E), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, S, E), dtype=np.float32).astype(args.kv_dtype)
    v = rng.standard_normal((B, Hkv, S, E), dtype=np.float32).astype(args.kv_dtype)
    edges = np.linspace(0, S, world + 1).astype(int)
    k_shard, v_shard = (np.ascontiguousarray(rows(x, edges[rank], edges[rank + 1])) for x in (k, v))

    def sharded():
        return distributed.sharded_decode(q, k_shard, v_shard)

    def single():
        if rank == 0:
            dotattn.set_num_threads(ALL_CORES)
            dotattn.attention(q, k, v, return_lse=True)
            dotattn.set_num_threads(threads)

    def shard_alone():
        dotattn.attention(q, k_shard, v_shard, return_lse=True)

    out, lse = sharded()
    calls = 20 if args.small else 5
    sharded_times, single_times, alone_times = [], [], []
    for _ in range(rounds):
        sharded_times.append(timed(sharded, calls))
        single_times.append(timed(single, calls))
        alone_times.append(timed(shard_alone, calls))
    if rank == 0:
        ref, ref_lse = dotattn.attention(q, k, v, return_lse=True)
        kv_mb = (k.nbytes + v.nbytes) / 1e6
        print(
            f"decode (B, Hq, Hkv, S, E) = {(B, Hq, Hkv, S, E)}, K/V {args.kv_dtype} {kv_mb:.0f} MB, "
            f"{kv_mb / world:.0f} MB per rank"
        )
        single_ms, sharded_ms, alone_ms = (
            statistics.median(t) * 1e3 for t in (single_times, sharded_times, alone_times)
        )
        print(f"  single process, {ALL_CORES} threads: {single_ms:.2f} ms")
        print(
            f"  sharded over {world} ranks, {threads} thread(s) each: {sharded_ms:.2f} ms "
            f"({sharded_ms / single_ms:.2f}x of single)"
        )
        print(f"  each rank's shard alone, no collective: {alone_ms:.2f} ms")
        print(
            f"  bytes gathered per rank per call: {world * (out.nbytes + lse.nbytes)} "
            f"(out + lse of every rank), against {(k.nbytes + v.nbytes) // world} bytes of K/V read"
        )
        errors = f"out {max_error(out, ref):.2e}, lse {max_error(lse, ref_lse):.2e}"
        print(f"  max error against single process: {errors}")


def ring_transfer_alone(k_shard: np.ndarray, v_shard: np.ndarray, rank: int, world: int) -> None:
    """The ring's traffic: each step sends the shard at hand to rank + 1
    and receives rank - 1's (equal shards: the zigzag split of a sequence
    divisible by 2 x world)."""
    import torch

    current = [np.ascontiguousarray(k_shard), np.ascontiguousarray(v_shard)]
    for _ in range(world - 1):
        incoming = [np.empty_like(x) for x in current]
        works = [dist.isend(torch.from_numpy(x), (rank + 1) % world) for x in current]
        works += [dist.irecv(torch.from_numpy(x), (rank - 1) % world) for x in incoming]
        for w in works:
            w.wait()
        current = incoming


def ring_compute_alone(q, k, v, rank: int, world: int) -> None:
    """This rank's share of the ring's compute without its traffic: its two
    query chunks (of 2 x world equal chunks) against every earlier key/value
    chunk whole and against their own chunk causally, taken from the whole
    inputs (which every rank has here), then merged."""
    chunk = q.shape[-2] // (2 * world)
    for c in (rank, 2 * world - 1 - rank):
        q_chunk = rows(q, c * chunk, (c + 1) * chunk)
        parts = [
            dotattn.attention(
                q_chunk,
                rows(k, j * chunk, (j + 1) * chunk),
                rows(v, j * chunk, (j + 1) * chunk),
                return_lse=True,
                is_causal=j == c,
            )
            for j in range(c + 1)
        ]
        dotattn.merge([o for o, _ in parts], [lse for _, lse in parts])


def prefill(args, rank: int, world: int, threads: int, rounds: int) -> None:
    """Causal self-attention over a sequence of N tokens, zigzag-sharded."""
    B, H, N, E = (1, 4, 512, 64) if args.small else (1, 16, 8192, 64)
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((B, H, N, E), dtype=np.float32) for _ in range(3))
    assert N % (2 * world) == 0, "the sequence is split in 2 x world equal chunks"
    q_shard, k_shard, v_shard = (distributed.zigzag_shard(x, rank, world) for x in (q, k, v))

    def ring():
        return distributed.ring_attention(q_shard, k_shard, v_shard, is_causal=True)

    def single():
        if rank == 0:
            dotattn.set_num_threads(ALL_CORES)
            dotattn.attention(q, k, v, is_causal=True)
            dotattn.set_num_threads(threads)

    out, _ = ring()
    ring_times, single_times, transfer_times, compute_times = [], [], [], []
    for _ in range(rounds):
        ring_times.append(timed(ring, 1))
        single_times.append(timed(single, 1))
        transfer_times.append(timed(lambda: ring_transfer_alone(k_shard, v_shard, rank, world), 1))
        compute_times.append(timed(lambda: ring_compute_alone(q, k, v, rank, world), 1))
    gathered = [np.empty_like(out) for _ in range(world)] if rank == 0 else None
    import torch

    dist.gather(torch.from_numpy(out), [torch.from_numpy(g) for g in gathered] if gathered else None, dst=0)
    if rank == 0:
        full = distributed.zigzag_unshard(gathered)
        ref = dotattn.attention(q, k, v, is_causal=True)
        ring_ms, single_ms, transfer_ms, compute_ms = (
            statistics.median(t) * 1e3 for t in (ring_times, single_times, transfer_times, compute_times)
        )
        print(f"causal prefill (B, H, N, E) = {(B, H, N, E)}, zigzag over {world} ranks")
        print(f"  single process, {ALL_CORES} threads: {single_ms:.1f} ms")
        print(
            f"  ring over {world} ranks, {threads} thread(s) each: {ring_ms:.1f} ms "
            f"({ring_ms / single_ms:.2f}x of single)"
        )
        print(f"  compute alone (each rank's ring work, no transfers): {compute_ms:.1f} ms")
        print(f"  transfer alone (K and V round the ring, no compute): {transfer_ms:.1f} ms")
        print(f"  max error against single process: {max_error(full, ref):.2e}")


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    threads = max(1, ALL_CORES // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    dotattn.set_num_threads(threads)
    rounds = args.rounds or (2 if args.small else 9)
    decode(args, rank, world, threads, rounds)
    prefill(args, rank, world, threads, rounds)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
