"""Loading a GAN run: config.json -> the generator and discriminator -> the checkpoint's weights."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from aigc import runs
from aigc.data.images import BUNDLED, ImageData, load_images
from aigc.errors import UserError
from aigc.gan.models import GanModelConfig, build_generator

GAN_KIND = "gan"
# Model settings added after runs were first saved: a config.json without them gets the default.
LATER_MODEL_KEYS = {"minibatch_std", "pack", "clusters"}


@dataclass
class GanRun:
    """A GAN run ready to sample: its generator (the EMA copy when there is one and it was
    asked for; eval mode), the model config and the whole config.json."""

    generator: nn.Module
    model_config: GanModelConfig
    run_config: dict
    path: Path

    def temperature(self, given: float | None = None) -> float:
        """The noise temperature to sample at: ``given`` (a command's --temperature), else the run's own, which
        ``aigc gan train --temperature`` set; 1 for a run saved before that setting existed."""
        if given is not None:
            return given
        return float(self.run_config.get("train", {}).get("temperature") or 1.0)


def model_config_of(run_config: dict, run: Path) -> GanModelConfig:
    """The model section of a GAN run's config.json, checked field by field."""
    values = run_config.get("model")
    names = {f.name for f in fields(GanModelConfig)}
    if not isinstance(values, dict) or not names - LATER_MODEL_KEYS <= set(values) <= names:
        raise UserError(f"{run / runs.CONFIG_FILE} has no valid GAN model config (expected the keys "
                        f"{', '.join(sorted(names))})")
    try:
        return GanModelConfig(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{run / runs.CONFIG_FILE} has no valid GAN model config ({exc})") from None


def load_prefixed(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: Path) -> None:
    """Load the ``prefix.``-named tensors into ``module``; a mismatch is a UserError."""
    own = {name[len(prefix) + 1:]: t for name, t in tensors.items() if name.startswith(prefix + ".")}
    try:
        module.load_state_dict(own)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise UserError(f"{where}: weights do not fit the model in config.json ({first_line})") from None


def load_gan(run: str | Path, ema: bool = True, device: torch.device | str = "cpu") -> GanRun:
    """The generator of a GAN run's last checkpoint (its EMA copy when present and ``ema``)."""
    run = Path(run)
    run_config = runs.read_run_config(run, GAN_KIND)
    model_config = model_config_of(run_config, run)
    folder = runs.checkpoint_dir(run, "last")
    tensors, _ = runs.load_weights(folder / runs.WEIGHTS_FILE)
    generator = build_generator(model_config)
    scheme = (run_config.get("compression") or {}).get("quantize")
    if scheme:
        generator = _compressed_generator(generator, tensors, scheme, folder, torch.device(device))
    else:
        prefix = "ema_generator" if ema and any(k.startswith("ema_generator.") for k in tensors) else "generator"
        load_prefixed(generator, tensors, prefix, folder)
    return GanRun(generator.to(device).eval(), model_config, run_config, run)


def _compressed_generator(generator: nn.Module, tensors: dict[str, torch.Tensor], scheme: str, folder: Path,
                          device: torch.device) -> nn.Module:
    """The generator of an ``aigc compress`` run (its only generator: the source's EMA copy)."""
    from aigc.compress.gan import load_compressed_generator

    if scheme == "int8-dynamic" and device.type != "cpu":
        raise UserError(f"{folder} holds int8-dynamic weights, which run on the CPU only; use --device cpu")
    try:
        return load_compressed_generator(generator, tensors, scheme)
    except (KeyError, RuntimeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise UserError(f"{folder}: the {scheme} weights do not fit the model in config.json ({first_line})") from None


def load_generator(run: str | Path, ema: bool = True, device: torch.device | str = "cpu"
                   ) -> tuple[nn.Module, GanModelConfig, dict]:
    """(generator, model config, config.json) of a GAN run: :func:`load_gan` as a tuple."""
    loaded = load_gan(run, ema, device)
    return loaded.generator, loaded.model_config, loaded.run_config


def load_training_data(run_config: dict, model_cfg: GanModelConfig, run: str) -> ImageData:
    """The data the run was trained on, converted as training converted it: the evaluator of ``aigc gan eval``
    and the guide of ``aigc gan guide`` learn from it."""
    spec = run_config.get("train", {}).get("data", "mnist5k")
    if spec not in BUNDLED and not Path(spec).expanduser().exists():
        raise UserError(f"the run's training data, {spec}, is missing here (see {run}/config.json); the evaluator "
                        "and the guide learn from it")
    data = load_images(spec, model_cfg.image_size, model_cfg.channels)
    if model_cfg.conditional and data.num_classes != model_cfg.num_classes:
        raise UserError(f"{spec} has {data.num_classes} classes but the model of {run} has {model_cfg.num_classes}")
    return data
