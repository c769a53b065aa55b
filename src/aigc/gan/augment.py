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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125  # largest shift, as a share of the image size
CUTOUT_RATIO = 0.5  # side of the zeroed square, as a share of the image size


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

    def draw(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Random parameters of ``n`` images: (n, 4) = translation (dy, dx), cutout centre (y, x)."""
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (n, 2), generator=generator, device=device)
        centres = torch.randint(0, self.image_size, (n, 2), generator=generator, device=device)
        return torch.cat([shifts, centres], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if "translation" in self.policy:
            images = translate(images, params[:, :2])
        if "cutout" in self.policy:
            images = cutout(images, params[:, 2:], self.cutout_size)
        return images
