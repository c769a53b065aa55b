"""Discriminator-guided sampling: a generator q and a discriminator D trained to tell real
sequences from q's samples (``aigc textgan train --mode residual``) make the residual
energy-based model of Deng et al. (2020),

    p(x) = q(x) exp(s(x)) / Z,   s = D's logit,   Z = E_q[exp s(x)],

because the logit of the best discriminator between real data and q is log p_data(x) / q(x).
Two samplers draw from it using q's samples only:

- importance resampling (SIR): draw K candidates from q, keep one with probability
  proportional to exp(s) (self-normalised importance sampling). K = 1 is plain sampling; as
  K grows the output approaches p. Cost: K generated sequences per sample.
- rejection (Azadi et al. 2019, discriminator rejection sampling): keep each candidate with
  probability min(1, exp(s(x) - c)), with c calibrated so that a requested share of q's
  samples is kept. Cost: 1 / acceptance rate per sample. With c >= max s it is exact; a
  lower c (a higher acceptance rate) caps the weights.

For both, the density of what the sampler outputs can be computed (``sir_log_prob``,
``rejection_log_prob``), so the test NLL of the sampler actually used can be measured, not
only that of the ideal p (``ebm_log_prob``, with Z estimated from a pool of q's samples).

Shapes: N sequences, L tokens each, K candidates per output, M pool samples, R subset sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aigc.gpt.model import GPT
from aigc.textgan import generator as gen


@dataclass
class Candidates:
    """Sequences drawn from the (tempered) generator, and the discriminator's logits for them."""

    tokens: torch.Tensor  # (N, L)
    scores: torch.Tensor  # (N,) discriminator logits s(x)


@dataclass
class GuidedSamples:
    tokens: torch.Tensor  # (N, L) the samples kept
    generated: int  # sequences the generator drew to make them
    acceptance: float  # share of the generated sequences kept (1 / K for SIR)

    @property
    def cost(self) -> float:
        """Generated sequences per sample kept (the last batch of a rejection run may draw more)."""
        return 1 / self.acceptance


