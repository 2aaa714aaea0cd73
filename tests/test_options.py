"""The score options window, softcap, alibi_slopes and sinks, alone and
together, with the causal rules and masks, for attention (out and LSE) and
attention_weights, on every path of the blocked loop: small calls, many
row blocks with tails (prefill), grouped query heads sharing one tile, and
decoding split into key ranges merged by their LSEs (split-K); with the
K/V storage formats; and their argument errors.

The cases are chosen pairwise rather than multiplied out: the small shapes
run every window with every causal rule, and each large path runs a few
chosen combinations."""

import re

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, KV_FORMATS, assert_matches, check_weights, qkv, stored

pytestmark = pytest.mark.usefixtures("isa")


def alibi(Hq):
    """ALiBi slopes 2**-(h + 1): powers of two, so exact in float32 and the
    bias slope * |i' - j| too."""
    return 2.0 ** -(np.arange(Hq) + 1.0)


def sink_logits(rng, Hq):
    """One sink logit per head, in quarters: exact in float32."""
    return np.round(rng.standard_normal(Hq) * 8) / 4


def per_head(x, like):
    """A (Hq,) vector shaped to broadcast over an LSE of shape like.shape
    ((..., Hq, L), or (L,) for 2-D inputs)."""
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if np.ndim(like) >= 2 else x[0]


def check_all(q, k, v, **options):
    """attention (with its LSE) and attention_weights against the reference,
    and the weights of each row summing to what the sink leaves: 1 -
    exp(sinks[h] - lse) (1 without sinks; 0 for a row that sees nothing).
    Returns (out, lse) of dotattn."""
    out, lse = dotattn.attention(q, k, v, return_lse=True, **options)
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True, **options)
    assert_matches(out, ref, q.dtype)
    assert_matches(lse, ref_lse, q.dtype)
    weights = check_weights(q, k, **options)
    sinks = options.get("sinks")
    with np.errstate(invalid="ignore"):
        sink_share = 0.0 if sinks is None else np.exp(per_head(sinks, ref_lse) - ref_lse)
        want = np.where(ref_lse == -np.inf, 0.0, 1.0 - sink_share)
    assert_matches(weights.sum(axis=-1), want, q.dtype)
    return out, lse


# --- window ------------------------------------------------------------------

