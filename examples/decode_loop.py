"""A greedy decode loop of a small transformer over a paged KV cache.

What it demonstrates: dotattn.attention_paged as an inference engine uses
it. A decoder-only transformer (random weights from a seeded generator;
grouped-query attention with 8 query heads over 2 key/value heads of dim 64,
RoPE, RMSNorm, a SwiGLU MLP) generates text for three sequences of different
prompt lengths at once. Their keys and values live in a paged cache: a pool
of 16-token pages per layer, stored as int8 (dotattn.QuantizedKV) or float16,
handed out from a free list as each sequence grows and addressed through a
per-sequence block table.

- Prefill: all prompts' tokens packed into one (total_q, Hq, E) query, one
  attention_paged call per layer with cu_seqlens_q and is_causal=True
  (bottom-right aligned, as flash-attn does).
- Decode: --tokens steps of one token per sequence, a (B, Hq, E) query
  (cu_seqlens_q 0, 1, ..., B: attention_paged's default).
- Check: every attention call is compared with dotattn.reference.attention_paged
  (float64) on the same query and the same cache contents as stored.

Run it from the repository root (numpy and dotattn only):

    python examples/decode_loop.py                      # 4 layers, 256 steps, int8
    python examples/decode_loop.py --tokens 16 --layers 2 --kv float16
    python examples/decode_loop.py --no-check           # timing only

It prints the decode speed of the dotattn path (the checks not counted),
the largest relative error against the reference, and the first generated
token ids of each sequence.

A decode step of this model is many small operations, too small to gain from
threads: on a machine with few or busy cores, numpy's BLAS threads and
dotattn's OpenMP threads spend more time waiting than computing.
OMP_NUM_THREADS=1 (read by both) runs them all on the calling thread.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import dotattn
import numpy as np

VOCAB = 512
HEADS_Q = 8
HEADS_KV = 2
HEAD_DIM = 64
D_MODEL = HEADS_Q * HEAD_DIM
D_HIDDEN = 4 * D_MODEL
PAGE_SIZE = 16
PROMPT_LENGTHS = (5, 17, 40)
ROPE_BASE = 10000.0
RMS_EPS = 1e-6
MAX_RELATIVE_ERROR = 1e-4  # float32 kernel against the float64 reference


# ---------------------------------------------------------------- the model


@dataclass
class Layer:
    attn_norm: np.ndarray  # (D_MODEL,)
    wq: np.ndarray  # (D_MODEL, HEADS_Q * HEAD_DIM)
    wk: np.ndarray  # (D_MODEL, HEADS_KV * HEAD_DIM)
    wv: np.ndarray  # (D_MODEL, HEADS_KV * HEAD_DIM)
    wo: np.ndarray  # (HEADS_Q * HEAD_DIM, D_MODEL)
    mlp_norm: np.ndarray  # (D_MODEL,)
    w_gate: np.ndarray  # (D_MODEL, D_HIDDEN)
    w_up: np.ndarray  # (D_MODEL, D_HIDDEN)
    w_down: np.ndarray  # (D_HIDDEN, D_MODEL)


@dataclass
class Model:
    embedding: np.ndarray  # (VOCAB, D_MODEL)
    layers: list[Layer]
    final_norm: np.ndarray  # (D_MODEL,)
    unembedding: np.ndarray  # (D_MODEL, VOCAB)


def random_matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    # Variance 1/rows keeps each output's scale near its inputs'.
    return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(rows)).astype(np.float32)


def random_model(rng: np.random.Generator, num_layers: int) -> Model:
    def norm_gain() -> np.ndarray:
        return np.ones(D_MODEL, dtype=np.float32)

    layers = [
        Layer(
            attn_norm=norm_gain(),
            wq=random_matrix(rng, D_MODEL, HEADS_Q * HEAD_DIM),
            wk=random_matrix(rng, D_MODEL, HEADS_KV * HEAD_DIM),
            wv=random_matrix(rng, D_MODEL, HEADS_KV * HEAD_DIM),
            wo=random_matrix(rng, HEADS_Q * HEAD_DIM, D_MODEL),
            mlp_norm=norm_gain(),
            w_gate=random_matrix(rng, D_MODEL, D_HIDDEN),
            w_up=random_matrix(rng, D_MODEL, D_HIDDEN),
            w_down=random_matrix(rng, D_HIDDEN, D_MODEL),
        )
        for _ in range(num_layers)
    ]
    return Model(
        embedding=rng.standard_normal((VOCAB, D_MODEL), dtype=np.float32),
        layers=layers,
        final_norm=norm_gain(),
        # Untied: with tied weights and random layers, greedy decoding mostly
        # repeats its input token, whose embedding dominates the residual.
        unembedding=random_matrix(rng, D_MODEL, VOCAB),
    )


def rms_norm(x: np.ndarray, gain: np.ndarray) -> np.ndarray:
    inverse_rms = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)
    return (x * inverse_rms * gain).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def swiglu_mlp(layer: Layer, x: np.ndarray) -> np.ndarray:
    return (silu(x @ layer.w_gate) * (x @ layer.w_up)) @ layer.w_down


def apply_rope(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rotary position embedding of x (T, H, E) at positions (T,), in the
    rotate-half layout: dims i and i + E/2 form one rotating pair."""
    half = x.shape[-1] // 2
    inverse_frequency = ROPE_BASE ** (-np.arange(half, dtype=np.float64) / half)
    angles = positions[:, None].astype(np.float64) * inverse_frequency  # (T, E/2)
    cos = np.cos(angles).astype(np.float32)[:, None, :]  # broadcast over heads
    sin = np.sin(angles).astype(np.float32)[:, None, :]
    first, second = x[..., :half], x[..., half:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


# ---------------------------------------------------------- the paged cache


class PagedKVCache:
    """Keys and values of every layer in pools of (num_pages, PAGE_SIZE,
    HEADS_KV, HEAD_DIM) token slots, shared by all sequences.

    A sequence owns the pages listed in its row of the block table, in
    order: its token j is slot j % PAGE_SIZE of page block_table[b, j //
    PAGE_SIZE]. A page is taken from the free list when a sequence's next
    token starts a new one, and given back when the sequence is released.
    """

    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        num_sequences: int,
        max_tokens: int,
        kv_format: str,
        rng: np.random.Generator,
    ):
        self.kv_format = kv_format
        pool_shape = (num_pages, PAGE_SIZE, HEADS_KV, HEAD_DIM)
        self.keys = [self._empty_pool(pool_shape) for _ in range(num_layers)]
        self.values = [self._empty_pool(pool_shape) for _ in range(num_layers)]
        # Shuffled so that a sequence's pages are scattered over the pool, as
        # they are in a server after many sequences came and went.
        self.free_pages = [int(p) for p in rng.permutation(num_pages)]
        self.num_pages = num_pages
        max_pages = -(-max_tokens // PAGE_SIZE)
        # -1 marks an unused entry; dotattn reads only a sequence's first
        # ceil(seq_len / PAGE_SIZE) entries.
        self.block_table = np.full((num_sequences, max_pages), -1, dtype=np.int32)
        self.seq_lens = np.zeros(num_sequences, dtype=np.int32)

    def _empty_pool(self, shape: tuple[int, ...]) -> np.ndarray | dotattn.QuantizedKV:
        if self.kv_format == "float16":
            return np.zeros(shape, dtype=np.float16)
        # int8 values with one float32 scale per group of 32 dims of each
        # token's head vector (quantize_kv's default group for E = 64). The
        # QuantizedKV wraps the pool arrays without copying: what is written
        # into them is what attention_paged reads.
        groups = HEAD_DIM // 32
        data = np.zeros(shape, dtype=np.int8)
        scale = np.zeros((*shape[:-1], groups), dtype=np.float32)
        return dotattn.QuantizedKV(data, scale)

    def append_slots(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reserve the next counts[b] token slots of each sequence b, taking
        new pages as they are needed; returns (pages, slots) of the reserved
        tokens, sequence by sequence, in the order of their positions."""
        pages, slots = [], []
        for b, count in enumerate(counts):
            start = int(self.seq_lens[b])
            positions = np.arange(start, start + int(count))
            first_new_page = -(-start // PAGE_SIZE)
            last_page = -(-(start + int(count)) // PAGE_SIZE)
            for page_index in range(first_new_page, last_page):
                if not self.free_pages:
                    raise RuntimeError("the KV cache is out of pages")
                self.block_table[b, page_index] = self.free_pages.pop()
            pages.append(self.block_table[b, positions // PAGE_SIZE])
            slots.append(positions % PAGE_SIZE)
            self.seq_lens[b] = start + int(count)
        return np.concatenate(pages), np.concatenate(slots)

    def write(self, layer: int, pages: np.ndarray, slots: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Store new tokens' k and v (T, HEADS_KV, HEAD_DIM) in the given slots."""
        for pool, x in ((self.keys[layer], k), (self.values[layer], v)):
            if isinstance(pool, dotattn.QuantizedKV):
                # quantize_kv(x, out=pool[page, a:b]) would quantise into one
                # page's run of slots in place; the tokens of a step land on
                # several pages, so quantise them together and scatter the
                # int8 values and their scales (each token's groups are
                # quantised on their own, so the result is the same).
                quantized = dotattn.quantize_kv(x, group=pool.group)
                pool.data[pages, slots] = quantized.data
                pool.scale[pages, slots] = quantized.scale
            else:
                pool[pages, slots] = x.astype(pool.dtype)

    def release(self, b: int) -> None:
        used = -(-int(self.seq_lens[b]) // PAGE_SIZE)
        self.free_pages.extend(int(p) for p in self.block_table[b, :used])
        self.block_table[b] = -1
        self.seq_lens[b] = 0


# ------------------------------------------------------- attention + check


class ReferenceCheck:
    """Compares attention outputs with dotattn.reference (float64) on the same
    inputs, keeping the largest relative error and the time it takes."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.max_relative_error = 0.0
        self.seconds = 0.0
        self.calls = 0

    def __call__(
        self, out: np.ndarray, q: np.ndarray, cache: PagedKVCache, layer: int, cu_q: np.ndarray
    ) -> None:
        if not self.enabled:
            return
        start = time.perf_counter()
        ref = dotattn.reference.attention_paged(
            q, cache.keys[layer], cache.values[layer], cache.block_table, cache.seq_lens, cu_q, is_causal=True
        )
        relative, _ = dotattn.reference.errors(out, ref)
        assert relative < MAX_RELATIVE_ERROR, f"layer {layer}: relative error {relative:.2e}"
        self.max_relative_error = max(self.max_relative_error, relative)
        self.calls += 1
        self.seconds += time.perf_counter() - start


def forward(
    model: Model,
    cache: PagedKVCache,
    tokens: np.ndarray,
    positions: np.ndarray,
    cu_seqlens_q: np.ndarray,
    check: ReferenceCheck,
) -> np.ndarray:
    """Run the model on new tokens (T,) of the sequences (sequence b's are
    tokens[cu_seqlens_q[b]:cu_seqlens_q[b + 1]], at the given positions),
    appending their keys and values to the cache; returns the logits of
    each sequence's last new token, (B, VOCAB)."""
    pages, slots = cache.append_slots(np.diff(cu_seqlens_q))
    x = model.embedding[tokens]  # (T, D_MODEL)
    for i, layer in enumerate(model.layers):
        h = rms_norm(x, layer.attn_norm)
        q = apply_rope((h @ layer.wq).reshape(-1, HEADS_Q, HEAD_DIM), positions)
        k = apply_rope((h @ layer.wk).reshape(-1, HEADS_KV, HEAD_DIM), positions)
        v = (h @ layer.wv).reshape(-1, HEADS_KV, HEAD_DIM)
        cache.write(i, pages, slots, k, v)
        # Each sequence's new queries are the last of its keys, so the
        # bottom-right causal rule lets query t see keys 0..position(t). In
        # decoding (one query per sequence) that hides nothing.
        attn = dotattn.attention_paged(
            q,
            cache.keys[i],
            cache.values[i],
            cache.block_table,
            cache.seq_lens,
            cu_seqlens_q,
            is_causal=True,
        )
        check(attn, q, cache, i, cu_seqlens_q)
        x = x + attn.reshape(-1, HEADS_Q * HEAD_DIM) @ layer.wo
        x = x + swiglu_mlp(layer, rms_norm(x, layer.mlp_norm))
    last_tokens = x[cu_seqlens_q[1:] - 1]
    return rms_norm(last_tokens, model.final_norm) @ model.unembedding


# ---------------------------------------------------------------- the loop


def prefill(
    model: Model, cache: PagedKVCache, prompts: list[np.ndarray], check: ReferenceCheck
) -> np.ndarray:
    """All prompts in one packed forward pass; returns each sequence's first
    generated token."""
    lengths = np.array([len(p) for p in prompts], dtype=np.int32)
    cu_seqlens_q = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    positions = np.concatenate([np.arange(n) for n in lengths])
    logits = forward(model, cache, np.concatenate(prompts), positions, cu_seqlens_q, check)
    return np.argmax(logits, axis=-1)


def decode_step(model: Model, cache: PagedKVCache, tokens: np.ndarray, check: ReferenceCheck) -> np.ndarray:
    """Feed each sequence its last generated token (B,), one query per
    sequence, (B, HEADS_Q, HEAD_DIM); returns the next token of each."""
    positions = cache.seq_lens.copy()  # the new token's position is the old length
    one_per_sequence = np.arange(len(tokens) + 1, dtype=np.int32)  # attention_paged's default
    logits = forward(model, cache, tokens, positions, one_per_sequence, check)
    return np.argmax(logits, axis=-1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="transformer layers (%(default)s)")
    parser.add_argument("--tokens", type=int, default=256, help="decode steps, one token each (%(default)s)")
    parser.add_argument("--kv", choices=["float16", "int8"], default="int8", help="KV format (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and prompts (%(default)s)")
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare every attention call with dotattn.reference (on by default)",
    )
    args = parser.parse_args()
    if args.layers < 1 or args.tokens < 1:
        parser.error("--layers and --tokens must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    model = random_model(rng, args.layers)
    prompts = [rng.integers(0, VOCAB, size=n) for n in PROMPT_LENGTHS]
    max_tokens = max(PROMPT_LENGTHS) + args.tokens
    # Enough pages for every sequence at its final length (prompt + one
    # token per decode step), and one spare each.
    num_pages = sum(-(-(n + args.tokens) // PAGE_SIZE) + 1 for n in PROMPT_LENGTHS)
    cache = PagedKVCache(args.layers, num_pages, len(prompts), max_tokens, args.kv, rng)
    check = ReferenceCheck(args.check)

    print(
        f"dotattn {dotattn.__version__} ({dotattn.get_isa()}, {dotattn.get_num_threads()} threads): "
        f"layers={args.layers} Hq={HEADS_Q} Hkv={HEADS_KV} E={HEAD_DIM}, {args.kv} KV cache of "
        f"{num_pages} pages x {PAGE_SIZE} tokens, prompts of {list(PROMPT_LENGTHS)} tokens"
    )

    start = time.perf_counter()
    next_tokens = prefill(model, cache, prompts, check)
    prefill_seconds = time.perf_counter() - start - check.seconds
    generated = [next_tokens]

    checked_before_decode = check.seconds
    start = time.perf_counter()
    for _ in range(args.tokens):
        next_tokens = decode_step(model, cache, next_tokens, check)
        generated.append(next_tokens)
    decode_seconds = time.perf_counter() - start - (check.seconds - checked_before_decode)

    decoded = len(prompts) * args.tokens
    print(f"prefill: {sum(PROMPT_LENGTHS)} prompt tokens in {prefill_seconds * 1e3:.1f} ms")
    print(
        f"decode: {decoded / decode_seconds:.1f} tokens/s ({len(prompts)} sequences x {args.tokens} steps "
        f"in {decode_seconds:.2f} s, checks excluded)"
    )
    if check.enabled:
        print(
            f"check: {check.calls} attention calls against dotattn.reference, "
            f"max relative error {check.max_relative_error:.2e} (bound {MAX_RELATIVE_ERROR:.0e})"
        )
    else:
        print("check: skipped (--no-check)")

    tokens = np.stack(generated, axis=1)  # (B, tokens)
    for b, prompt in enumerate(prompts):
        shown = " ".join(str(t) for t in tokens[b, :12])
        print(f"sequence {b} (prompt {len(prompt)}, {cache.seq_lens[b]} tokens cached): {shown} ...")

    for b in range(len(prompts)):
        cache.release(b)
    assert len(cache.free_pages) == cache.num_pages  # every page came back


if __name__ == "__main__":
    main()
