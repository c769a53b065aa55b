"""Structured pruning of a GPT: fewer attention heads and fewer MLP channels, so every matrix
really shrinks (a smaller model, not a sparse one).

Every block keeps the same number of heads (of the same size) and of MLP channels, the ones
with the highest importance in that block. A head's importance sums a saliency over all its
weights: its rows of the q, k and v projections (and their biases) and its columns of the
output projection; an MLP channel's sums its row of ``c_fc`` (and bias) and its column of the
MLP's ``c_proj``. The saliency of a weight w is ``w ** 2`` (magnitude) or, given the gradients g
of the loss on calibration batches, ``|w| * sum |g|`` over the batches (a first-order Taylor
estimate of how much the loss changes when w is removed; Molchanov et al. 2019).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from aigc.gpt.model import GPT

IMPORTANCE = ("magnitude", "taylor")


def kept_count(total: int, ratio: float, multiple: int = 1) -> int:
    """How many of ``total`` units remain after pruning ``ratio`` of them (at least one; rounded
    down to ``multiple`` where that leaves some, so int8 kernels get widths they run fast)."""
    kept = max(1, round(total * (1 - ratio)))
    return max(multiple, kept - kept % multiple) if kept >= multiple else kept


def saliency(model: GPT, gradients: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Per-weight saliency: w ** 2, or |w| * g where accumulated gradient magnitudes g are given."""
    params = dict(model.named_parameters())
    if gradients is None:
        return {name: p.detach().float() ** 2 for name, p in params.items()}
    return {name: (p.detach().float() * gradients[name]).abs() for name, p in params.items()}


def head_scores(s: dict[str, torch.Tensor], layer: int, n_head: int, head_size: int) -> torch.Tensor:
    """(n_head,) importance of each head of block ``layer``."""
    prefix = f"transformer.h.{layer}.attn."
    qkv = s[prefix + "c_attn.weight"].sum(dim=1) + s[prefix + "c_attn.bias"]  # (3 * nh * hs,)
    per_head = qkv.view(3, n_head, head_size).sum(dim=(0, 2))  # (nh,)
    return per_head + s[prefix + "c_proj.weight"].sum(dim=0).view(n_head, head_size).sum(dim=1)


def channel_scores(s: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """(mlp_dim,) importance of each MLP channel of block ``layer``."""
    prefix = f"transformer.h.{layer}.mlp."
    return s[prefix + "c_fc.weight"].sum(dim=1) + s[prefix + "c_fc.bias"] + s[prefix + "c_proj.weight"].sum(dim=0)


def top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in their original order."""
    return scores.topk(k).indices.sort().values


def prune(model: GPT, head_ratio: float, mlp_ratio: float,
          gradients: dict[str, torch.Tensor] | None = None) -> GPT:
    """A smaller float GPT keeping the most important (1 - ratio) heads and MLP channels of each block."""
    c = model.config
    hs = c.head_dim
    heads, channels = kept_count(c.n_head, head_ratio), kept_count(c.mlp_dim, mlp_ratio, multiple=8)
    pruned = GPT(replace(c, n_head=heads, head_size=hs, mlp_width=channels))
    s = saliency(model, gradients)
    weights = {name: t.detach().float().clone() for name, t in model.weights().items()}
    for layer in range(c.n_layer):
        keep_heads = top(head_scores(s, layer, c.n_head, hs), heads)
        rows = (keep_heads[:, None] * hs + torch.arange(hs)).flatten()  # (heads * hs,) of one of q, k, v
        qkv_rows = torch.cat([rows + i * c.n_head * hs for i in range(3)])
        keep_channels = top(channel_scores(s, layer), channels)
        _slice(weights, f"transformer.h.{layer}.attn.c_attn", rows=qkv_rows)
        _slice(weights, f"transformer.h.{layer}.attn.c_proj", columns=rows)
        _slice(weights, f"transformer.h.{layer}.mlp.c_fc", rows=keep_channels)
        _slice(weights, f"transformer.h.{layer}.mlp.c_proj", columns=keep_channels)
    pruned.load_weights(weights)
    return pruned.eval()


def _slice(weights: dict[str, torch.Tensor], linear: str, rows: torch.Tensor | None = None,
           columns: torch.Tensor | None = None) -> None:
    """Keep only ``rows`` (outputs: weight rows and bias) or ``columns`` (inputs) of a Linear."""
    if rows is not None:
        weights[linear + ".weight"] = weights[linear + ".weight"][rows]
        weights[linear + ".bias"] = weights[linear + ".bias"][rows]
    if columns is not None:
        weights[linear + ".weight"] = weights[linear + ".weight"][:, columns]


def taylor_gradients(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Sum over calibration batches (x, y) (B, T) of |d loss / d w| for every parameter."""
    model.train(False)
    totals = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in model.named_parameters()}
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                totals[name] += p.grad.detach().float().abs()
    model.zero_grad(set_to_none=True)
    return totals