WINDOWS = [(5, None), (None, 3), (4, 2), (0, 0), (0, None), (None, 0), (-1, 2), (100, 100)]
CAUSAL = [False, True, "lower_right"]
# L == S, L < S, and L > S (where lower_right rows start before key 0).
SMALL_LS = [(13, 13), (7, 29), (29, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", CAUSAL, ids=str)
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_window_small(rng, dtype, window, is_causal):
    for L, S in SMALL_LS:
        q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=L, S=S, E=16)
        check_all(q, k, v, window=window, is_causal=is_causal)


def test_window_by_definition():
    # E=0 gives every visible key the same score: the weights spread evenly
    # over exactly the keys the window lets a row see. L=4, S=6, i' = i + 2
    # (bottom-right) without causal, i' = i with is_causal=True.
    q, k = np.zeros((4, 0)), np.zeros((6, 0))
    both_sides = [
        [0, 1 / 3, 1 / 3, 1 / 3, 0, 0],
        [0, 0, 1 / 3, 1 / 3, 1 / 3, 0],
        [0, 0, 0, 1 / 3, 1 / 3, 1 / 3],
        [0, 0, 0, 0, 1 / 2, 1 / 2],
    ]
    np.testing.assert_allclose(dotattn.attention_weights(q, k, scale=1, window=(1, 1)), both_sides)
    causal_left = [
        [1, 0, 0, 0, 0, 0],
        [1 / 2, 1 / 2, 0, 0, 0, 0],
        [0, 1 / 2, 1 / 2, 0, 0, 0],
        [0, 0, 1 / 2, 1 / 2, 0, 0],
    ]
    for window in [(1, None), (1, -1), (1, 3)]:  # causal bounds the right side at 0
        np.testing.assert_allclose(
            dotattn.attention_weights(q, k, scale=1, window=window, is_causal=True), causal_left
        )
    # lower_right with the window's right side: the same as causal.
    np.testing.assert_allclose(
        dotattn.attention_weights(q, k, scale=1, window=(2, 0)),
        dotattn.attention_weights(q, k, scale=1, window=(2, None), is_causal="lower_right"),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbounded_sides(rng, dtype):
    q, k, v = qkv(rng, dtype, Hq=2, L=9, S=21, E=8)
    plain = dotattn.attention(q, k, v, is_causal="lower_right")
    for window in [None, (None, None), (-1, -1), (-1, None), [None, -1]]:
        np.testing.assert_array_equal(
            dotattn.attention(q, k, v, is_causal="lower_right", window=window), plain
        )
    np.testing.assert_array_equal(
        dotattn.attention(q, k, v, window=(-1, 3)), dotattn.attention(q, k, v, window=(None, 3))
    )
    np.testing.assert_array_equal(
        dotattn.attention(q, k, v, window=(np.int64(4), np.int32(1))),
        dotattn.attention(q, k, v, window=(4, 1)),
    )


# (B, Hq, Hkv, L, S, E, Ev) of the large paths.
DECODE = (1, 8, 2, 1, 2001, 64, 64)  # split into key ranges; GQA, 4 heads per group
SPECULATIVE = (1, 8, 2, 4, 2001, 64, 64)  # 4 rows per head, heads grouped in one tile, split
GROUPED = (2, 8, 2, 1, 300, 64, 64)  # grouped rows (4 heads x 1 row in one tile), not split
PREFILL = (1, 4, 2, 197, 331, 32, 24)  # 3 row blocks per head, the last of 5 rows; odd S
SQUARE = (1, 2, 2, 301, 301, 40, 40)  # L == S, 4 row blocks per head


def big_qkv(rng, dtype, shape):
    B, Hq, Hkv, L, S, E, Ev = shape
    return qkv(rng, dtype, batch=(B,), Hq=Hq, Hkv=Hkv, L=L, S=S, E=E, Ev=Ev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "window, is_causal",
    [
        ((700, None), "lower_right"),
        ((511, 0), False),  # the window ends near a key range's edge
        ((1500, 3), True),  # upper_left: i' = 0, one key
        ((2500, None), False),  # wider than S
        ((0, 0), "lower_right"),
    ],
    ids=str,
)
def test_window_decode(rng, dtype, window, is_causal):
    q, k, v = big_qkv(rng, dtype, DECODE)
    out, _ = check_all(q, k, v, window=window, is_causal=is_causal)
    if window == (0, 0):  # the last key alone: its value, exactly
        np.testing.assert_array_equal(out, np.repeat(v[:, :, -1:], 4, axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_window_speculative_decode(rng, dtype):
    # 4 rows per head, each with its own window over the key ranges.
    q, k, v = big_qkv(rng, dtype, SPECULATIVE)
    check_all(q, k, v, window=(300, None), is_causal="lower_right")
    check_all(q, k, v, window=(2, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_keys_outside_the_window_are_not_read(rng, dtype):
    # Decoding with a window of 300 keys: NaN and inf in every other slot of
    # K and V (whole key ranges of them) never reach the result.
    q, k, v = big_qkv(rng, dtype, DECODE)
    S = k.shape[-2]
    k[..., : S - 301, :] = np.nan
    v[..., : S - 301, :] = np.inf
    v[..., : S - 301 : 3, 0] = np.nan
    out, lse = check_all(q, k, v, window=(300, None))
    assert np.isfinite(out).all() and np.isfinite(lse).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", CAUSAL, ids=str)
def test_window_grouped_rows(rng, dtype, is_causal):
    q, k, v = big_qkv(rng, dtype, GROUPED)
    check_all(q, k, v, window=(37, 5), is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, window, is_causal",
    [
        (PREFILL, (64, 16), True),
        (PREFILL, (50, None), "lower_right"),
        (PREFILL, (None, 20), False),
        (SQUARE, (100, 0), True),
        (SQUARE, (7, 130), False),
    ],
    ids=["prefill-causal", "prefill-lower-right", "prefill-right", "square-causal", "square-both"],
)
def test_window_prefill(rng, dtype, shape, window, is_causal):
    q, k, v = big_qkv(rng, dtype, shape)
    check_all(q, k, v, window=window, is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_window_with_masks(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=19, S=37, E=8)
    bool_mask = rng.random((2, 1, 19, 37)) < 0.7
    float_mask = np.where(rng.random((19, 37)) < 0.2, -np.inf, rng.standard_normal((19, 37))).astype(dtype)
    for mask in (bool_mask, float_mask):
        check_all(q, k, v, window=(6, 2), attn_mask=mask)
        check_all(q, k, v, window=(None, 4), attn_mask=mask, is_causal=True)


# --- softcap -----------------------------------------------------------------


def integer_qkv(rng, dtype, *, batch=(1,), Hq=2, Hkv=None, L=16, S=16, E=64):
    """Query and key of small integers in [-2, 2] (with E=64 and scale=1,
    scores of standard deviation 16, exact in float32), standard-normal
    values."""
    q, k, v = qkv(rng, dtype, batch=batch, Hq=Hq, Hkv=Hkv, L=L, S=S, E=E)
    return rng.integers(-2, 3, q.shape).astype(dtype), rng.integers(-2, 3, k.shape).astype(dtype), v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "sizes",
    [
        dict(batch=(2,), Hq=4, Hkv=2, L=37, S=53),
        dict(batch=(1,), Hq=8, Hkv=2, L=1, S=2001),  # split-K
        dict(batch=(1,), Hq=2, Hkv=1, L=197, S=331),  # prefill
    ],
    ids=["small", "decode", "prefill"],
)
def test_softcap_large_scores(rng, dtype, sizes):
    q, k, v = integer_qkv(rng, dtype, **sizes)
    scores = np.abs(q.astype(np.float64) @ np.swapaxes(np.repeat(k, q.shape[1] // k.shape[1], 1), -1, -2))
    assert scores.max() >= 30  # the cap matters
    out, _ = check_all(q, k, v, scale=1, softcap=5)
    uncapped = dotattn.reference.attention(q, k, v, scale=1)
    assert np.abs(out - uncapped).max() > 0.1
    check_all(q, k, v, scale=1, softcap=5.0, is_causal="lower_right", window=(40, None))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_bounds_infinite_scores(rng, dtype):
    # +-inf scores become +-softcap: the rows stay finite.
    q, k, v = qkv(rng, dtype, Hq=2, L=3, S=10, E=4)
    q[...] = np.abs(q) + 0.5
    k[0, 0, 2, 1] = np.inf  # head 0: +inf in column 2 of every row
    k[0, 1, 5, 0] = -np.inf  # head 1: -inf in column 5
    out, lse = check_all(q, k, v, softcap=3.0)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    weights = dotattn.attention_weights(q, k, softcap=3.0)
    assert (weights[0, 0, :, 2] == weights[0, 0].max(axis=-1)).all()
    assert (weights[0, 1, :, 5] > 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_comes_before_the_mask(rng, dtype):
    # An additive mask of +-20 is added after the cap of 2: not capped.
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=2, L=11, S=23, E=16)
    mask = (rng.integers(-1, 2, (11, 23)) * 20).astype(dtype)
    check_all(q, k, v, softcap=2, attn_mask=mask)
    weights = dotattn.attention_weights(q, k, softcap=2, attn_mask=mask)
    assert weights[..., mask == -20].max() < 1e-7


@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_accepts_real_numbers(rng, dtype):
    q, k, v = qkv(rng, dtype, Hq=2, L=5, S=9, E=8)
    capped = dotattn.attention(q, k, v, softcap=4.0)
    for softcap in (4, np.float32(4), np.float64(4), np.int64(4)):
        np.testing.assert_array_equal(dotattn.attention(q, k, v, softcap=softcap), capped)


# --- ALiBi -------------------------------------------------------------------


def test_alibi_by_definition():
    # E=0: every score is 0, the bias alone shapes the weights.
    s = 0.5
    # Without causal, i' = i + S - L: L=1, S=4 gives i' = 3.
    want = np.exp(-s * np.array([3.0, 2, 1, 0]))
    np.testing.assert_allclose(
        dotattn.attention_weights(np.zeros((1, 0)), np.zeros((4, 0)), scale=1, alibi_slopes=[s]),
        [want / want.sum()],
    )
    # is_causal=True: i' = i; L=2, S=3.
    row1 = np.array([np.exp(-s), 1.0, 0.0])
    np.testing.assert_allclose(
        dotattn.attention_weights(
            np.zeros((2, 0)), np.zeros((3, 0)), scale=1, alibi_slopes=[s], is_causal=True
        ),
        [[1, 0, 0], row1 / row1.sum()],
    )
    # Per head, with 3-D inputs: head h's slope.
    slopes = np.array([0.0, 1.0, 2.0])
    weights = dotattn.attention_weights(
        np.zeros((3, 1, 0)), np.zeros((3, 2, 0)), scale=1, alibi_slopes=slopes
    )
    for h in range(3):
        np.testing.assert_allclose(
            weights[h, 0], np.array([np.exp(-slopes[h]), 1]) / (1 + np.exp(-slopes[h]))
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", CAUSAL, ids=str)
def test_alibi_small(rng, dtype, is_causal):
    for L, S in SMALL_LS:
        q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=L, S=S, E=16)
        check_all(q, k, v, alibi_slopes=alibi(4), is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, is_causal",
    [(DECODE, False), (SPECULATIVE, "lower_right"), (GROUPED, False), (PREFILL, True), (SQUARE, False)],
    ids=["decode", "speculative", "grouped", "prefill", "square"],
)
def test_alibi_paths(rng, dtype, shape, is_causal):
    # The slopes differ per query head, also within a key/value group.
    q, k, v = big_qkv(rng, dtype, shape)
    check_all(q, k, v, alibi_slopes=alibi(shape[1]), is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_alibi_slopes_of_any_float_form(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(2, 3), Hq=4, Hkv=1, L=6, S=12, E=8)
    slopes = alibi(4)
    biased = dotattn.attention(q, k, v, alibi_slopes=slopes)
    for same in (slopes.tolist(), slopes.astype(np.float32), np.repeat(slopes, 2)[::2]):
        np.testing.assert_array_equal(dotattn.attention(q, k, v, alibi_slopes=same), biased)
    # Integers read as float64.
    np.testing.assert_array_equal(
        dotattn.attention(q, k, v, alibi_slopes=[0, 1, 2, 3]),
        dotattn.attention(q, k, v, alibi_slopes=np.array([0.0, 1, 2, 3])),
    )
    # Slopes that are not powers of two (ALiBi's for 6 heads), and negative.
    q, k, v = qkv(rng, dtype, batch=(1,), Hq=6, Hkv=2, L=9, S=40, E=8)
    check_all(q, k, v, alibi_slopes=2.0 ** (-8 * (np.arange(6) + 1) / 6))
    check_all(q, k, v, alibi_slopes=-alibi(6) / 4)


# --- sinks -------------------------------------------------------------------


def test_sinks_by_definition():
    # E=0: three keys of score 0 and a sink of log 3 share the row evenly.
    q, k = np.zeros((2, 0)), np.zeros((3, 0))
    v = np.arange(6.0).reshape(3, 2)
    weights = dotattn.attention_weights(q, k, scale=1, sinks=[np.log(3)])
    np.testing.assert_allclose(weights, np.full((2, 3), 1 / 6))
    out, lse = dotattn.attention(q, k, v, scale=1, sinks=[np.log(3)], return_lse=True)
    np.testing.assert_allclose(out, np.broadcast_to(v.sum(axis=0) / 6, (2, 2)))
    np.testing.assert_allclose(lse, [np.log(6)] * 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", CAUSAL, ids=str)
def test_sinks_small(rng, dtype, is_causal):
    for L, S in SMALL_LS:
        q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=L, S=S, E=16)
        check_all(q, k, v, sinks=sink_logits(rng, 4), is_causal=is_causal)
    # A sink that takes nearly everything, and one that takes nearly nothing.
    check_all(q, k, v, sinks=[20.0, -30.0, 8.0, 0.0], is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, is_causal",
    [
        (DECODE, "lower_right"),
        (SPECULATIVE, False),
        (GROUPED, "lower_right"),
        (PREFILL, True),
        (SQUARE, False),
    ],
    ids=["decode", "speculative", "grouped", "prefill", "square"],
)
def test_sinks_paths(rng, dtype, shape, is_causal):
    # Split-K: the sink joins the row once, not once per key range.
    q, k, v = big_qkv(rng, dtype, shape)
    check_all(q, k, v, sinks=sink_logits(rng, shape[1]), is_causal=is_causal)


def assert_sees_nothing(out, lse, hidden, sinks):
    """The rows hidden[..., h, i] of out are zeros, their LSE sinks[h]."""
    sink_lse = np.broadcast_to(per_head(sinks, lse), lse.shape).astype(lse.dtype)
    assert hidden.any()
    np.testing.assert_array_equal(out[hidden], 0)
    np.testing.assert_array_equal(lse[hidden], sink_lse[hidden])
    assert np.isfinite(out).all() and np.isfinite(lse).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_sinks_rows_that_see_no_key(rng, dtype):
    sinks = [1.5, -2.0, 0.25, 3.0]
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=9, S=5, E=8)
    # No causal, L=9 > S=5: i' = i - 4, and window (1, 1) hides every key
    # from rows 0 to 2 (i' + 1 < 0).
    out, lse = check_all(q, k, v, window=(1, 1), sinks=sinks)
    hidden = np.zeros(lse.shape, dtype=bool)
    hidden[..., :3] = True
    assert_sees_nothing(out, lse, hidden, sinks)
    # lower_right with L > S: rows 0 to 3 see nothing.
    out, lse = check_all(q, k, v, is_causal="lower_right", sinks=sinks)
    hidden[...] = False
    hidden[..., :4] = True
    assert_sees_nothing(out, lse, hidden, sinks)
    # A boolean mask with rows all False.
    mask = rng.random((2, 4, 9, 5)) < 0.6
    mask[0, 1, [0, 4]] = False
    mask[1, :, 8] = False
    out, lse = check_all(q, k, v, attn_mask=mask, sinks=sinks)
    assert_sees_nothing(out, lse, ~mask.any(axis=-1), sinks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sinks_decode_rows_that_see_no_key(rng, dtype):
    # Split-K with some heads' rows hidden in every key range.
    q, k, v = big_qkv(rng, dtype, DECODE)
    sinks = sink_logits(rng, 8)
    mask = np.ones((1, 8, 1, 2001), dtype=bool)
    mask[0, [1, 6]] = False
    mask[0, 3, 0, :1500] = False  # only the last key ranges
    out, lse = check_all(q, k, v, attn_mask=mask, sinks=sinks)
    assert_sees_nothing(out, lse, ~mask.any(axis=-1), sinks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sinks_of_any_float_form(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(3,), Hq=2, L=4, S=7, E=8)
    sinks = np.array([0.75, -1.5])
    out, lse = dotattn.attention(q, k, v, sinks=sinks, return_lse=True)
    for same in (sinks.tolist(), sinks.astype(np.float32), np.array([[0.75, 9], [-1.5, 9]])[:, 0]):
        got, got_lse = dotattn.attention(q, k, v, sinks=same, return_lse=True)
        np.testing.assert_array_equal(got, out)
        np.testing.assert_array_equal(got_lse, lse)
    check_all(q, k, v, sinks=[2, -1])  # integers read as float64


# --- all together ------------------------------------------------------------

COMBINED = [
    # (shape, window, is_causal, mask): every path with every option
    (DECODE, (900, None), "lower_right", None),
    (DECODE, (1200, 0), False, "bool"),
    (SPECULATIVE, (400, 2), False, "float"),
    (GROUPED, (100, None), "lower_right", "bool"),
    (PREFILL, (80, 10), True, "float"),
    (SQUARE, (150, 150), False, None),
    ((2, 4, 2, 9, 5, 16, 8), (1, 1), False, "bool"),  # L > S: rows that see nothing
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, window, is_causal, mask",
    COMBINED,
    ids=["decode", "decode-mask", "speculative", "grouped", "prefill", "square", "short-keys"],
)
def test_all_options_together(rng, dtype, shape, window, is_causal, mask):
    q, k, v = big_qkv(rng, dtype, shape)
    B, Hq, _, L, S, _, _ = shape
    if mask == "bool":
        mask = rng.random((B, 1, L, S)) < 0.8
    elif mask == "float":
        mask = np.where(rng.random((L, S)) < 0.1, -np.inf, rng.standard_normal((L, S))).astype(dtype)
    options = dict(
        window=window,
        is_causal=is_causal,
        attn_mask=mask,
        softcap=4.0,
        alibi_slopes=alibi(Hq),
        sinks=sink_logits(rng, Hq),
    )
    out, lse = check_all(q, k, v, **options)
    # Into out=, with the same result.
    buffer = np.full(out.shape, np.nan, dtype=dtype)
    got, got_lse = dotattn.attention(q, k, v, out=buffer, return_lse=True, **options)
    assert got is buffer
    np.testing.assert_array_equal(buffer, out)
    np.testing.assert_array_equal(got_lse, lse)


def test_same_bits_at_any_thread_count(rng, restore_threads):
    q, k, v = big_qkv(rng, np.float32, SPECULATIVE)
    options = dict(window=(700, None), softcap=4.0, alibi_slopes=alibi(8), sinks=sink_logits(rng, 8))
    results = []
    for n in (1, 2, 3):
        dotattn.set_num_threads(n)
        results.append(dotattn.attention(q, k, v, return_lse=True, **options))
    for out, lse in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(lse, results[0][1])


# --- K/V storage formats ------------------------------------------------------

FORMAT_OPTIONS = {
    "window": dict(window=(40, 3)),
    "softcap": dict(softcap=3.0),
    "alibi": dict(alibi_slopes=alibi(4), is_causal="lower_right"),
    "sinks": dict(sinks=[1.0, -0.5, 2.25, 0.0]),
    "all": dict(window=(100, None), softcap=3.0, alibi_slopes=alibi(4), sinks=[1.0, -0.5, 2.25, 0.0]),
}


@pytest.mark.parametrize("option", FORMAT_OPTIONS)
@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_kv_formats(rng, fmt, option):
    q, k, v = qkv(rng, np.float32, batch=(1,), Hq=4, Hkv=2, L=5, S=301, E=64)
    check_all(q, stored(k, fmt), stored(v, fmt), **FORMAT_OPTIONS[option])


@pytest.mark.parametrize("fmt", ["float16", "int8"])
def test_kv_formats_decode(rng, fmt):
    q, k, v = big_qkv(rng, np.float32, DECODE)
    options = dict(window=(1000, None), softcap=3.0, alibi_slopes=alibi(8), sinks=sink_logits(rng, 8))
    check_all(q, stored(k, fmt), stored(v, fmt), **options)


# --- errors --------------------------------------------------------------------

SENTINEL = 7.25

# (id, keyword arguments, exception, message pattern), for q (2, 4, 5, 8),
# k (2, 4, 6, 8), v (2, 4, 6, 3): Hq = 4.
BAD_OPTIONS = [
    ("window-left", {"window": (-2, 0)}, ValueError, r"window=\(-2, 0\) must hold two ints >= -1"),
    ("window-right", {"window": (0, -5)}, ValueError, r"window=\(0, -5\) must hold two ints >= -1"),
    ("window-one", {"window": (1,)}, TypeError, r"window must be a pair \(left, right\)"),
    ("window-three", {"window": (1, 2, 3)}, TypeError, r"window must be a pair"),
    ("window-int", {"window": 3}, TypeError, r"window must be a pair .*; got 3"),
    ("window-str", {"window": "ab"}, TypeError, r"window must be a pair"),
    ("window-float", {"window": (1.5, 2)}, TypeError, r"window must be a pair .* of ints or None"),
    ("window-bool", {"window": (True, 2)}, TypeError, r"window must be a pair .* of ints or None"),
    ("softcap-zero", {"softcap": 0}, ValueError, r"softcap must be finite and > 0"),
    ("softcap-negative", {"softcap": -1.0}, ValueError, r"softcap must be finite and > 0"),
    ("softcap-inf", {"softcap": np.inf}, ValueError, r"softcap must be finite"),
    ("softcap-nan", {"softcap": np.nan}, ValueError, r"softcap must be finite"),
    ("softcap-str", {"softcap": "5"}, TypeError, r"softcap must be a real number"),
    ("softcap-bool", {"softcap": True}, TypeError, r"softcap must be a real number"),
    ("softcap-array", {"softcap": np.ones(2)}, TypeError, r"softcap must be a real number"),
    (
        "alibi-shape",
        {"alibi_slopes": np.ones(3)},
        ValueError,
        r"alibi_slopes \(3,\) must have shape \(4,\)",
    ),
    (
        "alibi-2d",
        {"alibi_slopes": np.ones((4, 1))},
        ValueError,
        r"alibi_slopes \(4, 1\) must have shape \(4,\)",
    ),
    ("alibi-scalar", {"alibi_slopes": 0.5}, ValueError, r"alibi_slopes \(\) must have shape \(4,\)"),
    ("alibi-complex", {"alibi_slopes": np.ones(4, complex)}, TypeError, r"alibi_slopes has dtype complex128"),
    ("alibi-bool", {"alibi_slopes": np.ones(4, bool)}, TypeError, r"alibi_slopes has dtype bool"),
    ("alibi-float16", {"alibi_slopes": np.ones(4, np.float16)}, TypeError, r"alibi_slopes has dtype float16"),
    ("alibi-nan", {"alibi_slopes": [1, np.nan, 1, 1]}, ValueError, r"alibi_slopes\[1\] is nan"),
    ("alibi-inf", {"alibi_slopes": [1, 1, 1, np.inf]}, ValueError, r"alibi_slopes\[3\] is inf"),
    ("sinks-shape", {"sinks": np.ones(3)}, ValueError, r"sinks \(3,\) must have shape \(4,\)"),
    ("sinks-too-long", {"sinks": np.ones(8)}, ValueError, r"sinks \(8,\) must have shape \(4,\)"),
    ("sinks-complex", {"sinks": np.ones(4, complex)}, TypeError, r"sinks has dtype complex128"),
    ("sinks-bool", {"sinks": np.ones(4, bool)}, TypeError, r"sinks has dtype bool"),
    ("sinks-object", {"sinks": np.ones(4, object)}, TypeError, r"sinks has dtype object"),
    ("sinks-nan", {"sinks": [0, np.nan, 0, 0]}, ValueError, r"sinks\[1\] is nan"),
    ("sinks-minus-inf", {"sinks": [0, 0, -np.inf, 0]}, ValueError, r"sinks\[2\] is -inf"),
    ("sinks-inf", {"sinks": [np.inf, 0, 0, 0]}, ValueError, r"sinks\[0\] is inf"),
]


def good(dtype=np.float32):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 5, 8)).astype(dtype)
    k = rng.standard_normal((2, 4, 6, 8)).astype(dtype)
    v = rng.standard_normal((2, 4, 6, 3)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kwargs, exc, pattern", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS]
)
def test_bad_options(dtype, kwargs, exc, pattern):
    q, k, v = good(dtype)
    out = np.full((2, 4, 5, 3), SENTINEL, dtype=dtype)
    with pytest.raises(exc, match=pattern):
        dotattn.attention(q, k, v, out=out, **kwargs)
    assert np.all(out == SENTINEL)
    with pytest.raises(exc, match=pattern):
        dotattn.attention(q, k, v, out=out, return_lse=True, **kwargs)
    assert np.all(out == SENTINEL)
    with pytest.raises(exc, match=pattern):
        dotattn.attention_weights(q, k, **kwargs)


def test_per_head_options_of_2d_inputs():
    # A 2-D call has one head: alibi_slopes and sinks of shape (1,).
    q, k, v = (x[0, 0] for x in good())
    check_all(q, k, v, alibi_slopes=[0.25], sinks=[0.5], window=(2, 1), softcap=2.0)
    for name in ("alibi_slopes", "sinks"):
        with pytest.raises(ValueError, match=re.escape(f"{name} (2,) must have shape (1,)")):
            dotattn.attention(q, k, v, **{name: [0.5, 0.5]})
