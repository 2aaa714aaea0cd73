"""Key and value stored as float16, bfloat16 or int8 (dotattn.QuantizedKV)
with a float32 query: every feature of attention() and attention_weights()
with every format, on every kernel set, against the reference computed on
the values as stored (so the error measured is the kernel's own, held to
the float32 tolerances).

The matrix is chosen, not multiplied out: the formats are crossed with the
features one at a time (each feature case is small), K and V in different
formats run in pairs that cover every format on each side, and the head
sizes E in {64, 80, 96, 128, 256} and both int8 groups (32 and E) are spread
over the decode cases."""

import tracemalloc

import dotattn
import numpy as np
import pytest
from conftest import KV_FORMATS, assert_matches, check_attention, check_weights, qkv, stored

pytestmark = pytest.mark.usefixtures("isa")


def stored_qkv(rng, k_fmt, v_fmt=None, **sizes):
    q, k, v = qkv(rng, np.float32, **sizes)
    return q, stored(k, k_fmt), stored(v, k_fmt if v_fmt is None else v_fmt)


# --- decode, chunked prefill and prefill over the formats -------------------

# (k_fmt, v_fmt, B, Hq, Hkv, L, S, E, Ev): every format on each side, the
# decode (split-K) path with odd S, and E over {64, 80, 96, 128, 256}.
DECODE_CASES = [
    ("float16", "float16", 1, 8, 2, 1, 3001, 128, 128),
    ("bfloat16", "bfloat16", 2, 4, 1, 1, 1537, 64, 64),
    ("int8", "int8", 1, 16, 2, 1, 2049, 96, 96),
    ("int8_row", "int8_row", 1, 4, 4, 1, 1301, 80, 80),
    ("int8", "float16", 1, 8, 1, 1, 4099, 256, 256),
    ("float16", "int8", 1, 6, 3, 1, 1025, 80, 64),
    ("bfloat16", "int8_row", 1, 8, 2, 3, 2500, 64, 96),
    ("int8_row", "bfloat16", 1, 2, 1, 1, 1111, 256, 128),
    ("float32", "int8", 1, 8, 2, 1, 1500, 128, 128),
    ("float16", "float32", 3, 2, 2, 1, 1200, 96, 96),
]


@pytest.mark.parametrize("case", DECODE_CASES, ids=["-".join(map(str, c)) for c in DECODE_CASES])
def test_decode(rng, case):
    k_fmt, v_fmt, B, Hq, Hkv, L, S, E, Ev = case
    q, k, v = stored_qkv(rng, k_fmt, v_fmt, batch=(B,), Hq=Hq, Hkv=Hkv, L=L, S=S, E=E, Ev=Ev)
    check_attention(q, k, v)
    check_attention(q, k, v, is_causal="lower_right")


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize(
    "L, S, E, causal",
    [
        (4, 777, 64, "lower_right"),  # speculative decoding: a few rows per step
        (16, 1029, 96, "lower_right"),
        (200, 1500, 128, "lower_right"),  # chunked prefill
        (333, 333, 64, True),  # prefill with odd tails
        (130, 257, 80, False),
    ],
    ids=["spec4", "spec16", "chunk", "prefill", "prefill-E80"],
)
def test_rows_beyond_decoding(rng, fmt, L, S, E, causal):
    q, k, v = stored_qkv(rng, fmt, batch=(1,), Hq=4, Hkv=2, L=L, S=S, E=E)
    check_attention(q, k, v, is_causal=causal)


# --- every feature with every format ----------------------------------------


def feature_cases(rng, fmt):
    """(name, q, k, v, kwargs) for each feature of attention()."""
    B, Hq, Hkv, L, S, E = 2, 4, 2, 5, 301, 64
    q, k, v = qkv(rng, np.float32, batch=(B,), Hq=Hq, Hkv=Hkv, L=L, S=S, E=E)
    sk, sv = stored(k, fmt), stored(v, fmt)
    bool_mask = rng.random((B, 1, L, S)) < 0.7  # broadcast over heads
    float_mask = np.where(rng.random((L, S)) < 0.2, -np.inf, rng.standard_normal((L, S))).astype(np.float32)
    q5, k5, v5 = qkv(rng, np.float32, batch=(2, 1, 3), Hq=2, Hkv=1, L=3, S=70, E=32)
    q2, k2, v2 = qkv(rng, np.float32, batch=None, L=7, S=90, E=48)
    mqa = qkv(rng, np.float32, batch=(1,), Hq=6, Hkv=1, L=2, S=1100, E=64)
    yield "bool-mask", q, sk, sv, {"attn_mask": bool_mask}
    yield "float-mask", q, sk, sv, {"attn_mask": float_mask}
    yield "mask-and-causal", q, sk, sv, {"attn_mask": bool_mask, "is_causal": "lower_right"}
    yield "upper-left", q, sk, sv, {"is_causal": "upper_left"}
    yield "scale", q, sk, sv, {"scale": 0.3}
    yield "5-d", q5, stored(k5, fmt), stored(v5, fmt), {}
    yield "2-d", q2, stored(k2, fmt), stored(v2, fmt), {"is_causal": "lower_right"}
    yield "mqa", mqa[0], stored(mqa[1], fmt), stored(mqa[2], fmt), {}


