"""Bad arguments raise ValueError or TypeError naming the argument and the
shapes involved, and leave `out` untouched."""

import re

import dotattn
import numpy as np
import pytest

SENTINEL = 7.25
B, H, L, S, E, EV = 2, 4, 5, 6, 8, 3


def good(dtype=np.float32):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, H, L, E)).astype(dtype)
    k = rng.standard_normal((B, H, S, E)).astype(dtype)
    v = rng.standard_normal((B, H, S, EV)).astype(dtype)
    return q, k, v


def sentinel_out(shape=(B, H, L, EV), dtype=np.float32):
    return np.full(shape, SENTINEL, dtype=dtype)


def replace(i, new):
    """Arguments (q, k, v) with argument i replaced by new(old)."""
    args = list(good())
    args[i] = new(args[i])
    return args


# (id, (q, k, v), extra keyword arguments, exception, message pattern)
BAD_INPUTS = [
    (
        "query-1d",
        replace(0, lambda q: q[0, 0, 0]),
        {},
        ValueError,
        r"same number of dims, at least 2.*query \(8,\), key \(2, 4, 6, 8\), value \(2, 4, 6, 3\)",
    ),
    ("query-0d", replace(0, lambda q: q[0, 0, 0, 0]), {}, ValueError, r"at least 2.*query \(\)"),
    (
        "dims-differ",
        replace(1, lambda k: k[0]),
        {},
        ValueError,
        r"same number of dims.*query \(2, 4, 5, 8\), key \(4, 6, 8\)",
    ),
    (
        "batch-differs",
        replace(1, lambda k: np.concatenate([k, k[:1]])),
        {},
        ValueError,
        r"equal batch dims.*query \(2, 4, 5, 8\), key \(3, 4, 6, 8\), value \(2, 4, 6, 3\)",
    ),
    (
        "E-differs",
        replace(1, lambda k: k[..., :5]),
        {},
        ValueError,
        r"same last dim E; got query E=8, key E=5.*key \(2, 4, 6, 5\)",
    ),
    (
        "S-differs",
        replace(2, lambda v: v[:, :, :4]),
        {},
        ValueError,
        r"same length S; got key S=6, value S=4.*value \(2, 4, 4, 3\)",
    ),
    (
        "kv-heads-differ",
        replace(2, lambda v: v[:, :2]),
        {},
        ValueError,
        r"same number of heads; got key 4, value 2.*value \(2, 2, 6, 3\)",
    ),
    (
        "heads-not-multiple",
        [good()[0][:, :3], good()[1][:, :2], good()[2][:, :2]],
        {},
        ValueError,
        r"query heads Hq=3 must be a multiple of the key/value heads Hkv=2.*query \(2, 3, 5, 8\)",
    ),
    (
        "no-kv-heads",
        [good()[0], good()[1][:, :0], good()[2][:, :0]],
        {},
        ValueError,
        r"Hq=4 must be a multiple of the key/value heads Hkv=0",
    ),
    (
        "mask-not-broadcastable",
        good(),
        {"attn_mask": np.ones((L, S + 1), bool)},
        ValueError,
        r"attn_mask \(5, 7\) is not broadcastable to \(2, 4, 5, 6\)",
    ),
    (
        "mask-too-many-dims",
        good(),
        {"attn_mask": np.ones((1, B, H, L, S), bool)},
        ValueError,
        r"attn_mask \(1, 2, 4, 5, 6\) is not broadcastable to \(2, 4, 5, 6\)",
    ),
    (
        "mask-heads-mismatch",
        good(),
        {"attn_mask": np.ones((2, L, S), bool)},
        ValueError,
        r"attn_mask \(2, 5, 6\) is not broadcastable",
    ),
    (
        "mask-other-float",
        good(),
        {"attn_mask": np.zeros((L, S), np.float64)},
        TypeError,
        r"attn_mask has dtype float64; expected bool .* float32",
    ),
    (
        "mask-int",
        good(),
        {"attn_mask": np.ones((L, S), np.int8)},
        TypeError,
        r"attn_mask has dtype int8; expected bool",
    ),
    ("scale-nan", good(), {"scale": float("nan")}, ValueError, r"scale must be finite, got nan"),
    ("scale-inf", good(), {"scale": float("inf")}, ValueError, r"scale must be finite"),
    ("scale-minus-inf", good(), {"scale": -np.inf}, ValueError, r"scale must be finite"),
    ("scale-overflows-float32", good(), {"scale": 1e300}, ValueError, r"scale=1e\+300 overflows float32"),
    ("scale-not-a-number", good(), {"scale": "0.5"}, TypeError, r"scale must be a real number"),
    ("scale-array", good(), {"scale": np.ones(2)}, TypeError, r"scale must be a real number"),
    (
        "default-scale-E0",
        [good()[0][..., :0], good()[1][..., :0], good()[2]],
        {},
        ValueError,
        r"query has E=0, for which the default scale 1/sqrt\(E\) is undefined; pass scale",
    ),
    (
        "causal-unknown",
        good(),
        {"is_causal": "upper-left"},
        ValueError,
        r"is_causal must be False, True, 'upper_left' or 'lower_right'; got 'upper-left'",
    ),
    ("causal-int", good(), {"is_causal": 1}, TypeError, r"is_causal must be .*; got 1"),
    ("causal-none", good(), {"is_causal": None}, TypeError, r"is_causal must be .*; got None"),
    (
        "query-int",
        replace(0, lambda q: q.astype(np.int64)),
        {},
        TypeError,
        r"query has dtype int64; expected float32, float64, float16 or bfloat16",
    ),
    (
        "key-int16",
        replace(1, lambda k: k.astype(np.int16)),
        {},
        TypeError,
        r"key has dtype int16; expected float32, float16, bfloat16 \(ml_dtypes\), int8 \(dotattn.Quan",
    ),
    (
        "key-int8-without-scales",
        replace(1, lambda k: k.astype(np.int8)),
        {},
        TypeError,
        r"key has dtype int8 without its scales; pass dotattn.QuantizedKV\(data, scale\)",
    ),
    (
        "value-complex",
        replace(2, lambda v: v.astype(np.complex64)),
        {},
        TypeError,
        r"value has dtype complex64",
    ),
    ("query-object", replace(0, lambda q: q.astype(object)), {}, TypeError, r"query has dtype object"),
    ("query-bool", replace(0, lambda q: q > 0), {}, TypeError, r"query has dtype bool"),
    (
        "query-longdouble",
        replace(0, lambda q: q.astype(np.longdouble)),
        {},
        TypeError,
        r"query has dtype float128",
    ),
    (
        "mixed-dtypes",
        replace(1, lambda k: k.astype(np.float64)),
        {},
        TypeError,
        r"key has dtype float64 but query is float32, which reads float32, float16, bfloat16 or int8",
    ),
    (
        "float64-query-float16-value",
        [x.astype(np.float64) for x in good()[:2]] + [good()[2].astype(np.float16)],
        {},
        TypeError,
        r"value has dtype float16 but query is float64, which needs float64 key and value",
    ),
]


