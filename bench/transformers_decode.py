"""A Llama-shaped model in Hugging Face transformers with attn_implementation
"dotattn" against "sdpa": prefill of a long prompt, then greedy decoding,
tokens per second and attention's share of each; and torch.compile of the
model with dotattn's custom op against eager.

    python bench/transformers_decode.py [--prompt 8192] [--tokens 16] [--rounds 3]
        [--dtype float32 bfloat16] [--threads 2] [--compile-tokens 1024]

Random weights (nothing is downloaded): 4 layers, hidden 512, 8 query and 2
key/value heads of 64, MLP 1408, vocabulary 8192; `--sliding-window W`
gives every layer a window of W (Mistral's architecture). The prompt is prefilled
once per implementation (timed), then both decode from copies of the same
cache, alternating in rounds: each round times `--tokens` greedy steps of
each; the medians per step are compared. Attention's share is the time
inside the attention function (timed through a wrapper registered beside
each implementation, with the same mask function) over the whole step.
Needs torch and transformers (pip install "dotattn[test-torch]")."""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import dotattn
import dotattn.torch as dt
import torch
import transformers
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

SPENT = {"attention": 0.0}


def timed(attend):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return attend(*args, **kwargs)
        finally:
            SPENT["attention"] += time.perf_counter() - start

    return wrapper


def register():
    dt.register_transformers()
    for name, attend in (("sdpa", sdpa_attention_forward), ("dotattn", dt.transformers_attention)):
        transformers.AttentionInterface.register(f"timed-{name}", timed(attend))
        transformers.masking_utils.AttentionMaskInterface.register(f"timed-{name}", sdpa_mask)


def model(dtype, max_positions, window=None):
    """The Llama-shaped model; with a window, Mistral's architecture (the
    same layers, every one with that sliding window)."""
    shape = dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    config = (
        transformers.MistralConfig(**shape, sliding_window=window)
        if window
        else transformers.LlamaConfig(**shape)
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval().to(dtype)


def run(m, impl, **inputs):
    """One forward pass under impl: (output, seconds, attention seconds)."""
    m.set_attn_implementation(f"timed-{impl}")
    SPENT["attention"] = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        out = m(**inputs, use_cache=True, logits_to_keep=1)
    return out, time.perf_counter() - start, SPENT["attention"]


def decode(m, impl, cache, token, steps):
    """steps greedy steps from a copy of cache: per-step (total, attention)."""
    cache = copy.deepcopy(cache)
    times = []
    for _ in range(steps):
        out, total, attention = run(m, impl, input_ids=token, cache=cache)
        cache = out.cache
        token = out.logits[:, -1:].argmax(-1)
        times.append((total, attention))
    return times


def bench_dtype(dtype, a):
    m = model(dtype, a.prompt + a.tokens * (a.rounds + 1) + 8, a.sliding_window)
    ids = torch.randint(0, 8192, (1, a.prompt), generator=torch.Generator().manual_seed(1))
    prefill, cache, first = {}, None, None
    for impl in ("sdpa", "dotattn"):
        start = (
            {}
            if a.cache == "dynamic"
            else {
                "cache": transformers.StaticCache(
                    config=m.config, max_cache_len=m.config.max_position_embeddings
                )
            }
        )
        out, total, attention = run(m, impl, input_ids=ids, **start)
        prefill[impl] = (total, attention)
        if impl == "dotattn":
            cache, first = out.cache, out.logits[:, -1:].argmax(-1)
    steps = {"sdpa": [], "dotattn": []}
    for r in range(a.rounds):
        for impl in ("sdpa", "dotattn") if r % 2 == 0 else ("dotattn", "sdpa"):
            steps[impl] += decode(m, impl, cache, first, a.tokens)
    name = str(dtype).replace("torch.", "")
    window = f", sliding window {a.sliding_window}" if a.sliding_window else ""
    print(f"\n{name}: prompt {a.prompt}{window}, {a.cache} cache, {a.tokens} steps x {a.rounds} rounds")
    print("| impl | prefill s | attention share | decode tokens/s | attention share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rate = {}
    for impl in ("sdpa", "dotattn"):
        total = statistics.median(t for t, _ in steps[impl])
        share = statistics.median(at / t for t, at in steps[impl])
        rate[impl] = 1 / total
        p_total, p_att = prefill[impl]
        print(f"| {impl} | {p_total:.2f} | {p_att / p_total:.0%} | {rate[impl]:.1f} | {share:.0%} |")
    print(
        f"decode dotattn / sdpa: {rate['dotattn'] / rate['sdpa']:.2f}x; "
        f"prefill: {prefill['sdpa'][0] / prefill['dotattn'][0]:.2f}x"
    )


def bench_compile(a):
    """The model's forward over a prompt (no cache) with dotattn, eager and
    compiled (fullgraph), alternating."""
    m = model(torch.float32, a.compile_tokens)
    m.set_attn_implementation("dotattn")
    ids = torch.randint(0, 8192, (1, a.compile_tokens), generator=torch.Generator().manual_seed(2))

    def forward(x):
        return m(input_ids=x, use_cache=False).logits

    compiled = torch.compile(forward, fullgraph=True)
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(ids)
        warm = time.perf_counter() - start
        times = {"eager": [], "compiled": []}
        for r in range(2 * a.rounds + 1):
            for name, f in (
                (("eager", forward), ("compiled", compiled))
                if r % 2 == 0
                else (("compiled", compiled), ("eager", forward))
            ):
                start = time.perf_counter()
                f(ids)
                times[name].append(time.perf_counter() - start)
    eager, comp = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(
        f"\ntorch.compile(fullgraph=True), dotattn custom op, prompt {a.compile_tokens}, float32: "
        f"eager {eager * 1e3:.1f} ms, compiled {comp * 1e3:.1f} ms ({eager / comp:.2f}x; "
        f"first compiled call {warm:.1f} s)"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--sliding-window",
        type=int,
        default=0,
        metavar="W",
        help="Mistral's architecture with a sliding window of W on every layer (0: Llama, no window)",
    )
    ap.add_argument(
        "--cache",
        choices=["dynamic", "static"],
        default="dynamic",
        help="transformers' DynamicCache (grows by torch.cat each step: generate's default) or StaticCache",
    )
    ap.add_argument("--compile-tokens", type=int, default=1024, help="0: skip the torch.compile comparison")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dotattn.set_num_threads(a.threads)
    register()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, dotattn {dotattn.__version__} "
        f"({dotattn.get_isa()}), {a.threads} threads, {platform.processor() or platform.machine()}"
    )
    for name in a.dtype:
        bench_dtype(getattr(torch, name), a)
    if a.compile_tokens:
        bench_compile(a)


if __name__ == "__main__":
    main()
