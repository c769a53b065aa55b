"""Discriminators: token sequences (B, L) -> one logit per sequence (B,), "real" when positive.

- ``cnn``: SeqGAN's text CNN (Kim 2014, as used by Yu et al. 2017): convolutions of several
  widths over the embedded sequence, max-pooled over time, a highway layer (Srivastava et al.
  2015), dropout, then a linear verdict.
- ``transformer``: a small bidirectional Transformer encoder with learned positions,
  mean-pooled.
- ``likelihood``: reads no tokens, only how the frozen generator scores them: per position
  log p(x_t), the entropy, the largest log-probability and the gap to it, through a 4 -> 32 -> 1
  MLP, summed over positions. About 200 parameters, so it learns from a few hundred real
  sequences, which is what lets it learn from ones the generator never trained on (see
  ``aigc textgan train --d-real held-out``); the others memorise such a set at once.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from aigc.gpt.model import GPT
from aigc.textgan.generator import masked_logits, with_bos

CNN_WIDTHS = (1, 2, 3, 4, 5, 8, 10, 15, 20)
CNN_FILTERS = (64, 128, 128, 128, 128, 64, 64, 64, 96)  # per width, SeqGAN's proportions halved


class Highway(nn.Module):
    """y = g * relu(W x) + (1 - g) * x with gate g = sigmoid(W_g x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(x))
        return gate * torch.relu(self.transform(x)) + (1 - gate) * x


class CnnDiscriminator(nn.Module):
    def __init__(self, vocab_size: int, length: int, emb_dim: int = 64, dropout: float = 0.25):
        super().__init__()
        widths = [(w, f) for w, f in zip(CNN_WIDTHS, CNN_FILTERS) if w <= length]
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, filters, width) for width, filters in widths)
        features = sum(f for _, f in widths)
        self.highway = Highway(features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens).transpose(1, 2)  # (B, E, L)
        pooled = [torch.relu(conv(x)).amax(dim=2) for conv in self.convs]  # each (B, filters)
        h = self.highway(torch.cat(pooled, dim=1))  # (B, features)
        return self.head(self.dropout(h)).squeeze(1)


class TransformerDiscriminator(nn.Module):
    def __init__(self, vocab_size: int, length: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(length, dim))  # nn.Embedding's scale: order is visible from the start
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.emb(tokens) + self.pos[:tokens.size(1)])  # (B, L, D)
        return self.head(self.norm(h).mean(dim=1)).squeeze(1)


FEATURE_BLOCK = 2 ** 24  # log-probabilities (64 MiB) the likelihood discriminator holds at once


class LikelihoodDiscriminator(nn.Module):
    """A verdict from the frozen generator's per-token statistics (B, L, 4), each position's
    through one MLP, summed. The generator is held outside the module's parameters and state
    dict: it is the run's own, saved beside it."""

    FEATURES = 4

    def __init__(self, generator: GPT, bos: int, hidden: int = 32):
        super().__init__()
        self._generator = (generator,)  # a tuple: not a submodule, so not trained, saved or moved
        self.bos = bos
        self.per_token = nn.Sequential(nn.Linear(self.FEATURES, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.per_token[-1].weight)  # start at the verdict 0, "can't tell", for every sequence
        nn.init.zeros_(self.per_token[-1].bias)

    @torch.no_grad()
    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, 4): log p(x_t | x_<t), entropy, max log-probability, log p(x_t) - max;
        in chunks of rows whose (b, L, V) log-probabilities stay small, whatever B is."""
        rows = max(1, FEATURE_BLOCK // (tokens.size(1) * self._generator[0].config.vocab_size))
        return torch.cat([self._features(chunk) for chunk in tokens.split(rows)])

    def _features(self, tokens: torch.Tensor) -> torch.Tensor:
        generator = self._generator[0]
        was_training = generator.training
        generator.eval()
        logits, _ = generator(with_bos(tokens, self.bos))  # (B, L, V)
        generator.train(was_training)
        log_probs = masked_logits(logits, self.bos).log_softmax(dim=-1)  # (B, L, V); bos is -inf
        chosen = log_probs.gather(2, tokens[..., None]).squeeze(2)  # (B, L)
        entropy = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(dim=-1)  # 0 * -inf counts 0
        largest = log_probs.amax(dim=-1)
        return torch.stack([chosen, entropy, largest, chosen - largest], dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.per_token(self.features(tokens)).squeeze(2).sum(dim=1)  # (B,)


DISCRIMINATORS = {"cnn": CnnDiscriminator, "transformer": TransformerDiscriminator,  # (vocab_size, length)
                  "likelihood": LikelihoodDiscriminator}  # (generator, bos)


def build_discriminator(kind: str, vocab_size: int, length: int, generator: GPT | None = None,
                        bos: int | None = None) -> nn.Module:
    """The discriminator ``kind``; ``likelihood`` needs the (frozen) generator and its start token."""
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {kind!r}; choose from {', '.join(DISCRIMINATORS)}")
    if kind == "likelihood":
        if generator is None or bos is None:
            raise ValueError("the likelihood discriminator reads a generator: give generator and bos")
        return LikelihoodDiscriminator(generator, bos)
    return DISCRIMINATORS[kind](vocab_size, length)


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Binary cross-entropy of real (B, L) as 1 and fake (B', L) as 0; also the accuracy."""
    logits = disc(torch.cat([real, fake]))  # (B + B',)
    labels = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).to(logits.device)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    return loss, accuracy
