"""dotattn.attention against dotattn.reference: sizes, heads, layouts, out=, LSE."""

import tracemalloc

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, assert_matches, check_attention, qkv
from dotattn import _core

pytestmark = pytest.mark.usefixtures("isa")

SEQ_LENGTHS = [1, 2, 3, 7, 63, 64, 65, 127, 1000]
HEAD_DIMS = [1, 3, 8, 32, 64, 80, 96, 128, 256]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", SEQ_LENGTHS)
@pytest.mark.parametrize("L", SEQ_LENGTHS)
def test_sequence_lengths(rng, dtype, L, S):
    q, k, v = qkv(rng, dtype, Hq=2, L=L, S=S, E=24, Ev=40)
    check_attention(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Ev", HEAD_DIMS)
@pytest.mark.parametrize("E", HEAD_DIMS)
def test_head_dims(rng, dtype, E, Ev):
    q, k, v = qkv(rng, dtype, Hq=2, L=37, S=70, E=E, Ev=Ev)
    check_attention(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E", [64, 256])
def test_long_sequence(rng, dtype, E):
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=2, L=1000, S=1000, E=E)
    check_attention(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hq, Hkv", [(8, 2), (8, 1), (6, 3), (4, 4), (3, 1)])
def test_grouped_and_multi_query(rng, dtype, Hq, Hkv):
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=Hq, Hkv=Hkv, L=19, S=45, E=16, Ev=24)
    check_attention(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gqa_decode(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(3,), Hq=8, Hkv=2, L=1, S=777, E=64)
    check_attention(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3), (2, 1, 2)])
