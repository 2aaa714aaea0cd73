"""dotattn.merge: attention results over disjoint key sets combined by their
LSEs into the result over the union (split-K, sharded KV caches), against
dotattn.attention over all keys and against dotattn.reference.merge; shards
and rows that see nothing, non-finite LSEs, strided inputs, out=, and bad
arguments."""

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, assert_matches, qkv

pytestmark = pytest.mark.usefixtures("isa")


def shard_results(q, k, v, bounds, *, sinks=None, is_causal=False, attn_mask=None):
    """(outs, lses) of attention over the key ranges bounds[i]:bounds[i + 1],
    the sinks on the first shard only. A causal rule applies to the last
    shard ("lower_right") or the first (True, "upper_left"), where it cuts;
    the other shards lie wholly before (or after) the rows' causal edge, so
    see all their keys (the caller chooses bounds for which that holds)."""
    outs, lses = [], []
    last = len(bounds) - 2
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        causal = is_causal if i == (last if is_causal == "lower_right" else 0) else False
        out, lse = dotattn.attention(
            q,
            k[..., a:b, :],
            v[..., a:b, :],
            is_causal=causal,
            attn_mask=None if attn_mask is None else attn_mask[..., a:b],
            sinks=sinks if i == 0 else None,
            return_lse=True,
        )
        outs.append(out)
        lses.append(lse)
    return outs, lses


def check_merge(outs, lses, dtype, **kwargs):
    """dotattn.merge against reference.merge; returns (out, lse)."""
    out, lse = dotattn.merge(outs, lses, **kwargs)
    ref, ref_lse = dotattn.reference.merge(outs, lses)
    assert_matches(out, ref, dtype)
    assert_matches(lse, ref_lse, dtype)
    return out, lse


# --- split-K equals attention over all keys ------------------------------------

