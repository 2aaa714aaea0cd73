"""float16 and bfloat16 queries (and masks and results): computed in float32
on every kernel set, whatever K/V format, against the reference computed on
the values as stored.

Each case is checked three ways: the result in the query's dtype within its
TOLERANCES (one rounding of a float32 result); the same call with
out_dtype=float32 within float32's tolerance (the kernels' own error: 16-bit
inputs are exact in float32); and the 16-bit result equal, bit for bit, to
the float32 one rounded by NumPy / ml_dtypes (round to nearest even). The
cases pair query dtypes with K/V formats and paths (decode with split-K,
chunked prefill, prefill with GQA and odd sizes), not every product."""

import dotattn
import numpy as np
import pytest
from conftest import assert_matches, stored

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes (test extras)")

pytestmark = pytest.mark.usefixtures("isa")

HALF = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def inputs(rng, q_dtype, kv_fmt, *, B=1, Hq=4, Hkv=2, L=16, S=16, E=40, Ev=24):
    """q in q_dtype, k and v stored as kv_fmt (their float32 values first
    rounded to q_dtype, as a model's 16-bit activations would be)."""
    half = HALF[q_dtype]
    q = rng.standard_normal((B, Hq, L, E)).astype(half)
    k = rng.standard_normal((B, Hkv, S, E)).astype(half).astype(np.float32)
    v = rng.standard_normal((B, Hkv, S, Ev)).astype(half).astype(np.float32)
    return q, stored(k, kv_fmt), stored(v, kv_fmt)


def same_bits(a, b):
    """a and b equal bit for bit, NaNs aside (any NaN matches any NaN)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    nan = np.isnan(a.astype(np.float32))
    np.testing.assert_array_equal(nan, np.isnan(b.astype(np.float32)))
    np.testing.assert_array_equal(a.view(np.uint16)[~nan], b.view(np.uint16)[~nan])


def check_half(call, ref, half):
    """call(out_dtype) in the query's dtype and in float32, against ref."""
    out = call(None)
    out32 = call(np.float32)
    assert_matches(out, ref, half)
    assert_matches(out32, ref, np.float32)
    same_bits(out, out32.astype(half))


# (q dtype, K/V format, B, Hq, Hkv, L, S, E, Ev, is_causal): each query dtype
# with each K/V format, over decode (split into key ranges), few rows,
# chunked prefill and prefill, with GQA and sizes off every vector width.
CASES = [
    ("bfloat16", "bfloat16", 1, 8, 2, 1, 2049, 64, 64, False),
    ("float16", "float16", 2, 4, 1, 1, 1537, 128, 128, "lower_right"),
    ("bfloat16", "int8", 1, 4, 2, 3, 1301, 96, 80, "lower_right"),
    ("float16", "int8_row", 1, 6, 3, 1, 1100, 80, 64, False),
    ("bfloat16", "float32", 2, 4, 4, 37, 129, 40, 24, True),
    ("float16", "bfloat16", 1, 4, 2, 200, 1029, 64, 72, "lower_right"),
    ("bfloat16", "float16", 1, 2, 1, 97, 95, 33, 17, True),
    ("float16", "float32", 1, 4, 2, 130, 300, 64, 64, False),
]


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_attention(rng, case):
    q_dtype, kv_fmt, B, Hq, Hkv, L, S, E, Ev, causal = case
    q, k, v = inputs(rng, q_dtype, kv_fmt, B=B, Hq=Hq, Hkv=Hkv, L=L, S=S, E=E, Ev=Ev)
    ref, ref_lse = dotattn.reference.attention(q, k, v, is_causal=causal, return_lse=True)
    check_half(lambda dt: dotattn.attention(q, k, v, is_causal=causal, out_dtype=dt), ref, HALF[q_dtype])
    out, lse = dotattn.attention(q, k, v, is_causal=causal, return_lse=True)
    assert out.dtype == HALF[q_dtype]
    assert_matches(lse, ref_lse, np.float32)


@pytest.mark.parametrize("q_dtype", HALF)
@pytest.mark.parametrize("mask_kind", ["bool", "query dtype", "float32"])
def test_masks(rng, q_dtype, mask_kind):
    q, k, v = inputs(rng, q_dtype, "float32", L=21, S=67)
    if mask_kind == "bool":
        mask = rng.random((4, 21, 67)) < 0.7
    else:
        mask = np.where(rng.random((21, 67)) < 0.7, rng.standard_normal((21, 67)), -np.inf)
        mask = mask.astype(HALF[q_dtype] if mask_kind == "query dtype" else np.float32)
    ref = dotattn.reference.attention(q, k, v, attn_mask=mask)
    check_half(lambda dt: dotattn.attention(q, k, v, attn_mask=mask, out_dtype=dt), ref, HALF[q_dtype])
    weights = dotattn.reference.attention_weights(q, k, attn_mask=mask)
    assert_matches(dotattn.attention_weights(q, k, attn_mask=mask), weights, np.float32)


