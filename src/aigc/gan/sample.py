"""``aigc gan sample``: a PNG grid or an npz of a trained GAN run's samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from aigc import runs
from aigc.data.images import save_grid, to_uint8
from aigc.devices import resolve_device
from aigc.gan.config import GanSampleConfig
from aigc.gan.generation import generate_images, sample_labels, samples_per_class
from aigc.gan.guide import candidates_per_image, guided
from aigc.gan.loading import load_gan
from aigc.outputs import output_file


def sample(cfg: GanSampleConfig) -> Path:
    out = output_file(cfg.out, "--out")  # before any work, and never over a file of a run
    device = resolve_device(cfg.device)
    loaded = load_gan(cfg.run, cfg.ema, device)
    temperature = loaded.temperature(cfg.temperature)
    k = candidates_per_image(loaded, cfg.guided, cfg.ema, temperature)
    generator, model_cfg = guided(loaded, k, cfg.ema, temperature, cfg.seed, cfg.guide_stages), loaded.model_config
    labels = sample_labels(model_cfg, cfg.n, cfg.label)
    images = generate_images(generator, model_cfg, cfg.n, labels, cfg.seed, temperature=temperature)
    if cfg.format == "npz":
        arrays = {"images": to_uint8(images)}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        runs.atomic_write(out, lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))
    else:
        conditional_rows = labels is not None and cfg.label is None
        nrow = samples_per_class(model_cfg, cfg.n) if conditional_rows else math.ceil(math.sqrt(cfg.n))
        save_grid(images, out, nrow=nrow)
    passes = getattr(generator, "passes_per_image", 1)
    print(f"wrote {cfg.n} samples to {out}" + (f" (guided: {passes} generator passes per image)" if passes > 1 else ""))
    return out
