"""Fuzzing (issue 5). Hypothesis draws shapes (sizes 0 and 1, the SIMD and
tile tails, long decodes), memory layouts (permuted and stepped dims,
negative strides, zero strides through np.broadcast_to, overlapping rows,
byte-swapped and misaligned copies, query/key/value as views of one buffer
or one array passed twice), broadcast and strided masks, causal rules,
scales and adversarial values (+-inf, NaN, +-1e30, subnormals, all-equal
and huge scores). Every case matches dotattn.reference or raises the
documented exception; nothing crashes or hangs. Then shapes whose sizes
overflow 32- or 64-bit products.

Comparisons are those of conftest.assert_matches (same NaN/inf positions,
dotattn.reference.TOLERANCES) with three allowances, each used only where
it applies and each following from what README.md documents:

* Underflowed weights. A key whose weight is below FLUSHED[dtype] (1e-38
  for float32, 1e-290 for float64; computed as score - LSE, so weights the
  reference's own exp underflows to 0 count too) may or may not bring its
  value's inf or NaN into the output: the float32 SIMD kernels flush
  in-block weights under about 1e-38 (README: "not even an inf"), the
  scalar ones keep subnormal weights, and an inf already in an accumulator
  meets the later rescaling factors, which underflow elsewhere. So each
  output element may hold any IEEE sum of the non-finite values of such
  keys on top of what the other keys give, and its finite value is the
  reference's without those keys. Nothing else: a NaN that no combination
  of values explains is a failure.
* Subnormal results. When the whole result is so small that the tolerance
  falls below the subnormal spacing, relative accuracy does not exist; the
  error is bounded by 4 (S + 2) times the smallest subnormal instead.
* Overflow-prone data (test_overflow_prone_data_is_handled_sanely): +-1e30
  and +-max/8 in query or key, +-max/2 in value, huge or underflowing
  scales. "float32 computes in float32", so its scores and sums overflow or
  round away where the float64 reference does not (and a score near 1e30
  keeps no digit of its ordering in either); there only the rows whose
  scores and values are moderate are held to the tolerances, the others to
  the softmax's own bounds.

Huge scores are otherwise drawn from "exact" data (small integers times
powers of two, power-of-two scales) whose scores every kernel computes
without rounding, as conftest.py explains; likewise huge values come one
sign per problem, so that no result is a cancellation of huge terms.

Key and value stored as float16, bfloat16 or int8 get a property of their
own (test_stored_formats_match_the_reference): shapes with tails and empty
sizes, each of K and V in its own format, int8 groups that divide E, the
cache layouts a model has (token-major, a prefix of a longer cache, keys
read backwards), masks and causal rules, with moderate values; the
reference sees the values as stored.

The score options, the packed calls and merge have properties of their
own, on standard-normal data held to the plain tolerances: random window,
softcap, alibi_slopes and sinks (with causal rules, masks, layouts and
decoding shapes) for attention and attention_weights; attention_varlen
with random query and key lengths (0 included) in every K/V format;
attention_paged with random page sizes, pages in random order, spare pages,
block-table entries past each sequence's pages out of range, NaN in the free
slots, vLLM's cache view and per-sequence query lengths; and dotattn.merge
of attention over random shards of the keys (some empty, the sinks on shard
0) against attention over all of them.

Examples per property are fractions of the profile's (examples()): 788 in
all per kernel set under the default profile, 7.5 times as many under
HYPOTHESIS_PROFILE=thorough.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import dotattn
import numpy as np
import pytest
from conftest import DTYPES, KV_FORMATS, assert_matches, stored
from dotattn.reference import TOLERANCES
from hypothesis import given, note, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.usefixtures("isa")

CAUSAL = [False, True, "upper_left", "lower_right"]

# Weights under these may or may not bring their value's inf or NaN (see above).
FLUSHED = {np.dtype(np.float32): 2 * float(np.finfo(np.float32).tiny), np.dtype(np.float64): 1e-290}


def examples(fraction: float) -> settings:
    """A share of the loaded profile's examples: of 400 by default, of 3000
    with HYPOTHESIS_PROFILE=thorough."""
    return settings(max_examples=max(10, round(settings.default.max_examples * fraction)))


# ---------------------------------------------------------------- layouts


def laid_out(draw, a: np.ndarray) -> np.ndarray:
    """A view holding a's values in a random memory layout: dims permuted and
    stepped in memory, some reversed (negative strides); usually a unit-stride
    last dim, sometimes not; rarely byte-swapped or misaligned (the copied
    paths)."""
    nd = a.ndim
    if nd == 0:
        return a.copy()
    last_inner = draw(st.integers(0, 5)) > 0
    order = list(draw(st.permutations(range(nd - 1 if last_inner else nd))))
    if last_inner:
        order.append(nd - 1)
    steps = [draw(st.sampled_from([1, 1, 1, 2, 3])) for _ in range(nd)]
    if last_inner and draw(st.integers(0, 4)) > 0:
        steps[-1] = 1
    shape = [a.shape[d] * steps[d] for d in order]
    exotic = draw(st.sampled_from([None] * 10 + ["swapped", "misaligned"]))
    if exotic == "swapped" and a.dtype.itemsize > 1:
        storage = np.empty(shape, a.dtype.newbyteorder())
    elif exotic == "misaligned" and a.dtype.itemsize > 1:
        count = math.prod(shape)
        storage = np.empty(count * a.dtype.itemsize + 1, np.uint8)[1:].view(a.dtype).reshape(shape)
    else:
        storage = np.empty(shape, a.dtype)
    view = storage[tuple(slice(None, None, steps[d]) for d in order)].transpose(np.argsort(order))
    for d in range(nd):
        if draw(st.integers(0, 3)) == 0:
            view = np.flip(view, d)
    view[...] = a
    return view


Fill = Callable[[tuple], np.ndarray]


def operand(draw, shape: tuple, fill: Fill, dtype) -> np.ndarray:
    """An array of `shape` with values from fill (float64 or bool, cast to
    dtype) in a random layout: sometimes some dims broadcast with zero stride
    (their values then repeat), sometimes rows that overlap in memory (a
    sliding window over one buffer)."""
    nd = len(shape)
    style = draw(st.sampled_from(["plain"] * 6 + ["broadcast"] * 3 + ["sliding"]))
    if style == "sliding" and nd >= 2 and shape[-1] > 0 and shape[-2] > 0:
        # Row i is buffer[i : i + n]: consecutive rows share all but one element.
        buffer = laid_out(draw, fill((*shape[:-2], shape[-2] + shape[-1] - 1)).astype(dtype))
        return np.lib.stride_tricks.sliding_window_view(buffer, shape[-1], axis=-1)
    broadcast = [d for d in range(nd) if shape[d] > 1 and style == "broadcast" and draw(st.booleans())]
    base = tuple(1 if d in broadcast else n for d, n in enumerate(shape))
    view = laid_out(draw, fill(base).astype(dtype))
    return np.broadcast_to(view, shape) if broadcast else view


def mask_shape(draw, target: tuple, keep_last: bool = False) -> tuple:
    """A shape that broadcasts to target: leading dims dropped, others 1
    (but not the last if keep_last)."""
    kept = target[draw(st.integers(0, len(target) - 1 if keep_last else len(target))) :]
    shape = [n if draw(st.booleans()) else 1 for n in kept]
    if keep_last:
        shape[-1] = target[-1]
    return tuple(shape)


# ----------------------------------------------------------------- values


def sprinkle(rng, a: np.ndarray, specials: list, rate: float) -> np.ndarray:
    """a with about rate of its entries replaced by values drawn from specials."""
    a = np.array(a, dtype=np.float64)
    if rate and a.size:
        hit = rng.random(a.shape) < rate
        a[hit] = rng.choice(np.asarray(specials, dtype=np.float64), size=int(hit.sum()))
    return a


def rates(draw) -> float:
    return draw(st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.05, 0.3]))


class Values:
    """How one problem's values are drawn. "moderate": standard-normal data
    with +-inf, NaN, zeros, subnormals and tiny normals sprinkled into query
    and key, 1e30 or -1e30 (one sign per problem, so that no output is a
    cancellation of huge terms), inf, NaN and subnormals into value, -inf,
    +-1e30, NaN and +inf into additive masks, and a scale that keeps the
    scores moderate. "exact": small integers times powers of two and a
    power-of-two scale (up to 2^+-60), so that scores are exact whatever the
    summation order: huge scores up to 2^(maxexp - 24) (float32: 2e31;
    2^100 is the 1e30 of the issue), all-equal scores, exact ties. Either
    may have "peaks": a few keys scoring far above the rest."""

    def __init__(self, draw, dtype, E: int, aliased: bool, blocks: bool = False):
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        fi = np.finfo(self.dtype)
        self.sub = float(fi.smallest_subnormal)
        self.regime = draw(st.sampled_from(["moderate", "moderate", "exact"]))
        self.qk_rate, self.v_rate, self.mask_rate = rates(draw), rates(draw), rates(draw)
        # A few keys far above the rest: a later key block raises the row max
        # so much that the earlier blocks' weights underflow.
        self.peaks = draw(st.integers(0, 2)) == 0
        self.mask_specials = [-np.inf, -np.inf, -np.inf, np.inf, np.nan, 0.0]
        if blocks:  # a few non-finite values, peaks, and no NaN rows to hide a wrong one
            self.v_rate, self.peaks, self.qk_rate = draw(st.sampled_from([0.002, 0.01, 0.05])), True, 0.0
            self.mask_specials = [-np.inf, 0.0]
        self.zero_query = draw(st.integers(0, 15)) == 0  # every score 0 (or NaN)
        self.v_style = draw(st.sampled_from(["normal"] * 5 + ["subnormal"])) if not blocks else "normal"
        self.huge_sign = draw(st.sampled_from([-1.0, 1.0]))
        if self.regime == "moderate":
            self.magnitude = draw(st.sampled_from([1.0, 1.0, 0.25, 3.0]))
            kind = draw(st.sampled_from(["default"] * 2 + ["zero", "small", "negative", "subnormal", "tiny"]))
            scales = {
                "default": None,
                "zero": 0.0,
                "small": draw(st.floats(0.01, 2.0)),
                "negative": draw(st.floats(-2.0, -0.01)),
                "subnormal": self.sub * draw(st.sampled_from([1, 3, 1000])),
                "tiny": 1e-30,
            }
            self.scale = scales[kind]
        else:
            # score = ints * 2^c, c = ea + eb + es; every factor, the unscaled
            # dot product (|ints| <= 3 * 64 * 3 * 64 * 70 < 2^22 with peaks in
            # key and, when it is a view of the key, query) and the score plus
            # a mask (peaks 2^12) stay exact, normal and finite. With aliasing,
            # query and value are views of the key's data: ea = eb.
            top = fi.maxexp - 24
            c = min(draw(st.sampled_from([-40, -8, -3, -1, 0, 0, 1, 2, 3, 5, 7, 20, 60, 100, top])), top)
            es = draw(st.integers(-60, 60))
            if E in (1, 4, 16, 64) and draw(st.booleans()):
                es, self.scale = -int(math.log2(E)) // 2, None  # 1/sqrt(E) is a power of two
            else:
                zero = draw(st.integers(0, 15)) == 0
                self.scale = 0.0 if zero else draw(st.sampled_from([1.0, 1.0, -1.0])) * 2.0**es
            d = max(min(c - es, top), -top)
            self.ea = max(min(d // 2 + (0 if aliased else draw(st.integers(-8, 8))), top), -top)
            self.eb = self.ea if aliased else max(min(d - self.ea, top), -top)
            self.grid = 2.0 ** (self.ea + self.eb + es)
            self.positive_keys = aliased  # keys that are also values: no exact cancellation
        if E == 0 and self.scale is None and draw(st.booleans()):
            self.scale = 1.0  # else E = 0 with the default scale, which must raise
        self.kwargs_scale = {} if self.scale is None else {"scale": self.scale}

    # Each returns float64 values for the given shape.
    def query(self, shape):
        if self.zero_query:
            return np.zeros(shape)
        if self.regime == "moderate":
            a = self.rng.standard_normal(shape) * self.magnitude
            return sprinkle(self.rng, a, self._qk_specials(), self.qk_rate)
        a = self.rng.integers(-3, 4, shape) * 2.0**self.ea
        return sprinkle(self.rng, a, [np.nan, np.inf, -np.inf, 0.0], self.qk_rate)

    def key(self, shape):
        if self.regime == "moderate":
            a = self.rng.standard_normal(shape) * self.magnitude
            return sprinkle(self.rng, a, self._qk_specials(), self.qk_rate)
        low = 1 if self.positive_keys else -3
        a = self.rng.integers(low, 4, shape) * 2.0**self.eb
        if self.peaks and len(shape) >= 2 and shape[-2] > 1:
            a[..., self._some(shape[-2]), :] *= 64
        return sprinkle(self.rng, a, [np.nan, np.inf, -np.inf, 0.0], self.qk_rate)

    def value(self, shape):
        if self.v_style == "subnormal":
            return np.asarray(self.rng.integers(-40, 41, shape) * self.sub)
        a = self.rng.standard_normal(shape)
        specials = [np.nan, np.inf, -np.inf, 0.0, self.sub, 1e30 * self.huge_sign]
        return sprinkle(self.rng, a, specials, self.v_rate)

    def shared_kv(self, shape):
        """A buffer that key and value are both views of."""
        if self.regime == "moderate":
            a = self.rng.standard_normal(shape)
            return sprinkle(self.rng, a, [np.nan, np.inf, -np.inf, 0.0, self.sub], self.qk_rate)
        return self.key(shape)

    def float_mask(self, shape):
        if self.regime == "moderate":
            a = self.rng.standard_normal(shape) * 2
            specials = [*self.mask_specials, 1e30, -1e30, self.sub]
            peak = 1e30  # a score under 1e14 vanishes next to it, in float32 and float64
        else:
            a = self.rng.integers(-3, 4, shape) * self.grid
            specials = self.mask_specials
            peak = 4096 * self.grid
        if self.peaks and shape and shape[-1] > 1:
            a[..., self._some(shape[-1])] = peak
        return sprinkle(self.rng, a, specials, self.mask_rate or 0.05)

    def moderate_scale(self, q, k) -> dict:
        """The scale keyword. In the moderate regime, scaled down where
        needed so that every score is a sum of terms whose magnitudes add
        up to at most 40 (conftest.py: the float32 tolerance presumes
        scores of moderate size), whatever the zero strides or the overlaps
        made of the data."""
        if self.regime != "moderate" or q.size == 0 or k.size == 0:
            return self.kwargs_scale
        scale = 1 / math.sqrt(q.shape[-1]) if self.scale is None else self.scale
        qf, kf = (np.asarray(a, np.float64) for a in (q, k))
        qf, kf = (np.where(np.isfinite(a), np.abs(a), 0.0) for a in (qf, kf))
        kf = per_query_head(kf, qf.shape[-3] if qf.ndim >= 3 else 1)
        largest = float(np.max(qf @ np.swapaxes(kf, -1, -2), initial=0.0)) * abs(scale)
        return {"scale": scale * 40 / largest} if largest > 40 else self.kwargs_scale

    def _some(self, n: int) -> np.ndarray:
        """One to three random indices below n."""
        return self.rng.choice(n, size=min(n, int(self.rng.integers(1, 4))), replace=False)

    def bool_mask(self, shape, density):
        return np.asarray(self.rng.random(shape) < density)

    def _qk_specials(self):
        return [np.nan, np.inf, -np.inf, 0.0, self.sub, -self.sub, float(np.finfo(self.dtype).tiny), 1e-30]

    def describe(self) -> str:
        if self.regime == "moderate":
            return f"moderate x{self.magnitude}, rates qk={self.qk_rate} v={self.v_rate} ({self.v_style})"
        return f"exact 2^{self.ea}, 2^{self.eb}, grid {self.grid:g}, rates qk={self.qk_rate} v={self.v_rate}"


# --------------------------------------------------------------- problems

SIZES = st.one_of(
    st.sampled_from([0, 1, 1, 2, 3]),
    st.sampled_from([7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65]),
    st.integers(0, 70),
)


@st.composite
def problems(draw, *, blocks: bool = False):
    """(q, k, v, kwargs, dtype, use_out): a valid call, except that E = 0
    with the default scale must raise. dtype is the native one; an input may
    be byte-swapped. blocks: always several key blocks, with non-finite
    values and peaks."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    length = draw(
        st.sampled_from(["long", "decode"] if blocks else ["short"] * 14 + ["long"] * 3 + ["decode"] * 3)
    )
    short = length == "short"
    two_d = draw(st.integers(0, 5)) == 0
    sizes = [0, 1, 1, 2, 3] if short else [1, 2]
    batch = () if two_d else tuple(draw(st.lists(st.sampled_from(sizes), max_size=2 if short else 1)))
    Hkv = 1 if two_d else draw(st.sampled_from([0, 1, 1, 1, 2, 3] if short else [1, 2]))
    Hq = Hkv * (1 if two_d else draw(st.integers(1, 4 if short else 2)))
    if length == "decode":  # few rows: the keys are split into ranges, merged by their LSEs
        L, S = draw(st.integers(1, 3)), draw(st.integers(1024, 1300))
    elif length == "long":  # several blocks of keys, folded into the online softmax
        L, S = draw(st.integers(0, 17)), draw(st.integers(65, 700))
    else:
        L, S = draw(st.one_of(SIZES, st.sampled_from([95, 96, 97]))), draw(SIZES)  # 96-row blocks
    E, Ev = draw(SIZES), draw(SIZES)

    alias = draw(
        st.sampled_from(["none"] * 6 + ["k_is_v", "kv_buffer", "self", "q_in_k"] if short else ["none"])
    )
    if alias == "k_is_v":
        Ev = E
    if alias == "self":
        Hq, L, Ev = Hkv, S, E
    if alias == "q_in_k":
        Hq, L = Hkv, min(L, S)
    values = Values(draw, dtype, E, aliased=alias != "none", blocks=blocks)

    heads_q, heads_kv = ((), ()) if two_d else ((Hq,), (Hkv,))
    q_shape = (*batch, *heads_q, L, E)
    k_shape = (*batch, *heads_kv, S, E)
    v_shape = (*batch, *heads_kv, S, Ev)
    if alias == "kv_buffer":
        width = draw(st.integers(max(E, Ev), max(E + Ev, 1)))
        buffer = operand(draw, (*batch, *heads_kv, S, width), values.shared_kv, dtype)
        k, v = buffer[..., :E], buffer[..., width - Ev :]
    else:
        k = operand(draw, k_shape, values.key, dtype)
        v = k if alias in ("k_is_v", "self") else operand(draw, v_shape, values.value, dtype)
    if alias == "self":
        q = k
    elif alias == "q_in_k":
        r0 = draw(st.integers(0, S - L))
        q = k[..., r0 : r0 + L, :]
        if draw(st.booleans()):
            q = np.flip(q, -2)
    else:
        q = operand(draw, q_shape, values.query, dtype)

    # (With few rows, upper-left causal hides almost every key.)
    causal = draw(st.sampled_from(CAUSAL if short else [False, False, "lower_right", True]))
    kwargs = {"is_causal": causal, **values.moderate_scale(q, k)}
    mask_kind = draw(
        st.sampled_from(["float", "float", "bool", None] if blocks else [None, None, "bool", "float"])
    )
    if mask_kind:
        shape = mask_shape(draw, (*batch, *heads_q, L, S), keep_last=blocks)
        if mask_kind == "bool":
            density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
            kwargs["attn_mask"] = operand(draw, shape, lambda s: values.bool_mask(s, density), bool)
        else:
            kwargs["attn_mask"] = operand(draw, shape, values.float_mask, dtype)
    mask = kwargs.get("attn_mask")
    note(
        f"{dtype} q{q.shape}{q.strides} k{k.shape}{k.strides} v{v.shape}{v.strides} alias={alias} "
        f"{values.describe()} causal={kwargs['is_causal']!r} scale={kwargs.get('scale')} "
        f"mask={mask_kind} {None if mask is None else (mask.shape, mask.strides)}"
    )
    return q, k, v, kwargs, dtype, draw(st.booleans())