def test_batch_dims(rng, dtype, batch):
    q, k, v = qkv(rng, dtype, batch=batch, Hq=2, L=9, S=11, E=8, Ev=5)
    out = check_attention(q, k, v)
    assert out.shape == (*batch, 2, 9, 5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_dim_inputs_are_one_head(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=None, L=13, S=29, E=16, Ev=7)
    out = check_attention(q, k, v)
    assert out.shape == (13, 7)
    np.testing.assert_array_equal(out, dotattn.attention(q[None], k[None], v[None])[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_result_dtype_is_the_input_dtype(rng, dtype):
    q, k, v = qkv(rng, dtype)
    out, lse = dotattn.attention(q, k, v, return_lse=True)
    assert out.dtype == dtype and lse.dtype == dtype
    assert out.flags.c_contiguous and lse.shape == q.shape[:-1]


def test_array_likes_are_accepted(rng):
    q, k, v = qkv(rng, np.float64, batch=None, L=3, S=4, E=2)
    out = dotattn.attention(q.tolist(), k.tolist(), v.tolist())
    assert_matches(out, dotattn.reference.attention(q, k, v), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.0, -0.7, 1e-3, 2.5, 1e3])
def test_explicit_scale(rng, dtype, scale):
    q, k, v = qkv(rng, dtype, L=21, S=33, E=12)
    check_attention(q, k, v, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_magnitude_scores(rng, dtype):
    # Small integers make every score exact in float32 too, so the test
    # measures the softmax, not the conditioning of a float32 dot product.
    L, S, E = 40, 300, 16
    q = rng.integers(-60, 61, size=(2, L, E)).astype(dtype)
    k = rng.integers(-60, 61, size=(2, S, E)).astype(dtype)
    v = rng.standard_normal((2, S, 8)).astype(dtype)
    scores = q.astype(np.float64) @ np.swapaxes(k, -1, -2)
    assert np.abs(scores).max() > 1e4
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(np.exp(scores)))  # a naive softmax overflows here
    check_attention(q, k, v, scale=1.0)
    check_attention(q, k, v, scale=1.0, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views_are_read_in_place(rng, dtype):
    B, H, L, S, E = 2, 4, 23, 41, 16
    q = rng.standard_normal((B, L, H, E)).astype(dtype).transpose(0, 2, 1, 3)  # (B, H, L, E)
    k = rng.standard_normal((B, 2 * H, 2 * S, E)).astype(dtype)[:, ::2, ::2]
    v = rng.standard_normal((B, H, S, 3 * E)).astype(dtype)[:, :, ::-1, E : 2 * E]
    assert not (q.flags.c_contiguous or k.flags.c_contiguous or v.flags.c_contiguous)
    check_attention(q, k, v)
    check_attention(q, k, v, is_causal="lower_right")


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_inputs_with_zero_strides(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(1,), Hq=1, L=10, S=12, E=8)
    q = np.broadcast_to(q, (3, 4, 10, 8))
    k = np.broadcast_to(k, (3, 2, 12, 8))
    v = np.broadcast_to(v, (3, 2, 12, 8))
    check_attention(q, k, v)


NO_OPTIONS = _core.ScoreOptions(None, None, None, None)  # no window, softcap, ALiBi or sinks


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_the_core_cannot_read_are_copied(rng, dtype):
    q, k, v = qkv(rng, dtype, L=12, S=20, E=6)
    strided_last = rng.standard_normal((1, 2, 12, 12)).astype(dtype)[..., ::2]
    swapped = k.astype(k.dtype.newbyteorder(">"))
    raw = np.zeros(v.nbytes + 1, dtype=np.uint8)
    misaligned = raw[1:].view(dtype).reshape(v.shape)
    misaligned[...] = v
    assert not misaligned.flags.aligned
    out = dotattn.attention(strided_last, swapped, misaligned)
    assert_matches(out, dotattn.reference.attention(strided_last, k, v), dtype)
    # The core itself refuses what the wrapper must copy, so passing above
    # means the wrapper copied.
    with pytest.raises(ValueError, match=r"value \(1, 2, 20, 6\) must be aligned to its dtype"):
        _core.attention(
            q, k, misaligned, None, None, None, _core.Causal.none, None, NO_OPTIONS, None, None, False
        )
    with pytest.raises(ValueError, match="query .* must have unit stride in its last dim, got 2"):
        _core.attention(
            strided_last, k, v, None, None, None, _core.Causal.none, None, NO_OPTIONS, None, None, False
        )
    with pytest.raises(TypeError, match="key has dtype >f"):
        _core.attention(
            q, swapped, v, None, None, None, _core.Causal.none, None, NO_OPTIONS, None, None, False
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_written_in_place(rng, dtype):
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=3, L=17, S=31, E=8, Ev=12)
    out = np.full((2, 3, 17, 12), np.nan, dtype=dtype)
    result = dotattn.attention(q, k, v, out=out, is_causal=True)
    assert result is out
    assert_matches(out, dotattn.reference.attention(q, k, v, is_causal=True), dtype)
    result, lse = dotattn.attention(q, k, v, out=out, return_lse=True)
    assert result is out
    assert_matches(lse, dotattn.reference.attention(q, k, v, return_lse=True)[1], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_query_gives_an_empty_result(rng, dtype):
    q, k, v = qkv(rng, dtype, Hq=2, L=0, S=5, E=4, Ev=3)
    out, lse = dotattn.attention(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 0, 3) and lse.shape == (1, 2, 0)
    for batch, Hq, Hkv in [((0,), 2, 2), ((2,), 0, 1), ((2,), 0, 0)]:
        q, k, v = qkv(rng, dtype, batch=batch, Hq=Hq, Hkv=Hkv, L=4, S=5, E=4)
        assert dotattn.attention(q, k, v).shape == (*batch, Hq, 4, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_keys_gives_zeros_and_minus_inf_lse(rng, dtype):
    q, k, v = qkv(rng, dtype, Hq=2, L=6, S=0, E=4, Ev=3)
    out, lse = dotattn.attention(q, k, v, return_lse=True)
    np.testing.assert_array_equal(out, np.zeros((1, 2, 6, 3)))
    np.testing.assert_array_equal(lse, np.full((1, 2, 6), -np.inf))
    check_attention(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_width_heads(rng, dtype):
    q, k, v = qkv(rng, dtype, L=5, S=7, E=0, Ev=3)  # every score is 0: the mean of v
    out = check_attention(q, k, v, scale=1.0)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=-2, keepdims=True), out.shape), rtol=1e-5)
    q, k, v = qkv(rng, dtype, L=5, S=7, E=4, Ev=0)
    out, lse = dotattn.attention(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 5, 0)
    assert_matches(lse, dotattn.reference.attention(q, k, v, return_lse=True)[1], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_is_weights_times_value(rng, dtype):
    q, k, v = qkv(rng, dtype, Hq=4, Hkv=2, L=33, S=50, E=16)
    mask = rng.random((33, 50)) < 0.8
    out = dotattn.attention(q, k, v, attn_mask=mask, is_causal="lower_right")
    weights = dotattn.attention_weights(q, k, attn_mask=mask, is_causal="lower_right")
    product = weights.astype(np.float64) @ np.repeat(v, 2, axis=1)
    assert_matches(out, product, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_query_and_key_propagate_as_in_the_reference(rng, dtype):
    q, k, v = qkv(rng, dtype, Hq=1, L=8, S=9, E=4)
    q[0, 0, 2, 1] = np.nan  # row 2 sees NaN scores
    q[0, 0, 5, 0] = np.inf  # row 5 sees +inf and -inf scores
    k[0, 0, 7, 3] = -np.inf  # key 7 scores +-inf, hidden from rows < 7 by is_causal
    out = check_attention(q, k, v)
    assert np.isnan(out[0, 0, 2]).all()
    out = check_attention(q, k, v, is_causal=True)
    assert np.isnan(out[0, 0, 2]).all() and np.isfinite(out[0, 0, :2]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
def test_non_finite_values_reach_only_the_rows_that_weigh_them(rng, dtype, is_causal):
    q, k, v = qkv(rng, dtype, Hq=1, L=8, S=8, E=4)
    v[0, 0, 6, 1] = np.nan
    v[0, 0, 3, 2] = np.inf
    v[0, 0, 4, 2] = -np.inf
    out = check_attention(q, k, v, is_causal=is_causal)
    assert np.isnan(out[0, 0, 6:, 1]).all() and np.isnan(out[0, 0, 4:, 2]).all()
    if is_causal:
        assert np.isfinite(out[0, 0, :3]).all() and np.isposinf(out[0, 0, 3, 2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_garbage_in_masked_cache_slots_stays_out(rng, dtype):
    # A preallocated KV cache: only the first `valid` slots hold data.
    valid, capacity = 21, 64
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=4, Hkv=2, L=3, S=capacity, E=16)
    k[..., valid:, :] = np.nan
    v[..., valid:, :] = np.inf
    mask = np.arange(capacity) < valid
    out = check_attention(q, k, v, attn_mask=mask)
    prefix = dotattn.attention(q, k[..., :valid, :], v[..., :valid, :])
    np.testing.assert_array_equal(out, prefix)


def test_input_arrays_are_not_copied(rng):
    # 4 MiB each, read through strides; the call may allocate only scratch.
    B, L, H, E = 1, 1024, 16, 64
    q = rng.standard_normal((B, L, H, E), dtype=np.float32).transpose(0, 2, 1, 3)
    k = rng.standard_normal((B, L, H, E), dtype=np.float32).transpose(0, 2, 1, 3)
    v = rng.standard_normal((B, L, H, E), dtype=np.float32).transpose(0, 2, 1, 3)
    out = np.empty((B, H, L, E), dtype=np.float32)

    def peak_bytes(query):
        tracemalloc.start()
        dotattn.attention(query, k, v, out=out)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    assert peak_bytes(q) < q.nbytes // 100
    # The measurement sees copies: a strided last dim must be copied once.
    assert peak_bytes(np.repeat(q, 2, axis=-1)[..., ::2]) >= q.nbytes


def test_torch_tensors_are_read_in_place(rng):
    torch = pytest.importorskip("torch")
    x = torch.randn(1, 64, 4, 32)  # (B, L, H, E), as attention layers produce it
    q = np.asarray(x.transpose(1, 2))
    assert np.shares_memory(q, x.numpy())
    check_attention(q, q, q)
