"""Packed batches: dotattn.attention_varlen (sequences of different lengths
packed token-major, flash-attn's varlen layout) and dotattn.attention_paged
(keys and values in a pool of pages addressed through a block table,
vLLM's layout), against dotattn.reference and against a loop of
dotattn.attention over the sequences (the same kernels). Empty sequences
(no queries, no keys), L != S with each causal rule, grouped query heads,
the score options, decoding with pages in random order and page sizes that
are not powers of two, query chunks of different lengths, the vLLM cache
view, every K/V storage format, float64, index arrays of other integer
dtypes and layouts, out=, and bad arguments (out left untouched).

Free cache slots (the tail of a sequence's last page, pages no sequence
uses) hold NaN, and block-table entries past a sequence's last page are out
of range: neither may be read. The cases are chosen pairwise, with one long
sequence per path."""

import tracemalloc

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, KV_FORMATS, assert_matches, stored

pytestmark = pytest.mark.usefixtures("isa")

SENTINEL = 7.25


# --- problems ----------------------------------------------------------------


def offsets(lengths, dtype=np.int32) -> np.ndarray:
    """cu_seqlens of the lengths: 0, then their running sum."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(dtype)


def packed(rng, dtype, q_lens, k_lens, *, Hq=8, Hkv=2, E=32, Ev=None):
    """Standard-normal q (total_q, Hq, E), k (total_k, Hkv, E), v (total_k,
    Hkv, Ev) and the offsets cu_q, cu_k (int32) of the given lengths."""
    Ev = E if Ev is None else Ev
    cu_q, cu_k = offsets(q_lens), offsets(k_lens)
    q = rng.standard_normal((cu_q[-1], Hq, E)).astype(dtype)
    k = rng.standard_normal((cu_k[-1], Hkv, E)).astype(dtype)
    v = rng.standard_normal((cu_k[-1], Hkv, Ev)).astype(dtype)
    return q, k, v, cu_q, cu_k


def alibi(Hq):
    """ALiBi slopes 2**-(h + 1): exact in float32, and so are the biases."""
    return 2.0 ** -(np.arange(Hq) + 1.0)


def sink_logits(rng, Hq):
    """One sink logit per head, in quarters: exact in float32."""
    return np.round(rng.standard_normal(Hq) * 8) / 4


def heads_first(x):
    """(S, H, E) token-major keys as (H, S, E), a view, for dotattn.attention."""
    if isinstance(x, dotattn.QuantizedKV):
        return dotattn.QuantizedKV(x.data.transpose(1, 0, 2), x.scale.transpose(1, 0, 2))
    return x.transpose(1, 0, 2)


def per_sequence(q, k, v, cu_q, cu_k, *, is_causal=False, **options):
    """The varlen call as a loop of dotattn.attention, one call per sequence
    (True is the packed calls' bottom-right rule): (out, lse) of the query's
    dtype, laid out as attention_varlen's."""
    causal = "lower_right" if is_causal is True else is_causal
    total, Hq = q.shape[:2]
    out = np.zeros((total, Hq, v.shape[-1]), q.dtype)
    lse = np.full((Hq, total), -np.inf, q.dtype)
    for b in range(len(cu_q) - 1):
        rows, keys = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if rows.start == rows.stop:
            continue
        out_b, lse_b = dotattn.attention(
            q[rows].transpose(1, 0, 2),
            heads_first(k[keys]),
            heads_first(v[keys]),
            is_causal=causal,
            return_lse=True,
            **options,
        )
        out[rows] = out_b.transpose(1, 0, 2)
        lse[:, rows] = lse_b
    return out, lse


def check_varlen(q, k, v, cu_q, cu_k, **options):
    """attention_varlen (with its LSE) against the reference and against the
    loop over the sequences; without the LSE, the same bits. Returns (out, lse)."""
    out, lse = dotattn.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **options)
    ref, ref_lse = dotattn.reference.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **options)
    assert out.shape == (q.shape[0], q.shape[1], v.shape[-1]) and lse.shape == (q.shape[1], q.shape[0])
    assert_matches(out, ref, q.dtype)
    assert_matches(lse, ref_lse, q.dtype)
    loop, loop_lse = per_sequence(q, k, v, cu_q, cu_k, **options)
    assert_matches(out, loop.astype(np.float64), q.dtype)
    assert_matches(lse, loop_lse.astype(np.float64), q.dtype)
    np.testing.assert_array_equal(dotattn.attention_varlen(q, k, v, cu_q, cu_k, **options), out)
    return out, lse


