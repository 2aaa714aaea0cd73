"""dotattn.torch: the tensor entry points against dotattn.reference, their
zero-copy contract (data pointers), the grad refusal, bad input, and the
custom op torch.ops.dotattn.attention under torch.library.opcheck and
torch.compile(fullgraph=True). Skipped without torch (never a dependency of
dotattn; CI's last step installs it)."""

import dotattn
import numpy as np
import pytest
from conftest import assert_matches

torch = pytest.importorskip("torch", reason="dotattn.torch needs PyTorch")
dt = pytest.importorskip("dotattn.torch")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 tensors are read through ml_dtypes")

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NUMPY_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


def as_numpy(t):
    """What the tensor holds, as NumPy (a copy: for the reference only)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def layer_qkv(dtype, *, B=2, L=37, S=45, Hq=8, Hkv=2, E=64, Ev=48, seed=0):
    """query as transformers makes it: a (B, L, Hq, E) projection seen as
    (B, Hq, L, E); key and value (B, Hkv, S, E|Ev) as a cache holds them."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, L, Hq, E, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(B, Hkv, S, E, generator=g).to(dtype)
    v = torch.randn(B, Hkv, S, Ev, generator=g).to(dtype)
    return q, k, v


@pytest.mark.usefixtures("isa")
@pytest.mark.parametrize(
    "dtype, options",
    [
        ("float32", {"is_causal": "lower_right"}),
        ("bfloat16", {"is_causal": True, "window": (7, None)}),
        ("float16", {"softcap": 20.0, "sinks": "per-head"}),
        ("bfloat16", {"attn_mask": "padding"}),
        ("float32", {"attn_mask": "additive", "scale": 0.3}),
    ],
)
def test_matches_the_reference(dtype, options):
    q, k, v = layer_qkv(TORCH_DTYPES[dtype])
    options = dict(options)
    if options.get("sinks") == "per-head":
        options["sinks"] = torch.linspace(-1, 2, q.shape[1])
    if options.get("attn_mask") == "padding":  # the first 5 keys of batch 0 are padding
        keep = torch.ones(q.shape[0], 1, 1, k.shape[2], dtype=torch.bool)
        keep[0, ..., :5] = False
        options["attn_mask"] = keep.expand(-1, -1, q.shape[2], -1)  # stride 0: not materialised
    elif options.get("attn_mask") == "additive":
        options["attn_mask"] = torch.randn(1, q.shape[1], q.shape[2], k.shape[2])
    with torch.no_grad():
        out = dt.attention(q, k, v, **options)
    ref_options = {n: as_numpy(x) if isinstance(x, torch.Tensor) else x for n, x in options.items()}
    ref = dotattn.reference.attention(as_numpy(q), as_numpy(k), as_numpy(v), **ref_options)
    assert isinstance(out, torch.Tensor) and out.dtype == q.dtype and out.is_contiguous()
    assert_matches(as_numpy(out), ref, NUMPY_DTYPES[dtype])


def test_inputs_and_outputs_are_not_copied():
    q, k, v = layer_qkv(torch.bfloat16)
    assert not q.is_contiguous()
    for t in (q, k, v):
        assert dt._numpy(t, "t").__array_interface__["data"][0] == t.data_ptr()
    mask = torch.ones(1, 1, 1, k.shape[2], dtype=torch.bool).expand(2, 1, q.shape[2], -1)
    assert dt._numpy(mask, "mask").strides[0::2] == (0, 0)
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=torch.bfloat16)
    result, lse = dt.attention(q, k, v, out=out, return_lse=True)
    assert result is out and lse.dtype == torch.float32 and lse.shape == q.shape[:-1]
    # Without out, the result is a tensor over the array dotattn wrote.
    array = dotattn.attention(dt._numpy(q, "q"), dt._numpy(k, "k"), dt._numpy(v, "v"))
    assert dt._tensor(array).data_ptr() == array.__array_interface__["data"][0]
    assert torch.equal(dt.attention(q, k, v), out)


def test_bfloat16_round_trip():
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    t = bits.view(torch.bfloat16)
    a = dt._numpy(t, "t")
    assert a.dtype == ml_dtypes.bfloat16
    back = dt._tensor(a)
    assert back.dtype == torch.bfloat16 and back.data_ptr() == t.data_ptr()
    assert torch.equal(back.view(torch.int16), bits)


def test_out_dtype_float32():
    q, k, v = layer_qkv(torch.float16, L=5)
    out = dt.attention(q, k, v, out_dtype=torch.float32)
    ref = dotattn.reference.attention(as_numpy(q), as_numpy(k), as_numpy(v))
    assert out.dtype == torch.float32
    assert_matches(out.numpy(), ref, np.float32)


def test_grad_is_refused_unless_grad_mode_is_off():
    q, k, v = layer_qkv(torch.float32, L=3)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"query requires grad.*torch.no_grad\(\)"):
        dt.attention(q, k, v)
    with torch.no_grad():
        expected = dt.attention(q, k, v)
    with torch.inference_mode():
        assert torch.equal(dt.attention(q, k, v), expected)


def test_bad_input():
    q, k, v = layer_qkv(torch.float32, L=3)
    with pytest.raises(TypeError, match="key must be a torch.Tensor"):
        dt.attention(q, k.numpy(), v)
    with pytest.raises(ValueError, match="key"):
        dt.attention(q, k[..., :7], v)
    with pytest.raises(TypeError, match="query has dtype int64"):
        dt.attention(q.long(), k, v)
    with pytest.raises(ValueError, match="is_causal"):
        dt.attention(q, k, v, is_causal="diagonal")
    out = torch.full((*q.shape[:-1], v.shape[-1]), 7.0, dtype=torch.float16)
    with pytest.raises(TypeError, match="out"):
        dt.attention(q, k, v, out=out)
    assert bool((out == 7).all())