def must_raise(q, kwargs) -> bool:
    return q.shape[-1] == 0 and kwargs.get("scale") is None


# ------------------------------------------------------------ comparisons


def assert_close(out, ref, dtype, S: int, what: str) -> None:
    """out matches ref as conftest.assert_matches has it, except for a result
    wholly in the subnormal range, which is held to an absolute bound."""
    out, ref = np.asarray(out), np.asarray(ref)
    finite = np.isfinite(ref)
    largest = float(np.abs(ref[finite]).max(initial=0))
    floor = 4 * (S + 2) * float(np.finfo(dtype).smallest_subnormal)
    if TOLERANCES[np.dtype(dtype)]["elementwise"] * largest >= floor:
        assert_matches(out, ref, dtype)
        return
    assert out.dtype == np.dtype(dtype) and out.shape == ref.shape, what
    assert (kind(out) == kind(ref)).all(), f"{what}: NaN/inf positions differ"
    worst = float(np.abs(out[finite].astype(np.float64) - ref[finite]).max(initial=0))
    assert worst <= floor, f"{what}: subnormal result off by {worst:g} > {floor:g}"


def mask_parts(kwargs, shape) -> tuple[np.ndarray, np.ndarray]:
    """The user's mask as (seen, bias) of the weights' shape: a boolean mask
    hides keys whatever their score, even NaN, where an additive -inf leaves a
    NaN score NaN, so the two stay apart."""
    mask = kwargs.get("attn_mask")
    if mask is None:
        return np.ones(shape, bool), np.zeros(shape)
    mask = np.broadcast_to(np.asarray(mask), shape)
    if mask.dtype == bool:
        return mask, np.zeros(shape)
    return np.ones(shape, bool), mask.astype(np.float64)


