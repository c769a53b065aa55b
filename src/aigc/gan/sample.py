"""Sampling from a trained GAN run: ``aigc gan sample`` and the functions it is made of."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aigc import runs
from aigc.data.images import save_grid, to_uint8
from aigc.devices import resolve_device
from aigc.errors import UserError
from aigc.gan.config import GanSampleConfig
from aigc.gan.loading import load_generator
from aigc.gan.models import GanModelConfig
from aigc.outputs import output_file


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


@torch.no_grad()
def generate_images(generator: nn.Module, model_cfg: GanModelConfig, n: int, labels: torch.Tensor | None,
                    seed: int, batch_size: int = 1000) -> torch.Tensor:
    """``n`` images (n, C, H, W) in [-1, 1], generated in batches so any ``n`` fits in memory."""
    device = next(generator.parameters()).device
    noise = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        z = torch.randn(count, model_cfg.z_dim, generator=noise).to(device)
        chunk_labels = None if labels is None else labels[start:start + count].to(device)
        chunks.append(generator(z, chunk_labels).float().cpu())
    return torch.cat(chunks)


def sample(cfg: GanSampleConfig) -> Path:
    out = output_file(cfg.out, "--out")  # before any work, and never over a file of a run
    device = resolve_device(cfg.device)
    generator, model_cfg, run_config = load_generator(cfg.run, cfg.ema, device)
    labels = sample_labels(model_cfg, cfg.n, cfg.label)
    images = generate_images(generator, model_cfg, cfg.n, labels, cfg.seed)
    if cfg.format == "npz":
        arrays = {"images": to_uint8(images)}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        runs.atomic_write(out, lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))
    else:
        conditional_rows = labels is not None and cfg.label is None
        nrow = samples_per_class(model_cfg, cfg.n) if conditional_rows else math.ceil(math.sqrt(cfg.n))
        save_grid(images, out, nrow=nrow)
    print(f"wrote {cfg.n} samples to {out}")
    return out