def test_varlen_and_paged():
    g = torch.Generator().manual_seed(1)
    lens = [5, 1, 9]
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
    q = torch.randn(sum(lens), 4, 32, generator=g)
    k = torch.randn(sum(lens), 2, 32, generator=g)
    v = torch.randn(sum(lens), 2, 16, generator=g)
    out = dt.attention_varlen(q, k, v, cu, cu, is_causal=True)
    ref = dotattn.attention_varlen(q.numpy(), k.numpy(), v.numpy(), cu.numpy(), cu.numpy(), is_causal=True)
    assert torch.equal(out, torch.from_numpy(ref))

    pages, page = 6, 4
    k_cache = torch.randn(pages, page, 2, 32, generator=g)
    v_cache = torch.randn(pages, page, 2, 16, generator=g)
    table = torch.tensor([[3, 0, 5], [1, 4, 2]], dtype=torch.int32)
    seq = torch.tensor([10, 7], dtype=torch.int32)
    qd = torch.randn(2, 4, 32, generator=g)
    out, lse = dt.attention_paged(qd, k_cache, v_cache, table, seq, return_lse=True)
    ref, ref_lse = dotattn.attention_paged(
        qd.numpy(), k_cache.numpy(), v_cache.numpy(), table.numpy(), seq.numpy(), return_lse=True
    )
    assert torch.equal(out, torch.from_numpy(ref)) and torch.equal(lse, torch.from_numpy(ref_lse))


def op_args(q, k, v, mask=None):
    return (q, k, v, mask, "lower_right", None, -1, -1, None, None, None, None)


def test_custom_op_passes_opcheck():
    q, k, v = layer_qkv(torch.float32, L=6, S=11)
    mask = torch.rand(2, 1, 6, 11) > 0.3
    for args in (op_args(q, k, v), op_args(q.to(torch.bfloat16), k, v, mask)):
        torch.library.opcheck(torch.ops.dotattn.attention.default, args)


def test_result_never_aliases_an_input():
    q, k, v = layer_qkv(torch.float32, L=4, S=4, Hkv=8, Ev=64)
    out = torch.ops.dotattn.attention(*op_args(q, k, v))
    for t in (q, k, v):
        assert out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()


class Layer(torch.nn.Module):
    """One attention layer, as a model holds it: projections, then dotattn."""

    def __init__(self, hidden=64, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.q = torch.nn.Linear(hidden, hidden)
        self.kv = torch.nn.Linear(hidden, 2 * kv_heads * self.head_dim)
        self.o = torch.nn.Linear(hidden, hidden)

    def forward(self, x):
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(B, L, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = dt.attention(q, k, v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(B, L, -1))


# Inductor itself uses the deprecated torch.jit.script_method (torch 2.13).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_traces_the_custom_op():
    torch.manual_seed(0)
    layer = Layer().eval()
    x = torch.randn(2, 19, 64)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        eager = layer(x)
        traced = compiled(x)
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


def band(L, S, left):
    """Row i true at keys max(0, i - left) <= j <= i (left < 0: no window)."""
    i, j = np.arange(L)[:, None], np.arange(S)[None, :]
    return (j <= i) & ((j >= i - left) if left >= 0 else True)


@pytest.mark.parametrize("left", [-1, 0, 3, 12])
def test_a_causal_or_window_mask_runs_as_its_rule(left):
    # transformers passes the causal rule (under torch.compile) and sliding
    # windows as boolean masks; dotattn.torch recognises them, and nothing
    # else, and runs them as rules.
    L, S = 9, 11
    rule = band(L, S, left)
    assert dt._band_left(np.broadcast_to(rule, (2, 1, L, S)), L, S) == (left if left < L - 1 else -1)
    q, k, v = layer_qkv(torch.float32, L=L, S=S)
    got = dt.attention(q, k, v, attn_mask=torch.from_numpy(rule).expand(2, 1, L, S))
    ref = dotattn.reference.attention(q.numpy(), k.numpy(), v.numpy(), attn_mask=rule)
    assert_matches(got.numpy(), ref, np.float32)
    for flip in [(3, 0), (3, 5), (L - 1, S - 1), (L - 1, L - 2)]:
        mask = rule.copy()
        mask[flip] = not mask[flip]
        assert dt._band_left(mask, L, S) is None
        got = dt.attention(q, k, v, attn_mask=torch.from_numpy(mask))
        ref = dotattn.reference.attention(q.numpy(), k.numpy(), v.numpy(), attn_mask=mask)
        assert_matches(got.numpy(), ref, np.float32)


def test_other_masks_are_not_taken_for_rules():
    L, S = 7, 9
    assert dt._band_left(np.tril(np.ones((L, S), bool), k=S - L), L, S) is None  # lower right
    assert dt._band_left(np.stack([band(L, S, 2)] * 2)[:, None], L, S) is None  # not one plane
    assert dt._band_left(band(L, S, -1).astype(np.float32), L, S) is None
    assert dt._band_left(band(9, 4, -1), 9, 4) is None  # rows past the keys
    uneven = band(L, S, 2)
    uneven[6, 3] = True  # row 6 starts a key early
    assert dt._band_left(uneven, L, S) is None


def test_import_dotattn_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, dotattn; assert 'torch' not in sys.modules and 'dotattn.torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