def mask_also_hiding(kwargs, shape, hidden: np.ndarray) -> np.ndarray:
    """The user's mask, of the same kind, hiding the keys in `hidden` too."""
    seen, bias = mask_parts(kwargs, shape)
    if kwargs.get("attn_mask") is None or np.asarray(kwargs["attn_mask"]).dtype == bool:
        return seen & ~hidden
    return bias + np.where(hidden, -np.inf, 0.0)


def per_query_head(kv: np.ndarray, Hq: int) -> np.ndarray:
    """kv with each head repeated for the query heads that read it (GQA)."""
    if kv.ndim < 3 or kv.shape[-3] in (0, Hq):
        return kv
    return np.repeat(kv, Hq // kv.shape[-3], axis=-3)


def log_weights(q, k, kwargs) -> np.ndarray:
    """Each key's log-weight score - LSE in float64, so that weights the
    reference's exp underflows to 0 are told apart from hidden keys (-inf);
    NaN in NaN rows."""
    qf = np.asarray(q, np.float64)
    kf = per_query_head(np.asarray(k, np.float64), qf.shape[-3] if qf.ndim >= 3 else 1)
    L, E = qf.shape[-2:]
    S = kf.shape[-2]
    scale = kwargs.get("scale")
    scale = 1 / math.sqrt(E) if scale is None else scale
    i, j = np.arange(L)[:, None], np.arange(S)[None, :]
    causal = kwargs.get("is_causal", False)
    visible = j <= i + (S - L if causal == "lower_right" else 0) if causal else np.ones((L, S), bool)
    with np.errstate(all="ignore"):
        scores = qf @ np.swapaxes(kf, -1, -2) * scale
        seen, bias = mask_parts(kwargs, scores.shape)
        scores = np.where(visible & seen, scores + bias, -np.inf)
        m = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)
        return scores - (m + np.log(np.sum(np.exp(scores - m), axis=-1, keepdims=True)))


FINITE, POSINF, NEGINF, NAN = 0, 1, 2, 3


def kind(a: np.ndarray) -> np.ndarray:
    return np.select([np.isnan(a), np.isposinf(a), np.isneginf(a)], [NAN, POSINF, NEGINF], FINITE)


def combined(pos, neg, nan) -> np.ndarray:
    """What a sum holding +inf, -inf, NaN terms (flags) is, by IEEE rules."""
    return np.select([nan | (pos & neg), pos, neg], [NAN, POSINF, NEGINF], FINITE)


def assert_attention_matches(out, q, k, v, kwargs, dtype, what="out") -> None:
    """out against the reference, allowing the underflowed weights (module
    docstring): a key whose reference weight is in (0, FLUSHED) may or may
    not bring its value's inf or NaN into an output element (the kernels
    flush in-block weights under 1e-38, but an inf already summed meets the
    later rescaling factors, which underflow further down), so each element
    may hold any combination of the non-finite values of such keys on top of
    what the keys above FLUSHED give; its finite values match the reference
    without those keys."""
    ref = dotattn.reference.attention(q, k, v, **kwargs)
    alt = ref
    optional = np.zeros((3, *ref.shape), bool)  # +inf, -inf, NaN that may or may not arrive
    if not np.isfinite(v).all():
        lw = log_weights(q, k, kwargs)
        tiny = np.isfinite(lw) & (lw < math.log(FLUSHED[np.dtype(dtype)]))
        if tiny.any():
            alt = dotattn.reference.attention(
                q, k, v, **{**kwargs, "attn_mask": mask_also_hiding(kwargs, lw.shape, tiny)}
            )
            vh = per_query_head(np.asarray(v, np.float64), lw.shape[-3] if lw.ndim >= 3 else 1)
            for i, test in enumerate((np.isposinf, np.isneginf, np.isnan)):
                optional[i] = tiny.astype(np.float64) @ test(vh).astype(np.float64) > 0
    base = kind(alt)
    got = kind(np.asarray(out))
    allowed = np.zeros(ref.shape, bool)
    for add_pos in (False, True):
        for add_neg in (False, True):
            for add_nan in (False, True):
                available = (
                    (optional[0] | (not add_pos))
                    & (optional[1] | (not add_neg))
                    & (optional[2] | (not add_nan))
                )
                outcome = combined(
                    (base == POSINF) | add_pos, (base == NEGINF) | add_neg, (base == NAN) | add_nan
                )
                allowed |= available & (outcome == got)
    assert allowed.all(), (
        f"{what}: NaN/inf positions unexplained by the reference at {np.argwhere(~allowed)[:5].tolist()}: "
        f"got {np.asarray(out)[~allowed][:5]}, reference {ref[~allowed][:5]}"
    )
    assert_close(out, np.where(np.isfinite(out), alt, out), dtype, k.shape[-2], what)


