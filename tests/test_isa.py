"""The float32 kernel sets: supported_isas / get_isa / set_isa, the
DOTATTN_ISA environment variable, the accuracy of each set's exp, and the
sets' agreement with each other (and the reference) on awkward shapes."""

import os
import subprocess
import sys

import dotattn
import numpy as np
import pytest
from conftest import (
    DTYPES,
    ISAS,
    KV_FORMATS,
    assert_matches,
    check_attention,
    check_weights,
    isa_built,
    qkv,
    stored,
)

SUPPORTED = dotattn.supported_isas()
# Sets this build has but this CPU lacks (set_isa says "does not support").
UNSUPPORTED = [name for name in ISAS if name not in SUPPORTED and isa_built(name)]


@pytest.fixture
def restore_isa():
    """Leaves the kernel set as the test found it."""
    before = dotattn.get_isa()
    yield
    dotattn.set_isa(before)


def run_python(code, **env_changes):
    """Runs `code` in a fresh interpreter with the environment changed by
    env_changes (a value of None removes the variable)."""
    env = dict(os.environ)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


# --- choosing the kernel set -------------------------------------------------


def test_supported_isas_are_best_first_and_end_with_scalar():
    assert SUPPORTED[-1] == "scalar"
    assert all(isinstance(name, str) for name in SUPPORTED)
    assert SUPPORTED == [name for name in ISAS if name in SUPPORTED]  # ISAS's order, no repeats


def test_default_is_the_best_supported():
    expected = os.environ.get("DOTATTN_ISA") or SUPPORTED[0]
    assert dotattn.get_isa() == expected
    # The same in a fresh process, with DOTATTN_ISA unset or empty.
    for value in (None, ""):
        result = run_python("import dotattn; print(dotattn.get_isa())", DOTATTN_ISA=value)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [SUPPORTED[0]]


@pytest.mark.parametrize("name", SUPPORTED)
def test_set_isa_round_trips(restore_isa, name):
    dotattn.set_isa(name)
    assert dotattn.get_isa() == name
    assert dotattn.show_config("dicts")["isa"] == name
    dotattn.set_isa(SUPPORTED[-1])
    assert dotattn.get_isa() == SUPPORTED[-1]


def _names_isa_and_lists_supported(message, name):
    assert f'"{name}"' in message, message
    assert ", ".join(SUPPORTED) in message, message


def test_set_isa_refuses_an_unknown_name(restore_isa):
    before = dotattn.get_isa()
    with pytest.raises(ValueError, match="nonsense") as info:
        dotattn.set_isa("nonsense")
    _names_isa_and_lists_supported(str(info.value), "nonsense")
    assert dotattn.get_isa() == before


@pytest.mark.skipif(not UNSUPPORTED, reason="this CPU supports every kernel set")
@pytest.mark.parametrize("name", UNSUPPORTED)
def test_set_isa_refuses_a_set_this_cpu_lacks(restore_isa, name):
    before = dotattn.get_isa()
    with pytest.raises(ValueError, match="does not support") as info:
        dotattn.set_isa(name)
    _names_isa_and_lists_supported(str(info.value), name)
    assert dotattn.get_isa() == before


@pytest.mark.parametrize("name", [3, None, b"scalar"])
def test_set_isa_wants_a_str(restore_isa, name):
    with pytest.raises(TypeError, match="set_isa: name must be a str"):
        dotattn.set_isa(name)


def test_dotattn_isa_chooses_the_kernels(rng, restore_isa, tmp_path):
    q, k, v = qkv(rng, np.float32, Hq=2, L=5, S=70, E=24)
    np.savez(tmp_path / "qkv.npz", q=q, k=k, v=v)
    code = (
        "import dotattn, numpy as np\n"
        "print(dotattn.get_isa(), dotattn.show_config('dicts')['isa'])\n"
        "dotattn.show_config()\n"
        f"data = np.load({str(tmp_path / 'qkv.npz')!r})\n"
        "print(dotattn.attention(data['q'], data['k'], data['v']).tobytes().hex())\n"
    )
    result = run_python(code, DOTATTN_ISA="scalar")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["scalar", "scalar"]
    assert ["isa:", "scalar"] in [line.split() for line in lines]
    # The result is the scalar kernels', bit for bit.
    dotattn.set_isa("scalar")
    assert lines[-1] == dotattn.attention(q, k, v).tobytes().hex()


