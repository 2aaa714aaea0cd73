"""The oracle itself: dotattn.reference against a row-by-row loop written
from the definition, and against closed forms."""

import math

import numpy as np
import pytest
from dotattn import reference


def attention_by_rows(q, k, v, mask=None, causal=False, scale=None):
    """(Hq, L, E), (Hkv, S, E), (Hkv, S, Ev): one query row at a time, in
    Python floats, skipping hidden keys outright."""
    Hq, L, E = q.shape
    Hkv, S, _ = k.shape
    scale = 1 / math.sqrt(E) if scale is None else scale
    offset = {False: None, "upper_left": 0, "lower_right": S - L}[causal]
    out = np.zeros((Hq, L, v.shape[-1]))
    lse = np.full((Hq, L), -math.inf)
    for h in range(Hq):
        hk = h // (Hq // Hkv)
        for i in range(L):
            seen = []
            for j in range(S):
                if offset is not None and j > i + offset:
                    continue
                if mask is not None and mask.dtype == bool and not mask[h, i, j]:
                    continue
                score = scale * float(np.dot(q[h, i], k[hk, j]))
                if mask is not None and mask.dtype != bool:
                    score += float(mask[h, i, j])
                if score > -math.inf:
                    seen.append((score, j))
            if not seen:
                continue
            m = max(s for s, _ in seen)
            total = sum(math.exp(s - m) for s, _ in seen)
            for s, j in seen:
                out[h, i] += math.exp(s - m) / total * v[hk, j]
            lse[h, i] = m + math.log(total)
    return out, lse


@pytest.mark.parametrize("causal", [False, "upper_left", "lower_right"])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("L, S", [(1, 5), (6, 6), (7, 3), (4, 9)])
def test_reference_matches_the_row_loop(rng, causal, mask_kind, L, S):
    Hq, Hkv, E, Ev = 4, 2, 5, 3
    q = rng.standard_normal((Hq, L, E))
    k = rng.standard_normal((Hkv, S, E))
    v = rng.standard_normal((Hkv, S, Ev))
    mask = None
    if mask_kind == "bool":
        mask = rng.random((Hq, L, S)) < 0.6
    elif mask_kind == "float":
        mask = np.where(rng.random((Hq, L, S)) < 0.3, -np.inf, rng.standard_normal((Hq, L, S)))
    expected_out, expected_lse = attention_by_rows(q, k, v, mask, causal)
    out, lse = reference.attention(
        q, k, v, attn_mask=mask, is_causal=causal if causal else False, return_lse=True
    )
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-12)


def test_equal_scores_average_the_values(rng):
    v = rng.standard_normal((10, 4))
    out = reference.attention(np.zeros((3, 2)), np.ones((10, 2)), v)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(0), (3, 4)), rtol=1e-14)


def test_a_dominant_key_selects_its_value(rng):
    v = rng.standard_normal((5, 3))
    k = np.eye(5)
    out, lse = reference.attention(np.array([[0, 0, 1e3, 0, 0]]), k, v, scale=1.0, return_lse=True)
    np.testing.assert_array_equal(out[0], v[2])
    assert lse[0] == 1e3


def test_zero_weights_keep_non_finite_values_out():
    weights = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.25, 0.75, 0.0]])
    v = np.array([[1.0, np.inf], [3.0, -np.inf], [np.nan, 2.0]])
    out = reference._weighted_sum(weights, v)
    expected = np.array([[2.0, np.nan], [np.nan, 2.0], [2.5, np.nan]])
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out[~np.isnan(out)], expected[~np.isnan(expected)])


def test_errors_measure():
    assert reference.errors([1.0, 2.0], [1.0, 2.0]) == (0.0, 0.0)
    relative, elementwise = reference.errors([1.0, 2.1], [1.0, 2.0])
    assert relative == pytest.approx(0.1 / math.sqrt(5)) and elementwise == pytest.approx(0.05)
    assert reference.errors([1.0], [0.0]) == (math.inf, math.inf)
    assert reference.errors([0.0], [1e-200]) == (1.0, 1.0)  # no underflow in the norms
