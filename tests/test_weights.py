"""dotattn.attention_weights against dotattn.reference (masks: test_masks.py)."""

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, check_weights, qkv

pytestmark = pytest.mark.usefixtures("isa")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L, S", [(1, 1), (3, 7), (63, 65), (64, 64), (127, 1), (1, 1000), (200, 333)])
@pytest.mark.parametrize("E", [1, 3, 64, 80, 256])
def test_shapes(rng, dtype, L, S, E):
    q, k, _ = qkv(rng, dtype, Hq=2, L=L, S=S, E=E)
    weights = check_weights(q, k)
    assert weights.shape == (1, 2, L, S) and weights.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_sum_to_one(rng, dtype):
    q, k, _ = qkv(rng, dtype, batch=(2,), Hq=3, L=50, S=70, E=16)
    weights = dotattn.attention_weights(q, k, is_causal=True)
    np.testing.assert_allclose(
        weights.sum(-1, dtype=np.float64), 1, rtol=1e-5 if dtype == np.float32 else 1e-12
    )
    assert np.all(weights >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_query_heads(rng, dtype):
    q, k, _ = qkv(rng, dtype, batch=(2,), Hq=6, Hkv=2, L=9, S=31, E=8)
    weights = check_weights(q, k)
    # Query heads 0-2 read key head 0, heads 3-5 key head 1.
    np.testing.assert_array_equal(weights[:, 1], dotattn.attention_weights(q[:, 1:2], k[:, :1])[:, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_dim_inputs(rng, dtype):
    q, k, _ = qkv(rng, dtype, batch=None, L=11, S=17, E=5)
    assert check_weights(q, k).shape == (11, 17)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs_and_scale(rng, dtype):
    q = rng.standard_normal((2, 40, 3, 16)).astype(dtype).transpose(0, 2, 1, 3)
    k = rng.standard_normal((2, 3, 90, 16)).astype(dtype)[:, :, ::-3]
    check_weights(q, k, scale=0.37)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_magnitude_scores(rng, dtype):
    q = rng.integers(-60, 61, size=(1, 30, 16)).astype(dtype)
    k = rng.integers(-60, 61, size=(1, 200, 16)).astype(dtype)
    check_weights(q, k, scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_sizes(rng, dtype):
    q, k, _ = qkv(rng, dtype, L=0, S=4, E=3)
    assert dotattn.attention_weights(q, k).shape == (1, 2, 0, 4)
    q, k, _ = qkv(rng, dtype, L=4, S=0, E=3)
    assert dotattn.attention_weights(q, k).shape == (1, 2, 4, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_rows(rng, dtype):
    q, k, _ = qkv(rng, dtype, Hq=1, L=5, S=8, E=4)
    q[0, 0, 1, 2] = np.nan
    q[0, 0, 3, 0] = np.inf
    for is_causal in (False, True, "lower_right"):
        weights = check_weights(q, k, is_causal=is_causal)
        assert np.isnan(weights[0, 0, 1]).all()  # the whole row, hidden keys included
