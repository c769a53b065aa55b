"""Drawing images from a GAN generator: seeded noise, class labels, batches of any size.

Components for ``aigc gan sample``, ``aigc gan eval`` and the server's images route, so that
one seed draws the same images in all three.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from aigc.data.images import to_uint8, to_unit_range
from aigc.errors import UserError
from aigc.gan.models import GanModelConfig


def sample_labels(model_cfg: GanModelConfig, n: int, label: int | None) -> torch.Tensor | None:
    """Labels for ``n`` samples: ``label`` for all, or each class for one row of
    ``samples_per_class(n)`` images; None if unconditional."""
    if label is not None:
        if not model_cfg.conditional:
            raise UserError("--label needs a conditional model; this run is unconditional")
        if not 0 <= label < model_cfg.num_classes:
            raise UserError(f"--label {label} is out of range: this model has classes 0-{model_cfg.num_classes - 1}")
        return torch.full((n,), label, dtype=torch.int64)
    if model_cfg.conditional:
        return torch.arange(n) // samples_per_class(model_cfg, n)
    return None


def samples_per_class(model_cfg: GanModelConfig, n: int) -> int:
    return math.ceil(n / model_cfg.num_classes)


def scale_noise(z: torch.Tensor, model_cfg: GanModelConfig, temperature: float) -> torch.Tensor:
    """Noise z (B, z_dim) ~ N(0, 1) -> N(0, temperature^2): above 1, more varied samples; below 1, more
    typical ones (the direction of BigGAN's truncation trick). A self-conditioned generator reads its
    cluster from z[:, 0] (:func:`aigc.gan.clusters.cluster_of_noise`), which stays as drawn so that every
    cluster keeps its share of the samples."""
    if temperature == 1.0:
        return z
    first = 1 if model_cfg.clusters else 0
    return torch.cat([z[:, :first], z[:, first:] * temperature], dim=1)


def draw_noise(model_cfg: GanModelConfig, n: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """The noise (n, z_dim) of ``n`` images, scaled by ``temperature`` (:func:`scale_noise`), drawn at once so
    that row i is the same whatever the batches it is later cut into (n x z_dim floats: 400 MB for a million
    rows of 100, a fraction of the images they become)."""
    return scale_noise(torch.randn(n, model_cfg.z_dim, generator=torch.Generator().manual_seed(seed)), model_cfg,
                       temperature)


@torch.no_grad()
def images_from_noise(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None,
                      batch_size: int = 1000) -> torch.Tensor:
    """The images (N, C, H, W) in [-1, 1] of noise rows z (N, z_dim), generated in batches so any N fits
    in memory."""
    device = next(itertools.chain(generator.parameters(), generator.buffers()), torch.empty(0)).device
    chunks = []
    for start in range(0, len(z), batch_size):
        chunk_labels = None if labels is None else labels[start:start + batch_size].to(device)
        chunks.append(generator(z[start:start + batch_size].to(device), chunk_labels).float().cpu())
    return torch.cat(chunks)


def generate_images(generator: nn.Module, model_cfg: GanModelConfig, n: int, labels: torch.Tensor | None,
                    seed: int, batch_size: int = 1000, temperature: float = 1.0) -> torch.Tensor:
    """``n`` images (n, C, H, W) in [-1, 1] from seeded noise at ``temperature``, generated in batches."""
    return images_from_noise(generator, draw_noise(model_cfg, n, seed, temperature), labels, batch_size)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round (N, C, H, W) images in [-1, 1] to the 256 grey levels a PNG would store."""
    return to_unit_range(to_uint8(images)).permute(0, 3, 1, 2).contiguous()