# (B, Hq, Hkv, L, S, E, Ev, bounds, is_causal)
SPLITS = [
    ((1, 8, 2, 1, 3001, 64, 64), [0, 1000, 1700, 3001], False),  # decode, 3 shards
    ((1, 8, 2, 1, 3001, 64, 64), [0, 1024, 2048, 3001], "lower_right"),
    ((1, 8, 2, 3, 2000, 32, 48), [0, 512, 1998, 2000], "lower_right"),  # row 0 sees none of the last
    ((2, 4, 2, 7, 50, 16, 8), [0, 13, 14, 37, 50], False),  # a one-key shard between
    ((2, 4, 4, 20, 20, 16, 16), [0, 20], True),  # one shard
    ((1, 2, 1, 130, 300, 32, 32), [0, 100, 171, 300], "lower_right"),  # prefill: 130 rows
]
SPLIT_IDS = ["decode", "decode-causal", "spec-causal", "small", "one-shard", "prefill-causal"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_sinks", [False, True], ids=["plain", "sinks"])
@pytest.mark.parametrize("shape, bounds, is_causal", SPLITS, ids=SPLIT_IDS)
def test_split_k_equals_attention(rng, dtype, shape, bounds, is_causal, with_sinks):
    B, Hq, Hkv, L, S, E, Ev = shape
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=Hq, Hkv=Hkv, L=L, S=S, E=E, Ev=Ev)
    sinks = np.round(rng.standard_normal(Hq) * 8) / 4 if with_sinks else None
    if is_causal == "lower_right":  # only the last shard reaches the rows' causal edge
        assert bounds[-2] <= S - L + 1
    outs, lses = shard_results(q, k, v, bounds, sinks=sinks, is_causal=is_causal)
    out, lse = check_merge(outs, lses, dtype)
    # The result over all keys, of the reference and of dotattn.
    ref, ref_lse = dotattn.reference.attention(q, k, v, is_causal=is_causal, sinks=sinks, return_lse=True)
    assert_matches(out, ref, dtype)
    assert_matches(lse, ref_lse, dtype)
    whole, whole_lse = dotattn.attention(q, k, v, is_causal=is_causal, sinks=sinks, return_lse=True)
    assert_matches(out, whole.astype(np.float64), dtype)
    assert_matches(lse, whole_lse.astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_k_with_a_mask(rng, dtype):
    # A boolean mask cut with the keys: some rows see keys in one shard
    # only, one row in none.
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=5, S=1500, E=32)
    mask = rng.random((2, 4, 5, 1500)) < 0.5
    mask[0, 1, 2, 600:] = False  # the first shard only
    mask[1, 3, 0, :600] = False  # the last two
    mask[1, 0, 4] = False  # none
    bounds = [0, 600, 1100, 1500]
    sinks = [0.5, -1.0, 2.0, 0.0]
    for s in (None, sinks):
        outs, lses = shard_results(q, k, v, bounds, sinks=s, attn_mask=mask)
        assert lses[1][0, 1, 2] == lses[2][0, 1, 2] == -np.inf
        out, lse = check_merge(outs, lses, dtype)
        ref, ref_lse = dotattn.reference.attention(q, k, v, attn_mask=mask, sinks=s, return_lse=True)
        assert_matches(out, ref, dtype)
        assert_matches(lse, ref_lse, dtype)
        np.testing.assert_array_equal(out[1, 0, 4], 0)
        assert lse[1, 0, 4] == (-np.inf if s is None else sinks[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_of_merges(rng, dtype):
    # Nine shards merged at once, in two groups, or in another order.
    q, k, v = qkv(rng, dtype, batch=(1,), Hq=4, Hkv=1, L=2, S=900, E=16)
    bounds = list(range(0, 901, 100))
    outs, lses = shard_results(q, k, v, bounds)
    out, lse = check_merge(outs, lses, dtype)
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True)
    first = dotattn.merge(outs[:4], lses[:4])
    rest = dotattn.merge(outs[4:], lses[4:])
    grouped, grouped_lse = dotattn.merge([first[0], rest[0]], [first[1], rest[1]])
    order = rng.permutation(9)
    shuffled, shuffled_lse = dotattn.merge([outs[i] for i in order], [lses[i] for i in order])
    for o, s in ((grouped, grouped_lse), (shuffled, shuffled_lse)):
        assert_matches(o, ref, dtype)
        assert_matches(s, ref_lse, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_shard_is_the_identity(rng, dtype):
    out = rng.standard_normal((3, 4, 5)).astype(dtype)
    lse = rng.standard_normal((3, 4)).astype(dtype) * 10
    lse[1, 2] = -np.inf
    got, got_lse = dotattn.merge([out], [lse])
    want = out.copy()
    want[1, 2] = 0
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_lse, lse)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_lses(rng, dtype):
    # LSEs far from 0 (exp of them overflows or underflows): only their
    # differences count. In quarters, so that the shifts are exact.
    outs = [rng.standard_normal((6, 8)).astype(dtype) for _ in range(3)]
    lses = [(np.round(rng.standard_normal(6) * 8) / 4).astype(dtype) for _ in range(3)]
    out, _ = check_merge(outs, lses, dtype)
    for shift in (1000, -1000):
        got, _ = check_merge(outs, [x + dtype(shift) for x in lses], dtype)
        assert_matches(got, out.astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (), (2, 3, 5), (4, 0)], ids=str)
def test_shapes(rng, dtype, shape):
    # lse of any rank (0-d for a single row) and Ev = 0.
    outs = [rng.standard_normal((*shape, 3)).astype(dtype) for _ in range(2)]
    lses = [rng.standard_normal(shape).astype(dtype) for _ in range(2)]
    out, lse = check_merge(outs, lses, dtype)
    assert out.shape == (*shape, 3) and lse.shape == shape
    empty = [np.zeros((*shape, 0), dtype=dtype)] * 2
    out, lse = check_merge(empty, lses, dtype)
    assert out.shape == (*shape, 0)


