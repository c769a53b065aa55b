"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for data-efficient GAN training.

With few training images (mnist5k has 5,000) the discriminator memorises the real set and
its gradients stop teaching the generator. DiffAugment shows D only augmented images, real and
fake alike, in D's update *and* in G's, so D cannot memorise exact pixels and the generator
still learns the unaugmented distribution (the transforms are differentiable, and applied to
both sides, so they do not leak into the samples).

Policies, as in the paper's code: ``translation`` shifts each image by up to 1/8 of its size
(padding with zeros), ``cutout`` zeroes a square of half the image size at a random place.
Random parameters are drawn by :meth:`DiffAugment.draw` as one (B, 4) integer tensor, so the
trainer can draw them from its checkpointed generator and slice them per rank like noise.

Each image is augmented with a probability p (1 in DiffAugment). ADA (Karras et al. 2020) adapts p
during training instead (:class:`AdaptiveProbability`): it raises p while the discriminator is too
sure of the real images, the sign that it is memorising them, and lowers it otherwise, so that a
run gets as much augmentation as its data set needs and no more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125  # largest shift, as a share of the image size
CUTOUT_RATIO = 0.5  # side of the zeroed square, as a share of the image size
ADA_INTERVAL = 4  # discriminator updates between two adjustments of p (StyleGAN2-ADA's)
# Real images over which p can climb from 0 to 1. StyleGAN2-ADA's 500,000 suits runs of tens of millions of
# images; a 10-minute run here sees 0.2-1.1 million, so p must be able to move five times faster.
ADA_SPEED_IMAGES = 100_000


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift each image (B, C, H, W) by whole pixels ``shifts`` (B, 2) = (dy, dx); zeros come in."""
    batch, _, height, width = images.shape
    pad = max(1, int(shifts.abs().max()))
    padded = F.pad(images, [pad, pad, pad, pad]).permute(0, 2, 3, 1)  # (B, H + 2p, W + 2p, C)
    rows = torch.arange(height, device=images.device)[None, :, None] + pad - shifts[:, 0, None, None]  # (B, H, 1)
    cols = torch.arange(width, device=images.device)[None, None, :] + pad - shifts[:, 1, None, None]  # (B, 1, W)
    index = torch.arange(batch, device=images.device)[:, None, None]
    return padded[index, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def cutout(images: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size x size square centred at ``centres`` (B, 2) = (y, x) in each image (clipped at the edges)."""
    _, _, height, width = images.shape
    ys = torch.arange(height, device=images.device)[None, :, None]  # (1, H, 1)
    xs = torch.arange(width, device=images.device)[None, None, :]  # (1, 1, W)
    top, left = (centres[:, 0] - size // 2)[:, None, None], (centres[:, 1] - size // 2)[:, None, None]
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)  # (B, H, W)
    return images * (~inside).unsqueeze(1).to(images.dtype)


class DiffAugment:
    """The transforms of one policy; ``draw`` then ``apply`` (no policy: both are no-ops)."""

    def __init__(self, policy: tuple[str, ...], image_size: int):
        self.policy, self.image_size = policy, image_size
        self.max_shift = int(image_size * TRANSLATION_RATIO + 0.5)
        self.cutout_size = int(image_size * CUTOUT_RATIO + 0.5)

    def __bool__(self) -> bool:
        return bool(self.policy)

    def draw(self, n: int, generator: torch.Generator, device: torch.device, probability: float = 1.0) -> torch.Tensor:
        """Random parameters of ``n`` images: (n, 4) = translation (dy, dx), cutout centre (y, x).
        Each image is augmented with ``probability``; the others get no shift and a cutout off the image."""
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (n, 2), generator=generator, device=device)
        centres = torch.randint(0, self.image_size, (n, 2), generator=generator, device=device)
        if probability < 1:
            spared = torch.rand(n, generator=generator, device=device) >= probability  # (n,)
            shifts[spared] = 0
            centres[spared] = -self.image_size  # the square ends before row and column 0
        return torch.cat([shifts, centres], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if "translation" in self.policy:
            images = translate(images, params[:, :2])
        if "cutout" in self.policy:
            images = cutout(images, params[:, 2:], self.cutout_size)
        return images


class AdaptiveProbability:
    """ADA's controller of the augmentation probability p (Karras et al. 2020, section 2.3).

    Every ``ADA_INTERVAL`` discriminator updates it compares r = E[sign D(real)] (1 when D is sure
    of every real image, 0 when it guesses) with ``target`` (0.6 in the paper) and moves p by one
    step towards more augmentation when r is above, less when below; p stays in [0, 1]."""

    def __init__(self, target: float, images_per_update: int, probability: float = 0.0):
        self.target, self.probability = target, probability
        self.step = images_per_update * ADA_INTERVAL / ADA_SPEED_IMAGES
        self.sign_sum, self.updates = 0.0, 0

    def observe(self, real_logits: torch.Tensor, mean_over_ranks=lambda values: values) -> None:
        """Count one discriminator update's logits on real images (B,); adjust p when an interval is complete.
        ``mean_over_ranks`` averages the interval's r over the processes of a torchrun group."""
        self.sign_sum = self.sign_sum + real_logits.detach().sign().double().mean()  # a tensor: no host sync yet
        self.updates += 1
        if self.updates == ADA_INTERVAL:
            r = mean_over_ranks({"r": float(self.sign_sum) / ADA_INTERVAL})["r"]
            direction = (r > self.target) - (r < self.target)
            self.probability = min(1.0, max(0.0, self.probability + direction * self.step))
            self.sign_sum, self.updates = 0.0, 0

    def state_dict(self) -> dict:
        return {"probability": self.probability, "sign_sum": float(self.sign_sum), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.probability, self.sign_sum, self.updates = state["probability"], state["sign_sum"], state["updates"]
