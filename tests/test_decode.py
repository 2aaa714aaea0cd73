"""Decoding: few query rows against many keys, where the keys are split into
ranges computed apart and merged by their LSEs (split-K), and grouped query
heads, whose rows share one tile. Masks and causal rules across the ranges,
a KV cache with garbage beyond its valid slots, thread-count independence,
and the memory a long causal call needs."""

import math
import os
import subprocess
import sys

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, assert_matches, check_attention, qkv

pytestmark = pytest.mark.usefixtures("isa")


def row_blocks(B, Hq, Hkv, L):
    """The row blocks of a call (cpp/src/tiling.hpp, choose_blocking): the
    Hq // Hkv query heads of a key/value group share one block when there
    are several and their rows are at most 96 together; otherwise each head
    has blocks of up to 96 rows."""
    group = Hq // Hkv
    if group > 1 and group * L <= 96:
        return B * Hkv
    return B * Hq * math.ceil(L / 96)


def takes_split_path(B, Hq, Hkv, L, S):
    """Whether the keys are split into ranges of at least 512: when there
    are fewer than 64 row blocks and keys for two ranges."""
    return row_blocks(B, Hq, Hkv, L) < 64 and S >= 1024


# (B, Hq, Hkv, L, S, E, Ev)
DECODE_SHAPES = [
    (1, 8, 2, 1, 3000, 64, 64),  # GQA decode, 4 heads per group
    (2, 4, 1, 3, 1537, 40, 24),  # MQA, 3 rows per head, a short last range
    (1, 16, 1, 1, 2048, 64, 64),  # MQA decode
    (1, 16, 2, 8, 1100, 64, 32),  # GQA with G = 8, L = 8: 64 rows in one tile
    (1, 8, 1, 13, 1100, 32, 32),  # G = 8, L = 13: 104 rows, heads apart
    (3, 2, 2, 1, 1024, 16, 16),  # no groups, just enough keys for two ranges
    (1, 1, 1, 1, 5000, 128, 8),  # one row, up to 9 ranges
]
SHAPE_IDS = ["x".join(map(str, s)) for s in DECODE_SHAPES]


def decode_qkv(rng, dtype, shape):
    B, Hq, Hkv, L, S, E, Ev = shape
    return qkv(rng, dtype, batch=(B,), Hq=Hq, Hkv=Hkv, L=L, S=S, E=E, Ev=Ev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=SHAPE_IDS)
def test_decode_shapes(rng, dtype, shape):
    assert takes_split_path(*shape[:5])
    q, k, v = decode_qkv(rng, dtype, shape)
    check_attention(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", [1023, 1024, 1025])
def test_at_the_split_threshold(rng, dtype, S):
    assert takes_split_path(1, 8, 2, 1, S) == (S >= 1024)
    q, k, v = qkv(rng, dtype, batch=(1,), Hq=8, Hkv=2, L=1, S=S, E=64)
    check_attention(q, k, v)
    check_attention(q, k, v, is_causal="lower_right")


# --- masks across the ranges -------------------------------------------------

# 4 row blocks of 6 rows (2 heads x 3); the keys fall into 3 to 5 ranges,
# depending on the key block size.
B, HQ, HKV, L, S, E = 2, 4, 2, 3, 2600, 32


def window_mask(rng):
    """(B, Hq, L, S) booleans, different for every row of every head and
    batch: most rows see one short window of keys (so all they see lies in
    one range, the first, the last or one between), some see keys spread over
    every range, one sees nothing."""
    mask = np.zeros((B, HQ, L, S), dtype=bool)
    for index in np.ndindex(B, HQ, L):
        kind = rng.integers(4)
        if kind == 3:
            mask[index] = rng.random(S) < 0.5
        else:
            width = int(rng.integers(1, 9))
            start = [0, S - width, int(rng.integers(0, S - width))][kind]
            mask[index][start : start + width] = True
    mask[0, 1, 2] = False
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
def test_bool_mask_per_head_and_batch(rng, dtype):
    assert takes_split_path(B, HQ, HKV, L, S)
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=HQ, Hkv=HKV, L=L, S=S, E=E)
    mask = window_mask(rng)
    out, lse = dotattn.attention(q, k, v, attn_mask=mask, return_lse=True)
    check_attention(q, k, v, attn_mask=mask)
    np.testing.assert_array_equal(out[0, 1, 2], 0)
    assert lse[0, 1, 2] == -np.inf
    sees_a_key = mask.any(axis=-1)
    assert np.isfinite(out).all() and np.isfinite(lse[sees_a_key]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_additive_mask_per_head_and_batch(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=HQ, Hkv=HKV, L=L, S=S, E=E)
    visible = window_mask(rng)
    mask = np.where(visible, rng.standard_normal((B, HQ, L, S)) * 3, -np.inf).astype(dtype)
    mask[1, 3, 0] = rng.standard_normal(S) * 3  # a row that sees every key, with biases
    out, lse = dotattn.attention(q, k, v, attn_mask=mask, return_lse=True)
    check_attention(q, k, v, attn_mask=mask)
    np.testing.assert_array_equal(out[0, 1, 2], 0)
    assert lse[0, 1, 2] == -np.inf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [True, "lower_right"])