@pytest.mark.parametrize("name", ["bogus", *UNSUPPORTED])
def test_a_bad_dotattn_isa_is_a_clear_error_at_first_use(name):
    # Importing calls nothing; the variable is read, and refused, by the
    # first call that needs the kernel set: get_isa, show_config or a
    # float32 computation alike.
    code = (
        "import dotattn, numpy as np\n"
        "print('imported', flush=True)\n"
        "x = np.ones((2, 2), np.float32)\n"
        "for call in (lambda: dotattn.attention(x, x, x), lambda: dotattn.show_config('dicts')):\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError:\n"
        "        print('ValueError', flush=True)\n"
        "dotattn.get_isa()\n"
    )
    result = run_python(code, DOTATTN_ISA=name)
    assert result.returncode != 0
    assert result.stdout.split() == ["imported", "ValueError", "ValueError"]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ValueError: DOTATTN_ISA: "), result.stderr
    _names_isa_and_lists_supported(message, name)


# --- exp -----------------------------------------------------------------------


def exp_through_attention(x, weights=False):
    """exp(x) for float32 x <= 0, as dotattn computes it, read back exactly
    up to one rounding. Query row i is x[i] (E = 1, scale 1); key 0 is 1.0
    and key 1 is 0.0, so row i scores [x[i], 0]: its max is 0, exactly, and
    its unnormalised weights are [exp(x[i]), 1]. With the identity as values
    the output row is those weights times 1 / l, l = 1 + exp(x[i]): out[i, 1]
    is 1 / l itself and out[i, 0] = exp(x[i]) / l rounded once, so their
    ratio is exp(x[i]) within 2**-24, and exactly exp(x[i]) where l rounds to
    1 (x below about -16.6). Many rows rather than many keys, so that one
    call computes every exp.

    weights=True reads the weights from attention_weights instead."""
    q = np.asarray(x, np.float32)[:, None]
    k = np.array([[1.0], [0.0]], np.float32)
    if weights:
        w = dotattn.attention_weights(q, k, scale=1.0)
    else:
        w = dotattn.attention(q, k, np.eye(2, dtype=np.float32), scale=1.0)
    w = w.astype(np.float64)
    return w[:, 0] / w[:, 1], w[:, 1] == 1


@pytest.mark.parametrize("path", ["attention", "attention_weights"])
def test_exp_accuracy(isa, path):
    """The float32 exp of each kernel set, over a grid of 200,001 points of
    [-87, 0] (and 0 itself): max relative error against exp in float64.

    Measured (avx2 and scalar, AMD EPYC; the same for both):
      attention          1.17e-7 where it is read exactly (x < -16.6: at
                         most 1 ulp from the correctly rounded float32), and
                         1.47e-7 over all of [-87, 0], which includes the
                         normalisation's rounding (up to 6e-8).
      attention_weights  5.96e-8 where read exactly, 1.16e-7 over [-87, 0]:
                         the weights loop exponentiates with std::exp (libm),
                         not with the kernels.
    Correct rounding to float32 alone gives 5.96e-8.

    Below about -87.3 the kernels return 0 by design (exactly 0 from -88 on):
    those weights are under FLT_MIN, nothing beside the row's largest
    weight, 1."""
    x = np.linspace(-87, 0, 200_001, dtype=np.float32)
    assert x[0] == -87 and x[-1] == 0
    exp, read_exactly = exp_through_attention(x, weights=path == "attention_weights")
    exact = np.exp(x.astype(np.float64))
    relative = np.abs(exp - exact) / exact
    print(
        f"\n{isa} {path}: exp max relative error {relative.max():.3g} on [-87, 0] "
        f"(worst at x = {x[relative.argmax()]:.7g}), {relative[read_exactly].max():.3g} "
        f"where read exactly (x <= {x[read_exactly].max():.4g})"
    )
    assert exp[-1] == 1
    assert relative[read_exactly].max() <= 1.8e-7
    assert relative.max() <= 2.5e-7

    below = np.linspace(-150, -87, 20_001, dtype=np.float32)[:-1]
    assert below.max() < -87
    tiny, _ = exp_through_attention(below, weights=path == "attention_weights")
    if path == "attention":  # exact down to where 2^n leaves the normal range, then 0
        below_exact = np.exp(below.astype(np.float64))
        accurate = np.abs(tiny - below_exact) <= 2.5e-7 * below_exact
        assert np.all((tiny == 0) | accurate), tiny.max()
        assert np.all(tiny[below <= -88] == 0)
    else:  # libm's exp: normal down to -87.3, then subnormal
        assert np.all(tiny <= np.exp(below.astype(np.float64)) * (1 + 2.5e-7) + 2.0**-149), tiny.max()


