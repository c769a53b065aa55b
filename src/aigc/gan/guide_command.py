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
from aigc.gan.guide import (DEFAULT_GUIDED, DEFAULT_STAGE_CANDIDATES, GUIDE_FILE, STAGE_SEED_STEP, GuideRecipe,
                            GuideStage, fit_guide, fitted_to, stacked, stacked_tensors)
from aigc.gan.loading import load_gan, load_training_data


def guide_command(cfg: GanGuideConfig) -> Path:
    """``aigc gan guide``: fit the run's guide and save it as RUN/guide.safetensors (replacing an older one)."""
    checked(cfg)
    recipe = GuideRecipe(samples_per_real=cfg.samples_per_real, steps=cfg.steps)
    return fit_run_guide(Path(cfg.run), [recipe] * cfg.stages, cfg.temperature, cfg.seed, cfg.ema,
                         resolve_device(cfg.device), stage_candidates=cfg.stage_candidates)


def fit_run_guide(run: Path, recipes: list[GuideRecipe], temperature: float | None, seed: int, ema: bool,
                  device: torch.device, stage_candidates: int = DEFAULT_STAGE_CANDIDATES) -> Path:
    """Fit the guide of the run's last checkpoint on its own training data and save it in the run: one
    classifier per recipe, each fitted against the samples of the stages below it (the first resampling
    :data:`DEFAULT_GUIDED` candidates, every later one ``stage_candidates``), at ``temperature`` (None: the
    run's own)."""
    loaded = load_gan(str(run), ema, device)
    temperature = loaded.temperature(temperature)
    if loaded.run_config.get("compression"):
        raise UserError(f"{run} is a compressed run; fit the guide on the run it was compressed from")
    training = load_training_data(loaded.run_config, loaded.model_config, str(run))
    labels = training.labels if loaded.model_config.conditional else None
    stages = len(recipes)
    counts = [DEFAULT_GUIDED] + [stage_candidates] * (stages - 1)
    fitted: list[GuideStage] = []
    infos = []
    for index, (candidates, recipe) in enumerate(zip(counts, recipes)):
        started = time.perf_counter()
        below = stacked(loaded.generator, fitted, loaded.model_config, temperature, seed)
        guide, info = fit_guide(below, loaded.model_config, training.images.to(device), labels, temperature, recipe,
                                seed + STAGE_SEED_STEP * index)
        info.update(seconds=round(time.perf_counter() - started, 1))
        fitted.append(GuideStage(guide.to(device), candidates))
        infos.append(info)
        print(f"guide{f' stage {index + 1}' if stages > 1 else ''}: held-out loss {info['held_out_loss']:.4f} "
              f"(a constant guess: 0.6931), balanced accuracy {info['held_out_accuracy']:.3f}, best at step "
              f"{info['best_step']} of {info['steps']}, {info['seconds']:.0f} s", flush=True)
    info = {**infos[0], **fitted_to(loaded, ema, temperature)}
    if stages > 1:  # what sampling needs to rebuild the stack, and how each later stage was fitted
        info.update(stage_candidates=counts, later_stages=[{k: v for k, v in later.items() if k != "history"}
                                                           for later in infos[1:]])
    path = run / GUIDE_FILE
    runs.save_weights(path, stacked_tensors([stage.guide for stage in fitted]), metadata={"guide": json.dumps(info)})
    print(f"wrote {path}")
    return path