def test_causal_across_ranges(rng, dtype, is_causal):
    # upper_left: row i sees keys 0..i, all in the first range, every other
    # range sees nothing. lower_right: row i sees all but the last L - 1 - i.
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=HQ, Hkv=HKV, L=5, S=S, E=E)
    check_attention(q, k, v, is_causal=is_causal)
    mask = window_mask(rng)[..., :1, :].repeat(5, axis=2)
    check_attention(q, k, v, is_causal=is_causal, attn_mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=HQ, Hkv=HKV, L=L, S=S, E=E)
    for mask in (np.zeros((B, HQ, L, S), dtype=bool), np.full((B, HQ, L, S), -np.inf, dtype=dtype)):
        mask[1, 2, 1] = True if mask.dtype == bool else 0  # one row sees every key
        out, lse = dotattn.attention(q, k, v, attn_mask=mask, return_lse=True)
        check_attention(q, k, v, attn_mask=mask)
        hidden = np.ones((B, HQ, L), dtype=bool)
        hidden[1, 2, 1] = False
        np.testing.assert_array_equal(out[hidden], 0)
        np.testing.assert_array_equal(lse[hidden], -np.inf)
        assert np.isfinite(out[1, 2, 1]).all() and np.isfinite(lse[1, 2, 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_scores_in_one_range(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(1,), Hq=4, Hkv=2, L=2, S=S, E=E)
    q[0, 1, 0, 3] = np.nan  # head 1 row 0: NaN everywhere
    k[0, 1, 2000] = 0
    k[0, 1, 2000, 0] = np.inf  # heads 2 and 3: a +-inf score in a middle range
    v[0, 0, 100, 5] = -np.inf  # heads 0 and 1: -inf through a nonzero weight
    mask = np.ones((1, 4, 2, S), dtype=bool)
    mask[0, 3, 1, 2000] = False  # hides the inf key from one row
    out = check_attention(q, k, v, attn_mask=mask)
    assert np.isnan(out[0, 1, 0]).all() and np.isfinite(out[0, 3, 1]).all()
    assert np.isneginf(out[0, 0, :, 5]).all()


# --- a KV cache with garbage in its free slots ---------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("valid", [600, 1500, 2500, 4095])
def test_kv_cache_with_garbage_beyond_valid(rng, dtype, valid):
    # Capacity 4096; slots from `valid` on hold NaN and inf in both K and V
    # and are masked out, so whole ranges (and parts of one) are garbage.
    # The result equals attention over the valid prefix within tolerance;
    # bit for bit only when both calls happen to cut the same ranges, which
    # is not promised (the ranges depend on S).
    # (Small heads: the reference's matmuls of NaN-laden arrays this size
    # stay single-threaded in OpenBLAS, which can stall on a busy machine.)
    capacity, Lq = 4096, 2
    q, k, v = qkv(rng, dtype, batch=(1,), Hq=4, Hkv=2, L=Lq, S=capacity, E=32)
    k[..., valid:, :] = np.nan
    k[..., valid::3, 1] = np.inf
    v[..., valid:, :] = np.inf
    v[..., valid::2, :] = -np.inf
    v[..., valid::5, 0] = np.nan
    # The queries are the last Lq tokens: causal within the valid prefix.
    visible = np.arange(capacity)[None, :] <= np.arange(valid - Lq, valid)[:, None]
    out, lse = dotattn.attention(q, k, v, attn_mask=visible, return_lse=True)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    check_attention(q, k, v, attn_mask=visible)
    prefix, prefix_lse = dotattn.attention(
        q, k[..., :valid, :], v[..., :valid, :], is_causal="lower_right", return_lse=True
    )
    assert_matches(out, prefix.astype(np.float64), dtype)
    assert_matches(lse, prefix_lse.astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_cache_with_a_valid_length_per_batch(rng, dtype):
    capacity, valid = 4096, [1, 700, 3333]
    q, k, v = qkv(rng, dtype, batch=(3,), Hq=4, Hkv=1, L=1, S=capacity, E=32)
    mask = np.arange(capacity)[None, None, None, :] < np.array(valid)[:, None, None, None]
    for b, n in enumerate(valid):
        k[b, :, n:] = np.nan
        v[b, :, n:] = np.inf
    out = check_attention(q, k, v, attn_mask=mask)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], np.broadcast_to(v[0, :, :1], out[0].shape))  # one key: its value


# --- threads ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, masked, is_causal",
    [
        ((1, 8, 2, 1, 3000, 64, 64), False, False),
        ((2, 4, 1, 3, 1537, 40, 24), True, "lower_right"),
        ((1, 16, 2, 8, 1100, 64, 32), True, False),
        ((1, 8, 2, 100, 300, 64, 64), False, True),  # GQA prefill, not split
    ],
    ids=["gqa-decode", "mqa-masked", "g8-l8", "gqa-prefill"],
)
def test_bit_identical_for_any_thread_count(rng, restore_threads, dtype, shape, masked, is_causal):
    q, k, v = decode_qkv(rng, dtype, shape)
    mask = rng.random((*q.shape[:-1], k.shape[-2])) < 0.3 if masked else None
    results = []
    for n in (1, 2, 3):
        dotattn.set_num_threads(n)
        results.append(dotattn.attention(q, k, v, attn_mask=mask, is_causal=is_causal, return_lse=True))
    for out, lse in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(lse, results[0][1])


