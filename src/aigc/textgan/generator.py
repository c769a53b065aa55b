"""The GPT as a sequence generator: every sequence starts from the start token ``bos``, which
the generator may never produce (its logit is masked), and has a fixed length L = block_size.

Shapes: B batch, L sequence length, V the model's vocabulary (data tokens + bos).
"""

from __future__ import annotations

import torch

from aigc.gpt.model import GPT, KVCache


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


@torch.no_grad()
def nll_at_temperatures(model: GPT, tokens: torch.Tensor, bos: int, temperatures: list[float],
                        batch_size: int = 500) -> list[float]:
    """``nll`` at each temperature, reading the tokens once. With logits z shifted by their row
    maximum (the same shift serves every temperature), -log p_T(y) = log sum exp(z / T) - z_y / T:
    one exp pass per temperature, about half the work of a log_softmax."""
    was_training = model.training
    model.eval()
    totals = [0.0] * len(temperatures)
    for chunk in tokens.split(batch_size):
        logits = masked_logits(model(with_bos(chunk, bos))[0], bos)  # (b, L, V)
        shifted = logits - logits.amax(dim=-1, keepdim=True)  # (b, L, V), all <= 0: exp cannot overflow
        chosen = shifted.gather(2, chunk[..., None]).squeeze(2)  # (b, L)
        for i, temperature in enumerate(temperatures):
            log_total = (shifted / temperature).exp_().sum(dim=-1).log_()  # (b, L)
            totals[i] += (log_total - chosen / temperature).sum().item()
    model.train(was_training)
    return [total / tokens.numel() for total in totals]


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of probs (B, V) by inverting the cumulative distribution (B,).

    Same distribution as ``torch.multinomial(probs, 1)``, about ten times faster on a CPU for
    thousands of tokens; a token of probability 0 is never drawn (its cdf step is empty).
    """
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u, right=True).squeeze(1)  # (B,)
    # u rounded up to the total (odds about 1e-7): take the likeliest token rather than none.
    return torch.where(index < probs.size(1), index, probs.argmax(dim=-1))


def sample_into(model: GPT, cache: KVCache, logits: torch.Tensor, out: torch.Tensor, start: int, bos: int,
                temperature: float, generator: torch.Generator | None, eos: int | None = None) -> None:
    """Fill out[:, start:] by sampling, given the cache of everything before ``start`` and the
    logits (B, V) that predict position ``start``.

    With ``eos``, the end token is absorbing, as in the training data (a sentence is ended and
    padded by it): every position after a row's first ``eos`` is ``eos``, and sampling stops
    once every row has ended, so short sentences cost no more steps than they have tokens.
    """
    length = out.size(1)
    ended = (out[:, :start] == eos).any(dim=1) if eos is not None else None  # (B,)
    for t in range(start, length):
        drawn = draw(masked_logits(logits, bos, temperature).softmax(dim=-1), generator)  # (B,)
        if ended is not None:
            drawn = drawn.masked_fill(ended, eos)
            ended |= drawn == eos
        out[:, t] = drawn
        if ended is not None and bool(ended.all()):
            out[:, t + 1:] = eos
            return
        if t < length - 1:
            logits = model(out[:, t:t + 1], cache=cache)[0][:, -1]


@torch.no_grad()
def sample(model: GPT, n: int, bos: int, temperature: float = 1.0, generator: torch.Generator | None = None,
           batch_size: int = 1000, eos: int | None = None) -> torch.Tensor:
    """n sequences (n, L) of the generator's block_size tokens, sampled with its KV cache
    (``eos``: the absorbing end token, see ``sample_into``)."""
    was_training = model.training
    model.eval()
    device = model.transformer.wte.weight.device
    chunks = []
    for size in [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else []):
        cache = KVCache(model.config, size, device, model.transformer.wte.weight.dtype)
        logits = model(torch.full((size, 1), bos, device=device), cache=cache)[0][:, -1]  # (size, V)
        out = torch.empty(size, model.config.block_size, dtype=torch.long, device=device)
        sample_into(model, cache, logits, out, 0, bos, temperature, generator, eos)
        chunks.append(out)
    model.train(was_training)
    return torch.cat(chunks)
