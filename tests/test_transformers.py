"""dotattn inside Hugging Face transformers (dotattn.torch.register_transformers):
small random-weight models built offline from their configs generate
greedily with attn_implementation="dotattn" exactly the tokens they generate
with transformers' own implementation, over a left-padded batch, and their
logits agree. Llama (grouped-query attention), Qwen2 with a sliding window,
Gemma 2 (logit soft cap and sliding window) and gpt-oss (attention sinks)
where the installed transformers has them. Skipped without torch and
transformers (test extras; CI's last step installs the pinned versions).

The other implementation is "sdpa" where the model takes it, "eager" where
it does not (Gemma 2's soft cap, gpt-oss's sinks). Bounds, stated here:
float32 logits within 1e-4 of their largest magnitude, bfloat16 within
3e-2 (both runs round every layer's activations to bfloat16)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="dotattn.torch needs PyTorch")
transformers = pytest.importorskip("transformers", reason="the integration tests need transformers")
dt = pytest.importorskip("dotattn.torch")

FLOAT32_BOUND, BFLOAT16_BOUND = 1e-4, 3e-2
PROMPT, NEW, WINDOW = 12, 10, 6  # the prompt and its answer outgrow the window


@pytest.fixture(scope="module", autouse=True)
def registered():
    dt.register_transformers()


def small_model(name):
    """A 2-layer model with 4 query and 2 key/value heads, random weights
    (large enough that greedy choices are not near ties), in eval mode."""
    common = dict(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    sliding = ["sliding_attention", "sliding_attention"]
    if name == "llama":
        config, cls = transformers.LlamaConfig(**common), "LlamaForCausalLM"
    elif name == "qwen2":
        config = transformers.Qwen2Config(
            **common, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0, layer_types=sliding
        )
        cls = "Qwen2ForCausalLM"
    elif name == "gemma2":
        config = transformers.Gemma2Config(
            **common, head_dim=32, sliding_window=WINDOW, attn_logit_softcapping=5.0, query_pre_attn_scalar=32
        )
        cls = "Gemma2ForCausalLM"
    else:
        if not hasattr(transformers, "GptOssConfig"):
            pytest.skip(f"transformers {transformers.__version__} has no gpt-oss")
        config = transformers.GptOssConfig(
            **common,
            head_dim=32,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
        )
        cls = "GptOssForCausalLM"
    torch.manual_seed(0)
    return getattr(transformers, cls)(config).eval()


def left_padded_batch(pad=5):
    """Two prompts of PROMPT tokens, the first with `pad` padding tokens on
    its left (token 0, attention_mask 0)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 256, (2, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :pad], mask[0, :pad] = 0, 0
    return ids, mask


def generate(model, impl, ids, mask):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )


def logit_error(mine, theirs):
    """max |mine - theirs| over the largest |theirs|."""
    return float((mine.float() - theirs.float()).abs().max() / theirs.float().abs().max())


@pytest.mark.parametrize(
    "name, other",
    [("llama", "sdpa"), ("qwen2", "sdpa"), ("gemma2", "eager"), ("gptoss", "eager")],
)
def test_greedy_generation_matches(name, other):
    model = small_model(name)
    ids, mask = left_padded_batch()
    expected = generate(model, other, ids, mask)
    got = generate(model, "dotattn", ids, mask)
    assert torch.equal(got.sequences, expected.sequences)
    errors = [logit_error(a, b) for a, b in zip(got.logits, expected.logits)]
    assert max(errors) <= FLOAT32_BOUND, f"logits differ by {max(errors):.3g} of their scale"


def test_an_unpadded_prompt_takes_the_causal_rule_without_a_mask(monkeypatch):
    # Batch 1, no padding: transformers passes no mask (None) for the
    # prompt, which then means the causal rule, and none while decoding.
    model = small_model("llama")
    ids, _ = left_padded_batch(pad=0)
    seen = []
    attend = dt.transformers_attention

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((query.shape[2], attention_mask is None))
        return attend(module, query, key, value, attention_mask, **kwargs)

    transformers.AttentionInterface.register("dotattn", spy)
    try:
        got = generate(model, "dotattn", ids[1:], None)
    finally:
        transformers.AttentionInterface.register("dotattn", attend)
    assert (PROMPT, True) in seen and (1, True) in seen
    assert torch.equal(got.sequences, generate(model, "sdpa", ids[1:], None).sequences)


def test_an_unpadded_sliding_window_runs_as_a_rule(monkeypatch):
    # Batch 1, no padding, a prompt longer than the window: transformers
    # passes the window as a boolean mask, which dotattn.torch runs as the
    # rule (window (WINDOW - 1, 0), causal); the tokens stay sdpa's.
    model = small_model("qwen2")
    ids, _ = left_padded_batch(pad=0)
    rules = []
    band_left = dt._band_left

    def spy(mask, L, S):
        rules.append(band_left(mask, L, S))
        return rules[-1]

    monkeypatch.setattr(dt, "_band_left", spy)
    got = generate(model, "dotattn", ids[1:], None)
    assert WINDOW - 1 in rules
    assert torch.equal(got.sequences, generate(model, "sdpa", ids[1:], None).sequences)


def test_padding_is_honoured():
    # The same prompt alone and left-padded beside another: the same tokens.
    model = small_model("llama")
    ids, mask = left_padded_batch()
    alone = generate(model, "dotattn", ids[:1, 5:], mask[:1, 5:])
    padded = generate(model, "dotattn", ids, mask)
    assert torch.equal(padded.sequences[0, PROMPT:], alone.sequences[0, PROMPT - 5 :])


def test_bfloat16_logits_within_the_stated_bound():
    model = small_model("qwen2").to(torch.bfloat16)
    ids, mask = left_padded_batch()
    real = mask.bool()  # logits of padding positions are not compared
    logits = {}
    for impl in ("sdpa", "dotattn"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            logits[impl] = model(input_ids=ids, attention_mask=mask).logits[real]
    assert logits["dotattn"].dtype == torch.bfloat16
    error = logit_error(logits["dotattn"], logits["sdpa"])
    assert error <= BFLOAT16_BOUND, f"bfloat16 logits differ by {error:.3g} of their scale"


def test_from_pretrained_with_attn_implementation(tmp_path):
    small_model("llama").save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="dotattn")
    assert model.config._attn_implementation == "dotattn"
    ids, mask = left_padded_batch()
    got = generate(model, "dotattn", ids, mask)
    assert torch.equal(got.sequences, generate(model, "sdpa", ids, mask).sequences)


def test_training_is_refused():
    model = small_model("llama").train()
    model.set_attn_implementation("dotattn")
    ids, mask = left_padded_batch()
    with pytest.raises(RuntimeError, match="no backward"):
        model(input_ids=ids, attention_mask=mask)
    layer = model.model.layers[0].self_attn
    q = torch.zeros(1, 4, 3, 32)
    with pytest.raises(ValueError, match="dropout"):
        dt.transformers_attention(layer, q, q[:, :2], q[:, :2], None, dropout=0.1)


def test_output_layout():
    layer = small_model("llama").model.layers[0].self_attn
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 7, 4, 32, generator=g).transpose(1, 2)
    k = torch.randn(2, 2, 7, 32, generator=g)
    out, weights = dt.transformers_attention(layer, q, k, k, None, scaling=0.5)
    assert weights is None and out.shape == (2, 7, 4, 32) and out.is_contiguous()
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, k, scale=0.5, is_causal=True, enable_gqa=True
    )
    np.testing.assert_allclose(out.numpy(), expected.transpose(1, 2).numpy(), rtol=1e-5, atol=1e-6)