# ------------------------------------------------------- strict properties


@examples(0.35)
@given(problems())
def test_attention_matches_the_reference_or_raises(problem):
    q, k, v, kwargs, dtype, use_out = problem
    shape = (*q.shape[:-1], v.shape[-1])
    out = np.full(shape, 7.25, dtype=dtype) if use_out else None
    if must_raise(q, kwargs):
        with pytest.raises(ValueError, match=r"query has E=0.*pass scale"):
            dotattn.attention(q, k, v, out=out, return_lse=True, **kwargs)
        assert out is None or np.all(out == 7.25)
        return
    result, lse = dotattn.attention(q, k, v, out=out, return_lse=True, **kwargs)
    assert out is None or result is out
    assert_attention_matches(result, q, k, v, kwargs, dtype)
    _, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True, **kwargs)
    assert_close(lse, ref_lse, dtype, k.shape[-2], "lse")
    # Without the LSE the result is the same, bit for bit.
    np.testing.assert_array_equal(dotattn.attention(q, k, v, **kwargs), result)


@examples(0.35)
@given(problems(blocks=True))
def test_non_finite_values_across_key_blocks(problem):
    """The online softmax's state across key blocks and key ranges: a later
    block (or range) raising the row max far above an earlier one, whose
    weights then underflow, with inf and NaN among the values."""
    q, k, v, kwargs, dtype, _ = problem
    if must_raise(q, kwargs):
        return
    assert_attention_matches(dotattn.attention(q, k, v, **kwargs), q, k, v, kwargs, dtype)


@examples(0.2)
@given(problems())
def test_weights_match_the_reference_or_raise(problem):
    q, k, _, kwargs, dtype, _ = problem
    if must_raise(q, kwargs):
        with pytest.raises(ValueError, match=r"query has E=0.*pass scale"):
            dotattn.attention_weights(q, k, **kwargs)
        return
    weights = dotattn.attention_weights(q, k, **kwargs)
    assert_close(weights, dotattn.reference.attention_weights(q, k, **kwargs), dtype, k.shape[-2], "weights")


# --------------------------------------------- overflow-prone data (weaker)


