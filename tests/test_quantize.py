"""dotattn.quantize_kv and dotattn.QuantizedKV: the int8 format against its
definition (dotattn.reference.quantize_int8), round trips, writing a token
into a preallocated cache, the quantisation error itself, and bad input."""

import dotattn
import numpy as np
import pytest
from dotattn.reference import quantize_int8

pytestmark = pytest.mark.usefixtures("isa")  # float16/bfloat16 input is widened by the kernels


def as_format(x, fmt):
    if fmt == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes (test extras)")
        return x.astype(ml_dtypes.bfloat16)
    return x.astype(fmt)


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("E, group", [(64, 32), (80, 80), (96, 32), (128, 128), (256, 32), (48, 16), (7, 7)])
def test_matches_the_definition(rng, fmt, E, group):
    x = as_format(rng.standard_normal((2, 3, 37, E)) * 3, fmt)
    q = dotattn.quantize_kv(x, group=group)
    data, scale = quantize_int8(x, group)
    assert q.group == group and q.shape == x.shape
    assert q.data.dtype == np.int8 and q.scale.dtype == np.float32
    assert q.scale.shape == (2, 3, 37, E // group)
    np.testing.assert_array_equal(q.data, data)
    np.testing.assert_array_equal(q.scale, scale)


def test_default_group():
    assert dotattn.quantize_kv(np.ones((3, 128), np.float32)).group == 32
    assert dotattn.quantize_kv(np.ones((3, 80), np.float32)).group == 80
    assert dotattn.quantize_kv(np.ones((3, 96), np.float32)).group == 32


def test_rounding_half_to_even_and_the_ends():
    # scale = 127 / 127 = 1, so data = round(x): halves go to the even neighbour.
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -126.5, 3.49]], np.float32)
    q = dotattn.quantize_kv(x, group=8)
    np.testing.assert_array_equal(q.scale, [[1.0]])
    np.testing.assert_array_equal(q.data, [[127, 0, 2, 2, 0, -2, -126, 3]])


def test_zero_group_and_tiny_values():
    x = np.zeros((2, 64), np.float32)
    x[1, 32:] = 1e-44  # a scale of 1e-44 / 127 underflows to 0: the group is stored as zeros
    q = dotattn.quantize_kv(x, group=32)
    np.testing.assert_array_equal(q.scale, np.zeros((2, 2), np.float32))
    np.testing.assert_array_equal(q.data, np.zeros((2, 64), np.int8))


@pytest.mark.parametrize("group", [32, 128])
def test_round_trip_within_half_a_step(rng, group):
    x = rng.standard_normal((4, 500, 128)).astype(np.float32)
    q = dotattn.quantize_kv(x, group=group)
    step = np.repeat(q.scale, group, axis=-1)
    error = np.abs(q.dequantize() - x)
    assert (error <= step * 0.5 * (1 + 1e-5)).all()
    assert np.array_equal(dotattn.quantize_kv(q.dequantize(), group=group).data, q.data)


def relative_rms_error(x, group, channels=slice(None)):
    """RMS of the dequantisation error over `channels`, relative to the RMS
    of x there."""
    error = dotattn.quantize_kv(x, group=group).dequantize() - x
    return float(np.sqrt(np.mean(error[:, channels] ** 2) / np.mean(x[:, channels] ** 2)))


def test_quantisation_error(rng):
    """The error stated in QuantizedKV's docstring, 2**20 elements each: on
    N(0, 1) data, and with one outlier channel of 20x the others in every
    row (as K caches have), measured on the other channels, which the
    outlier's large scale flattens."""
    normal = rng.standard_normal((8192, 128)).astype(np.float32)
    outliers = normal.copy()
    outliers[:, 5] *= 20
    rest = np.arange(128) != 5
    measured = {
        ("normal", 32): relative_rms_error(normal, 32),
        ("normal", 128): relative_rms_error(normal, 128),
        ("outlier", 32): relative_rms_error(outliers, 32, rest),
        ("outlier", 128): relative_rms_error(outliers, 128, rest),
    }
    print(
        "relative RMS quantisation error:", {f"{k[0]}/group {k[1]}": f"{v:.4f}" for k, v in measured.items()}
    )
    assert measured[("normal", 32)] < 0.006
    assert measured[("normal", 128)] < 0.007
    assert measured[("outlier", 32)] < 0.03
    assert measured[("outlier", 128)] > 1.5 * measured[("outlier", 32)]