def scatter(rng, k, v, cu_k, key_cache, value_cache, *, table_width=None):
    """Writes each sequence's keys and values (packed k, v) into pages of the
    caches (num_pages, page_size, Hkv, E), taken in random order. Returns
    the block table (int32; entries past a sequence's last page out of range,
    -1 or num_pages + 5, never read), seq_lens_k (int32) and the free slots
    (num_pages, page_size), which the caller fills with garbage."""
    num_pages, page_size = key_cache.shape[:2]
    lengths = np.diff(cu_k).astype(np.int64)
    counts = -(-lengths // page_size)
    assert counts.sum() <= num_pages
    width = int(counts.max(initial=0)) + 1 if table_width is None else table_width
    table = np.where(rng.random((len(lengths), width)) < 0.5, -1, num_pages + 5)
    free = np.ones((num_pages, page_size), bool)
    order, used = rng.permutation(num_pages), 0
    for b, n in enumerate(lengths):
        pages = order[used : used + counts[b]]
        used += counts[b]
        table[b, : counts[b]] = pages
        j = np.arange(n)
        slots = pages[j // page_size], j % page_size
        key_cache[slots] = k[cu_k[b] : cu_k[b + 1]]
        value_cache[slots] = v[cu_k[b] : cu_k[b + 1]]
        free[slots] = False
    return table.astype(np.int32), lengths.astype(np.int32), free


def stored_cache(x, free, fmt):
    """A cache x (..., E) stored as fmt, its free slots (free broadcasts to
    x.shape[:-1]) NaN: the values for float formats, the scales for int8
    (whose data is finite by construction)."""
    if fmt is None:
        return x
    free = np.broadcast_to(free, x.shape[:-1])
    if fmt.startswith("int8"):
        cache = stored(np.where(free[..., None], 0, x), fmt)
        cache.scale[free] = np.nan
        return cache
    return stored(np.where(free[..., None], np.nan, x), fmt)


def paged(rng, k, v, cu_k, page_size, *, spare=3, k_fmt=None, v_fmt=None):
    """The packed keys of each sequence in pages of page_size, in random
    order, with `spare` pages no sequence uses: (key_cache, value_cache,
    block_table, seq_lens_k), the caches stored as k_fmt / v_fmt (None: as
    they are)."""
    lengths = np.diff(cu_k)
    num_pages = int((-(-lengths // page_size)).sum()) + spare
    kc = np.full((num_pages, page_size, *k.shape[1:]), np.nan, k.dtype)
    vc = np.full((num_pages, page_size, *v.shape[1:]), np.nan, v.dtype)
    table, lens, free = scatter(rng, k, v, cu_k, kc, vc)
    return stored_cache(kc, free[..., None], k_fmt), stored_cache(vc, free[..., None], v_fmt), table, lens


def check_paged(q, kc, vc, table, lens, cu_q=None, **options):
    """attention_paged (with its LSE) against the reference; without the
    LSE, the same bits. Returns (out, lse)."""
    out, lse = dotattn.attention_paged(q, kc, vc, table, lens, cu_q, return_lse=True, **options)
    ref, ref_lse = dotattn.reference.attention_paged(q, kc, vc, table, lens, cu_q, return_lse=True, **options)
    assert_matches(out, ref, q.dtype)
    assert_matches(lse, ref_lse, q.dtype)
    np.testing.assert_array_equal(dotattn.attention_paged(q, kc, vc, table, lens, cu_q, **options), out)
    return out, lse


def assert_same_as(out, lse, other, dtype):
    """(out, lse) matches another dotattn result (other) within the tolerances."""
    assert_matches(out, other[0].astype(np.float64), dtype)
    assert_matches(lse, other[1].astype(np.float64), dtype)


def rows_of(cu, b):
    return slice(int(cu[b]), int(cu[b + 1]))


# --- varlen --------------------------------------------------------------------

# Sequences: queries and keys of their own lengths. An empty query sequence
# (with keys), one query without keys, L > S (lower_right causal: the first
# L - S rows see nothing), L < S, L == S.
Q_LENS = [5, 0, 20, 1, 33, 4]
K_LENS = [9, 4, 7, 0, 70, 4]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True, "upper_left"])
def test_varlen_mixed_lengths(rng, dtype, is_causal):
    q, k, v, cu_q, cu_k = packed(rng, dtype, Q_LENS, K_LENS, Hq=8, Hkv=2, E=32, Ev=24)
    out, lse = check_varlen(q, k, v, cu_q, cu_k, is_causal=is_causal)
    # The query without keys: zeros and -inf.
    np.testing.assert_array_equal(out[rows_of(cu_q, 3)], 0)
    np.testing.assert_array_equal(lse[:, rows_of(cu_q, 3)], -np.inf)
    if is_causal is True:  # bottom-right: rows 0..12 of sequence 2 (L = 20, S = 7) see nothing
        hidden = slice(int(cu_q[2]), int(cu_q[2]) + 13)
        np.testing.assert_array_equal(out[hidden], 0)
        np.testing.assert_array_equal(lse[:, hidden], -np.inf)
        assert np.isfinite(lse[:, int(cu_q[2]) + 13 : int(cu_q[3])]).all()
        np.testing.assert_array_equal(
            dotattn.attention_varlen(q, k, v, cu_q, cu_k, is_causal="lower_right"), out
        )
    if is_causal == "upper_left":  # row i sees keys 0..i: every row of sequence 2 sees one at least
        assert np.isfinite(lse[:, rows_of(cu_q, 2)]).all()
    seen = np.isfinite(lse)
    assert np.isfinite(out).all() and (out[~seen.T] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_empty(rng, dtype):
    # No sequence at all; sequences of no queries; queries without any keys.
    q, k, v, cu_q, cu_k = packed(rng, dtype, [], [], Hq=4, Hkv=2, E=16)
    out, lse = dotattn.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True)
    assert out.shape == (0, 4, 16) and lse.shape == (4, 0) and out.dtype == dtype
    q, k, v, cu_q, cu_k = packed(rng, dtype, [0, 0], [5, 3], Hq=4, Hkv=2, E=16)
    out, lse = dotattn.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True)
    assert out.shape == (0, 4, 16) and lse.shape == (4, 0)
    q, k, v, cu_q, cu_k = packed(rng, dtype, [3, 2], [0, 0], Hq=4, Hkv=2, E=16)
    out, lse = check_varlen(q, k, v, cu_q, cu_k, is_causal=True)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(lse, -np.inf)


@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_long_sequences(rng, dtype):
    # Decode rows against 1500 and 1100 keys (split into key ranges) beside
    # a causal prefill of 300.
    q, k, v, cu_q, cu_k = packed(rng, dtype, [1, 300, 2], [1500, 300, 1100], Hq=8, Hkv=2, E=64)
    check_varlen(q, k, v, cu_q, cu_k, is_causal=True)


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_varlen_kv_formats(rng, fmt):
    q, k, v, cu_q, cu_k = packed(rng, np.float32, [1, 9, 0, 30], [300, 9, 5, 64], Hq=8, Hkv=2, E=64)
    check_varlen(q, stored(k, fmt), stored(v, fmt), cu_q, cu_k, is_causal=True)


def test_varlen_kv_formats_mixed(rng):
    q, k, v, cu_q, cu_k = packed(rng, np.float32, [2, 17], [1100, 40], Hq=4, Hkv=1, E=64)
    check_varlen(q, stored(k, "int8"), stored(v, "float16"), cu_q, cu_k, is_causal="upper_left")
    check_varlen(q, stored(k, "float16"), stored(v, "int8_row"), cu_q, cu_k)


# --- score options through varlen and paged -------------------------------------

OPTION_CASES = {
    "window": dict(window=(9, 2)),
    "window-causal": dict(window=(5, None), is_causal=True),
    "softcap": dict(softcap=2.5, is_causal=True),
    "alibi": dict(alibi_slopes=alibi(8), is_causal="upper_left"),
    "sinks": dict(sinks=[1.0, -0.5, 2.25, 0.0, -3.0, 0.75, 4.0, -1.25], is_causal=True),
    "all": dict(
        window=(30, None),
        softcap=3.0,
        alibi_slopes=alibi(8),
        sinks=[1.0, -0.5, 2.25, 0.0, -3.0, 0.75, 4.0, -1.25],
        is_causal=True,
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", OPTION_CASES)
def test_options_varlen_and_paged(rng, dtype, option):
    options = OPTION_CASES[option]
    q_lens, k_lens = [3, 0, 1, 40, 6, 2], [50, 7, 0, 40, 130, 3]
    q, k, v, cu_q, cu_k = packed(rng, dtype, q_lens, k_lens, Hq=8, Hkv=2, E=32)
    varlen = check_varlen(q, k, v, cu_q, cu_k, **options)
    kc, vc, table, lens = paged(rng, k, v, cu_k, 7)
    out, lse = check_paged(q, kc, vc, table, lens, cu_q, **options)
    assert_same_as(out, lse, varlen, dtype)
    # The query without keys: zeros, and an LSE of the sink (or -inf).
    np.testing.assert_array_equal(out[rows_of(cu_q, 2)], 0)
    sinks = options.get("sinks")
    want = -np.inf if sinks is None else np.asarray(sinks, dtype)[:, None]
    np.testing.assert_array_equal(lse[:, rows_of(cu_q, 2)], np.broadcast_to(want, (8, 1)))


# --- paged decode -----------------------------------------------------------------

# Keys per sequence: mid-page ends, one key, none, whole pages of 16 (and of 5).
DECODE_LENS = [37, 1, 0, 16, 250, 80, 3]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [16, 5])
def test_paged_decode(rng, dtype, page_size):
    B = len(DECODE_LENS)
    q, k, v, cu_q, cu_k = packed(rng, dtype, [1] * B, DECODE_LENS, Hq=8, Hkv=2, E=64, Ev=48)
    kc, vc, table, lens = paged(rng, k, v, cu_k, page_size, spare=5)
    assert np.isnan(kc).any() and (table < 0).any()  # garbage that must not be read
    out, lse = check_paged(q, kc, vc, table, lens)
    assert out.shape == (B, 8, 48) and lse.shape == (8, B)
    assert_same_as(out, lse, dotattn.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True), dtype)
    np.testing.assert_array_equal(out[2], 0)  # no keys
    np.testing.assert_array_equal(lse[:, 2], -np.inf)
    assert np.isfinite(out).all()
    # The default cu_seqlens_q is one query per sequence.
    np.testing.assert_array_equal(dotattn.attention_paged(q, kc, vc, table, lens, np.arange(B + 1)), out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_long_sequence(rng, dtype):
    # 1500 keys in 94 pages (split into key ranges), beside short ones.
    q, k, v, cu_q, cu_k = packed(rng, dtype, [1, 1, 1], [1500, 3, 777], Hq=8, Hkv=2, E=64)
    kc, vc, table, lens = paged(rng, k, v, cu_k, 16)
    out, lse = check_paged(q, kc, vc, table, lens)
    assert_same_as(out, lse, dotattn.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True), dtype)
    check_paged(q, kc, vc, table, lens, window=(1000, None), sinks=sink_logits(rng, 8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [True, "upper_left", False])
def test_paged_query_lengths(rng, dtype, is_causal):
    # Chunked prefill and speculative decoding: 1, 3 and 100 queries (and 7
    # queries against 4 keys, whose first rows see nothing when causal).
    q_lens, k_lens = [1, 3, 100, 7], [40, 203, 100, 4]
    q, k, v, cu_q, cu_k = packed(rng, dtype, q_lens, k_lens, Hq=4, Hkv=2, E=32)
    kc, vc, table, lens = paged(rng, k, v, cu_k, 16)
    out, lse = check_paged(q, kc, vc, table, lens, cu_q, is_causal=is_causal)
    varlen = dotattn.attention_varlen(q, k, v, cu_q, cu_k, is_causal=is_causal, return_lse=True)
    assert_same_as(out, lse, varlen, dtype)
    if is_causal is True:
        np.testing.assert_array_equal(lse[:, int(cu_q[3]) : int(cu_q[3]) + 3], -np.inf)


# (k_fmt, v_fmt): every format with itself, and mixed pairs.
PAGED_FORMATS = [(f, f) for f in KV_FORMATS] + [
    ("int8", "float16"),
    ("bfloat16", "int8_row"),
    ("float16", "float32"),
]


@pytest.mark.parametrize("k_fmt, v_fmt", PAGED_FORMATS, ids=[f"{a}-{b}" for a, b in PAGED_FORMATS])
def test_paged_decode_kv_formats(rng, k_fmt, v_fmt):
    lengths = [130, 1, 0, 64, 33, 1100]
    q, k, v, cu_q, cu_k = packed(rng, np.float32, [1] * len(lengths), lengths, Hq=8, Hkv=2, E=64)
    kc, vc, table, lens = paged(rng, k, v, cu_k, 16, k_fmt=k_fmt, v_fmt=v_fmt)
    out, lse = check_paged(q, kc, vc, table, lens)
    assert np.isfinite(out).all()
    # The same keys packed, stored alike (quantised by rows: the same values).
    varlen = dotattn.attention_varlen(q, stored(k, k_fmt), stored(v, v_fmt), cu_q, cu_k, return_lse=True)
    assert_same_as(out, lse, varlen, np.float32)


def view_of(cache, i):
    """vLLM's (2, num_blocks, Hkv, block_size, E) cache's K (i = 0) or V
    (i = 1) as (num_blocks, block_size, Hkv, E): a view."""
    if isinstance(cache, dotattn.QuantizedKV):
        return dotattn.QuantizedKV(cache.data[i].transpose(0, 2, 1, 3), cache.scale[i].transpose(0, 2, 1, 3))
    return cache[i].transpose(0, 2, 1, 3)


@pytest.mark.parametrize("fmt", ["float32", "float16", "int8"])
def test_vllm_cache_layout(rng, fmt):
    Hq, Hkv, E, block_size, num_blocks = 8, 2, 64, 16, 256
    lengths = [100, 1, 513, 0]
    q, k, v, cu_q, cu_k = packed(rng, np.float32, [1] * 4, lengths, Hq=Hq, Hkv=Hkv, E=E)
    raw = np.full((2, num_blocks, Hkv, block_size, E), np.nan, np.float32)
    table, lens, free = scatter(rng, k, v, cu_k, view_of(raw, 0), view_of(raw, 1))
    cache = stored_cache(raw, free[None, :, None, :], fmt)
    kc, vc = view_of(cache, 0), view_of(cache, 1)
    data = cache.data if isinstance(cache, dotattn.QuantizedKV) else cache
    k_data = kc.data if isinstance(kc, dotattn.QuantizedKV) else kc
    assert np.shares_memory(k_data, data) and not k_data.flags.c_contiguous
    assert k_data.shape == (num_blocks, block_size, Hkv, E) and k_data.strides[-1] == k_data.itemsize
    out, lse = check_paged(q, kc, vc, table, lens)
    varlen = dotattn.attention_varlen(q, stored(k, fmt), stored(v, fmt), cu_q, cu_k, return_lse=True)
    assert_same_as(out, lse, varlen, np.float32)

    tracemalloc.start()
    dotattn.attention_paged(q, kc, vc, table, lens, return_lse=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < k_data.nbytes / 20, f"{peak} bytes allocated for a {k_data.nbytes}-byte key cache: a copy?"


@pytest.mark.parametrize("dtype", DTYPES)
def test_cache_without_pages(dtype):
    # A pool of no pages yet serves sequences without keys (zeros, LSE -inf)
    # and an empty batch. NumPy 2 gives empty arrays such as np.zeros((0,
    # 16, 2, 16)) strides of 0, a layout the caller cannot choose.
    q = np.ones((2, 4, 16), dtype)
    kc, vc = np.zeros((0, 16, 2, 16), dtype), np.zeros((0, 16, 2, 8), dtype)
    out, lse = dotattn.attention_paged(q, kc, vc, np.zeros((2, 1), np.int32), [0, 0], return_lse=True)
    np.testing.assert_array_equal(out, np.zeros((2, 4, 8)))
    np.testing.assert_array_equal(lse, np.full((4, 2), -np.inf))
    out, lse = dotattn.attention_paged(q[:0], kc, vc, np.zeros((0, 0), np.int32), [], return_lse=True)
    assert out.shape == (0, 4, 8) and lse.shape == (4, 0)


# --- index arrays, out= ------------------------------------------------------------


def test_index_arrays_of_any_integer_dtype_and_layout(rng):
    q, k, v, cu_q, cu_k = packed(rng, np.float32, [3, 0, 5], [4, 6, 20], Hq=4, Hkv=2, E=16)
    want = dotattn.attention_varlen(q, k, v, cu_q, cu_k, is_causal=True)
    for dtype in (np.int64, np.int16, np.uint8, np.uint64):
        got = dotattn.attention_varlen(q, k, v, cu_q.astype(dtype), cu_k.astype(dtype), is_causal=True)
        np.testing.assert_array_equal(got, want)
    got = dotattn.attention_varlen(q, k, v, cu_q.tolist(), cu_k.tolist(), is_causal=True)
    np.testing.assert_array_equal(got, want)
    strided = np.repeat(cu_q, 2)[::2]  # int32 with stride 2
    np.testing.assert_array_equal(dotattn.attention_varlen(q, k, v, strided, cu_k, is_causal=True), want)

    kc, vc, table, lens = paged(rng, k, v, cu_k, 3)
    want = dotattn.attention_paged(q, kc, vc, table, lens, cu_q, is_causal=True)
    varlen = dotattn.attention_varlen(q, k, v, cu_q, cu_k, is_causal=True)
    assert_matches(want, varlen.astype(np.float64), np.float32)
    wide = np.full((table.shape[0], table.shape[1] + 4), -7, np.int32)
    wide[:, : table.shape[1]] = table
    variants = [
        (table.astype(np.int64), lens.astype(np.int64), cu_q.astype(np.int64)),
        (table.tolist(), lens.tolist(), cu_q.tolist()),
        (table.astype(np.int16), lens.astype(np.uint32), cu_q.astype(np.uint8)),
        (wide[:, : table.shape[1]], lens, cu_q),  # rows strided, read in place
        (np.asfortranarray(table), lens, cu_q),  # columns strided: converted
        (np.repeat(table, 2, axis=1)[:, ::2], np.repeat(lens, 2)[::2], cu_q),
    ]
    for t, n, c in variants:
        np.testing.assert_array_equal(dotattn.attention_paged(q, kc, vc, t, n, c, is_causal=True), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_in_place(rng, dtype):
    q, k, v, cu_q, cu_k = packed(rng, dtype, [4, 1, 0, 9], [10, 0, 3, 30], Hq=4, Hkv=1, E=16, Ev=8)
    want, want_lse = dotattn.attention_varlen(q, k, v, cu_q, cu_k, is_causal=True, return_lse=True)
    for return_lse in (False, True):
        out = np.full((q.shape[0], 4, 8), np.nan, dtype)
        got = dotattn.attention_varlen(q, k, v, cu_q, cu_k, is_causal=True, out=out, return_lse=return_lse)
        if return_lse:
            got, lse = got
            np.testing.assert_array_equal(lse, want_lse)
        assert got is out
        np.testing.assert_array_equal(out, want)

    kc, vc, table, lens = paged(rng, k, v, cu_k, 4)
    want, want_lse = dotattn.attention_paged(q, kc, vc, table, lens, cu_q, is_causal=True, return_lse=True)
    for return_lse in (False, True):
        out = np.full((q.shape[0], 4, 8), np.nan, dtype)
        got = dotattn.attention_paged(
            q, kc, vc, table, lens, cu_q, is_causal=True, out=out, return_lse=return_lse
        )
        if return_lse:
            got, lse = got
            np.testing.assert_array_equal(lse, want_lse)
        assert got is out
        np.testing.assert_array_equal(out, want)


def test_same_bits_at_any_thread_count(rng, restore_threads):
    q, k, v, cu_q, cu_k = packed(rng, np.float32, [1, 5, 60, 1], [1300, 5, 200, 17], Hq=8, Hkv=2, E=64)
    kc, vc, table, lens = paged(rng, k, v, cu_k, 16)
    results = []
    for n in (1, 2, 3):
        dotattn.set_num_threads(n)
        results.append(
            (
                dotattn.attention_varlen(q, k, v, cu_q, cu_k, is_causal=True, return_lse=True),
                dotattn.attention_paged(q, kc, vc, table, lens, cu_q, is_causal=True, return_lse=True),
            )
        )
    for result in results[1:]:
        for (out, lse), (out0, lse0) in zip(result, results[0]):
            np.testing.assert_array_equal(out, out0)
            np.testing.assert_array_equal(lse, lse0)


# --- bad arguments -------------------------------------------------------------------


def varlen_args(dtype=np.float32):
    """A valid call: q (10, 4, 16), k (12, 2, 16), v (12, 2, 8), three sequences."""
    rng = np.random.default_rng(0)
    return {
        "query": rng.standard_normal((10, 4, 16)).astype(dtype),
        "key": rng.standard_normal((12, 2, 16)).astype(dtype),
        "value": rng.standard_normal((12, 2, 8)).astype(dtype),
        "cu_seqlens_q": np.array([0, 3, 3, 10], np.int32),
        "cu_seqlens_k": np.array([0, 0, 5, 12], np.int32),
    }


def paged_args(dtype=np.float32):
    """A valid call: q (3, 4, 16), caches of 8 pages of 5 slots, seq_lens_k
    (7, 15, 0): pages (3, 0), (7, 1, 2) and none."""
    rng = np.random.default_rng(0)
    return {
        "query": rng.standard_normal((3, 4, 16)).astype(dtype),
        "key_cache": rng.standard_normal((8, 5, 2, 16)).astype(dtype),
        "value_cache": rng.standard_normal((8, 5, 2, 8)).astype(dtype),
        "block_table": np.array([[3, 0, -1], [7, 1, 2], [-1, 99, -1]], np.int32),
        "seq_lens_k": np.array([7, 15, 0], np.int32),
    }


def _set(name, value):
    def change(args):
        args[name] = value(args) if callable(value) else value

    return change


def _options(**options):
    def change(args):
        args.update(options)

    return change


COMMON_ERRORS = [
    (
        "alibi-length",
        _options(alibi_slopes=np.ones(3)),
        ValueError,
        r"alibi_slopes \(3,\) must have shape \(4,\)",
    ),
    ("sinks-length", _options(sinks=np.ones(5)), ValueError, r"sinks \(5,\) must have shape \(4,\)"),
    ("window", _options(window=(-2, 0)), ValueError, r"window=\(-2, 0\) must hold two ints >= -1"),
    ("softcap", _options(softcap=0.0), ValueError, r"softcap must be finite and > 0"),
    ("causal", _options(is_causal="bottom_right"), ValueError, r"is_causal must be False, True"),
    (
        "query-2d",
        _set("query", lambda a: a["query"][:, 0]),
        ValueError,
        r"query \(\d+, 16\) must have 3 dims",
    ),
    ("query-int", _set("query", lambda a: a["query"].astype(np.int32)), TypeError, r"query has dtype int32"),
]

VARLEN_ERRORS = [
    *COMMON_ERRORS,
    (
        "cu-q-falling",
        _set("cu_seqlens_q", [0, 3, 2, 10]),
        ValueError,
        r"cu_seqlens_q must rise from 0 to 10 ",
    ),
    ("cu-q-start", _set("cu_seqlens_q", [1, 3, 3, 10]), ValueError, r"cu_seqlens_q must rise from 0 to 10 "),
    (
        "cu-q-total",
        _set("cu_seqlens_q", [0, 3, 3, 9]),
        ValueError,
        r"cu_seqlens_q must rise .*\(0, 3, 3, 9\)",
    ),
    ("cu-k-total", _set("cu_seqlens_k", [0, 0, 5, 13]), ValueError, r"cu_seqlens_k must rise from 0 to 12 "),
    (
        "cu-k-falling",
        _set("cu_seqlens_k", [0, 6, 5, 12]),
        ValueError,
        r"cu_seqlens_k must rise from 0 to 12 ",
    ),
    ("cu-k-negative", _set("cu_seqlens_k", [0, -1, 5, 12]), ValueError, r"cu_seqlens_k must rise"),
    (
        "cu-lengths",
        _set("cu_seqlens_k", [0, 5, 12]),
        ValueError,
        r"cu_seqlens_k \(3,\) must have shape \(4,\)",
    ),
    (
        "cu-none",
        _set("cu_seqlens_q", np.zeros(0, np.int32)),
        ValueError,
        r"cu_seqlens_q \(0,\) must hold B \+ 1",
    ),
    ("cu-2d", _set("cu_seqlens_q", [[0, 3, 3, 10]]), ValueError, r"cu_seqlens_q \(1, 4\) must have 1 dims"),
    (
        "cu-float",
        _set("cu_seqlens_k", np.zeros(4)),
        TypeError,
        r"cu_seqlens_k has dtype float64; expected an integer",
    ),
    ("key-4d", _set("key", lambda a: a["key"][None]), ValueError, r"key \(1, 12, 2, 16\) must have 3 dims"),
    ("value-2d", _set("value", lambda a: a["value"][:, 0]), ValueError, r"value \(12, 8\) must have 3 dims"),
    (
        "key-E",
        _set("key", lambda a: a["key"][..., :15]),
        ValueError,
        r"query and key must have the same last dim E",
    ),
    (
        "key-heads",
        _set("key", lambda a: a["key"][:, :1].repeat(3, 1)),
        ValueError,
        r"key and value must have the same number of heads",
    ),
    (
        "value-rows",
        _set("value", lambda a: a["value"][:11]),
        ValueError,
        r"key and value must have the same length",
    ),
    (
        "key-float64",
        _set("key", lambda a: a["key"].astype(np.float64)),
        TypeError,
        r"key has dtype float64 but query is float32",
    ),
    (
        "key-int8",
        _set("key", lambda a: a["key"].astype(np.int8)),
        TypeError,
        r"key has dtype int8 without its scales",
    ),
]

PAGED_ERRORS = [
    *COMMON_ERRORS,
    (
        "page-too-large",
        _set("block_table", [[3, 0, -1], [7, 1, 8], [-1, -1, -1]]),
        ValueError,
        r"block_table\[1, 2\] = 8 is not a page of key_cache \(8, 5, 2, 16\)",
    ),
    (
        "page-negative",
        _set("block_table", [[3, -1, -1], [7, 1, 2], [-1, -1, -1]]),
        ValueError,
        r"block_table\[0, 1\] = -1 is not a page of key_cache",
    ),
    (
        "length-too-long",
        _set("seq_lens_k", [7, 16, 0]),
        ValueError,
        r"seq_lens_k\[1\] = 16 does not fit block_table \(3, 3\) of pages of 5 keys",
    ),
    (
        "length-negative",
        _set("seq_lens_k", [-1, 15, 0]),
        ValueError,
        r"seq_lens_k\[0\] = -1 does not fit block_table",
    ),
    ("lengths-shape", _set("seq_lens_k", [7, 15]), ValueError, r"seq_lens_k \(2,\) must have shape \(3,\)"),
    (
        "lengths-float",
        _set("seq_lens_k", [7.0, 15.0, 0.0]),
        TypeError,
        r"seq_lens_k has dtype float64; expected an integer",
    ),
    ("table-1d", _set("block_table", [3, 0, -1]), ValueError, r"block_table \(3,\) must have 2 dims"),
    (
        "table-rows",
        _options(block_table=np.zeros((2, 3), np.int32), cu_seqlens_q=[0, 1, 2, 3]),
        ValueError,
        r"block_table \(2, 3\) must have shape \(3, 3\)",
    ),
    (
        "table-float",
        _set("block_table", np.zeros((3, 3))),
        TypeError,
        r"block_table has dtype float64; expected an integer",
    ),
    (
        "table-too-wide",
        _set("block_table", np.full((3, 3), 2**40)),
        ValueError,
        r"block_table holds values that do not fit int32",
    ),
    ("cu-q-total", _set("cu_seqlens_q", [0, 1, 2, 4]), ValueError, r"cu_seqlens_q must rise from 0 to 3 "),
    ("cu-q-falling", _set("cu_seqlens_q", [0, 2, 1, 3]), ValueError, r"cu_seqlens_q must rise from 0 to 3 "),
    ("cu-q-length", _set("cu_seqlens_q", [0, 1, 3]), ValueError, r"seq_lens_k \(3,\) must have shape \(2,\)"),
    (
        "key-cache-3d",
        _set("key_cache", lambda a: a["key_cache"][0]),
        ValueError,
        r"key_cache \(5, 2, 16\) must have 4 dims",
    ),
    (
        "value-cache-5d",
        _set("value_cache", lambda a: a["value_cache"][None]),
        ValueError,
        r"value_cache \(1, 8, 5, 2, 8\) must have 4 dims",
    ),
    (
        "num-pages",
        _set("value_cache", lambda a: a["value_cache"][:7]),
        ValueError,
        r"key_cache \(8, 5, 2, 16\) and value_cache \(7, 5, 2, 8\) must have the same num_pages",
    ),
    (
        "page-size",
        _set("value_cache", lambda a: a["value_cache"][:, :4]),
        ValueError,
        r"must have the same num_pages and page_size",
    ),
    (
        "key-cache-E",
        _set("key_cache", lambda a: a["key_cache"][..., :15]),
        ValueError,
        r"key_cache.*E=15|E=15.*key_cache",
    ),
    (
        "key-cache-float64",
        _set("key_cache", lambda a: a["key_cache"].astype(np.float64)),
        TypeError,
        r"key_cache has dtype float64 but query is float32",
    ),
]


def check_refused(fn, args, change, exc, pattern):
    """fn(**args) after change(args) raises exc matching pattern, with and
    without return_lse, and leaves out as it was."""
    change(args)
    q = np.asarray(args["query"])
    Hq = q.shape[1] if q.ndim == 3 else 4
    value = args.get("value", args.get("value_cache"))
    out = np.full((q.shape[0], Hq, np.shape(value)[-1]), SENTINEL, np.float32)
    for return_lse in (False, True):
        with pytest.raises(exc, match=pattern):
            fn(**args, out=out, return_lse=return_lse)
        assert np.all(out == SENTINEL)


@pytest.mark.parametrize(
    "change, exc, pattern", [c[1:] for c in VARLEN_ERRORS], ids=[c[0] for c in VARLEN_ERRORS]
)
def test_varlen_bad_arguments(change, exc, pattern):
    check_refused(dotattn.attention_varlen, varlen_args(), change, exc, pattern)


@pytest.mark.parametrize(
    "change, exc, pattern", [c[1:] for c in PAGED_ERRORS], ids=[c[0] for c in PAGED_ERRORS]
)
def test_paged_bad_arguments(change, exc, pattern):
    check_refused(dotattn.attention_paged, paged_args(), change, exc, pattern)


@pytest.mark.parametrize(
    "fn, make", [(dotattn.attention_varlen, varlen_args), (dotattn.attention_paged, paged_args)]
)
def test_bad_out(fn, make):
    args = make()
    shape = (args["query"].shape[0], 4, 8)
    cases = [
        (
            np.full((*shape[:2], 9), SENTINEL, np.float32),
            ValueError,
            r"out \(.*\) does not match the result's shape",
        ),
        (np.full(shape, SENTINEL, np.float64), TypeError, r"out has dtype float64 but the result is float32"),
        (
            np.full((*shape[:2], 16), SENTINEL, np.float32)[..., ::2],
            ValueError,
            r"out \(.*\) must be C-contiguous",
        ),
        (np.full(shape, SENTINEL, np.float32), ValueError, r"out \(.*\) is read-only"),
    ]
    cases[-1][0].flags.writeable = False
    for out, exc, pattern in cases:
        for return_lse in (False, True):
            with pytest.raises(exc, match=pattern):
                fn(**args, out=out, return_lse=return_lse)
            assert np.all(out == SENTINEL)
    # out laid over the memory the query is read from.
    q = args["query"]
    buffer = np.zeros(q.size + int(np.prod(shape)), np.float32)
    args["query"] = buffer[: q.size].reshape(q.shape)
    args["query"][...] = q
    before = buffer.copy()
    with pytest.raises(ValueError, match=r"out overlaps query; an output must not share memory"):
        fn(**args, out=buffer[q.size - 1 : q.size - 1 + int(np.prod(shape))].reshape(shape))
    np.testing.assert_array_equal(buffer, before)


@pytest.mark.parametrize(
    "fn, make, name, stored_as",
    [
        (dotattn.attention_varlen, varlen_args, "key", np.float32),
        (dotattn.attention_varlen, varlen_args, "value", np.float16),
        (dotattn.attention_paged, paged_args, "key_cache", np.float32),
        (dotattn.attention_paged, paged_args, "value_cache", np.float16),
    ],
    ids=["varlen-key", "varlen-value", "paged-key", "paged-value"],
)
def test_float64_query_needs_float64_keys(fn, make, name, stored_as):
    args = make(np.float64)
    args[name] = args[name].astype(stored_as)
    out = np.full((args["query"].shape[0], 4, 8), SENTINEL)
    pattern = rf"{name} has dtype {np.dtype(stored_as)} but query is float64"
    with pytest.raises(TypeError, match=pattern):
        fn(**args, out=out)
    assert np.all(out == SENTINEL)


def test_no_attn_mask():
    with pytest.raises(TypeError, match="attn_mask"):
        dotattn.attention_varlen(**varlen_args(), attn_mask=None)
    with pytest.raises(TypeError, match="attn_mask"):
        dotattn.attention_paged(**paged_args(), attn_mask=None)


def test_unused_table_entries_are_not_checked():
    # Entries past a sequence's pages (-1, 99 in paged_args, and below) are
    # never read, whatever they hold.
    args = paged_args()
    want = dotattn.attention_paged(**args)
    args["block_table"] = np.array([[3, 0, 2**31 - 1], [7, 1, 2], [-(2**31), 8, -5]], np.int32)
    np.testing.assert_array_equal(dotattn.attention_paged(**args), want)