@st.composite
def overflow_prone(draw):
    """Standard-normal data with a few huge entries: +-1e30 and +-max/8 in
    query and key (scores that overflow float32 or lose every digit to
    rounding), +-1e30 of both signs and +-max/2 in value (accumulators that
    overflow or cancel), and huge or underflowing scales."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    fmax = float(np.finfo(dtype).max)
    two_d = draw(st.integers(0, 4)) == 0
    batch = () if two_d else tuple(draw(st.lists(st.integers(1, 2), max_size=1)))
    Hkv = 1 if two_d else draw(st.integers(1, 2))
    Hq = Hkv * (1 if two_d else draw(st.integers(1, 2)))
    small = st.one_of(st.sampled_from([1, 2, 8, 9, 16, 17]), st.integers(1, 24))
    L, S, E, Ev = draw(small), draw(small), draw(small), draw(small)
    heads_q, heads_kv = ((), ()) if two_d else ((Hq,), (Hkv,))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    qk_rate, v_rate = draw(st.sampled_from([0.0, 0.01, 0.05])), draw(st.sampled_from([0.0, 0.02, 0.1]))

    def huge_qk(shape):
        return sprinkle(rng, rng.standard_normal(shape), [1e30, -1e30, fmax / 8, -fmax / 8], qk_rate)

    def huge_v(shape):
        return sprinkle(rng, rng.standard_normal(shape), [1e30, -1e30, fmax / 2, -fmax / 2], v_rate)

    q = operand(draw, (*batch, *heads_q, L, E), huge_qk, dtype)
    k = operand(draw, (*batch, *heads_kv, S, E), huge_qk, dtype)
    v = operand(draw, (*batch, *heads_kv, S, Ev), huge_v, dtype)
    kwargs = {"is_causal": draw(st.sampled_from(CAUSAL))}
    scale = draw(st.sampled_from([None, None, 0.5, 1e30, -1e30, 1e300, 1e-50]))
    if scale is not None:
        kwargs["scale"] = scale
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    if mask_kind == "bool":
        kwargs["attn_mask"] = operand(
            draw, mask_shape(draw, (*batch, *heads_q, L, S)), lambda s: np.asarray(rng.random(s) < 0.7), bool
        )
    elif mask_kind == "float":
        fill = lambda s: sprinkle(rng, rng.standard_normal(s), [-np.inf], 0.2)  # noqa: E731
        kwargs["attn_mask"] = operand(draw, mask_shape(draw, (*batch, *heads_q, L, S)), fill, dtype)
    note(
        f"{dtype} q{q.shape} k{k.shape} v{v.shape} rates {qk_rate} {v_rate} {kwargs.get('scale')} {mask_kind}"
    )
    return q, k, v, kwargs, dtype


def per_row(q, k, v, kwargs):
    """Per query row, float64: whether its scores and values are moderate
    (every score a sum of terms whose magnitudes add up to at most 50, so
    that no cancellation hides a rounding error; |value| <= 1e4; the mask
    finite or -inf; all finite; a float32 scale that float32 holds as a
    normal number, not rounded to 0), and the smallest and largest finite
    value of the keys it may see."""
    qf = np.asarray(q, np.float64)
    Hq = qf.shape[-3] if qf.ndim >= 3 else 1
    kf = per_query_head(np.asarray(k, np.float64), Hq)
    vf = per_query_head(np.asarray(v, np.float64), Hq)
    L, E = qf.shape[-2:]
    S = kf.shape[-2]
    scale = kwargs.get("scale")
    scale = 1 / math.sqrt(E) if scale is None else scale
    with np.errstate(all="ignore"):
        magnitudes = np.abs(qf) @ np.swapaxes(np.abs(kf), -1, -2) * abs(scale)
        mask_seen, bias = mask_parts(kwargs, magnitudes.shape)
    causal = kwargs.get("is_causal", False)
    i, j = np.arange(L)[:, None], np.arange(S)[None, :]
    visible = (j <= i + (S - L if causal == "lower_right" else 0) if causal else np.ones((L, S), bool)) & (
        mask_seen & (bias != -np.inf)
    )
    moderate_v = np.all(np.isfinite(vf) & (np.abs(vf) <= 1e4), axis=(-2, -1))
    tiny = float(np.finfo(np.asarray(q).dtype).tiny)
    tame = (scale == 0 or abs(scale) >= tiny) & (
        np.all(magnitudes <= 50, axis=-1)
        & np.all((bias == -np.inf) | (np.abs(bias) <= 1e4), axis=-1)
        & np.asarray(moderate_v)[..., None]
    )
    seen = visible[..., None] & np.isfinite(vf)[..., None, :, :]  # (..., L, S, Ev)
    lo = np.min(np.where(seen, vf[..., None, :, :], np.inf), axis=-2, initial=np.inf)
    hi = np.max(np.where(seen, vf[..., None, :, :], -np.inf), axis=-2, initial=-np.inf)
    return tame, lo, hi


@examples(0.25)
@given(overflow_prone())
def test_overflow_prone_data_is_handled_sanely(problem):
    """float32 computes in float32 (README), so with +-1e30 in query or key,
    near-max values or huge scales its scores or sums overflow or round away
    where the float64 reference does not (float64 likewise loses every
    digit of scores near 1e30 to rounding, but in another order). What
    holds: a scale that overflows float32 is refused; the result has the
    right shape and dtype; rows whose scores and values are moderate match
    the reference; every other output element is NaN, +-inf, 0 (a row
    whose float32 scores all overflowed to -inf sees no key) or lies
    between the smallest and the largest value its row may see: a
    softmax-weighted average."""
    q, k, v, kwargs, dtype = problem
    scale = kwargs.get("scale")
    if dtype == np.float32 and scale is not None and abs(scale) > float(np.finfo(np.float32).max):
        with pytest.raises(ValueError, match=r"scale=.* overflows float32"):
            dotattn.attention(q, k, v, **kwargs)
        return
    out, lse = dotattn.attention(q, k, v, return_lse=True, **kwargs)
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True, **kwargs)
    assert out.dtype == dtype and out.shape == ref.shape
    assert lse.dtype == dtype and lse.shape == ref_lse.shape
    tame, lo, hi = per_row(q, k, v, kwargs)
    S = k.shape[-2]
    assert_close(out[tame], ref[tame], dtype, S, "moderate rows")
    assert_close(lse[tame], ref_lse[tame], dtype, S, "moderate rows' lse")
    wild = ~tame[..., None] & np.isfinite(out)
    slack = 1e-5 * np.maximum(np.abs(lo), np.abs(hi))
    with np.errstate(invalid="ignore"):
        inside = (out >= lo - slack) & (out <= hi + slack)
    ok = ~wild | inside | (out == 0)
    assert ok.all(), f"outside the visible values: {out[~ok][:5]}, bounds {lo[~ok][:5]} {hi[~ok][:5]}"

    weights = dotattn.attention_weights(q, k, **kwargs)
    ref_w = dotattn.reference.attention_weights(q, k, **kwargs)
    assert_close(weights[tame], ref_w[tame], dtype, S, "moderate rows' weights")
    with np.errstate(invalid="ignore"):
        assert np.all(np.isnan(weights) | ((weights >= 0) & (weights <= 1 + 1e-6)))
        sums = weights.sum(axis=-1, dtype=np.float64)
    clean = ~np.isnan(sums)
    assert np.all((np.abs(sums[clean] - 1) <= 1e-5 * S) | (sums[clean] == 0))


# ------------------------------------------------------- invalid arguments

CORRUPTIONS = [
    "mixed-dtypes",
    "int-query",
    "mask-dtype",
    "mask-shape",
    "scale-nan",
    "scale-inf",
    "scale-overflow",
    "scale-str",
    "causal-str",
    "causal-int",
    "E-differs",
    "S-differs",
    "heads",
    "batch",
    "ndim",
    "out-shape",
    "out-dtype",
    "out-strided",
    "out-read-only",
    "out-overlaps",
]


@examples(0.2)
@given(problems(), st.sampled_from(CORRUPTIONS), st.data())
def test_invalid_arguments_raise_naming_them(problem, corruption, data):
    """One thing wrong with an otherwise valid call (random shapes, layouts
    and values): ValueError or TypeError naming the argument, nothing
    written to out."""
    q, k, v, kwargs, dtype, _ = problem
    if must_raise(q, kwargs):
        kwargs["scale"] = 1.0
    other = np.float64 if dtype == np.float32 else np.float32
    nd = q.ndim
    shape = (*q.shape[:-1], v.shape[-1])
    out = np.full(shape, 7.25, dtype)
    protected = out  # must be left as it was
    exc, pattern = ValueError, None
    if corruption == "mixed-dtypes":
        k, exc, pattern = (
            np.zeros(k.shape, other),
            TypeError,
            r"key has dtype float\d\d but query is float\d\d",
        )
    elif corruption == "int-query":
        q, exc, pattern = (
            np.zeros(q.shape, np.int32),
            TypeError,
            r"query has dtype int32; expected float32, float64, float16 or bfloat16",
        )
    elif corruption == "mask-dtype":
        kind = data.draw(st.sampled_from([other, np.int8, np.float16]))
        kwargs["attn_mask"] = np.zeros(shape[:-1] + (k.shape[-2],), kind)
        exc, pattern = TypeError, r"attn_mask has dtype \w+; expected bool"
    elif corruption == "mask-shape":
        target = (*q.shape[:-1], k.shape[-2])
        bad = data.draw(st.sampled_from(["longer", "wider"]))
        mshape = (2, *target) if bad == "longer" else (*target[:-1], target[-1] + 2)
        kwargs["attn_mask"] = np.ones(mshape, bool)
        pattern = r"attn_mask \(.*\) is not broadcastable to \(.*\), the shape of the attention weights"
    elif corruption == "scale-nan":
        kwargs["scale"], pattern = float("nan"), r"scale must be finite, got nan"
    elif corruption == "scale-inf":
        kwargs["scale"], pattern = data.draw(st.sampled_from([np.inf, -np.inf])), r"scale must be finite"
    elif corruption == "scale-overflow":
        if dtype != np.float32:
            return
        kwargs["scale"], pattern = 1e39, r"scale=1e\+39 overflows float32"
    elif corruption == "scale-str":
        kwargs["scale"], exc, pattern = "0.5", TypeError, r"scale must be a real number or None"
    elif corruption == "causal-str":
        kwargs["is_causal"], pattern = (
            "lower-right",
            r"is_causal must be False, True, 'upper_left' or 'lower_right'",
        )
    elif corruption == "causal-int":
        kwargs["is_causal"], exc, pattern = 1, TypeError, r"is_causal must be"
    elif corruption == "E-differs":
        k, pattern = (
            np.zeros((*k.shape[:-1], k.shape[-1] + 1), dtype),
            r"query and key must have the same last dim E",
        )
    elif corruption == "S-differs":
        v, pattern = (
            np.zeros((*v.shape[:-2], v.shape[-2] + 1, v.shape[-1]), dtype),
            r"key and value must have the same length S",
        )
    elif corruption == "heads":
        if nd < 3 or q.shape[-3] < 1:
            return
        k = np.zeros((*k.shape[:-3], q.shape[-3] + 1, *k.shape[-2:]), dtype)
        v = np.zeros((*v.shape[:-3], q.shape[-3] + 1, *v.shape[-2:]), dtype)
        pattern = r"the query heads Hq=\d+ must be a multiple of the key/value heads Hkv=\d+"
    elif corruption == "batch":
        if nd < 4:
            return
        k = np.zeros((k.shape[0] + 1, *k.shape[1:]), dtype)
        pattern = r"must have equal batch dims"
    elif corruption == "ndim":
        q, pattern = np.zeros(q.shape[-1:], dtype), r"must have the same number of dims, at least 2"
    elif corruption == "out-shape":
        out = np.full((*shape[:-1], shape[-1] + 1), 7.25, dtype)
        protected, pattern = out, r"out \(.*\) does not match the result's shape"
    elif corruption == "out-dtype":
        out = np.full(shape, 7.25, other)
        protected, exc, pattern = out, TypeError, r"out has dtype \w+ but the result is"
    elif corruption == "out-strided":
        if shape[-1] < 2 or math.prod(shape) == 0:
            return
        base = np.full((*shape[:-1], 2 * shape[-1]), 7.25, dtype)
        out = base[..., ::2]
        protected, pattern = base, r"out \(.*\) must be C-contiguous"
    elif corruption == "out-read-only":
        out.flags.writeable = False
        pattern = r"out \(.*\) is read-only"
    elif corruption == "out-overlaps":
        # out is laid over the memory that query is read from.
        if math.prod(shape) == 0 or q.size == 0:
            return
        buf = np.zeros(q.size + math.prod(shape), dtype)
        query = buf[: q.size].reshape(q.shape)
        query[...] = q
        q, out = query, buf[q.size - 1 : q.size - 1 + math.prod(shape)].reshape(shape)
        protected, pattern = buf.copy(), r"out overlaps query; an output must not share memory with an input"
        with pytest.raises(ValueError, match=pattern):
            dotattn.attention(q, k, v, out=out, **kwargs)
        np.testing.assert_array_equal(buf, protected)
        return
    before = np.array(protected, copy=True)
    with pytest.raises(exc, match=pattern):
        dotattn.attention(q, k, v, out=out, **kwargs)
    np.testing.assert_array_equal(protected, before)


# ------------------------------------------------ regressions found above


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S, peak", [(200, 199), (1100, 300)], ids=["blocks", "split-keys"])
def test_a_value_whose_weight_underflows_later_stays_out(dtype, S, peak):
    """Found by test_non_finite_values_across_key_blocks. Keys 0-2 hold inf,
    -inf and NaN in their values and are seen first, with weight 1; key
    `peak`, in a later key block of the same key range, scores 1000 higher, so their weights
    become exp(-1000) = 0 and nothing of their values may reach the output
    (README: a zero weight contributes nothing). The online softmax used to
    rescale the accumulator by exp(-1000) = 0 and got inf * 0 = NaN."""
    E = 64
    q = np.zeros((1, E), dtype)
    q[0, 0] = 1
    k = np.zeros((S, E), dtype)
    k[peak, 0] = 8000  # score 8000 / sqrt(64) = 1000; the others score 0
    v = np.ones((S, E), dtype)
    v[0, 0], v[1, 1], v[2, 2] = np.inf, -np.inf, np.nan
    out = dotattn.attention(q, k, v)
    np.testing.assert_array_equal(out, dotattn.reference.attention(q, k, v))
    np.testing.assert_array_equal(out, 1)


@pytest.mark.parametrize("S", [512, 4096])
def test_many_small_weights_beside_a_dominant_key(S):
    """Scores of moderate size (one key 16.6 above all the others), standard
    normal values, float32: the README bounds the error by 1e-5. Each other
    weight, exp(-16.6) = 6e-8, is half a float32 ulp of 1: added one at a
    time to the dominant key's 1, all were rounded away (~3e-5 of the sum
    for S = 512); exp_sum now adds them in chunks first (1.6e-7 at 4096)."""
    q = np.ones((1, 1), np.float32)
    k = np.zeros((S, 1), np.float32)
    k[0] = 16.6
    v = np.random.default_rng(0).standard_normal((S, 1)).astype(np.float32)
    out, lse = dotattn.attention(q, k, v, return_lse=True)
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True)
    assert_close(lse, ref_lse, np.float32, S, "lse")
    assert_close(out, ref, np.float32, S, "out")


# ---------------------------------------------------------- size overflow

F32 = np.float32


def huge(*shape, dtype=F32) -> np.ndarray:
    """A read-only array of any shape that takes no memory: every stride 0.
    The last dim must be 1 or empty, else the Python API would copy it."""
    return np.broadcast_to(np.ones((), dtype), shape)


# Inputs that fit in memory and in 64 bits (NumPy refuses any array whose
# byte size does not) but whose results do not: the attention weights are
# L x S, the attention result L x Ev, each from two different inputs.
OVERFLOWING = [
    (
        "weights-LxS",
        "weights",
        (huge(2**40, 1), huge(2**40, 1)),
        r"query \(1099511627776, 1\) and key \(1099511627776, 1\) give attention weights "
        r"of shape \(1099511627776, 1099511627776\), too large: its size in bytes overflows 64 bits",
    ),
    (
        "weights-bytes-only",
        "weights",
        (huge(2**31, 1), huge(2**31, 1)),
        r"give attention weights of shape \(2147483648, 2147483648\), too large",
    ),
    (
        "weights-float64",
        "weights",
        (huge(2**30, 1, dtype=np.float64), huge(2**31, 1, dtype=np.float64)),
        r"too large: its size in bytes overflows 64 bits",
    ),
    (
        "weights-batch-and-heads",
        "weights",
        (huge(2**20, 2**20, 2**20, 1), huge(2**20, 1, 2**20, 1)),
        r"query \(1048576, 1048576, 1048576, 1\) and key \(1048576, 1, 1048576, 1\) give attention weights",
    ),
    (
        "attention-LxEv",
        "attention",
        (huge(2**40, 1), np.empty((0, 1), F32), np.empty((0, 2**40), F32)),
        r"query \(1099511627776, 1\) and value \(0, 1099511627776\) give a result "
        r"of shape \(1099511627776, 1099511627776\), too large",
    ),
    (
        "attention-gqa-heads",
        "attention",
        (huge(2**21, 2**21, 2**18, 1), huge(2**21, 1, 0, 1), np.empty((2**21, 1, 0, 2**10), F32)),
        r"give a result of shape \(2097152, 2097152, 262144, 1024\), too large",
    ),
]


@pytest.mark.parametrize("fn, args, pattern", [c[1:] for c in OVERFLOWING], ids=[c[0] for c in OVERFLOWING])
@pytest.mark.parametrize("with_lse", [False, True])
def test_results_whose_size_overflows_64_bits_are_refused(fn, args, pattern, with_lse):
    """Checked before anything is allocated: the message names the inputs
    and the result's shape; nothing wraps around to a small allocation."""
    with pytest.raises(ValueError, match=pattern):
        if fn == "weights":
            dotattn.attention_weights(*args, scale=1.0)
        else:
            dotattn.attention(*args, scale=1.0, return_lse=with_lse)