def test_writes_a_token_into_a_preallocated_cache(rng):
    B, Hkv, S_max, E = 2, 4, 64, 128
    cache = dotattn.QuantizedKV(
        np.zeros((B, Hkv, S_max, E), np.int8), np.zeros((B, Hkv, S_max, E // 32), np.float32)
    )
    tokens = rng.standard_normal((B, Hkv, 10, E)).astype(np.float32)
    for n in range(10):
        slot = cache[:, :, n : n + 1]
        assert np.shares_memory(slot.data, cache.data)
        assert dotattn.quantize_kv(tokens[:, :, n : n + 1], out=slot) is slot
    whole = dotattn.quantize_kv(tokens)
    np.testing.assert_array_equal(cache.data[:, :, :10], whole.data)
    np.testing.assert_array_equal(cache.scale[:, :, :10], whole.scale)
    assert not cache.data[:, :, 10:].any() and not cache.scale[:, :, 10:].any()


def test_strided_input_and_output(rng):
    x = rng.standard_normal((6, 40, 64)).astype(np.float32).transpose(1, 0, 2)  # (40, 6, 64) strided
    data = np.zeros((6, 40, 64), np.int8).transpose(1, 0, 2)
    scale = np.zeros((6, 40, 2), np.float32).transpose(1, 0, 2)
    dotattn.quantize_kv(x, out=dotattn.QuantizedKV(data, scale))
    ref_data, ref_scale = quantize_int8(x, 32)
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_array_equal(scale, ref_scale)


def test_indexing():
    q = dotattn.quantize_kv(np.ones((2, 3, 10, 64), np.float32))
    assert q[0].shape == (3, 10, 64) and q[:, 1:, :4].shape == (2, 2, 4, 64)
    assert np.shares_memory(q[:, :, :4].data, q.data)
    for index in [(0, 0, 0, 0), (Ellipsis, 0), (None,)]:
        with pytest.raises(IndexError, match="index the dims before the last only"):
            q[index]
    assert "group=32" in repr(q)


# --- bad input ---------------------------------------------------------------


def good_cache():
    return dotattn.QuantizedKV(np.full((2, 5, 64), 3, np.int8), np.full((2, 5, 2), 9.0, np.float32))


@pytest.mark.parametrize(
    "make, exc, pattern",
    [
        (
            lambda: dotattn.QuantizedKV(np.zeros((2, 64), np.int16), np.zeros((2, 2), np.float32)),
            TypeError,
            r"data has dtype int16; expected int8",
        ),
        (
            lambda: dotattn.QuantizedKV(np.zeros((2, 64), np.int8), np.zeros((2, 2), np.float64)),
            TypeError,
            r"scale has dtype float64; expected float32",
        ),
        (
            lambda: dotattn.QuantizedKV(np.zeros((2, 64), np.int8), np.zeros((2, 3), np.float32)),
            ValueError,
            r"scale \(2, 3\) does not fit data \(2, 64\): its last dim \(3 groups\) must divide E=64",
        ),
        (
            lambda: dotattn.QuantizedKV(np.zeros((2, 64), np.int8), np.zeros((3, 2), np.float32)),
            ValueError,
            r"scale \(3, 2\) does not fit data \(2, 64\): expected the same shape but the last dim",
        ),
        (
            lambda: dotattn.QuantizedKV(np.zeros((2, 64), np.int8), np.zeros((2, 2, 1), np.float32)),
            ValueError,
            r"expected the same number of dims",
        ),
        (
            lambda: dotattn.QuantizedKV(np.zeros((2, 128), np.int8)[:, ::2], np.zeros((2, 2), np.float32)),
            ValueError,
            r"data \(2, 64\) must have unit stride in its last dim",
        ),
        (
            lambda: dotattn.QuantizedKV(np.zeros((2, 64), np.int8), np.zeros((2, 4), np.float32)[:, ::2]),
            ValueError,
            r"scale \(2, 2\) must have unit stride in its last dim",
        ),
    ],
    ids=["data-dtype", "scale-dtype", "group", "scale-shape", "scale-dims", "data-stride", "scale-stride"],
)
def test_bad_quantized_kv(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


@pytest.mark.parametrize(
    "x, kwargs, exc, pattern",
    [
        (np.full((2, 5, 64), np.inf, np.float32), {}, ValueError, r"x holds inf or NaN"),
        (np.full((2, 5, 64), np.nan, np.float16), {}, ValueError, r"x holds inf or NaN"),
        (
            np.ones((2, 5, 32), np.float32),
            {},
            ValueError,
            r"out data \(2, 5, 64\) does not match x \(2, 5, 32\)",
        ),
        (np.ones((2, 5, 64), np.float32), {"group": 64}, ValueError, r"group=64 but out has group 32"),
        (
            np.ones((2, 5, 64), np.int32),
            {},
            TypeError,
            r"x has dtype int32; expected float32, float16 or bfloat16",
        ),
    ],
    ids=["inf", "nan-float16", "shape", "group", "dtype"],
)
def test_bad_quantize_leaves_out_untouched(x, kwargs, exc, pattern):
    out = good_cache()
    with pytest.raises(exc, match=pattern):
        dotattn.quantize_kv(x, out=out, **kwargs)
    assert (out.data == 3).all() and (out.scale == 9.0).all()


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"dtype": "int4"}, ValueError, r"dtype must be 'int8'; got 'int4'"),
        ({"group": 48}, ValueError, r"group=48 must be positive and divide E=64"),
        ({"group": 0}, ValueError, r"group=0 must be positive"),
        ({"group": 2.0}, TypeError, r"group must be an int or None"),
        ({"out": np.zeros((2, 64), np.int8)}, TypeError, r"out must be a QuantizedKV; got ndarray"),
    ],
)
def test_bad_quantize_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        dotattn.quantize_kv(np.ones((2, 64), np.float32), **kwargs)


def test_read_only_out():
    out = good_cache()
    out.data.flags.writeable = False
    with pytest.raises(ValueError, match=r"out data \(2, 5, 64\) is read-only"):
        dotattn.quantize_kv(np.ones((2, 5, 64), np.float32), out=out)


def test_out_overlapping_x():
    buffer = np.zeros(2 * 5 * 64 * 4, np.int8)
    x = buffer.view(np.float32).reshape(2, 5, 64)
    x[...] = 1.0
    out = dotattn.QuantizedKV(buffer[: 2 * 5 * 64].reshape(2, 5, 64), np.zeros((2, 5, 2), np.float32))
    with pytest.raises(ValueError, match=r"out overlaps x"):
        dotattn.quantize_kv(x, out=out)