@pytest.mark.parametrize("q_dtype", HALF)
def test_options(rng, q_dtype):
    q, k, v = inputs(rng, q_dtype, "int8", Hq=4, Hkv=2, L=50, S=130, E=64, Ev=32)
    options = {
        "is_causal": "lower_right",
        "window": (40, None),
        "softcap": 5.0,
        "alibi_slopes": np.array([0.25, 0.125, 0.0625, 0.03125]),
        "sinks": np.array([0.5, -1.0, 2.0, 0.0]),
    }
    ref = dotattn.reference.attention(q, k, v, **options)
    check_half(lambda dt: dotattn.attention(q, k, v, out_dtype=dt, **options), ref, HALF[q_dtype])


@pytest.mark.parametrize("q_dtype", HALF)
def test_attention_weights(rng, q_dtype):
    q, k, _ = inputs(rng, q_dtype, "float16", L=19, S=301)
    ref = dotattn.reference.attention_weights(q, k, is_causal="lower_right")
    weights = dotattn.attention_weights(q, k, is_causal="lower_right")
    assert_matches(weights, ref, np.float32)
    half = dotattn.attention_weights(q, k, is_causal="lower_right", out_dtype=HALF[q_dtype])
    assert_matches(half, ref, HALF[q_dtype])
    same_bits(half, weights.astype(HALF[q_dtype]))


@pytest.mark.parametrize("q_dtype", HALF)
def test_out_is_written_in_place(rng, q_dtype):
    q, k, v = inputs(rng, q_dtype, "bfloat16", L=9, S=40)
    ref = dotattn.reference.attention(q, k, v)
    for dtype in (HALF[q_dtype], np.dtype(np.float32)):
        out = np.empty((1, 4, 9, 24), dtype)
        assert dotattn.attention(q, k, v, out=out) is out
        assert_matches(out, ref, dtype)