@pytest.mark.parametrize("fn", ["weights", "attention"])
def test_results_too_large_for_memory_raise_before_computing(fn):
    """2^56 elements (2^58 bytes) fit in 64 bits but in no address space:
    the allocation fails at once (MemoryError, from NumPy), or a check
    refuses it (ValueError); nothing is computed or written."""
    q = huge(2**28, 1)
    with pytest.raises((MemoryError, ValueError)):
        if fn == "weights":
            dotattn.attention_weights(q, huge(2**28, 1))
        else:
            dotattn.attention(q, np.empty((0, 1), F32), np.empty((0, 2**28), F32))


# Sizes past 2^32 that a 32-bit product or comparison would wrap onto a
# valid small size: each must still be refused, with the true sizes.
WRAPPING = [
    (
        "kv-heads",
        (np.empty((1, 0, 1), F32), huge(2**32 + 1, 1, 1), huge(2**32 + 1, 1, 1)),
        {},
        r"Hq=1 must be a multiple of the key/value heads Hkv=4294967297",
    ),
    (
        "E",
        (np.empty((1, 1), F32), np.empty((0, 2**32 + 1), F32), np.empty((0, 1), F32)),
        {},
        r"query E=1, key E=4294967297",
    ),
    (
        "S",
        (np.ones((1, 1), F32), huge(2**32 + 1, 1), np.ones((1, 1), F32)),
        {},
        r"key S=4294967297, value S=1",
    ),
    ("batch", (huge(2**32 + 1, 1, 1, 1), huge(1, 1, 1, 1), huge(1, 1, 1, 1)), {}, r"equal batch dims"),
    (
        "mask-rows",
        (np.ones((5, 1), F32), np.ones((3, 1), F32), np.ones((3, 1), F32)),
        {"attn_mask": huge(2**32 + 5, 3, dtype=bool)},
        r"attn_mask \(4294967301, 3\) is not broadcastable to \(5, 3\)",
    ),
    (
        "out-rows",
        (huge(2**32 + 1, 1), np.ones((1, 1), F32), np.ones((1, 0), F32)),
        {"out": np.empty((1, 0), F32)},
        r"out \(1, 0\) does not match the result's shape \(4294967297, 0\)",
    ),
]


@pytest.mark.parametrize("args, kwargs, pattern", [c[1:] for c in WRAPPING], ids=[c[0] for c in WRAPPING])
def test_sizes_past_32_bits_are_not_wrapped(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        dotattn.attention(*args, **kwargs)


def test_valid_calls_with_more_than_2_to_the_32_elements_but_no_work():
    """Inputs of 2^33 elements (broadcast, no memory) whose results are
    empty: the right empty shapes, at once."""
    out, lse = dotattn.attention(
        np.empty((2**33, 0, 1), F32), huge(2**33, 1, 1), huge(2**33, 1, 1), return_lse=True
    )
    assert out.shape == (2**33, 0, 1) and lse.shape == (2**33, 0)
    weights = dotattn.attention_weights(np.empty((0, 1), F32), huge(2**33, 1))
    assert weights.shape == (0, 2**33) and weights.dtype == F32


# ---------------------------------------------------------------- stored K/V formats


@st.composite
def stored_kv_problems(draw):
    B = draw(st.sampled_from([1, 1, 2]))
    Hkv = draw(st.sampled_from([1, 1, 2, 3]))
    Hq = Hkv * draw(st.sampled_from([1, 2, 4]))
    L = draw(st.sampled_from([0, 1, 1, 2, 5, 17, 97]))
    S = draw(st.one_of(st.sampled_from([0, 1, 15, 16, 17, 1100]), st.integers(1, 300)))
    E = draw(st.sampled_from([1, 7, 8, 9, 16, 33, 64, 80]))
    Ev = draw(st.sampled_from([E, 1, 5, 24]))
    extra = draw(st.sampled_from([0, 0, 3, 40]))  # cache slots beyond the S that are read
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((B, Hq, L, E)).astype(np.float32)

    def cache(cols, fmt):
        layout = draw(st.sampled_from(["plain", "token-major", "reversed"]))
        shape = (B, S + extra, Hkv, cols) if layout == "token-major" else (B, Hkv, S + extra, cols)
        x = rng.standard_normal(shape).astype(np.float32)
        if fmt.startswith("int8"):
            groups = [g for g in range(1, cols + 1) if cols % g == 0]
            x = dotattn.quantize_kv(x, group=draw(st.sampled_from(groups)))
        else:
            x = stored(x, fmt)
        if layout == "token-major":
            x = (
                x.transpose(0, 2, 1, 3)
                if not isinstance(x, dotattn.QuantizedKV)
                else dotattn.QuantizedKV(x.data.transpose(0, 2, 1, 3), x.scale.transpose(0, 2, 1, 3))
            )
        if layout == "reversed":
            x = x[:, :, ::-1]
        return x[:, :, :S]

    k = cache(E, draw(st.sampled_from(KV_FORMATS)))
    v = cache(Ev, draw(st.sampled_from(KV_FORMATS)))
    kwargs = {"is_causal": draw(st.sampled_from(CAUSAL))}
    if draw(st.booleans()):
        kwargs["attn_mask"] = rng.random((B, 1, L, S)) < draw(st.sampled_from([0.1, 0.5, 0.9]))
    return q, k, v, kwargs


@examples(0.3)
@given(stored_kv_problems())
def test_stored_formats_match_the_reference(problem):
    q, k, v, kwargs = problem
    out, lse = dotattn.attention(q, k, v, return_lse=True, **kwargs)
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True, **kwargs)
    assert_matches(out, ref, np.float32)
    assert_matches(lse, ref_lse, np.float32)
    weights = dotattn.attention_weights(q, k, **kwargs)
    assert_matches(weights, dotattn.reference.attention_weights(q, k, **kwargs), np.float32)


