"""dotattn.distributed on torch.distributed (gloo): sharded decode and ring
attention over 2 and 4 ranks spawned on this machine, each rank checking
its result against dotattn.reference over the whole (gathered) inputs: even
and uneven shards, an empty shard, grouped query heads, causal and
non-causal ring prefill, K/V formats, sinks and softcap; bad arguments; and
a rank that raises, which must make the others fail with a clear error
within the group's timeout rather than hang. Skipped without PyTorch.

Each spawn runs a list of cases, one process group for them all: a spawn
costs a few seconds (every rank imports torch)."""

from __future__ import annotations

import multiprocessing
import socket
import traceback
from datetime import timedelta

import dotattn
import numpy as np
import pytest
from conftest import assert_matches, stored

torch = pytest.importorskip("torch", reason="dotattn.distributed needs PyTorch (torch.distributed, gloo)")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

from dotattn import distributed  # noqa: E402

GROUP_TIMEOUT_S = 20


def inputs(seed, *, B=1, Hq=4, Hkv=2, L=1, S=67, E=32, Ev=None):
    rng = np.random.default_rng(seed)
    Ev = Ev or E
    q = rng.standard_normal((B, Hq, L, E), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, S, E), dtype=np.float32)
    v = rng.standard_normal((B, Hkv, S, Ev), dtype=np.float32)
    return q, k, v


def rows(x, begin, end):
    return x[(slice(None),) * (len(x.shape) - 2) + (slice(begin, end),)]


def decode_case(rank, world, *, sizes, fmt="float32", dst=None, masked=False, **options):
    """Keys split into shards of `sizes` rows (in a shuffled order of the
    keys: a shard holds any subset), rank r holding shard r. masked: two
    query rows and a boolean mask, each rank passing its keys' columns."""
    S = sum(sizes)
    q, k, v = inputs(len(sizes) * 7 + S, S=S, L=2 if masked else 1)
    if masked:
        options["attn_mask"] = np.random.default_rng(3).random((1, q.shape[1], 2, S)) > 0.3
    order = np.random.default_rng(1).permutation(S)
    k, v = k[:, :, order], v[:, :, order]
    edges = np.cumsum([0, *sizes])
    ks, vs = stored(k, fmt), stored(v, fmt)
    mine = slice(int(edges[rank]), int(edges[rank + 1]))
    shard_options = dict(options)
    mask = options.get("attn_mask")
    if mask is not None:
        shard_options["attn_mask"] = mask[..., mine]
    result = distributed.sharded_decode(
        q, rows(ks, mine.start, mine.stop), rows(vs, mine.start, mine.stop), dst=dst, **shard_options
    )
    if dst is not None and rank != dst:
        assert result is None
        return
    out, lse = result
    ref, ref_lse = dotattn.reference.attention(q, ks, vs, return_lse=True, **options)
    assert_matches(out, ref, np.float32)
    assert_matches(lse, ref_lse, np.float32)


def ring_case(rank, world, *, S, is_causal, fmt="float32", L=None, **options):
    """Sequence-sharded: zigzag shards when causal, else uneven contiguous
    shards of the queries (L rows) and of the keys (S rows)."""
    q, k, v = inputs(S * 3 + world, L=L or S, S=S, Hq=4, Hkv=2)
    ks, vs = stored(k, fmt), stored(v, fmt)
    if is_causal:
        parts = [distributed.zigzag_shard(x, rank, world) for x in (q, ks, vs)]
    else:
        q_edges = np.linspace(0, q.shape[-2], world + 1).astype(int)
        kv_edges = np.r_[0, np.sort(np.random.default_rng(S).integers(0, S + 1, world - 1)), S]
        parts = [
            rows(q, q_edges[rank], q_edges[rank + 1]),
            rows(ks, kv_edges[rank], kv_edges[rank + 1]),
            rows(vs, kv_edges[rank], kv_edges[rank + 1]),
        ]
    out, lse = distributed.ring_attention(*parts, is_causal=is_causal, **options)
    ref, ref_lse = dotattn.reference.attention(q, ks, vs, return_lse=True, is_causal=is_causal, **options)
    if is_causal:
        ref = distributed.zigzag_shard(ref, rank, world)
        ref_lse = distributed.zigzag_shard(ref_lse[..., None], rank, world)[..., 0]
    else:
        ref, ref_lse = (
            rows(ref, q_edges[rank], q_edges[rank + 1]),
            ref_lse[..., q_edges[rank] : q_edges[rank + 1]],
        )
    assert_matches(out, ref, np.float32)
    assert_matches(lse, ref_lse, np.float32)


