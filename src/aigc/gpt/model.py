"""A GPT-2 language model: the architecture of Radford et al. 2019, with GPT-2's parameter names.

Pre-LayerNorm Transformer blocks (Vaswani et al. 2017; GPT-2 moves LayerNorm to each block's
input), causal self-attention through ``scaled_dot_product_attention``, a GELU MLP four
times as wide, learned absolute positions, and an output layer tied to the token embedding
(Press & Wolf 2017). Parameter names mirror Hugging Face's ``GPT2LMHeadModel``
(``transformer.h.0.attn.c_attn.weight``...) so GPT-2 weights copy across key by key (the
only difference: HF's ``Conv1D`` stores weights transposed, see :mod:`aigc.gpt.hf`).

Shapes: B batch, T time (tokens), C = n_embd channels, nh heads, hs = C // nh head size, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.errors import UserError
from aigc.gpt.config import ACTIVATIONS
from aigc.hugepages import move_to_huge_pages


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64  # the longest context the model sees (learned positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # Set only by structured pruning (``aigc compress --prune-heads/--prune-mlp``), which keeps
    # fewer heads of the same size and fewer MLP channels; None: GPT-2's n_embd // n_head and 4 * n_embd.
    head_size: int | None = None
    mlp_width: int | None = None
    # The MLP's GELU: GPT-2's tanh approximation ("gelu_new"), which its checkpoints and runs saved
    # before this field need, or the exact erf form, which new `aigc gpt train` models use: the
    # same function to 1e-3, computed 2-3x faster on CPU (docs/benchmarks-gpt.md).
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        """Refuse a config no GPT can be built from (e.g. a run's config.json edited by hand), as a
        :class:`UserError` (a ``ValueError`` too, for callers that catch that)."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"GPT model config: {name} must be an integer, got {value!r}")
            if value <= 0:
                raise ConfigError(f"GPT model config: {name} must be positive, got {value}")
        for name in ("head_size", "mlp_width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"GPT model config: {name} must be a positive integer or null, got {value!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"GPT model config: dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"GPT model config: activation must be one of {', '.join(ACTIVATIONS)}, "
                              f"got {self.activation!r}")
        if self.head_size is None and self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        """Channels per attention head (hs)."""
        return self.head_size or self.n_embd // self.n_head

    @property
    def mlp_dim(self) -> int:
        """Hidden channels of each block's MLP."""
        return self.mlp_width or 4 * self.n_embd

    @property
    def gpt2_shaped(self) -> bool:
        """Whether the shapes are GPT-2's own (a pruned model's are not)."""
        return self.head_dim * self.n_head == self.n_embd and self.mlp_dim == 4 * self.n_embd


class ConfigError(UserError, ValueError):
    """A GPTConfig that cannot be built: bad input (a UserError) and a ValueError for older callers."""


# Products with at most this many rows (decoding one token for a few sequences) take the
# broadcast form of :func:`matvec` inside torch.compile.
MATVEC_ROWS = 4
# Inductor inlines cheap pointwise work (a residual add, a LayerNorm, the last product's int8
# scale) into the reduction that reads it, which for a matvec means redoing it for every output
# row. Realizing every pointwise result that reads more than one buffer computes it once:
# measured on GPT-2-small int8 at batch 1, 86 -> 164 tokens/s (2 threads, AMD Zen 4).
DECODE_COMPILE_OPTIONS = {"realize_acc_reads_threshold": 1}
# Compiled decoding graphs one process may hold (see GPT.compile_decoding).
DECODE_GRAPHS_PER_PROCESS = 64


def matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) @ (weight * scale[:, None]).T + bias for a weight (out, in) of any dtype (int8
    with its per-row ``scale``), written as a broadcast product summed over ``in``.

    Only for torch.compile (eagerly it would build an (..., out, in) temporary): inductor turns
    it into one OpenMP reduction that streams the weight at memory speed, and fuses int8 or bf16
    to float conversion into it. ATen's matrix product runs a single row on one thread: measured
    13-14 GB/s on GPT-2-small's matrices against 35-44 GB/s for this form (2 threads, AMD Zen 4).
    """
    y = (x.unsqueeze(-2) * weight.to(x.dtype)).sum(-1)  # (..., out)
    if scale is not None:
        y = y * scale.to(x.dtype)
    return y if bias is None else y + bias.to(x.dtype)


def few_rows(x: torch.Tensor) -> bool:
    """Whether x (..., in) is a handful of rows, which compiled decoding multiplies by :func:`matvec`."""
    return torch.compiler.is_compiling() and x.numel() <= MATVEC_ROWS * x.size(-1)


class Linear(nn.Linear):
    """nn.Linear that, inside torch.compile, multiplies a few rows by :func:`matvec`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if few_rows(x):
            return matvec(x, self.weight, self.bias)
        return super().forward(x)


def _layer_buffers(config: GPTConfig, rows: int, device: torch.device, dtype: torch.dtype,
                   make) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values for every layer, each (rows, nh, block_size + 1, hs), made by ``make``.

    The spare position is never used. It keeps the keys attention reads (the cached ones and
    the new token's) a strict slice of the buffer even for a full context, where torch.compile
    would otherwise compile a second graph for a contiguous tensor, tens of seconds mid-generation.
    """
    shape = (rows, config.n_head, config.block_size + 1, config.head_dim)
    return ([make(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
            [make(shape, device=device, dtype=dtype) for _ in range(config.n_layer)])


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to block_size.

    Callers change it only through its methods: the model appends, generation truncates it
    (the sliding window) and reorders its rows (beam search), rollouts branch it (``select``).
    """

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        self.config = config
        self.keys, self.values = _layer_buffers(config, batch_size, device, dtype, torch.empty)
        self.length = 0  # tokens cached so far (the position of the next token)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after the cached tokens; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every token from position ``length`` on; the next token goes there."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def select(self, rows: torch.Tensor, length: int | None = None) -> "KVCache":
        """A new cache of the first ``length`` tokens (default: all cached) of the batch rows
        ``rows`` (B',), in that order. A row may appear several times: that branches it."""
        length = self.length if length is None else length
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot select {length} tokens from a cache of {self.length}")
        chosen = KVCache(self.config, len(rows), self.keys[0].device, self.keys[0].dtype)
        for layer in range(self.config.n_layer):
            chosen.keys[layer][:, :, :length] = self.keys[layer][rows, :, :length]  # (B', nh, length, hs)
            chosen.values[layer][:, :, :length] = self.values[layer][rows, :, :length]
        chosen.length = length
        return chosen

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the batch rows ``rows`` (B',) in that order, in place (beam search: each new beam
        continues the cache of the beam it extends)."""
        chosen = self.select(rows)
        self.keys, self.values = chosen.keys, chosen.values

    # What the model asks of a cache (BatchKVCache answers the same questions per row).

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """(T,) positions of T new tokens placed after the cached ones."""
        if self.length + T > self.config.block_size:
            raise ValueError(f"sequence of {self.length + T} tokens exceeds block_size {self.config.block_size}")
        return torch.arange(self.length, self.length + T, device=device)

    def attention_mask(self, T: int, total: int, device: torch.device) -> torch.Tensor | None:
        """Which of the ``total`` cached keys each of the T new queries may see (None: all)."""
        return _cached_mask(T, total, device)

    def advance(self, T: int) -> None:
        """Count the T tokens that every layer has just appended."""
        self.length += T


class BatchKVCache:
    """Keys and values of up to ``capacity`` independent sequences decoded together, each with
    its own length: the batched cache of continuous batching.

    Rows ``0 .. rows - 1`` are in use. A sequence joins with its prompt already prefilled in a
    one-row :class:`KVCache` (:meth:`add`), and leaves at once (:meth:`remove`, which moves the
    last row into the freed one so rows in use stay contiguous). Every model call then feeds
    exactly one new token per row in use: row b's token goes to position ``lengths[b]``, and
    its query sees only that row's own tokens (a key mask hides the other rows' longer tails).

    What a model call reads is tensors and one integer (the keys to attend to), so a compiled
    step (:meth:`GPT.compile_decoding`) serves every mix of lengths without recompiling.
    """

    def __init__(self, config: GPTConfig, capacity: int, device: torch.device, dtype: torch.dtype):
        self.config = config
        # Zeros, not empty: masked-out keys and values still enter the attention product, where
        # uninitialised memory (a NaN) would poison the rows that only give them weight 0.
        self.keys, self.values = _layer_buffers(config, capacity, device, dtype, torch.zeros)
        self._lengths = torch.zeros(0, dtype=torch.long, device=device)  # tokens cached in each row in use (rows,)
        # Keys each new token's attention reads: the longest row's tokens and the new one. Never
        # 0 or 1 while rows are in use, values torch.compile would specialize a graph for.
        self._span = 1

    @property
    def rows(self) -> int:
        return self._lengths.size(0)

    @property
    def lengths(self) -> list[int]:
        """Tokens cached in each row in use."""
        return self._lengths.tolist()

    def add(self, cache: KVCache) -> int:
        """Copy the one sequence of ``cache`` into a free row; returns that row."""
        if self.rows == self.keys[0].size(0):
            raise ValueError(f"the batch cache is full ({self.rows} rows)")
        self._lengths = torch.cat([self._lengths, self._lengths.new_zeros(1)])
        self.replace(self.rows - 1, cache)
        return self.rows - 1

    def replace(self, row: int, cache: KVCache) -> None:
        """Make row ``row`` hold the one sequence of ``cache`` (the sliding window rebuilds a row)."""
        if cache.keys[0].size(0) != 1:
            raise ValueError(f"a batch row takes a one-sequence cache, not {cache.keys[0].size(0)}")
        n = cache.length
        for layer in range(self.config.n_layer):
            self.keys[layer][row, :, :n] = cache.keys[layer][0, :, :n]  # (nh, n, hs)
            self.values[layer][row, :, :n] = cache.values[layer][0, :, :n]
        lengths = self._lengths.clone()
        lengths[row] = n
        self._set_lengths(lengths)

    def remove(self, row: int) -> None:
        """Free row ``row``: the last row in use moves into it (callers renumber that one)."""
        last = self.rows - 1
        lengths = self._lengths.clone()
        if row != last:
            n = int(lengths[last])
            for layer in range(self.config.n_layer):
                self.keys[layer][row, :, :n] = self.keys[layer][last, :, :n]
                self.values[layer][row, :, :n] = self.values[layer][last, :, :n]
            lengths[row] = n
        self._set_lengths(lengths[:last])

    def _set_lengths(self, lengths: torch.Tensor) -> None:
        self._lengths = lengths
        self._span = 1 + (int(lengths.max()) if lengths.numel() else 0)

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """(rows, 1): each row's new token goes after that row's own tokens."""
        if T != 1:
            raise ValueError(f"a batch cache takes one new token per row, not {T}")
        if self._span > self.config.block_size:
            raise ValueError(f"a row of the batch cache exceeds block_size {self.config.block_size}")
        return self._lengths[:, None]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (rows, nh, 1, hs) at each row's own position; return the keys and values
        (rows, nh, S, hs) up to the longest row, S = its length + 1."""
        rows = k.size(0)
        every_row = torch.arange(rows, device=k.device)
        self.keys[layer][every_row, :, self._lengths] = k[:, :, 0]  # (rows, nh, hs) written at (b, :, lengths[b])
        self.values[layer][every_row, :, self._lengths] = v[:, :, 0]
        return self.keys[layer][:rows, :, :self._span], self.values[layer][:rows, :, :self._span]

    def attention_mask(self, T: int, total: int, device: torch.device) -> torch.Tensor:
        """(rows, 1, 1, total) bool: row b's query sees its own lengths[b] + 1 keys, not the padding."""
        return (torch.arange(total, device=device)[None, :] <= self._lengths[:, None])[:, None, None, :]

    def advance(self, T: int) -> None:
        self._lengths = self._lengths + T
        self._span += T


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_size = config.n_head, config.head_dim
        inner = config.n_head * config.head_dim  # = C, unless heads were pruned
        self.c_attn = Linear(config.n_embd, 3 * inner)  # q, k, v projections in one matmul
        self.c_proj = Linear(inner, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | BatchKVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        inner = self.n_head * self.head_size
        q, k, v = self.c_attn(x).split(inner, dim=2)  # 3 x (B, T, nh * hs)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is None:
            y = _attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            k, v = cache.append(layer, k, v)  # (B, nh, past + T, hs)
            y = _attention(q, k, v, attn_mask=cache.attention_mask(T, k.size(2), x.device))
        y = y.transpose(1, 2).reshape(B, T, inner)  # (B, T, nh * hs): heads side by side again
        return self.resid_dropout(self.c_proj(y))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options) -> torch.Tensor:
    """``scaled_dot_product_attention`` of (B, nh, T, hs) tensors; on a CPU under bf16 autocast it
    runs in float32. There torch 2.13's bf16 flash-attention backward was measured 4.4x slower than
    float32's (5.5 vs 1.2 ms a call in nanoGPT's Shakespeare recipe, one thread, AMD Zen 4), which
    took back all that autocast gained on the matrix products; its forward was no faster either."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **options)


def _cached_mask(T: int, total: int, device: torch.device) -> torch.Tensor | None:
    """(T, total) bool mask: new token i (at position total - T + i) sees positions <= its own."""
    if T == 1:
        return None  # a single new token may look at everything cached
    return torch.ones(T, total, dtype=torch.bool, device=device).tril(diagonal=total - T)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.mlp_dim)
        self.gelu = nn.GELU(approximate=ACTIVATIONS[config.activation])
        self.c_proj = Linear(config.mlp_dim, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C) -> (B, T, mlp_dim) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | BatchKVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied input and output embeddings
        self._compiled_forward = None  # set by compile_decoding()
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters, counting the tied embedding once: from the config, so an int8 model
        (whose matrices are buffers or packed) counts the same as its float source."""
        c = self.config
        inner, layer_norm = c.n_head * c.head_dim, 2 * c.n_embd
        attention = c.n_embd * 3 * inner + 3 * inner + inner * c.n_embd + c.n_embd
        mlp = c.n_embd * c.mlp_dim + c.mlp_dim + c.mlp_dim * c.n_embd + c.n_embd
        block = 2 * layer_norm + attention + mlp
        return (c.vocab_size + c.block_size) * c.n_embd + c.n_layer * block + layer_norm

    @property
    def device(self) -> torch.device:
        return self.transformer.ln_f.weight.device

    @property
    def activation_dtype(self) -> torch.dtype:
        """The dtype of the residual stream (LayerNorms stay float even where matrices are int8)."""
        return self.transformer.ln_f.weight.dtype

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences, on the model's device and in its dtype."""
        return KVCache(self.config, batch_size, self.device, self.activation_dtype)

    def new_batch_cache(self, capacity: int) -> BatchKVCache:
        """An empty cache for up to ``capacity`` sequences of their own lengths (continuous batching)."""
        return BatchKVCache(self.config, capacity, self.device, self.activation_dtype)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | BatchKVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> the final LayerNorm's output (B, T, C): what the LM head reads.

        With a ``cache``, idx holds only the new tokens; they are placed after the cached ones
        (a ``BatchKVCache`` takes one token per row, idx (B, 1), each after its own row's tokens).
        """
        T = idx.size(1)
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            pos = torch.arange(T, device=idx.device)  # (T,)
        else:
            pos = cache.positions(T, idx.device)  # (T,), or (B, 1) for a BatchKVCache
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | BatchKVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if targets (B, T) are given.

        With a ``cache``, idx holds only the new tokens; they are placed after the cached ones.
        """
        B, T = idx.shape
        logits = self.lm_head(self.hidden_states(idx, cache))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss

    def decode(self, idx: torch.Tensor, cache: KVCache | BatchKVCache) -> torch.Tensor:
        """Logits (B, T, V) of the new tokens idx (B, T), placed after the tokens in ``cache``.

        After :meth:`compile_decoding`, a step of one token per row (through a :class:`KVCache` or
        a :class:`BatchKVCache`) runs the compiled graph; a prompt runs eagerly.
        """
        if self._compiled_forward is not None and idx.size(1) == 1:
            return self._compiled_forward(idx, cache=cache)[0]
        return self(idx, cache=cache)[0]

    @property
    def decoding_compiled(self) -> bool:
        """Whether :meth:`compile_decoding` was called."""
        return self._compiled_forward is not None

    def compile_decoding(self) -> None:
        """Compile :meth:`decode`'s one-token steps with torch.compile (inductor; the first step
        takes tens of seconds, later runs in the same process or cache far less).

        The compiled step fuses each layer's small operations, runs without per-operation Python
        dispatch, and multiplies the one row of each sequence by :func:`matvec`, which reads the
        weights with every thread. The cache length is a dynamic dimension, so the graph serves
        every position without recompiling. As that step reads the weights at memory speed, they
        move into huge pages first (:func:`aigc.hugepages.move_to_huge_pages`).
        """
        move_to_huge_pages(self)
        # Dynamo keeps every graph of GPT.forward on that one code object, shared by all models in
        # the process, and by default stops at 8: a model needs up to four (a KVCache step; a
        # BatchKVCache of one row, of a few rows, of more), so two compiled models could exhaust it.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, DECODE_GRAPHS_PER_PROCESS)
        self._compiled_forward = torch.compile(self.forward, dynamic=True, fullgraph=True,
                                              options=DECODE_COMPILE_OPTIONS)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay the matrices (linear weights, embeddings); not biases or LayerNorm gains."""
        params = list(self.parameters())  # the tied embedding appears once
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def weights(self) -> dict[str, torch.Tensor]:
        """State dict without the tied ``lm_head.weight`` (safetensors stores no shared tensors)."""
        return {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict({**tensors, "lm_head.weight": tensors["transformer.wte.weight"]})
