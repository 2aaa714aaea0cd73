"""Property tests: random shapes, memory layouts, masks, causal rules, scales
and outputs, each checked against dotattn.reference."""

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, assert_matches
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.usefixtures("isa")

CAUSAL = [False, True, "upper_left", "lower_right"]


def laid_out(draw, a: np.ndarray) -> np.ndarray:
    """A view with a's values in a random memory layout: the leading dims
    permuted in memory, stepped, some reversed; usually a unit-stride last
    dim, sometimes not (the copied path)."""
    a = np.asarray(a)
    nd = a.ndim
    if nd == 0:
        return a
    order = [*draw(st.permutations(range(nd - 1))), nd - 1]
    steps = [draw(st.sampled_from([1, 1, 2])) for _ in range(nd)]
    steps[-1] = draw(st.sampled_from([1, 1, 1, 1, 2]))
    storage = np.empty([a.shape[d] * steps[d] for d in order], dtype=a.dtype)
    view = storage[tuple(slice(None, None, steps[d]) for d in order)].transpose(np.argsort(order))
    for d in range(nd):
        if draw(st.booleans()):
            view = view[(slice(None),) * d + (slice(None, None, -1),)]
    view[...] = a
    return view


def mask_shape(draw, target: tuple) -> tuple:
    """A shape that broadcasts to target: leading dims dropped, others 1."""
    kept = target[draw(st.integers(0, len(target))) :]
    return tuple(n if draw(st.booleans()) else 1 for n in kept)


@st.composite
def problems(draw):
    dtype = draw(st.sampled_from(DTYPES))
    two_d = draw(st.integers(0, 4)) == 0
    batch = () if two_d else tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    Hkv = draw(st.integers(1, 3))
    Hq = Hkv * draw(st.integers(1, 3))
    L, S = draw(st.integers(0, 80)), draw(st.integers(0, 80))
    E, Ev = draw(st.integers(1, 40)), draw(st.integers(0, 40))
    heads_q = () if two_d else (Hq,)
    heads_kv = () if two_d else (Hkv,)

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((*batch, *heads_q, L, E)).astype(dtype)
    k = rng.standard_normal((*batch, *heads_kv, S, E)).astype(dtype)
    v = rng.standard_normal((*batch, *heads_kv, S, Ev)).astype(dtype)

    kwargs = {"is_causal": draw(st.sampled_from(CAUSAL))}
    if draw(st.booleans()):
        kwargs["scale"] = draw(st.one_of(st.just(0.0), st.floats(0.01, 2.0), st.floats(-2.0, -0.01)))
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    if mask_kind:
        shape = mask_shape(draw, (*batch, *heads_q, L, S))
        if mask_kind == "bool":
            mask = rng.random(shape) < draw(st.sampled_from([0.1, 0.5, 0.9]))
        else:
            mask = rng.standard_normal(shape).astype(dtype)
            mask[rng.random(shape) < 0.3] = -np.inf
        kwargs["attn_mask"] = laid_out(draw, mask)
    return laid_out(draw, q), laid_out(draw, k), laid_out(draw, v), kwargs, draw(st.booleans())


@given(problems())
def test_attention_matches_the_reference(problem):
    q, k, v, kwargs, use_out = problem
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True, **kwargs)
    out = np.full(ref.shape, np.nan, dtype=q.dtype) if use_out else None
    result, lse = dotattn.attention(q, k, v, out=out, return_lse=True, **kwargs)
    assert out is None or result is out
    assert_matches(result, ref, q.dtype)
    assert_matches(lse, ref_lse, q.dtype)


@given(problems())
def test_weights_match_the_reference(problem):
    q, k, _, kwargs, _ = problem
    assert_matches(
        dotattn.attention_weights(q, k, **kwargs),
        dotattn.reference.attention_weights(q, k, **kwargs),
        q.dtype,
    )


def shapes(min_dims=0):
    return st.lists(st.integers(0, 4), min_size=min_dims, max_size=5).map(tuple)


@given(shapes(), shapes(), shapes(), st.one_of(st.none(), shapes()), st.sampled_from(CAUSAL))
def test_any_shapes_give_the_reference_result_or_a_clear_error(qs, ks, vs, ms, is_causal):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in (qs, ks, vs))
    mask = None if ms is None else rng.random(ms) < 0.5
    try:
        out = dotattn.attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=0.5)
    except ValueError as e:
        assert any(name in str(e) for name in ("query", "key", "value", "attn_mask"))
        return
    ref = dotattn.reference.attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=0.5)
    assert_matches(out, ref, np.float32)