# --- the kernel sets agree -------------------------------------------------------

# (Hq, Hkv, L, S, E, Ev): odd sizes, tails of every tile, GQA, and one with
# S >= 1024 and few rows (the split-K path).
ODD_SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (2, 2, 5, 33, 3, 17),
    (2, 1, 1, 129, 17, 3),
    (3, 3, 7, 65, 64, 129),
    (2, 2, 33, 1, 129, 64),
    (1, 1, 65, 127, 256, 256),
    (4, 2, 3, 257, 1, 256),
    (2, 2, 129, 5, 256, 1),
    (4, 2, 3, 1025, 17, 64),
]


def odd_mask(rng, kind, shape, dtype):
    """A mask of `kind` for (B, Hq, L, S) `shape`, with some rows fully masked."""
    if kind == "none":
        return None, False
    if kind == "bool + upper_left":
        mask = rng.random(shape) < 0.7
        mask[..., -1, :] = False
        return mask, True
    mask = (rng.standard_normal(shape) * 2).astype(dtype)
    mask[rng.random(shape) < 0.2] = -np.inf
    mask[..., 0, :] = -np.inf
    return mask, "lower_right"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["none", "bool + upper_left", "additive + lower_right"])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_sets_agree(rng, restore_isa, dtype, mask_kind, shape):
    Hq, Hkv, L, S, E, Ev = shape
    q, k, v = qkv(rng, dtype, batch=(2,), Hq=Hq, Hkv=Hkv, L=L, S=S, E=E, Ev=Ev)
    mask, is_causal = odd_mask(rng, mask_kind, (2, Hq, L, S), dtype)
    results = {}
    for name in SUPPORTED:
        dotattn.set_isa(name)
        out = check_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        lse = dotattn.attention(q, k, v, attn_mask=mask, is_causal=is_causal, return_lse=True)[1]
        weights = check_weights(q, k, attn_mask=mask, is_causal=is_causal)
        results[name] = out, lse, weights
    first = results[SUPPORTED[0]]
    for name in SUPPORTED[1:]:
        for a, b in zip(results[name], first):
            if dtype == np.float64:  # float64 always runs the portable kernels
                np.testing.assert_array_equal(a, b, err_msg=f"float64 differs under {name}")
            else:
                assert_matches(a, b.astype(np.float64), dtype)


# --- avx512_emulated is avx512, bit for bit ---------------------------------------

# (Hq, Hkv, L, S, E, Ev): sizes at the 16-lane boundaries (15, 16, 17, 31, 33,
# 127, 129) in every place, few rows (the dot-product kernels; L = 1 is
# decoding) and many (the tiles), GQA, a split-K one (S >= 1024, few rows),
# and multiples of 16 and 32 for the int8 groups below.
EMULATED_SHAPES = [
    (2, 1, 1, 129, 16, 17),
    (2, 2, 15, 33, 17, 15),
    (1, 1, 17, 127, 31, 33),
    (2, 1, 31, 17, 33, 31),
    (1, 1, 33, 16, 127, 129),
    (2, 2, 129, 31, 15, 127),
    (4, 2, 3, 1041, 129, 16),
    (2, 1, 16, 129, 96, 48),
    (1, 1, 1, 1025, 64, 160),
]
# KV_FORMATS (int8: groups of 32 where 32 divides the row), and groups of 16,
# which no P·V panel holds whole (scales lane by lane).
EMULATED_FORMATS = [*KV_FORMATS, "int8_group16"]


