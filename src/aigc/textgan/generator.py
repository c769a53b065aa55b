"""The GPT as a sequence generator: every sequence starts from the start token ``bos``, which
the generator may never produce (its logit is masked), and has a fixed length L = block_size.

Shapes: B batch, L sequence length, V the model's vocabulary (data tokens + bos).
"""

from __future__ import annotations

import torch

from aigc.gpt.model import GPT, KVCache
from aigc.gpt.sampling import Sampling, sample_tokens


def with_bos(tokens: torch.Tensor, bos: int) -> torch.Tensor:
    """The generator's inputs for tokens (B, L): bos, then all but the last token."""
    return torch.cat([torch.full_like(tokens[:, :1], bos), tokens[:, :-1]], dim=1)


def masked_logits(logits: torch.Tensor, bos: int, temperature: float = 1.0) -> torch.Tensor:
    """Logits (..., V) with the start token made impossible, divided by the temperature."""
    logits = logits.float() / temperature
    logits[..., bos] = float("-inf")
    return logits


def token_log_probs(model: GPT, tokens: torch.Tensor, bos: int, temperature: float = 1.0) -> torch.Tensor:
    """log p(y_t | y_<t) for every token of tokens (B, L) -> (B, L), at a sampling temperature."""
    logits, _ = model(with_bos(tokens, bos))  # (B, L, V)
    log_probs = masked_logits(logits, bos, temperature).log_softmax(dim=-1)
    return log_probs.gather(2, tokens[..., None]).squeeze(2)


def mle_loss(model: GPT, tokens: torch.Tensor, bos: int) -> torch.Tensor:
    """Mean next-token cross-entropy of tokens (B, L)."""
    return -token_log_probs(model, tokens, bos).mean()


def nll(model: GPT, tokens: torch.Tensor, bos: int, temperature: float = 1.0, batch_size: int = 500) -> float:
    """Mean per-token negative log-likelihood (nats) of tokens (N, L) under the generator sampling
    at ``temperature``."""
    return nll_at_temperatures(model, tokens, bos, [temperature], batch_size)[0]


def nll_at_temperatures(model: GPT, tokens: torch.Tensor, bos: int, temperatures: list[float],
                        batch_size: int = 500) -> list[float]:
    """``nll`` at each temperature, reading the tokens once."""
    totals = sequence_nll_at_temperatures(model, tokens, bos, temperatures, batch_size).sum(dim=1)  # (T,)
    return [total / tokens.numel() for total in totals.tolist()]


@torch.no_grad()
def sequence_nll_at_temperatures(model: GPT, tokens: torch.Tensor, bos: int, temperatures: list[float],
                                 batch_size: int = 500) -> torch.Tensor:
    """-log p_T(x) (T, N), summed over each sequence of tokens (N, L), at each temperature T. With
    logits z shifted by their row maximum (the same shift serves every temperature),
    -log p_T(y) = log sum exp(z / T) - z_y / T: one exp pass per temperature, about half the
    work of a log_softmax."""
    was_training = model.training
    model.eval()
    chunks = []
    for chunk in tokens.split(batch_size):
        logits = masked_logits(model(with_bos(chunk, bos))[0], bos)  # (b, L, V)
        shifted = logits - logits.amax(dim=-1, keepdim=True)  # (b, L, V), all <= 0: exp cannot overflow
        chosen = shifted.gather(2, chunk[..., None]).squeeze(2)  # (b, L)
        chunks.append(torch.stack([((shifted / t).exp_().sum(dim=-1).log_() - chosen / t).double().sum(dim=1)
                                   for t in temperatures]))  # (T, b)
    model.train(was_training)
    return torch.cat(chunks, dim=1)


def sample_into(model: GPT, cache: KVCache, logits: torch.Tensor, tokens: torch.Tensor, start: int, bos: int,
                temperature: float, generator: torch.Generator | None, eos: int | None = None) -> None:
    """Fill tokens[:, start:] (B, 1 + L: bos, then the sequence) by sampling, given the cache of
    tokens[:, :start] and the logits (B, V) that predict column ``start``.

    With ``eos``, the end token is absorbing, as in the training data (a sentence is ended and
    padded by it): every position after a row's first ``eos`` is ``eos``, and sampling stops
    once every row has ended, so short sentences cost no more steps than they have tokens.
    """
    for _ in sample_tokens(model, cache, logits, tokens, start, Sampling(temperature), generator,
                           banned=bos, end_token=eos):
        pass


@torch.no_grad()
def sample(model: GPT, n: int, bos: int, temperature: float = 1.0, generator: torch.Generator | None = None,
           batch_size: int = 1000, eos: int | None = None) -> torch.Tensor:
    """n sequences (n, L) of the generator's block_size tokens, sampled with its KV cache
    (``eos``: the absorbing end token, see ``sample_into``)."""
    was_training = model.training
    model.eval()
    device = model.device
    chunks = []
    for size in [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else []):
        cache = model.new_cache(size)
        tokens = torch.full((size, 1 + model.config.block_size), bos, device=device)  # bos, then the sequence
        logits = model(tokens[:, :1], cache=cache)[0][:, -1]  # (size, V)
        sample_into(model, cache, logits, tokens, 1, bos, temperature, generator, eos)
        chunks.append(tokens[:, 1:])
    model.train(was_training)
    return torch.cat(chunks)