def bad_arguments_case(rank, world):
    q, k, v = inputs(0)
    with pytest.raises(ValueError, match="window is not supported"):
        distributed.sharded_decode(q, k, v, window=(4, 0))
    with pytest.raises(TypeError, match="return_lse is not an option"):
        distributed.sharded_decode(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="dst=5 is not a rank"):
        distributed.sharded_decode(q, k, v, dst=5)
    with pytest.raises(ValueError, match="query shapes differ between ranks"):
        distributed.sharded_decode(q[:, :, :, : 16 + 16 * rank], k[..., : 16 + 16 * rank], v)
    with pytest.raises(ValueError, match="zigzag_shard"):
        distributed.ring_attention(
            q.repeat(3 + 2 * rank, axis=2), k[:, :, : 3 + 2 * rank], v[:, :, : 3 + 2 * rank], is_causal=True
        )


def raising_case(rank, world):
    """Rank 1 raises before the collective; the others must fail, clearly."""
    if rank == 1:
        raise RuntimeError("rank 1 gives up")
    q, k, v = inputs(0)
    with pytest.raises(RuntimeError, match=r"dotattn.distributed.sharded_decode: .* failed on rank 0 of 2"):
        distributed.sharded_decode(q, k, v)


CASES = {
    "decode_even": lambda r, w: decode_case(r, w, sizes=[40] * w),
    "decode_uneven_empty": lambda r, w: decode_case(r, w, sizes=[0, 91, 5, 33][:w] if w > 2 else [0, 67]),
    "decode_int8_sinks_softcap": lambda r, w: decode_case(
        r, w, sizes=[29, 51, 17, 8][:w], fmt="int8", sinks=np.array([0.5, -1, 2, 0], np.float32), softcap=8.0
    ),
    "decode_mask_dst": lambda r, w: decode_case(
        r, w, sizes=[23, 40, 9, 31][:w], fmt="float16", dst=w - 1, masked=True
    ),
    "ring_causal": lambda r, w: ring_case(r, w, S=203, is_causal=True),
    "ring_causal_short_bf16": lambda r, w: ring_case(
        r, w, S=2 * w + 1, is_causal=True, fmt="bfloat16", sinks=np.array([1, 0, -2, 3], np.float32)
    ),
    "ring_full_uneven_int8": lambda r, w: ring_case(
        r, w, S=150, L=77, is_causal=False, fmt="int8", softcap=5.0
    ),
    "bad_arguments": bad_arguments_case,
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, port, names, results):
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=GROUP_TIMEOUT_S),
        )
        dotattn.set_num_threads(1)
        for name in names:
            try:
                (raising_case if name == "raising" else CASES[name])(rank, world)
                results.put((rank, name, None))
            except BaseException:  # reported to the parent, which fails the test
                results.put((rank, name, traceback.format_exc()))
                if name == "raising":
                    return
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(world, names, timeout_s=150):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, names, results)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    reports = {}
    while not results.empty():
        rank, name, error = results.get()
        reports[(rank, name)] = error
    assert not hung, f"ranks {hung} of {world} still running after {timeout_s} s"
    return reports


@pytest.mark.parametrize("world", [2, 4])
def test_cases(world):
    reports = spawn(world, list(CASES))
    failures = {key: error for key, error in reports.items() if error}
    assert not failures, "\n".join(f"rank {r}, {name}:\n{error}" for (r, name), error in failures.items())
    missing = [(r, n) for r in range(world) for n in CASES if (r, n) not in reports]
    assert not missing, f"no report from {missing}"


def test_raising_rank_fails_the_others():
    reports = spawn(2, ["raising"], timeout_s=GROUP_TIMEOUT_S + 60)
    assert "rank 1 gives up" in (reports.get((1, "raising")) or "")
    assert reports.get((0, "raising")) is None, reports.get((0, "raising"))


def test_zigzag_round_trip():
    x = np.arange(2 * 3 * 37 * 2).reshape(2, 3, 37, 2)
    for world in (1, 2, 3, 5):
        parts = [distributed.zigzag_shard(x, r, world) for r in range(world)]
        assert sum(p.shape[-2] for p in parts) == 37
        np.testing.assert_array_equal(distributed.zigzag_unshard(parts), x)


def test_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group exists in this process")
    q, k, v = inputs(0)
    with pytest.raises(RuntimeError, match="init_process_group"):
        distributed.sharded_decode(q, k, v)
