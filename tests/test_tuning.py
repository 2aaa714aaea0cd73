"""The kernel sets' parameter tables (dotattn._core.get_tuning / set_tuning,
what `python -m dotattn tune` sweeps) and dotattn._core.kernel_rates (what
`python -m dotattn bench --kernels` prints): any valid table computes the
same attention within the tolerances, bit-identical at any thread count,
and bad values are refused with the table left as it was."""

from __future__ import annotations

import dotattn
import numpy as np
import pytest
from conftest import KV_FORMATS, check_attention, qkv, stored

pytestmark = pytest.mark.usefixtures("isa")

FIELDS = [
    "row_block",
    "key_block_bytes",
    "decode_key_block_bytes",
    "min_split_keys",
    "key_bytes_ahead",
    "value_bytes_ahead",
    "value_chunk_bytes",
]

# Tables far from the defaults: tiny and odd blocks (a row block of 17 rows,
# key blocks of one score tile), short split ranges, no prefetch distance to
# speak of, and the other way round.
ODD_TABLES = [
    {
        "row_block": 17,
        "key_block_bytes": 1,
        "decode_key_block_bytes": 1,
        "min_split_keys": 16,
        "key_bytes_ahead": 1,
        "value_bytes_ahead": 1,
        "value_chunk_bytes": 1,
    },
    {
        "row_block": 1024,
        "key_block_bytes": 1 << 22,
        "decode_key_block_bytes": 1 << 22,
        "min_split_keys": 100000,
        "key_bytes_ahead": 1 << 20,
        "value_bytes_ahead": 1 << 20,
        "value_chunk_bytes": 1 << 20,
    },
]


@pytest.fixture
def restore_tuning(isa):
    before = dotattn._core.get_tuning(isa)
    yield isa
    dotattn._core.set_tuning(isa, before)


def test_table_fields(isa):
    table = dotattn._core.get_tuning(isa)
    assert list(table) == FIELDS
    assert all(isinstance(v, int) and v > 0 for v in table.values())


def test_set_tuning_round_trips_and_keeps_unnamed_fields(restore_tuning):
    isa = restore_tuning
    before = dotattn._core.get_tuning(isa)
    dotattn._core.set_tuning(isa, {"row_block": 48})
    assert dotattn._core.get_tuning(isa) == {**before, "row_block": 48}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"row_block": 0}, "every field must be positive"),
        ({"value_chunk_bytes": -5}, "every field must be positive"),
        ({"row_block": 1025}, "row_block must be at most 1024"),
        ({"rows": 5}, 'unknown parameter "rows"'),
    ],
)
def test_bad_values_are_refused(restore_tuning, values, message):
    isa = restore_tuning
    before = dotattn._core.get_tuning(isa)
    with pytest.raises(ValueError, match=message):
        dotattn._core.set_tuning(isa, values)
    assert dotattn._core.get_tuning(isa) == before


def test_unknown_isa_is_refused():
    with pytest.raises(ValueError, match='get_tuning: unknown ISA "bogus"'):
        dotattn._core.get_tuning("bogus")
    with pytest.raises(ValueError, match='kernel_rates: unknown ISA "bogus"'):
        dotattn._core.kernel_rates("bogus", 16, 16, 16, 0.01)


@pytest.mark.parametrize("table", ODD_TABLES, ids=["small", "large"])
@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_any_table_matches_the_reference(restore_tuning, rng, table, fmt):
    dotattn._core.set_tuning(restore_tuning, table)
    # Many rows (prefill, causal, with a tail at every tile edge) and few
    # (decoding with GQA, split into ranges).
    q, k, v = qkv(rng, np.float32, Hq=4, Hkv=2, L=77, S=161, E=64, Ev=33)
    check_attention(q, stored(k, fmt), stored(v, fmt), is_causal=True)
    q, k, v = qkv(rng, np.float32, batch=(2,), Hq=8, Hkv=2, L=1, S=1100, E=64)
    check_attention(q, stored(k, fmt), stored(v, fmt))


def test_any_table_gives_the_same_bits_at_any_thread_count(restore_tuning, rng, restore_threads):
    dotattn._core.set_tuning(restore_tuning, ODD_TABLES[0])
    q, k, v = qkv(rng, np.float32, Hq=4, Hkv=2, L=50, S=700, E=32)
    qd = q[:, :, :1]
    results = []
    for threads in (1, 2, 3):
        dotattn.set_num_threads(threads)
        results.append((dotattn.attention(q, k, v), dotattn.attention(qd, k, v)))
    for out, decoded in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(decoded, results[0][1])


def test_kernel_rates(isa):
    rates = dotattn._core.kernel_rates(isa, 33, 20, 17, 0.01)
    assert rates["isa"] == isa
    for name in ("peak_gflops", "score_gflops", "pv_gflops", "softmax_gscores"):
        assert np.isfinite(rates[name]) and rates[name] > 0, name