@pytest.mark.parametrize(
    "args, kwargs, exc, pattern", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_raises_and_leaves_out_untouched(args, kwargs, exc, pattern):
    out = sentinel_out()
    with pytest.raises(exc, match=pattern):
        dotattn.attention(*args, out=out, **kwargs)
    assert np.all(out == SENTINEL)


# (id, out, exception, message pattern), for float32 inputs of result shape (2, 4, 5, 3).
BAD_OUTS = [
    (
        "shape",
        sentinel_out((B, H, L, EV + 1)),
        ValueError,
        r"out \(2, 4, 5, 4\) does not match the result's shape \(2, 4, 5, 3\)",
    ),
    ("rank", sentinel_out((B * H, L, EV)), ValueError, r"out \(8, 5, 3\) does not match .* \(2, 4, 5, 3\)"),
    ("dtype", sentinel_out(dtype=np.float64), TypeError, r"out has dtype float64 but the result is float32"),
    ("int-dtype", np.full((B, H, L, EV), 7, dtype=np.int32), TypeError, r"out has dtype int32"),
    ("byte-order", sentinel_out(dtype=">f4"), TypeError, r"out has dtype >f4"),
    ("read-only", sentinel_out(), ValueError, r"out \(2, 4, 5, 3\) is read-only"),
    (
        "not-contiguous",
        np.full((B, H, L, 2 * EV), SENTINEL, np.float32)[..., ::2],
        ValueError,
        r"out \(2, 4, 5, 3\) must be C-contiguous",
    ),
    (
        "fortran-order",
        np.asfortranarray(sentinel_out()),
        ValueError,
        r"out \(2, 4, 5, 3\) must be C-contiguous",
    ),
]


@pytest.mark.parametrize("out, exc, pattern", [c[1:] for c in BAD_OUTS], ids=[c[0] for c in BAD_OUTS])
def test_bad_out_raises_and_is_left_untouched(out, exc, pattern):
    if "read-only" in pattern:
        out.flags.writeable = False
    before = out.copy()
    with pytest.raises(exc, match=pattern):
        dotattn.attention(*good(), out=out)
    np.testing.assert_array_equal(out, before)


def test_out_must_be_an_ndarray():
    with pytest.raises(TypeError, match=r"out must be a numpy.ndarray; got list"):
        dotattn.attention(*good(), out=[[0.0]])


@pytest.mark.parametrize("victim", ["query", "key", "value", "attn_mask"])
def test_out_overlapping_an_input(victim):
    # One buffer holds query, key, value and an additive mask, all (2, 4, 8, 8);
    # out, of the result's shape (2, 4, 8, 8), is one of them.
    names = ["query", "key", "value", "attn_mask"]
    shape = (2, 4, 8, 8)
    size = int(np.prod(shape))
    buf = np.random.default_rng(1).standard_normal(len(names) * size).astype(np.float32)
    arrays = {name: buf[i * size : (i + 1) * size].reshape(shape) for i, name in enumerate(names)}
    before = buf.copy()
    with pytest.raises(ValueError, match=rf"out overlaps {victim}; an output must not share memory"):
        dotattn.attention(
            arrays["query"], arrays["key"], arrays["value"], attn_mask=arrays["attn_mask"], out=arrays[victim]
        )
    np.testing.assert_array_equal(buf, before)


def test_out_sharing_a_buffer_without_overlap_is_fine():
    q, k, v = good()
    buf = np.zeros(2 * q.size, dtype=np.float32)
    query, out = buf[: q.size].reshape(q.shape), buf[q.size :].reshape(q.shape)
    query[...] = q
    dotattn.attention(query, query, query, out=out)
    np.testing.assert_allclose(out, dotattn.reference.attention(q, q, q), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, kwargs, exc, pattern",
    [
        (
            (good()[0], good()[1][..., :3]),
            {},
            ValueError,
            r"query and key must have the same last dim E.*key \(2, 4, 6, 3\)",
        ),
        ((good()[0][0, 0, 0], good()[1]), {}, ValueError, r"query and key must have the same number of dims"),
        (
            (good()[0], good()[1].astype(np.float64)),
            {},
            TypeError,
            r"key has dtype float64 but query is float32",
        ),
        (
            (good()[0], good()[1]),
            {"attn_mask": np.ones((3, S), bool)},
            ValueError,
            r"attn_mask \(3, 6\) is not broadcastable to \(2, 4, 5, 6\)",
        ),
        ((good()[0], good()[1]), {"is_causal": "yes"}, ValueError, r"is_causal must be"),
        ((good()[0], good()[1]), {"scale": np.nan}, ValueError, r"scale must be finite"),
    ],
    ids=["E-differs", "dims", "mixed-dtypes", "mask", "causal", "scale"],
)
def test_attention_weights_bad_input(args, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        dotattn.attention_weights(*args, **kwargs)


@pytest.mark.parametrize(
    "n, exc", [(0, ValueError), (-3, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)]
)
def test_set_num_threads_rejects(n, exc, restore_threads):
    before = dotattn.get_num_threads()
    with pytest.raises(exc, match=re.escape("set_num_threads: n must be")):
        dotattn.set_num_threads(n)
    assert dotattn.get_num_threads() == before


def test_show_config_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be 'stdout' or 'dicts'"):
        dotattn.show_config(mode="json")


def test_non_finite_data_neither_crashes_nor_hangs():
    q, k, v = good()
    for bad in (np.nan, np.inf, -np.inf):
        for arrays in (
            (np.full_like(q, bad), k, v),
            (q, np.full_like(k, bad), v),
            (q, k, np.full_like(v, bad)),
        ):
            out = dotattn.attention(*arrays, is_causal=True)
            ref = dotattn.reference.attention(*arrays, is_causal=True)
            np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))


