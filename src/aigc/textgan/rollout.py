"""SeqGAN's reward and policy gradient (Yu et al. 2017, eq. 4 and 8), with the GPT's KV cache.

A sequence is scored by the discriminator only when complete, so the reward of token y_t is
the mean verdict over ``rollouts`` completions of the prefix y_1..y_t sampled from the
generator itself; the last token's reward is the verdict on the sequence. The generator
reads every sequence once with a KV cache; each prefix's rollouts start from a copy of that
cache's first t + 1 positions (``KVCache.select``) instead of re-reading the prefix.

Every reward stays in the row of its own sample and the column of its own time step:
rollout rows are laid out sample-major (rows b * N .. b * N + N - 1 belong to sample b).
"""

from __future__ import annotations

from typing import Callable

import torch

from aigc.gpt.model import GPT, KVCache
from aigc.textgan.generator import sample_into, token_log_probs, with_bos

RewardFn = Callable[[torch.Tensor], torch.Tensor]  # sequences (B, L) -> verdicts (B,) in [0, 1]


@torch.no_grad()
def rollout_completions(model: GPT, tokens: torch.Tensor, bos: int, t: int, rollouts: int,
                        generator: torch.Generator | None = None, eos: int | None = None) -> torch.Tensor:
    """``rollouts`` completions of every prefix tokens[:, :t] -> (B * rollouts, L), sample-major."""
    B, L = tokens.shape
    cache = model.new_cache(B)
    logits = model(with_bos(tokens, bos)[:, :t + 1], cache=cache)[0][:, -1]  # (B, V): predicts y_{t+1}
    return _complete(model, cache, logits, tokens, bos, t, rollouts, generator, eos,
                     torch.arange(B, device=tokens.device))


def _complete(model: GPT, cache: KVCache, logits: torch.Tensor, tokens: torch.Tensor, bos: int, t: int,
              rollouts: int, generator: torch.Generator | None, eos: int | None,
              rows: torch.Tensor) -> torch.Tensor:
    """Complete tokens[:, :t] given a cache of positions 0..t (bos, y_1..y_t) and the logits there
    (``rows``: the rows of the cache that ``tokens`` and ``logits`` are)."""
    branch = cache.select(rows.repeat_interleave(rollouts), length=t + 1)  # B * N rows, sample-major
    # (B * N, 1 + L): bos, then the sequence; the columns after the prefix get overwritten
    out = torch.cat([torch.full_like(tokens[:, :1], bos), tokens], dim=1).repeat_interleave(rollouts, dim=0)
    sample_into(model, branch, logits.repeat_interleave(rollouts, dim=0), out, t + 1, bos, 1.0, generator, eos)
    return out[:, 1:]


@torch.no_grad()
def rollout_rewards(model: GPT, tokens: torch.Tensor, bos: int, reward: RewardFn, rollouts: int,
                    generator: torch.Generator | None = None, eos: int | None = None) -> torch.Tensor:
    """Rewards (B, L): column t - 1 is the mean verdict over completions of tokens[:, :t].

    With the absorbing end token ``eos``, a prefix that holds it has one completion, the
    sequence itself, so its reward is the sequence's verdict and no rollouts are run for it.
    """
    was_training = model.training
    model.eval()
    B, L = tokens.shape
    cache = model.new_cache(B)
    logits = model(with_bos(tokens, bos), cache=cache)[0]  # (B, L, V): logits[:, t] predicts y_{t+1}
    verdicts = reward(tokens)  # (B,)
    rewards = verdicts[:, None].repeat(1, L)  # (B, L); the columns of open prefixes are replaced below
    ended = (tokens == eos).cumsum(dim=1) > 0 if eos is not None else torch.zeros_like(tokens, dtype=torch.bool)
    for t in range(1, L):
        rows = (~ended[:, t - 1]).nonzero().squeeze(1)  # samples whose prefix tokens[:, :t] is still open
        if len(rows) == 0:
            break
        completed = _complete(model, cache, logits[rows, t], tokens[rows], bos, t, rollouts, generator, eos, rows)
        rewards[rows, t - 1] = reward(completed).view(len(rows), rollouts).mean(dim=1)
    model.train(was_training)
    return rewards


def policy_gradient_loss(model: GPT, tokens: torch.Tensor, rewards: torch.Tensor, bos: int,
                         baseline: bool) -> torch.Tensor:
    """REINFORCE: -mean of log p(y_t | y_<t) * (reward_t - b_t); b_t is the batch's mean reward
    at step t with ``baseline``, else 0 (SeqGAN)."""
    advantage = rewards - rewards.mean(dim=0, keepdim=True) if baseline else rewards  # (B, L)
    return -(token_log_probs(model, tokens, bos) * advantage.detach()).mean()