# --- shards and rows that see nothing; non-finite input -----------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_shard_that_sees_nothing_contributes_nothing(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=3, S=40, E=8)
    mask = np.ones((2, 4, 3, 40), dtype=bool)
    mask[..., 10:25] = False  # the middle shard sees nothing
    mask[0, 2, 1, 25:] = False  # and one row sees nothing in the last shard either
    outs, lses = shard_results(q, k, v, [0, 10, 25, 40], attn_mask=mask)
    assert np.all(lses[1] == -np.inf)
    outs[1][...] = np.nan  # garbage where lse is -inf: it must not leak
    outs[2][0, 2, 1] = np.inf
    out, lse = check_merge(outs, lses, dtype)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    ref, ref_lse = dotattn.reference.attention(q, k, v, attn_mask=mask, return_lse=True)
    assert_matches(out, ref, dtype)
    assert_matches(lse, ref_lse, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_shard_whose_weight_underflows_contributes_nothing(rng, dtype):
    # exp(lse_i - m) == 0: the term is skipped, even with a NaN out.
    outs = [rng.standard_normal((4, 6)).astype(dtype) for _ in range(2)]
    lses = [np.zeros(4, dtype=dtype), np.full(4, -1e4, dtype=dtype)]
    outs[1][...] = np.nan
    out, lse = check_merge(outs, lses, dtype)
    np.testing.assert_array_equal(out, outs[0])
    np.testing.assert_array_equal(lse, lses[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_no_shard_sees_are_zeros(rng, dtype):
    outs = [rng.standard_normal((2, 5, 4)).astype(dtype) for _ in range(3)]
    lses = [rng.standard_normal((2, 5)).astype(dtype) for _ in range(3)]
    for o, s in zip(outs, lses):
        s[1, [0, 3]] = -np.inf
        o[1, [0, 3]] = np.nan
    out, lse = check_merge(outs, lses, dtype)
    np.testing.assert_array_equal(out[1, [0, 3]], 0)
    np.testing.assert_array_equal(lse[1, [0, 3]], -np.inf)
    assert np.isfinite(np.delete(out[1], [0, 3], axis=0)).all() and np.isfinite(out[0]).all()
    # Every row of every shard: zeros and -inf.
    nothing = [np.full((2, 5), -np.inf, dtype=dtype)] * 2
    out, lse = dotattn.merge([np.full((2, 5, 4), np.nan, dtype=dtype)] * 2, nothing)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(lse, -np.inf)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates(rng, dtype):
    outs = [rng.standard_normal((6, 5)).astype(dtype) for _ in range(3)]
    lses = [rng.standard_normal(6).astype(dtype) for _ in range(3)]
    lses[1][0] = np.nan  # a NaN LSE: the row is NaN
    lses[2][1] = np.inf  # a +inf LSE: the row is NaN
    lses[0][2] = np.nan  # NaN with the other shards -inf
    lses[1][2] = lses[2][2] = -np.inf
    outs[0][3, 4] = np.nan  # a NaN in an out of weight > 0: that element
    outs[2][4, 1] = np.inf  # inf likewise
    out, lse = check_merge(outs, lses, dtype)
    assert np.isnan(out[:3]).all() and np.isnan(lse[:3]).all()
    assert np.isnan(out[3, 4]) and np.isfinite(np.delete(out[3], 4)).all() and np.isfinite(lse[3])
    assert out[4, 1] == np.inf and np.isfinite(np.delete(out[4], 1)).all() and np.isfinite(lse[4])
    assert np.isfinite(out[5]).all() and np.isfinite(lse[5])


# --- strides, out= ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_lses(rng, dtype):
    # Packed sequences (varlen): out (total, Hq, Ev), LSE (Hq, total); the
    # LSE of out[t, h] is lse[h, t], a transposed view.
    total, Hq, Ev = 37, 4, 16
    outs = [rng.standard_normal((total, Hq, Ev)).astype(dtype) for _ in range(3)]
    lses = [rng.standard_normal((Hq, total)).astype(dtype) * 3 for _ in range(3)]
    lses[1][2, 5] = -np.inf
    views = [x.T for x in lses]
    assert not views[0].flags.c_contiguous
    out, lse = check_merge(outs, views, dtype)
    contiguous = dotattn.merge(outs, [np.ascontiguousarray(x) for x in views])
    assert_matches(out, contiguous[0].astype(np.float64), dtype)
    assert_matches(lse, contiguous[1].astype(np.float64), dtype)
    # Other strides: every other element, backwards, broadcast.
    big = rng.standard_normal((2, 3 * total)).astype(dtype)
    views = [big[0, ::3], big[1, ::-3], np.broadcast_to(dtype(0.5), (total,))]
    check_merge([x[:, 0] for x in outs], views, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_outs(rng, dtype):
    shape = (3, 5, 8)
    base = rng.standard_normal((3, 5, 16)).astype(dtype)
    outs = [
        base[..., ::2],  # stride 2 in the last dim
        rng.standard_normal((8, 5, 3)).astype(dtype).T,  # transposed: stride 15 in the last dim
        rng.standard_normal((3, 10, 8)).astype(dtype)[:, ::-2],  # backwards rows
        np.broadcast_to(rng.standard_normal(8).astype(dtype), shape),  # zero strides
    ]
    lses = [rng.standard_normal(shape[:-1]).astype(dtype) for _ in outs]
    assert all(o.shape == shape and not o.flags.c_contiguous for o in outs)
    out, lse = check_merge(outs, lses, dtype)
    contiguous = dotattn.merge([np.ascontiguousarray(o) for o in outs], lses)
    assert_matches(out, contiguous[0].astype(np.float64), dtype)
    assert_matches(lse, contiguous[1].astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_written_in_place(rng, dtype):
    outs = [rng.standard_normal((2, 6, 4)).astype(dtype) for _ in range(3)]
    lses = [rng.standard_normal((2, 6)).astype(dtype) for _ in range(3)]
    before = [x.copy() for x in outs + lses]
    want, want_lse = dotattn.merge(outs, lses)
    buffer = np.full((2, 6, 4), np.nan, dtype=dtype)
    got, got_lse = dotattn.merge(outs, lses, out=buffer)
    assert got is buffer
    np.testing.assert_array_equal(buffer, want)
    np.testing.assert_array_equal(got_lse, want_lse)
    for x, y in zip(outs + lses, before):  # the inputs are only read
        np.testing.assert_array_equal(x, y)
    # Tuples, and out sharing a buffer with the inputs without overlap.
    buf = np.zeros(2 * 48, dtype=dtype)
    first, result = buf[:48].reshape(2, 6, 4), buf[48:].reshape(2, 6, 4)
    first[...] = outs[0]
    dotattn.merge((first, outs[1], outs[2]), tuple(lses), out=result)
    np.testing.assert_array_equal(result, want)


# --- errors -----------------------------------------------------------------------

SENTINEL = 7.25


def good(dtype=np.float32, n=2):
    rng = np.random.default_rng(0)
    outs = [rng.standard_normal((2, 3, 4)).astype(dtype) for _ in range(n)]
    lses = [rng.standard_normal((2, 3)).astype(dtype) for _ in range(n)]
    return outs, lses


def spoil(which, i, new):
    """good() with outs (which=0) or lses (1) item i replaced by new(old)."""
    args = good()
    args[which][i] = new(args[which][i])
    return args


# (id, (outs, lses), exception, message pattern)
BAD_INPUTS = [
    ("empty", ([], []), ValueError, r"outs is empty; merge needs at least one result"),
    ("lengths", (good()[0], good()[1][:1]), ValueError, r"outs has 2 results but lses has 1"),
    (
        "lse-shape",
        spoil(1, 1, lambda x: x[:1]),
        ValueError,
        r"lses\[1\] \(1, 3\) does not fit outs\[1\] \(2, 3, 4\): expected \(2, 3\)",
    ),
    (
        "lse-keeps-Ev",
        spoil(1, 0, lambda x: x[..., None]),
        ValueError,
        r"lses\[0\] \(2, 3, 1\) does not fit outs\[0\] \(2, 3, 4\)",
    ),
    (
        "out-shapes",
        spoil(0, 1, lambda x: x[..., :3]),
        ValueError,
        r"outs\[1\] \(2, 3, 3\) does not match outs\[0\] \(2, 3, 4\)",
    ),
    (
        "lse-dtype",
        spoil(1, 0, lambda x: x.astype(np.float64)),
        TypeError,
        r"lses\[0\] has dtype float64 but outs\[0\] has float32",
    ),
    (
        "out-dtypes",
        spoil(0, 1, lambda x: x.astype(np.float64)),
        TypeError,
        r"outs\[1\] has dtype float64 but outs\[0\] has float32",
    ),
    ("float16", spoil(0, 0, lambda x: x.astype(np.float16)), TypeError, r"outs\[0\] has dtype float16"),
    ("int", spoil(0, 1, lambda x: x.astype(np.int32)), TypeError, r"outs\[1\] has dtype int32"),
    ("lse-complex", spoil(1, 1, lambda x: x.astype(complex)), TypeError, r"lses\[1\] has dtype complex128"),
    ("stacked-array", (np.stack(good()[0]), np.stack(good()[1])), TypeError, r"lists or tuples of arrays"),
]


@pytest.mark.parametrize("args, exc, pattern", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_and_leaves_out_untouched(args, exc, pattern):
    out = np.full((2, 3, 4), SENTINEL, dtype=np.float32)
    with pytest.raises(exc, match=pattern):
        dotattn.merge(*args, out=out)
    assert np.all(out == SENTINEL)
    with pytest.raises(exc, match=pattern):
        dotattn.merge(*args)


def sentinel(shape=(2, 3, 4), dtype=np.float32):
    return np.full(shape, SENTINEL, dtype=dtype)


BAD_OUTS = [
    (
        "shape",
        sentinel((2, 3, 5)),
        ValueError,
        r"out \(2, 3, 5\) does not match the result's shape \(2, 3, 4\)",
    ),
    ("rank", sentinel((6, 4)), ValueError, r"out \(6, 4\) does not match the result's shape \(2, 3, 4\)"),
    ("dtype", sentinel(dtype=np.float64), TypeError, r"out has dtype float64 but the result is float32"),
    ("read-only", sentinel(), ValueError, r"out \(2, 3, 4\) is read-only"),
    ("not-contiguous", sentinel((2, 3, 8))[..., ::2], ValueError, r"out \(2, 3, 4\) must be C-contiguous"),
]


@pytest.mark.parametrize("out, exc, pattern", [c[1:] for c in BAD_OUTS], ids=[c[0] for c in BAD_OUTS])
def test_bad_out_raises_and_is_left_untouched(out, exc, pattern):
    if "read-only" in pattern:
        out.flags.writeable = False
    before = out.copy()
    with pytest.raises(exc, match=pattern):
        dotattn.merge(*good(), out=out)
    np.testing.assert_array_equal(out, before)


def test_out_must_be_an_ndarray():
    with pytest.raises(TypeError, match=r"out must be a numpy.ndarray; got list"):
        dotattn.merge(*good(), out=[[0.0]])


@pytest.mark.parametrize("victim", ["outs[0]", "outs[1]", "lses[1]"])
def test_out_overlapping_an_input(victim):
    # One buffer holds both outs (2, 3, 4) and both LSEs (2, 3); out is one
    # of the outs, or starts inside an LSE.
    buf = np.random.default_rng(1).standard_normal(2 * 24 + 2 * 6 + 24).astype(np.float32)
    outs = [buf[:24].reshape(2, 3, 4), buf[24:48].reshape(2, 3, 4)]
    lses = [buf[48:54].reshape(2, 3), buf[54:60].reshape(2, 3)]
    out = {"outs[0]": outs[0], "outs[1]": outs[1], "lses[1]": buf[56:80].reshape(2, 3, 4)}[victim]
    before = buf.copy()
    with pytest.raises(
        ValueError, match=r"out overlaps one of outs and lses; an output must not share memory"
    ):
        dotattn.merge(outs, lses, out=out)
    np.testing.assert_array_equal(buf, before)