@torch.no_grad()
def scores(disc: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """The discriminator's logits (N,) of tokens (N, L), in eval mode (no dropout)."""
    was_training = disc.training
    disc.eval()
    out = torch.cat([disc(chunk).float() for chunk in tokens.split(batch_size)])
    disc.train(was_training)
    return out


def draw_candidates(model: GPT, disc: torch.nn.Module, n: int, bos: int, temperature: float = 1.0,
                    generator: torch.Generator | None = None, eos: int | None = None) -> Candidates:
    tokens = gen.sample(model, n, bos, temperature, generator=generator, eos=eos)
    return Candidates(tokens, scores(disc, tokens))


def importance_resample(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For groups of K candidates with logits scores (G, K): the index (G,) of the one kept in
    each group, drawn with probability softmax(scores) (weights exp(s), normalised in the group)."""
    return torch.multinomial(scores.float().softmax(dim=1), 1, generator=generator).squeeze(1)


def guided_sample(model: GPT, disc: torch.nn.Module, n: int, k: int, bos: int, temperature: float = 1.0,
                  generator: torch.Generator | None = None, eos: int | None = None) -> GuidedSamples:
    """n sequences by importance resampling from groups of k fresh candidates each; k = 1 is
    plain sampling (the same tokens for the same generator state)."""
    if k == 1:
        return GuidedSamples(gen.sample(model, n, bos, temperature, generator=generator, eos=eos), n, 1.0)
    return resample(draw_candidates(model, disc, n * k, bos, temperature, generator, eos), k, generator)


def resample(candidates: Candidates, k: int, generator: torch.Generator | None = None) -> GuidedSamples:
    """One sequence from each of the consecutive groups of k candidates (any remainder is unused)."""
    groups = len(candidates.tokens) // k
    tokens = candidates.tokens[:groups * k].view(groups, k, -1)  # (G, K, L)
    kept = importance_resample(candidates.scores[:groups * k].view(groups, k), generator)  # (G,)
    return GuidedSamples(tokens[torch.arange(groups), kept], groups * k, 1 / k)


def log_acceptance(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """log min(1, exp(s - c)) (N,): the log-probability that the rejection sampler with
    threshold c keeps each candidate of logits s (N,)."""
    return (scores.double() - threshold).clamp(max=0)


def acceptance_rate(scores: torch.Tensor, threshold: float) -> float:
    """E_q[min(1, exp(s - c))] over the logits (M,) of samples of q: the share a rejection
    sampler with threshold c keeps."""
    return log_acceptance(scores, threshold).exp().mean().item()


def calibrate_threshold(pool_scores: torch.Tensor, rate: float, iterations: int = 100) -> float:
    """The threshold c at which the rejection sampler keeps the share ``rate`` (0 < rate <= 1)
    of q's samples, found by bisection on a pool of their logits (M,): the acceptance rate
    falls monotonically as c grows, from 1 at c = min s towards exp(max s - c) at c > max s."""
    if not 0 < rate <= 1:
        raise ValueError(f"the acceptance rate must be in (0, 1], got {rate}")
    low = pool_scores.min().item()  # accepts everything
    high = pool_scores.max().item() - math.log(rate)  # accepts at most ``rate``
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if acceptance_rate(pool_scores, middle) > rate else (low, middle)
    return (low + high) / 2


def rejection_keep(scores: torch.Tensor, threshold: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which candidates (N,) a rejection sampler with threshold c keeps: each with probability min(1, exp(s - c))."""
    u = torch.rand(scores.shape, generator=generator, dtype=torch.float64)
    return u < log_acceptance(scores, threshold).exp()


def rejection_sample(model: GPT, disc: torch.nn.Module, n: int, threshold: float, bos: int,
                     temperature: float = 1.0, generator: torch.Generator | None = None, eos: int | None = None,
                     batch_size: int = 2000) -> GuidedSamples:
    """n sequences by discriminator rejection sampling with threshold c (``calibrate_threshold``),
    drawing candidates in batches until n are kept."""
    kept, generated, have = [], 0, 0
    while have < n:
        candidates = draw_candidates(model, disc, batch_size, bos, temperature, generator, eos)
        generated += batch_size
        chosen = candidates.tokens[rejection_keep(candidates.scores, threshold, generator)]
        kept.append(chosen)
        have += len(chosen)
    return GuidedSamples(torch.cat(kept)[:n], generated, have / generated)


# --- the density of what each sampler outputs -----------------------------------------------

def subset_log_sums(pool_scores: torch.Tensor, size: int, subsets: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """log sum_j exp(s_j) over ``subsets`` random subsets of ``size`` pool logits each (drawn with
    replacement from the pool (M,), standing in for fresh samples of q) -> (R,)."""
    index = torch.randint(len(pool_scores), (subsets, size), generator=generator)
    return pool_scores.double()[index].logsumexp(dim=1)


def sir_log_prob(log_q: torch.Tensor, scores: torch.Tensor, pool_scores: torch.Tensor, k: int,
                 subsets: int = 1000, generator: torch.Generator | None = None) -> torch.Tensor:
    """log of the density (N,) with which importance resampling from k candidates outputs each
    sequence x, given log q(x) (N,), its logit s(x) (N,) and a pool of logits of q's samples (M,):

        p_k(x) = k q(x) exp(s(x)) E[1 / (exp(s(x)) + sum_{j=2..k} exp(s_j))],  x_j ~ q,

    (x is one of the k candidates: k ways; it is kept with its weight over the group's total),
    the expectation a Monte-Carlo mean over ``subsets`` sums of k - 1 pool weights. k = 1 gives
    log q exactly; as k grows it tends to ``ebm_log_prob``."""
    if k == 1:
        return log_q.double()  # the candidate is the output
    others = subset_log_sums(pool_scores, k - 1, subsets, generator)  # (R,)
    s = scores.double()[:, None]  # (N, 1)
    log_totals = torch.logaddexp(s, others[None, :])  # (N, R): log(exp s(x) + sum of the others)
    log_mean = (-log_totals).logsumexp(dim=1) - math.log(subsets)  # (N,) log E[1 / total]
    return log_q.double() + math.log(k) + s[:, 0] + log_mean


def rejection_log_prob(log_q: torch.Tensor, scores: torch.Tensor, threshold: float, rate: float) -> torch.Tensor:
    """log of the density (N,) of the rejection sampler's output: q(x) min(1, exp(s(x) - c)) / rate."""
    return log_q.double() + log_acceptance(scores, threshold) - math.log(rate)


@dataclass
class LogPartition:
    """log Z = log E_q[exp s] estimated from a pool of q's samples, with a 95% interval."""

    value: float
    low: float
    high: float

    @classmethod
    def estimate(cls, pool_scores: torch.Tensor) -> "LogPartition":
        """From the pool's logits (M,): the log of the mean weight; the interval is the delta
        method's, mean +- 1.96 standard errors, taken to the log."""
        weights = (pool_scores.double() - pool_scores.max()).exp()  # scaled by exp(-max s): no overflow
        mean, error = weights.mean(), 1.96 * weights.std() / math.sqrt(len(weights))
        shift = pool_scores.max().item()
        low = math.log(mean - error) if mean > error else -math.inf
        return cls(shift + math.log(mean), shift + low, shift + math.log(mean + error))


def ebm_log_prob(log_q: torch.Tensor, scores: torch.Tensor, log_z: LogPartition) -> torch.Tensor:
    """log p(x) = log q(x) + s(x) - log Z of the residual energy model (N,), at the estimate of log Z."""
    return log_q.double() + scores.double() - log_z.value


def sequence_log_probs(model: GPT, tokens: torch.Tensor, bos: int, temperature: float = 1.0,
                       eos: int | None = None, batch_size: int = 500) -> torch.Tensor:
    """log q_T(x) (N,) of whole sequences (N, L) under the generator sampling at ``temperature``;
    with an absorbing ``eos``, the tokens after a sequence's first end token are certain
    (the sampler writes them without asking the model) and count nothing."""
    was_training = model.training
    model.eval()
    totals = []
    with torch.no_grad():
        for chunk in tokens.split(batch_size):
            log_probs = gen.token_log_probs(model, chunk, bos, temperature)  # (b, L)
            if eos is not None:
                ended_before = (chunk == eos).long().cumsum(dim=1) - (chunk == eos).long() > 0  # (b, L)
                log_probs = log_probs.masked_fill(ended_before, 0.0)
            totals.append(log_probs.double().sum(dim=1))
    model.train(was_training)
    return torch.cat(totals)
