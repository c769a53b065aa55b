"""Adversarial losses, computed from discriminator logits.

Each loss is a pair of functions in :data:`LOSSES`: ``discriminator(real, fake)`` and
``generator(fake)``, over logits of shape (B,). Adding a loss is two functions and one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def bce_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))) with D = sigmoid(logit); softplus keeps it finite."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def bce_generator(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss of Goodfellow et al. (2014): -log D(G(z))."""
    return F.softplus(-fake).mean()


def hinge_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - D(x)) + max(0, 1 + D(G(z))) (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def wasserstein_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's estimate of -W(real, fake): D(G(z)) - D(x) (Arjovsky et al. 2017)."""
    return fake.mean() - real.mean()


def mean_negated_generator(fake: torch.Tensor) -> torch.Tensor:
    """-D(G(z)): the generator loss of hinge and Wasserstein GANs."""
    return -fake.mean()


def gradient_penalty(discriminator: Callable, real: torch.Tensor, fake: torch.Tensor,
                     labels: torch.Tensor | None = None, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x D(x_hat)||_2 - 1)^2] at random
    interpolates x_hat = alpha * real + (1 - alpha) * fake between real and fake images
    (B, C, H, W); ``alpha`` (B, 1, 1, 1) is drawn uniformly when not given."""
    if alpha is None:
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    alpha = alpha.to(real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed, labels)
    (grad,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
    return ((per_input(grad, scores).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x)||^2] on real images ``real`` (B, C, H, W), which
    must require grad and have produced ``real_logits`` (B,). Pushing D's gradient on the data
    to zero keeps D from sharpening around the real points, where the GAN game then converges.
    With packing, ``real_logits`` is (B / pack,) and the norm is over each pack."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return per_input(grad, real_logits).pow(2).sum(1).mean()


def per_input(grad: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The gradient (B, C, H, W) of D's scores (N,) as one row per input D judged (N, -1): an
    image, or a pack of B / N consecutive images (PacGAN), whose norm is then the pack's."""
    return grad.reshape(scores.numel(), -1).float()


@dataclass(frozen=True)
class GanLoss:
    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: Callable[[torch.Tensor], torch.Tensor]
    gradient_penalty: bool = False
    default_n_critic: int = 1
    probabilities: bool = True  # whether sigmoid(logit) is D's "probability real" for logging


LOSSES = {
    "bce": GanLoss(bce_discriminator, bce_generator),
    "hinge": GanLoss(hinge_discriminator, mean_negated_generator, probabilities=False),
    "wgan-gp": GanLoss(wasserstein_discriminator, mean_negated_generator, gradient_penalty=True,
                       default_n_critic=5, probabilities=False),
}
