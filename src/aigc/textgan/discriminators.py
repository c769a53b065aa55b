"""Discriminators: token sequences (B, L) -> one logit per sequence (B,), "real" when positive.

- ``cnn``: SeqGAN's text CNN (Kim 2014, as used by Yu et al. 2017): convolutions of several
  widths over the embedded sequence, max-pooled over time, a highway layer (Srivastava et al.
  2015), dropout, then a linear verdict.
- ``transformer``: a small bidirectional Transformer encoder with learned positions,
  mean-pooled.
"""

from __future__ import annotations

import torch
import torch.nn as nn

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


DISCRIMINATORS = {"cnn": CnnDiscriminator, "transformer": TransformerDiscriminator}  # (vocab_size, length)


def build_discriminator(kind: str, vocab_size: int, length: int) -> nn.Module:
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {kind!r}; choose from {', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[kind](vocab_size, length)


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Binary cross-entropy of real (B, L) as 1 and fake (B', L) as 0; also the accuracy."""
    logits = disc(torch.cat([real, fake]))  # (B + B',)
    labels = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).to(logits.device)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    return loss, accuracy