@pytest.mark.parametrize("q_dtype", HALF)
def test_varlen_and_paged(rng, q_dtype):
    half = HALF[q_dtype]
    lengths_q, lengths_k = [1, 7, 0, 30], [300, 7, 5, 64]
    cu_q, cu_k = np.cumsum([0, *lengths_q]), np.cumsum([0, *lengths_k])
    q = rng.standard_normal((cu_q[-1], 4, 64)).astype(half)
    k = rng.standard_normal((cu_k[-1], 2, 64)).astype(half)
    v = rng.standard_normal((cu_k[-1], 2, 48)).astype(np.float16)
    ref = dotattn.reference.attention_varlen(q, k, v, cu_q, cu_k, is_causal=True)
    check_half(
        lambda dt: dotattn.attention_varlen(q, k, v, cu_q, cu_k, is_causal=True, out_dtype=dt), ref, half
    )

    page = 16
    pages = [(n + page - 1) // page for n in lengths_k]
    order = rng.permutation(sum(pages)).astype(np.int32)
    table = np.zeros((len(pages), max(pages)), np.int32)
    k_cache = np.zeros((sum(pages), page, 2, 64), half)
    v_cache = np.zeros((sum(pages), page, 2, 48), np.float16)
    at = 0
    for b, n in enumerate(lengths_k):
        table[b, : pages[b]] = order[at : at + pages[b]]
        at += pages[b]
        for j in range(n):
            k_cache[table[b, j // page], j % page] = k[cu_k[b] + j]
            v_cache[table[b, j // page], j % page] = v[cu_k[b] + j]
    lens = np.array(lengths_k)
    ref = dotattn.reference.attention_paged(q, k_cache, v_cache, table, lens, cu_q, is_causal=True)
    check_half(
        lambda dt: dotattn.attention_paged(
            q, k_cache, v_cache, table, lens, cu_q, is_causal=True, out_dtype=dt
        ),
        ref,
        half,
    )


@pytest.mark.parametrize("q_dtype", HALF)
def test_results_round_to_nearest_even(rng, q_dtype):
    # One key: each output is its value times 1, so out is the float32
    # value rounded to the 16-bit dtype, over values that reach every case of
    # the rounding: float32 of any exponent (overflow to inf, float16
    # subnormals, underflow to zero), ties, inf and NaN.
    half = HALF[q_dtype]
    bits = rng.integers(0, 2**32, 60000, dtype=np.uint64).astype(np.uint32)
    near = np.array([65504, 65519.996, 65520, 65536, 2.0**-14, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 1e-30])
    ties = (np.arange(1, 2000, dtype=np.uint32) << 13) | (1 << 12)  # float16 ties at every mantissa
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    values = np.concatenate(
        [
            bits.view(np.float32),
            near.astype(np.float32),
            -near.astype(np.float32),
            ties.view(np.float32),
            (ties << 3).view(np.float32),
            special,
        ]
    )
    q = np.ones((1, 1, 8), half)
    k = np.ones((1, 1, 8), half)
    v = values.reshape(1, 1, -1)
    out32 = dotattn.attention(q, k, v, out_dtype=np.float32)
    np.testing.assert_array_equal(out32, v)  # (0 + 1 * -0 is +0: compared as equal)
    with np.errstate(over="ignore"):
        same_bits(dotattn.attention(q, k, v), out32.astype(half))


def test_bad_dtypes_raise_and_leave_out_untouched(rng):
    bf16 = HALF["bfloat16"]
    q, k, v = inputs(rng, "bfloat16", "float32", L=4, S=6)
    q32 = q.astype(np.float32)
    cases = [
        (
            {"out": np.full((1, 4, 4, 24), 7.0)},
            TypeError,
            r"out has dtype float64 but the result is bfloat16 \(the query's dtype\) or float32",
        ),
        (
            {"out": np.full((1, 4, 4, 24), 7.0, np.float16)},
            TypeError,
            r"out has dtype float16 but the result is bfloat16 \(the query's dtype\) or float32",
        ),
        (
            {"out_dtype": np.float64},
            TypeError,
            r"out has dtype float64 but the result is bfloat16 \(the query's dtype\) or float32",
        ),
        (
            {"attn_mask": np.zeros((4, 6))},
            TypeError,
            r"attn_mask has dtype float64; expected bool .* bfloat16 \(the query's dtype\) or float32",
        ),
        (
            {"attn_mask": np.zeros((4, 6), np.float16)},
            TypeError,
            r"attn_mask has dtype float16; expected bool .* bfloat16 \(the query's dtype\) or float32",
        ),
        (
            {"out": np.full((1, 4, 4, 24), 7.0, np.float32), "out_dtype": bf16},
            TypeError,
            r"out has dtype float32 but out_dtype is bfloat16",
        ),
    ]
    for kwargs, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            dotattn.attention(q, k, v, **kwargs)
        if "out" in kwargs:
            assert np.all(kwargs["out"].astype(np.float64) == 7.0)
    # A float32 query's result is float32: no 16-bit out, no 16-bit mask.
    out = np.full((1, 4, 4, 24), 7.0, bf16)
    with pytest.raises(TypeError, match=r"out has dtype bfloat16 but the result is float32"):
        dotattn.attention(q32, k, v, out=out)
    assert np.all(out.astype(np.float64) == 7.0)
    with pytest.raises(TypeError, match=r"attn_mask has dtype bfloat16; expected bool .* float32"):
        dotattn.attention(q32, k, v, attn_mask=np.zeros((4, 6), bf16))
    with pytest.raises(TypeError, match=r"key has dtype float64 but query is bfloat16"):
        dotattn.attention(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match=r"weights has dtype float64 but the result is bfloat16"):
        dotattn.attention_weights(q, k, out_dtype=np.float64)
    with pytest.raises(TypeError, match=r"query has dtype int16; expected float32, float64, float16"):
        dotattn.attention(q.view(np.int16), k, v)


# (B, Hq, Hkv, L, S, E, is_causal): prefill, causal prefill, GQA decode.
TORCH_SHAPES = [(1, 8, 8, 256, 256, 64, False), (1, 4, 4, 300, 300, 64, True), (2, 8, 2, 1, 2000, 128, False)]


@pytest.mark.parametrize("q_dtype", HALF)
@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=["-".join(map(str, s)) for s in TORCH_SHAPES])
def test_error_within_pytorchs(rng, q_dtype, shape):
    # The same 16-bit inputs through torch's SDPA in that dtype: dotattn's
    # normwise error against the reference is at most torch's (measured
    # here, torch 2.13: about 0.75 of it, torch rounding the weights to the
    # 16-bit dtype for its P·V product, dotattn keeping them in float32).
    torch = pytest.importorskip("torch", reason="the comparison with PyTorch needs torch")
    B, Hq, Hkv, L, S, E, causal = shape
    half = HALF[q_dtype]
    q = rng.standard_normal((B, Hq, L, E)).astype(half)
    k = rng.standard_normal((B, Hkv, S, E)).astype(half)
    v = rng.standard_normal((B, Hkv, S, E)).astype(half)
    ref = dotattn.reference.attention(q, k, v, is_causal=causal)
    mine = dotattn.reference.errors(dotattn.attention(q, k, v, is_causal=causal), ref)[0]
    t = [torch.from_numpy(x.astype(np.float32)).to(getattr(torch, q_dtype)) for x in (q, k, v)]
    theirs = torch.nn.functional.scaled_dot_product_attention(*t, is_causal=causal, enable_gqa=Hq != Hkv)
    torch_error = dotattn.reference.errors(theirs.float().numpy(), ref)[0]
    assert mine <= torch_error, f"dotattn {mine:.3g} > torch {torch_error:.3g}"