def stored_as(x, fmt):
    if fmt == "int8_group16":
        return dotattn.quantize_kv(x, group=16 if x.shape[-1] % 16 == 0 else x.shape[-1])
    return stored(x, fmt)


def paged_caches(rng, k, v, page_size):
    """k (B, Hkv, S, E) and v (B, Hkv, S, Ev) in pages of page_size slots, in
    random order, with a spare page and the free slots random too:
    (key_cache, value_cache, block_table), vLLM's layout."""
    B, Hkv, S, _ = k.shape
    per_seq = -(-S // page_size)
    num_pages = B * per_seq + 1
    table = rng.permutation(num_pages)[: B * per_seq].reshape(B, per_seq).astype(np.int32)
    caches = []
    for x in (k, v):
        cache = rng.standard_normal((num_pages, page_size, Hkv, x.shape[-1])).astype(np.float32)
        j = np.arange(S)
        for b in range(B):
            cache[table[b, j // page_size], j % page_size] = x[b].transpose(1, 0, 2)
        caches.append(cache)
    return caches[0], caches[1], table


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


@pytest.mark.skipif(
    not {"avx512", "avx512_emulated"} <= set(SUPPORTED),
    reason="needs avx512 and avx512_emulated both (AVX-512 and -DDOTATTN_EMULATED_AVX512=ON)",
)
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("fmt", EMULATED_FORMATS)
@pytest.mark.parametrize("shape", EMULATED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_emulated_avx512_is_avx512_bit_for_bit(rng, restore_isa, shape, fmt, layout):
    """The same kernels, compiled for AVX-512 and through SIMDe on AVX2, run
    the same float operations lane by lane in the same order (each SIMDe
    intrinsic they use is exact, kernels/avx512_emulated.cpp), so every
    output and LSE bit agrees: contiguous and paged, every K/V format."""
    Hq, Hkv, L, S, E, Ev = shape
    B = 2
    q, k, v = qkv(rng, np.float32, batch=(B,), Hq=Hq, Hkv=Hkv, L=L, S=S, E=E, Ev=Ev)
    if layout == "contiguous":
        ks, vs = stored_as(k, fmt), stored_as(v, fmt)
        calls = {
            "plain": lambda: dotattn.attention(q, ks, vs, return_lse=True),
            "causal": lambda: dotattn.attention(q, ks, vs, is_causal="lower_right", return_lse=True),
        }
        if fmt == "float32":
            calls["weights"] = lambda: (dotattn.attention_weights(q, k, is_causal=True),)
    else:
        kc, vc, table = paged_caches(rng, k, v, 16 if S % 2 else 7)
        kcs, vcs = stored_as(kc, fmt), stored_as(vc, fmt)
        qp = q.transpose(0, 2, 1, 3).reshape(B * L, Hq, E)
        cu_q = np.arange(0, B * L + 1, L, dtype=np.int32)
        lens = np.full(B, S, np.int32)
        calls = {
            "paged": lambda: dotattn.attention_paged(qp, kcs, vcs, table, lens, cu_q, return_lse=True),
            "paged causal": lambda: dotattn.attention_paged(
                qp, kcs, vcs, table, lens, cu_q, is_causal=True, return_lse=True
            ),
        }
    for what, call in calls.items():
        dotattn.set_isa("avx512")
        native = call()
        dotattn.set_isa("avx512_emulated")
        emulated = call()
        for a, b in zip(native, emulated):
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_array_equal(
                bits(b), bits(a), err_msg=f"{what}: avx512_emulated differs from avx512"
            )