# ------------------------------------- score options, packed batches, merge

# The K/V formats a property may draw: bfloat16 only where ml_dtypes imports
# (conftest.stored would skip the whole property otherwise).
STORED = [f for f in KV_FORMATS if f != "bfloat16" or importlib.util.find_spec("ml_dtypes")]


def score_options(draw, rng, Hq: int) -> dict:
    """Each of window, softcap, alibi_slopes and sinks present or not, with
    random values. ALiBi slopes are positive and at most 1/4, so that a row
    whose nearest key lies up to 100 positions from it (L > S, or L < S with
    upper-left alignment) still has moderate scores (conftest.py)."""
    options = {}
    if draw(st.booleans()):
        side = st.sampled_from([None, -1, 0, 1, 2, 5, 17, 64, 700])
        options["window"] = (draw(side), draw(side))
    if draw(st.booleans()):
        options["softcap"] = draw(st.floats(0.25, 50.0))
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["powers", "uniform", "zero"]))
        slopes = {
            "powers": 2.0 ** -rng.integers(2, 9, Hq).astype(np.float64),
            "uniform": rng.uniform(0.0, 0.25, Hq),
            "zero": np.zeros(Hq),
        }[kind]
        options["alibi_slopes"] = slopes.astype(draw(st.sampled_from([np.float32, np.float64])))
    if draw(st.booleans()):
        options["sinks"] = rng.standard_normal(Hq) * draw(st.sampled_from([0.5, 3.0, 10.0]))
    return options


def normal(rng) -> Fill:
    return lambda shape: rng.standard_normal(shape)