def test_bad_stored_key_and_value():
    """An int8 key whose scales were swapped for ones that do not fit, a
    scale of the wrong dtype, a bfloat16 value with a float64 query: each a
    clear error naming the argument and shapes, with out untouched."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes (test extras)")
    q, k, v = good()
    cases = []
    wrong_shape = dotattn.quantize_kv(k)
    wrong_shape.scale = np.ones((B, H, S, 3), np.float32)
    cases.append(
        (
            (q, wrong_shape, v),
            ValueError,
            r"key scale \(2, 4, 6, 3\) does not fit key \(2, 4, 6, 8\): its last dim \(3 groups\) "
            r"must divide E=8",
        )
    )
    wrong_shape = dotattn.quantize_kv(v)
    wrong_shape.scale = np.ones((B, H, S + 1, 1), np.float32)
    cases.append(
        ((q, k, wrong_shape), ValueError, r"value scale \(2, 4, 7, 1\) does not fit value \(2, 4, 6, 3\)")
    )
    wrong_dtype = dotattn.quantize_kv(v)
    wrong_dtype.scale = wrong_dtype.scale.astype(np.float64)
    cases.append(((q, k, wrong_dtype), TypeError, r"value scale has dtype float64; expected float32"))
    cases.append(
        (
            (q.astype(np.float64), k.astype(np.float64), v.astype(ml_dtypes.bfloat16)),
            TypeError,
            r"value has dtype bfloat16 but query is float64",
        )
    )
    for args, exc, pattern in cases:
        out = sentinel_out(dtype=args[0].dtype)
        with pytest.raises(exc, match=pattern):
            dotattn.attention(*args, out=out)
        assert np.all(out == SENTINEL)
