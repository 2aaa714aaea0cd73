"""attn_mask (bool and additive, broadcast through strides) and is_causal
(both alignments), alone and combined, for attention and attention_weights."""

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, check_attention, check_weights, qkv

pytestmark = pytest.mark.usefixtures("isa")

B, H, L, S = 2, 3, 13, 29

# Every way a mask can broadcast to (B, H, L, S).
MASK_SHAPES = [
    (S,),
    (1, S),
    (L, 1),
    (L, S),
    (H, 1, S),
    (H, L, S),
    (1, 1, L, S),
    (B, 1, 1, S),
    (B, 1, L, 1),
    (B, H, L, S),
    (1, 1, 1, 1),
]


def bool_mask(rng, shape, p_visible=0.7):
    return rng.random(shape) < p_visible


def float_mask(rng, shape, dtype):
    """Additive: mostly moderate biases, some -inf (hidden) entries."""
    m = rng.standard_normal(shape).astype(dtype) * 2
    m[rng.random(shape) < 0.2] = -np.inf
    return m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_bool_mask_broadcasts(rng, dtype, shape):
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=H, L=L, S=S, E=8)
    mask = bool_mask(rng, shape)
    check_attention(q, k, v, attn_mask=mask)
    check_weights(q, k, attn_mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_float_mask_broadcasts(rng, dtype, shape):
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=H, L=L, S=S, E=8)
    mask = float_mask(rng, shape, dtype)
    check_attention(q, k, v, attn_mask=mask)
    check_weights(q, k, attn_mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_mask_is_not_materialised(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=H, L=L, S=S, E=8)
    row = bool_mask(rng, (S,))
    full = np.broadcast_to(row, (B, H, L, S))
    assert full.strides == (0, 0, 0, 1)
    np.testing.assert_array_equal(
        dotattn.attention(q, k, v, attn_mask=full), dotattn.attention(q, k, v, attn_mask=row)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_masks(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(B,), Hq=H, L=L, S=S, E=8)
    transposed = bool_mask(rng, (S, L)).T
    stepped = float_mask(rng, (H, 2 * L, 3 * S), dtype)[:, ::2, ::3]
    reversed_ = bool_mask(rng, (B, 1, L, S))[..., ::-1]
    for mask in (transposed, stepped, reversed_):
        check_attention(q, k, v, attn_mask=mask)
        check_weights(q, k, attn_mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [True, "upper_left", "lower_right"])
@pytest.mark.parametrize(
    "L, S", [(1, 1), (5, 17), (17, 5), (64, 64), (65, 65), (100, 37), (37, 100), (130, 300)]
)
def test_causal_alignments(rng, dtype, is_causal, L, S):
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=2, L=L, S=S, E=16)
    check_attention(q, k, v, is_causal=is_causal)
    check_weights(q, k, is_causal=is_causal)


def test_causal_alignments_by_definition():
    # L=2, S=4 and E=0 give every visible key the same score: the weights
    # spread evenly over exactly the keys each rule lets a row see.
    q, k = np.zeros((2, 0)), np.zeros((4, 0))
    upper_left = [[1, 0, 0, 0], [1 / 2, 1 / 2, 0, 0]]
    lower_right = [[1 / 3, 1 / 3, 1 / 3, 0], [1 / 4, 1 / 4, 1 / 4, 1 / 4]]
    np.testing.assert_allclose(dotattn.attention_weights(q, k, scale=1, is_causal=True), upper_left)
    np.testing.assert_allclose(dotattn.attention_weights(q, k, scale=1, is_causal="lower_right"), lower_right)
    first_rows_see_nothing = [[0, 0], [0, 0], [1, 0], [1 / 2, 1 / 2]]  # L=4 > S=2
    np.testing.assert_allclose(
        dotattn.attention_weights(np.zeros((4, 0)), np.zeros((2, 0)), scale=1, is_causal="lower_right"),
        first_rows_see_nothing,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [True, "lower_right"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_mask_combined_with_causal(rng, dtype, is_causal, kind):
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=70, S=90, E=16)
    mask = bool_mask(rng, (2, 1, 70, 90)) if kind == "bool" else float_mask(rng, (4, 70, 90), dtype)
    check_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    check_weights(q, k, attn_mask=mask, is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_are_zeros(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(1,), Hq=2, L=9, S=80, E=8)
    bool_rows = bool_mask(rng, (9, 80))
    bool_rows[[0, 4, 8]] = False
    float_rows = float_mask(rng, (9, 80), dtype)
    float_rows[[1, 5]] = -np.inf
    for mask in (bool_rows, float_rows):
        out, lse = dotattn.attention(q, k, v, attn_mask=mask, return_lse=True)
        hidden = ~np.isfinite(mask).any(-1) if mask.dtype != bool else ~mask.any(-1)
        assert np.all(out[:, :, hidden] == 0) and np.all(lse[:, :, hidden] == -np.inf)
        assert not np.isnan(out).any()
        check_attention(q, k, v, attn_mask=mask)
        weights = check_weights(q, k, attn_mask=mask)
        np.testing.assert_array_equal(weights[:, :, hidden], 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_rows_that_see_nothing(rng, dtype):
    # lower_right with L > S: the first L - S rows see no key.
    q, k, v = qkv(rng, dtype, Hq=2, L=100, S=30, E=8)
    out, lse = dotattn.attention(q, k, v, is_causal="lower_right", return_lse=True)
    assert np.all(out[:, :, :70] == 0) and np.all(lse[:, :, :70] == -np.inf)
    assert np.all(np.isfinite(lse[:, :, 70:]))
    check_attention(q, k, v, is_causal="lower_right")


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_of_hidden_keys_are_zero(rng, dtype):
    q, k, _ = qkv(rng, dtype, Hq=2, L=40, S=50, E=8)
    mask = bool_mask(rng, (40, 50))
    weights = check_weights(q, k, attn_mask=mask, is_causal="lower_right")
    visible = mask & (np.arange(50)[None, :] <= np.arange(40)[:, None] + 10)
    assert np.all(weights[:, :, ~visible] == 0)
    assert np.all(weights[:, :, visible] > 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_additive_mask(rng, dtype):
    q, k, v = qkv(rng, dtype, Hq=1, L=6, S=10, E=4)
    mask = np.zeros((6, 10), dtype=dtype)
    mask[1, 3] = np.inf  # +inf score: the row is NaN, as exp(inf - inf) is
    mask[2, 5] = np.nan
    out = check_attention(q, k, v, attn_mask=mask)
    assert np.isnan(out[0, 0, 1:3]).all() and np.isfinite(out[0, 0, [0, 3, 4, 5]]).all()
    check_weights(q, k, attn_mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonzero_bytes_in_a_bool_mask_are_true(rng, dtype):
    q, k, v = qkv(rng, dtype, Hq=1, L=5, S=6, E=4)
    raw = rng.integers(0, 4, size=(5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(
        dotattn.attention(q, k, v, attn_mask=raw.view(bool)),
        dotattn.attention(q, k, v, attn_mask=raw != 0),
    )
