"""Shared fixtures and the one comparison every test makes against
dotattn.reference. The tolerances themselves are dotattn.reference.TOLERANCES
(also used by `python -m dotattn`): float32 ||out - ref|| / ||ref|| <= 1e-5 and
max|out - ref| <= 1e-5 * max|ref|; float64 the same with 1e-12.

The float32 bounds presume scores of moderate size, as standard-normal data
gives (|scale * q.k| up to a few tens): a float32 score carries an absolute
rounding error of about |score| * 6e-8 that no float32 kernel avoids, and the
softmax passes it on as a relative error of the same size. Tests of large
scores therefore use small-integer data, whose scores are exact in float32."""

from __future__ import annotations

import os
import zlib

import dotattn
import numpy as np
import pytest
from dotattn.reference import TOLERANCES, errors
from hypothesis import HealthCheck, settings

DTYPES = [np.float32, np.float64]

# The isa fixture below is function-scoped but only selects kernels, which
# is safe to share between the examples of one test.
_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("default", max_examples=400, deadline=None, suppress_health_check=_HEALTH)
settings.register_profile("thorough", max_examples=3000, deadline=None, suppress_health_check=_HEALTH)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Random data of its own for each test case, the same on every run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# Every kernel set dotattn carries, best first. Test modules that compute run
# once per set (pytestmark = pytest.mark.usefixtures("isa")); a set this CPU
# lacks, or this build, is skipped, with the reason in the summary (pytest
# -rs). avx512_emulated, the avx512 kernels through SIMDe on AVX2, is in
# test builds only (cmake -DDOTATTN_EMULATED_AVX512=ON; .ci/emulated_avx512.sh).
ISAS = ["avx512", "avx2", "avx512_emulated", "scalar"]
# DOTATTN_TEST_ISAS=name,...: the per-set tests run on those sets only (as
# .ci/emulated_avx512.sh runs them on avx512_emulated, with DOTATTN_ISA
# naming it for the rest).
_ONLY = [name for name in os.environ.get("DOTATTN_TEST_ISAS", "").split(",") if name]
if set(_ONLY) - set(ISAS):
    raise ValueError(f"DOTATTN_TEST_ISAS: {sorted(set(_ONLY) - set(ISAS))} not among {ISAS}")


def isa_built(name: str) -> bool:
    """Whether this build has the kernel set `name` (supported here or not):
    set_isa refuses one it lacks as an "unknown ISA"."""
    if name in dotattn.supported_isas():
        return True
    try:
        dotattn.set_isa(name)  # not supported here, so it raises and changes nothing
    except ValueError as error:
        return "unknown ISA" not in str(error)
    raise AssertionError(f"set_isa({name!r}) took a set supported_isas() does not list")


@pytest.fixture(params=[name for name in ISAS if not _ONLY or name in _ONLY])
def isa(request):
    """Runs the test with float32 on the kernel set request.param."""
    name = request.param
    supported = dotattn.supported_isas()
    if not isa_built(name):
        pytest.skip(f"{name} kernels not run: not in this build (test-only: -DDOTATTN_EMULATED_AVX512=ON)")
    if name not in supported:
        pytest.skip(f"{name} kernels not run: this CPU supports only {', '.join(supported)}")
    before = dotattn.get_isa()
    dotattn.set_isa(name)
    yield name
    dotattn.set_isa(before)


@pytest.fixture
def restore_threads():
    """Leaves the thread count as the test found it."""
    before = dotattn.get_num_threads()
    yield
    dotattn.set_num_threads(before)


def qkv(rng, dtype, *, batch=(1,), Hq=2, Hkv=None, L=16, S=16, E=32, Ev=None):
    """Standard-normal query, key and value of shapes (*batch, H, L|S, E|Ev);
    batch=None gives the 2-D single-head case."""
    Hkv = Hq if Hkv is None else Hkv
    Ev = E if Ev is None else Ev
    lead_q = () if batch is None else (*batch, Hq)
    lead_kv = () if batch is None else (*batch, Hkv)
    q = rng.standard_normal((*lead_q, L, E)).astype(dtype)
    k = rng.standard_normal((*lead_kv, S, E)).astype(dtype)
    v = rng.standard_normal((*lead_kv, S, Ev)).astype(dtype)
    return q, k, v


# The K/V storage formats of a float32 query: "int8" quantises by groups of
# 32 (dotattn.quantize_kv's default where 32 divides E), "int8_row" by whole
# rows (group E).
KV_FORMATS = ["float32", "float16", "bfloat16", "int8", "int8_row"]


def stored(x, fmt):
    """x (float32) stored as fmt: an array, or a dotattn.QuantizedKV."""
    if fmt == "float32":
        return x
    if fmt == "float16":
        return x.astype(np.float16)
    if fmt == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes (test extras)")
        return x.astype(ml_dtypes.bfloat16)
    if fmt == "int8":
        return dotattn.quantize_kv(x, group=32 if x.shape[-1] % 32 == 0 else x.shape[-1])
    if fmt == "int8_row":
        return dotattn.quantize_kv(x, group=max(x.shape[-1], 1))
    raise ValueError(f"unknown K/V format {fmt!r}")


def assert_matches(out, ref, dtype) -> None:
    """out has the dtype asked for and matches the float64 reference: the same
    NaN and inf positions, and the finite values within TOLERANCES."""
    out = np.asarray(out)
    ref = np.asarray(ref)
    assert out.dtype == np.dtype(dtype)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref), err_msg="NaN positions differ")
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(ref), err_msg="+inf positions differ")
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref), err_msg="-inf positions differ")
    relative, elementwise = errors(out, ref)
    tol = TOLERANCES[np.dtype(dtype)]
    assert relative <= tol["relative"], f"relative error {relative:.3g} > {tol['relative']:g}"
    assert elementwise <= tol["elementwise"], f"elementwise error {elementwise:.3g} > {tol['elementwise']:g}"


def check_attention(q, k, v, **kwargs) -> np.ndarray:
    """dotattn.attention (with its LSE) against the reference; returns out."""
    out, lse = dotattn.attention(q, k, v, return_lse=True, **kwargs)
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True, **kwargs)
    assert_matches(out, ref, q.dtype)
    assert_matches(lse, ref_lse, q.dtype)
    return out


def check_weights(q, k, **kwargs) -> np.ndarray:
    """dotattn.attention_weights against the reference; returns the weights."""
    weights = dotattn.attention_weights(q, k, **kwargs)
    assert_matches(weights, dotattn.reference.attention_weights(q, k, **kwargs), q.dtype)
    return weights