# --- memory ----------------------------------------------------------------------

MEMORY_SCRIPT = """
import resource, sys
import numpy as np
import dotattn

L = S = 32768
E = 64
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, n, E), dtype=np.float32) for n in (L, S, S))
out = np.full((1, L, E), np.nan, dtype=np.float32)  # written, so its pages count before
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
dotattn.attention(q, k, v, is_causal=True, out=out)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert np.isfinite(out).all()
print(before, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_long_causal_call_needs_little_memory(isa):
    # One head, L = S = 32768, E = 64, float32: the score matrix alone would
    # be 4 GiB; the blocked loop needs its tiles. Measured: under 1 MiB of
    # growth in peak RSS, about 1.2 s on 2 cores with avx2 (the scalar
    # kernels take about 8 s, hence only the best kernel set runs it).
    best = dotattn.supported_isas()[0]
    if isa != best:
        pytest.skip(f"memory use does not depend on the kernel set; measured with {best}")
    env = {**os.environ, "DOTATTN_ISA": isa}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    before, after = map(int, result.stdout.split())
    growth_mib = (after - before) / 1024
    print(f"\npeak RSS {before / 1024:.1f} MiB before the call, {after / 1024:.1f} MiB after")
    print(f"growth {growth_mib:.2f} MiB")
    assert growth_mib < 64