@st.composite
def option_problems(draw):
    """(q, k, v, kwargs, dtype): standard-normal data in random layouts, a
    causal rule, sometimes a bool mask or a scale, and random score options;
    decoding shapes (split into key ranges) now and then."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    two_d = draw(st.integers(0, 5)) == 0
    batch = () if two_d else tuple(draw(st.lists(st.integers(1, 2), max_size=1)))
    Hkv = 1 if two_d else draw(st.integers(1, 2))
    Hq = Hkv * (1 if two_d else draw(st.integers(1, 3)))
    if draw(st.integers(0, 5)) == 0:
        L, S = draw(st.integers(1, 3)), draw(st.integers(1024, 1300))
    else:
        L, S = draw(st.one_of(SIZES, st.sampled_from([95, 96, 97]))), draw(SIZES)
    E, Ev = draw(st.sampled_from([1, 8, 16, 33, 64])), draw(st.sampled_from([1, 5, 16, 32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    heads_q, heads_kv = ((), ()) if two_d else ((Hq,), (Hkv,))
    q = operand(draw, (*batch, *heads_q, L, E), normal(rng), dtype)
    k = operand(draw, (*batch, *heads_kv, S, E), normal(rng), dtype)
    # Values of mean 1, not 0: a sink may take all but e^-30 of a row's
    # weight, and when every head's output is that small, the normwise error
    # is left to the one output whose zero-mean weighted values cancelled
    # (L = Ev = 1: the sum of 63 values 3,400 times smaller than the sum of
    # their sizes, off by 6e-8, a float32 rounding, read as 2.6e-4).
    v = operand(draw, (*batch, *heads_kv, S, Ev), lambda shape: 1.0 + rng.standard_normal(shape), dtype)
    kwargs = {"is_causal": draw(st.sampled_from(CAUSAL)), **score_options(draw, rng, Hq)}
    if draw(st.integers(0, 3)) == 0:
        # Not 0 over a thousand keys: the output is then the plain mean of
        # the values, ~1/sqrt(S) of them, and a float32 sum's rounding is
        # 1e-5 of that (a property of float32 accumulation, not of the options).
        kwargs["scale"] = draw(
            st.sampled_from([0.05, 0.3, 1.0, -0.3] if S > 512 else [0.0, 0.05, 0.3, 1.0, -0.3])
        )
    if draw(st.integers(0, 3)) == 0:
        kwargs["attn_mask"] = rng.random(mask_shape(draw, (*batch, *heads_q, L, S))) < 0.8
    note(f"{dtype} q{q.shape}{q.strides} k{k.shape}{k.strides} v{v.shape}{v.strides} {kwargs}")
    return q, k, v, kwargs, dtype


@examples(0.1)
@given(option_problems())
def test_score_options_match_the_reference(problem):
    q, k, v, kwargs, dtype = problem
    out, lse = dotattn.attention(q, k, v, return_lse=True, **kwargs)
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True, **kwargs)
    assert_matches(out, ref, dtype)
    assert_matches(lse, ref_lse, dtype)
    weights = dotattn.attention_weights(q, k, **kwargs)
    assert_matches(weights, dotattn.reference.attention_weights(q, k, **kwargs), dtype)


def packed_kv(draw, rng, dtype, total: int, Hkv: int, cols: int):
    """Standard-normal packed keys or values (total, Hkv, cols): float in a
    random layout, or (float32) in a stored format."""
    x = rng.standard_normal((total, Hkv, cols))
    fmt = draw(st.sampled_from(STORED)) if dtype == np.float32 else "float32"
    return laid_out(draw, x.astype(dtype)) if fmt == "float32" else stored(x.astype(np.float32), fmt)


def kv_form(x) -> str:
    if isinstance(x, dotattn.QuantizedKV):
        return f"int8{x.shape} group {x.group}"
    return f"{x.dtype}{x.shape}{x.strides}"


def index_dtype(draw):
    return draw(st.sampled_from([np.int32, np.int32, np.int64]))


@st.composite
def varlen_problems(draw):
    """(q, k, v, cu_q, cu_k, kwargs, dtype): B sequences of random query and
    key lengths (0 included, now and then one long), packed token-major."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    B = draw(st.integers(0, 5))
    q_lens = draw(
        st.lists(st.one_of(st.sampled_from([0, 1, 2, 17]), st.integers(0, 40)), min_size=B, max_size=B)
    )
    k_lens = draw(
        st.lists(st.one_of(st.sampled_from([0, 1, 16]), st.integers(0, 130)), min_size=B, max_size=B)
    )
    if B and draw(st.integers(0, 4)) == 0:
        k_lens[draw(st.integers(0, B - 1))] = draw(st.integers(1024, 1200))
    Hkv = draw(st.integers(1, 2))
    Hq = Hkv * draw(st.integers(1, 3))
    E, Ev = draw(st.sampled_from([1, 8, 16, 33, 64])), draw(st.sampled_from([1, 5, 16, 32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cu_q = np.concatenate([[0], np.cumsum(q_lens, dtype=np.int64)]).astype(index_dtype(draw))
    cu_k = np.concatenate([[0], np.cumsum(k_lens, dtype=np.int64)]).astype(index_dtype(draw))
    q = laid_out(draw, rng.standard_normal((int(cu_q[-1]), Hq, E)).astype(dtype))
    k = packed_kv(draw, rng, dtype, int(cu_k[-1]), Hkv, E)
    v = packed_kv(draw, rng, dtype, int(cu_k[-1]), Hkv, Ev)
    kwargs = {"is_causal": draw(st.sampled_from(CAUSAL))}
    if draw(st.booleans()):
        kwargs.update(score_options(draw, rng, Hq))
    note(f"{dtype} q_lens={q_lens} k_lens={k_lens} q{q.shape} k {kv_form(k)} v {kv_form(v)} {kwargs}")
    return q, k, v, cu_q, cu_k, kwargs, dtype


@examples(0.08)
@given(varlen_problems(), st.booleans())
def test_varlen_matches_the_reference(problem, use_out):
    q, k, v, cu_q, cu_k, kwargs, dtype = problem
    out = np.full((q.shape[0], q.shape[1], v.shape[-1]), 7.25, dtype) if use_out else None
    result, lse = dotattn.attention_varlen(q, k, v, cu_q, cu_k, out=out, return_lse=True, **kwargs)
    assert out is None or result is out
    ref, ref_lse = dotattn.reference.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **kwargs)
    assert_matches(result, ref, dtype)
    assert_matches(lse, ref_lse, dtype)


def as_cache(draw, x: np.ndarray, free: np.ndarray, fmt: str, vllm: bool):
    """The cache x (num_pages, page_size, Hkv, cols), its free slots NaN
    (int8: their scales), stored as fmt; with vllm, a view of a (num_pages,
    Hkv, page_size, cols) array, as vLLM's cache[0].transpose(0, 2, 1, 3)."""
    x = np.where(free[:, :, None, None], np.nan, x)
    if vllm:
        x = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    if fmt.startswith("int8"):
        cache = stored(np.where(np.isnan(x), 0, x).astype(np.float32), fmt)
        if vllm:  # quantized in the (num_pages, Hkv, page_size, cols) layout, then viewed
            data, scale = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (cache.data, cache.scale))
            cache = dotattn.QuantizedKV(data.transpose(0, 2, 1, 3), scale.transpose(0, 2, 1, 3))
        cache.scale[free] = np.nan
        return cache
    return stored(x, fmt) if fmt != "float32" else x


@st.composite
def paged_problems(draw):
    """(q, key_cache, value_cache, block_table, seq_lens_k, cu_seqlens_q,
    kwargs, dtype): random page sizes, keys per sequence and queries per
    sequence (decoding's one each, or cu_seqlens_q), pages in random order,
    spare pages and table entries past each sequence's pages (out of range),
    free slots holding NaN."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    page_size = draw(st.sampled_from([1, 2, 3, 5, 7, 8, 16, 17, 32]))
    B = draw(st.integers(0, 4))
    k_lens = np.array(
        draw(
            st.lists(
                st.one_of(st.sampled_from([0, 1, page_size]), st.integers(0, 150)), min_size=B, max_size=B
            )
        ),
        dtype=np.int64,
    )
    if B and draw(st.integers(0, 5)) == 0:
        k_lens[draw(st.integers(0, B - 1))] = draw(st.integers(1024, 1200))
    decode = draw(st.booleans())
    q_lens = [1] * B if decode else draw(st.lists(st.integers(0, 6), min_size=B, max_size=B))
    Hkv = draw(st.integers(1, 2))
    Hq = Hkv * draw(st.integers(1, 3))
    E, Ev = draw(st.sampled_from([1, 8, 16, 33, 64])), draw(st.sampled_from([1, 5, 16, 32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    counts = -(-k_lens // page_size)
    num_pages = int(counts.sum()) + draw(st.integers(0, 4))
    width = int(counts.max(initial=0)) + draw(st.integers(0, 2))
    table = rng.choice([-1, num_pages, num_pages + 1000], size=(B, width))
    order = rng.permutation(num_pages)
    free = np.ones((num_pages, page_size), bool)
    kc = rng.standard_normal((num_pages, page_size, Hkv, E))
    vc = rng.standard_normal((num_pages, page_size, Hkv, Ev))
    start = 0
    for b, n in enumerate(k_lens):
        table[b, : counts[b]] = order[start : start + counts[b]]
        start += counts[b]
        j = np.arange(n)
        free[table[b, j // page_size], j % page_size] = False
    vllm = draw(st.booleans())
    fmts = [draw(st.sampled_from(STORED)) if dtype == np.float32 else "float32" for _ in range(2)]
    key_cache = as_cache(draw, kc.astype(dtype), free, fmts[0], vllm)
    value_cache = as_cache(draw, vc.astype(dtype), free, fmts[1], vllm)
    table = table.astype(index_dtype(draw))
    seq_lens = k_lens.astype(index_dtype(draw))
    cu_q = (
        None if decode and draw(st.booleans()) else np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int64)
    )
    q = rng.standard_normal((int(sum(q_lens)), Hq, E)).astype(dtype)
    kwargs = {"is_causal": draw(st.sampled_from(CAUSAL))}
    if draw(st.booleans()):
        kwargs.update(score_options(draw, rng, Hq))
    note(
        f"{dtype} page_size={page_size} num_pages={num_pages} k_lens={k_lens.tolist()} q_lens={q_lens} "
        f"table={table.tolist()} Hq={Hq} Hkv={Hkv} E={E} Ev={Ev} vllm={vllm} "
        f"k {kv_form(key_cache)} v {kv_form(value_cache)} {kwargs}"
    )
    return q, key_cache, value_cache, table, seq_lens, cu_q, kwargs, dtype


@examples(0.08)
@given(paged_problems())
def test_paged_matches_the_reference(problem):
    q, kc, vc, table, lens, cu_q, kwargs, dtype = problem
    out, lse = dotattn.attention_paged(q, kc, vc, table, lens, cu_q, return_lse=True, **kwargs)
    ref, ref_lse = dotattn.reference.attention_paged(q, kc, vc, table, lens, cu_q, return_lse=True, **kwargs)
    assert_matches(out, ref, dtype)
    assert_matches(lse, ref_lse, dtype)


@st.composite
def merge_problems(draw):
    """(q, k, v, bounds, kwargs, dtype): attention over all keys and the cut
    points of its keys into shards (some empty), with a causal rule,
    sometimes a bool mask and sinks."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=1)))
    Hkv = draw(st.integers(1, 2))
    Hq = Hkv * draw(st.integers(1, 3))
    if draw(st.integers(0, 5)) == 0:
        L, S = draw(st.integers(1, 3)), draw(st.integers(1024, 1300))
    else:
        L, S = draw(st.integers(0, 20)), draw(st.integers(0, 300))
    E, Ev = draw(st.sampled_from([1, 8, 16, 33, 64])), draw(st.sampled_from([1, 5, 16, 32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q, k, v = (
        rng.standard_normal((*batch, H, n, cols)).astype(dtype)
        for H, n, cols in ((Hq, L, E), (Hkv, S, E), (Hkv, S, Ev))
    )
    cuts = sorted(draw(st.lists(st.integers(0, S), max_size=4)))
    kwargs = {"is_causal": draw(st.sampled_from(CAUSAL))}
    if draw(st.booleans()):
        kwargs["sinks"] = rng.standard_normal(Hq) * draw(st.sampled_from([0.5, 3.0]))
    if draw(st.integers(0, 2)) == 0:
        kwargs["attn_mask"] = rng.random((*batch, Hq, L, S)) < draw(st.sampled_from([0.1, 0.7]))
    note(f"{dtype} q{q.shape} k{k.shape} v{v.shape} bounds={[0, *cuts, S]} {kwargs}")
    return q, k, v, [0, *cuts, S], kwargs, dtype


@examples(0.06)
@given(merge_problems())
def test_merge_of_key_shards_equals_attention(problem):
    """Attention over random shards of the keys (the causal rule and mask
    as the visible keys of each shard, the sinks on shard 0), merged by
    their LSEs: attention over all keys."""
    q, k, v, bounds, kwargs, dtype = problem
    L, S = q.shape[-2], k.shape[-2]
    causal = kwargs["is_causal"]
    i, j = np.arange(L)[:, None], np.arange(S)[None, :]
    visible = np.ones((L, S), bool)
    if causal:
        visible = j <= i + (S - L if causal == "lower_right" else 0)
    visible = visible & kwargs.get("attn_mask", True)
    outs, lses = [], []
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        out, lse = dotattn.attention(
            q,
            k[..., a:b, :],
            v[..., a:b, :],
            attn_mask=visible[..., a:b],
            sinks=kwargs.get("sinks") if n == 0 else None,
            return_lse=True,
        )
        outs.append(out)
        lses.append(lse)
    out, lse = dotattn.merge(outs, lses)
    ref, ref_lse = dotattn.reference.attention(q, k, v, return_lse=True, **kwargs)
    assert_matches(out, ref, dtype)
    assert_matches(lse, ref_lse, dtype)
