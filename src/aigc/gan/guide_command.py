"""``aigc gan guide``: fit a run's guide (:mod:`aigc.gan.guide`) and save it in the run; ``aigc gan train``
fits one the same way when it ends."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from aigc import runs
from aigc.config import checked
from aigc.devices import resolve_device
from aigc.errors import UserError
from aigc.gan.config import GanGuideConfig
from aigc.gan.guide import GUIDE_FILE, GuideRecipe, fit_guide, fitted_to
from aigc.gan.loading import load_gan, load_training_data


def guide_command(cfg: GanGuideConfig) -> Path:
    """``aigc gan guide``: fit the run's guide and save it as RUN/guide.safetensors (replacing an older one)."""
    checked(cfg)
    recipe = GuideRecipe(samples_per_real=cfg.samples_per_real, steps=cfg.steps)
    return fit_run_guide(Path(cfg.run), recipe, cfg.temperature, cfg.seed, cfg.ema, resolve_device(cfg.device))


def fit_run_guide(run: Path, recipe: GuideRecipe, temperature: float, seed: int, ema: bool,
                  device: torch.device) -> Path:
    """Fit the guide of the run's last checkpoint on its own training data; save it in the run."""
    loaded = load_gan(str(run), ema, device)
    if loaded.run_config.get("compression"):
        raise UserError(f"{run} is a compressed run; fit the guide on the run it was compressed from")
    training = load_training_data(loaded.run_config, loaded.model_config, str(run))
    started = time.perf_counter()
    guide, info = fit_guide(loaded.generator, loaded.model_config, training.images.to(device),
                            training.labels if loaded.model_config.conditional else None, temperature, recipe, seed)
    info.update(fitted_to(loaded, ema, temperature), seconds=round(time.perf_counter() - started, 1))
    path = run / GUIDE_FILE
    runs.save_weights(path, guide.state_dict(), metadata={"guide": json.dumps(info)})
    print(f"guide: held-out loss {info['held_out_loss']:.4f} (a constant guess: 0.6931), balanced accuracy "
          f"{info['held_out_accuracy']:.3f}, best at step {info['best_step']} of {info['steps']}, "
          f"{info['seconds']:.0f} s")
    print(f"wrote {path}")
    return path