FEATURES = ["bool-mask", "float-mask", "mask-and-causal", "upper-left", "scale", "5-d", "2-d", "mqa"]


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("feature", FEATURES)
def test_feature(rng, fmt, feature):
    name, q, k, v, kwargs = next(c for c in feature_cases(rng, fmt) if c[0] == feature)
    check_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_weights(rng, fmt):
    q, k, _ = stored_qkv(rng, fmt, batch=(1,), Hq=4, Hkv=2, L=9, S=515, E=80)
    check_weights(q, k)
    check_weights(q, k, is_causal="lower_right", attn_mask=rng.random((9, 515)) < 0.8)


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_out_and_lse(rng, fmt):
    q, k, v = stored_qkv(rng, fmt, batch=(1,), Hq=8, Hkv=2, L=1, S=2000, E=64)
    out = np.full((1, 8, 1, 64), 7.0, np.float32)
    result, lse = dotattn.attention(q, k, v, out=out, return_lse=True)
    assert result is out
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True)
    assert_matches(out, ref, np.float32)
    assert_matches(lse, ref_lse, np.float32)


# --- caches: strided views, a prefix of a preallocated cache, garbage -------


def cache_of(rng, fmt, B, Hkv, S_max, E):
    """A (B, S_max, Hkv, E) token-major cache seen as (B, Hkv, S_max, E), as
    a model's layer writes it: strided in every dim but the last."""
    return stored(rng.standard_normal((B, S_max, Hkv, E), dtype=np.float32), fmt)


def as_heads_first(x):
    if isinstance(x, dotattn.QuantizedKV):
        return dotattn.QuantizedKV(x.data.transpose(0, 2, 1, 3), x.scale.transpose(0, 2, 1, 3))
    return x.transpose(0, 2, 1, 3)


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_prefix_of_a_strided_cache(rng, fmt):
    B, Hq, Hkv, S_max, n, E = 1, 8, 2, 4096, 2777, 128
    k_cache = as_heads_first(cache_of(rng, fmt, B, Hkv, S_max, E))
    v_cache = as_heads_first(cache_of(rng, fmt, B, Hkv, S_max, E))
    q = rng.standard_normal((B, Hq, 1, E), dtype=np.float32)
    k, v = k_cache[:, :, :n], v_cache[:, :, :n]
    check_attention(q, k, v)

    tracemalloc.start()
    dotattn.attention(q, k, v)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stored_bytes = n * Hkv * E * (4 if fmt == "float32" else 2 if fmt in ("float16", "bfloat16") else 1)
    assert peak < stored_bytes / 20, f"{peak} bytes allocated for a {stored_bytes}-byte key: a copy?"


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "int8"])
def test_garbage_beyond_the_valid_slots(rng, fmt):
    """inf and NaN in masked-out slots of a cache never reach the output."""
    q, k, v = qkv(rng, np.float32, batch=(1,), Hq=4, Hkv=2, L=1, S=1500, E=64)
    k, v = stored(k, fmt), stored(v, fmt)
    raw_v = v.data if isinstance(v, dotattn.QuantizedKV) else v
    if isinstance(v, dotattn.QuantizedKV):
        v.scale[:, :, 1200:] = np.inf  # int8 data is finite; a garbage scale is not
    else:
        raw_v[:, :, 1200:] = np.inf
        raw_v[:, :, 1300:] = np.nan
    mask = np.arange(1500) < 1200
    out = check_attention(q, k, v, attn_mask=mask)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_same_bits_at_any_thread_count(rng, fmt, restore_threads):
    q, k, v = stored_qkv(rng, fmt, batch=(1,), Hq=8, Hkv=2, L=1, S=5000, E=128)
    results = []
    for threads in (1, 2, 3):
        dotattn.set_num_threads(threads)
        results.append(dotattn.attention(q, k, v, return_lse=True))
    for out, lse in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(lse, results[0][1])


def test_float16_subnormals_and_limits(rng):
    """float16 widens exactly, subnormals, the largest finite value and
    signed zeros included."""
    q = rng.standard_normal((1, 1, 2, 16), dtype=np.float32)
    special = np.array([6.0e-8, -6.0e-8, 6.1e-5, 65504.0, -65504.0, 0.0, -0.0, 1e-6], np.float16)
    k = np.resize(special, (1, 1, 40, 16)) * np.float16(1e-4)
    v = np.resize(special, (1, 1, 40, 16))
    check_attention(q, k, v)
