"""``aigc textgan sample``: sequences of a text-GAN run's generator, plain or guided by its
discriminator (importance resampling or rejection: ``aigc.textgan.guided``)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from aigc import runs
from aigc.devices import resolve_device
from aigc.outputs import output_file
from aigc.textgan import guided
from aigc.textgan.config import TextGanSampleConfig
from aigc.textgan.loading import load_discriminator, load_textgan


def sample(cfg: TextGanSampleConfig) -> list[str]:
    """Draw --n sequences as ``cfg`` says, write them one a line; returns the lines."""
    out = output_file(cfg.out, "--out") if cfg.out else None  # before any work
    device = resolve_device(cfg.device)
    loaded = load_textgan(cfg.run, device)
    guiding = cfg.guided > 1 or cfg.accept_rate is not None
    disc = load_discriminator(loaded, device) if guiding else None
    generator = torch.Generator(device).manual_seed(cfg.seed)
    model, bos, eos = loaded.model, loaded.codec.bos, loaded.codec.eos
    if cfg.accept_rate is None:
        drawn = guided.guided_sample(model, disc, cfg.n, cfg.guided, bos, cfg.temperature, generator, eos)
    else:
        pool = guided.draw_candidates(model, disc, cfg.calibration, bos, cfg.temperature, generator, eos)
        threshold = guided.calibrate_threshold(pool.scores, cfg.accept_rate)
        drawn = guided.rejection_sample(model, disc, cfg.n, threshold, bos, cfg.temperature, generator, eos)
    lines = [" ".join(sentence) for sentence in loaded.codec.decode(drawn.tokens.cpu())]
    text = "".join(line + "\n" for line in lines)
    if out is None:
        sys.stdout.write(text)
    else:
        runs.atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    print(f"{len(lines)} sequences by {_sampler_text(cfg)} at temperature {cfg.temperature:g}: "
          f"{drawn.generated} generated, "
          f"{drawn.cost:.2f} per sequence kept" + (f" -> {out}" if out else ""), file=sys.stderr)
    return lines


def _sampler_text(cfg: TextGanSampleConfig) -> str:
    if cfg.accept_rate is not None:
        return (f"rejection sampling calibrated to keep {cfg.accept_rate:g} "
                f"(on {cfg.calibration} sequences, not counted below)")
    return f"importance resampling from {cfg.guided} candidates" if cfg.guided > 1 else "plain sampling"
