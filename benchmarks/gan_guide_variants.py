"""Other ways to sample with a run's fitted guide, measured as ``aigc gan eval`` measures the default (probes).

The default resamples each image from K candidates with weights exp(s) per guide stage (``aigc.gan.guide``).
Two variants, each evaluated exactly as ``aigc gan eval --run RUN --ref MNIST_TEST --seed S`` evaluates the
default (same noise rows, reference halves and judge), only the sampler swapped:

- ``--weight-scale B1 [B2 ...]``: weights exp(B_i s_i) in stage i (B > 1 sharpens, B < 1 flattens).
  ``calibrate`` measures the B that fits each stage best on images it never trained on (Platt scaling: the
  stage's held-out tenth of the training images against fresh samples of the sampler below it).
- ``extend --run RUN --out COPY``: a copy of the run whose guide gains one more stage, fitted against the samples of
  the stages it has with the recipe of a later stage within ``aigc gan train``'s budget (``--seconds``; resampling
  ``--candidates`` of them per image); evaluate the copy with ``aigc gan eval``.
- ``--langevin-steps N``: discriminator-driven latent sampling (Che et al. 2020): unadjusted Langevin
  dynamics from the prior on the energy E(z) = |z|^2 / (2 T^2) - sum_i s_i(G(z)), whose target is the same
  corrected model p = q exp(sum_i s_i) / Z; a self-conditioned generator's cluster coordinate z[:, 0] stays
  as drawn.

    flock /tmp/aigc-bench.lock python benchmarks/gan_guide_variants.py calibrate --run RUN
    flock /tmp/aigc-bench.lock python benchmarks/gan_guide_variants.py eval --run RUN --seed S \\
        --weight-scale 1.5 --json OUT.json
    flock /tmp/aigc-bench.lock python benchmarks/gan_guide_variants.py eval --run RUN --seed S \\
        --langevin-steps 20 --langevin-step-size 0.1 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn

import aigc.gan.evaluate as gan_evaluate
from gan_quality import MNIST_TEST, OUT as QUALITY_OUT
from aigc import runs
from aigc.gan.config import GanEvalConfig
from aigc.gan.generation import generate_images, quantize
from aigc.gan.guide import (DEFAULT_GUIDED, GUIDE_FILE, STAGE_SEED_STEP, GuideRecipe, _logits, _read_guide,
                            _split, balanced_loss, fit_guide, load_stages, stacked, stacked_tensors)
from aigc.gan.loading import load_gan, load_training_data
from aigc.gan.train import BUDGETED_LATER_SAMPLES_PER_REAL
from aigc.memory import keep_freed_memory

CALIBRATION_SAMPLES = 2000  # fresh samples of the sampler below each stage (its held-out real tenth: 500 for mnist5k)
# seeds of those samples, apart from every stream the guide was fitted or is evaluated with
CALIBRATION_SAMPLER_SEED, CALIBRATION_NOISE_SEED = 55_555, 99_000


class ScaledLogit(nn.Module):
    """A guide whose logit is multiplied by ``scale``: importance weights exp(scale * s)."""

    def __init__(self, guide: nn.Module, scale: float):
        super().__init__()
        self.guide, self.scale = guide, scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale * self.guide(images)


class LatentLangevin(nn.Module):
    """Images from ``steps`` unadjusted Langevin steps of size ``step_size`` on the noise of each row, starting
    at the row as drawn (the generator interface: (z, labels) -> images)."""

    def __init__(self, generator: nn.Module, guides: list[nn.Module], clusters: bool, temperature: float,
                 steps: int, step_size: float, seed: int):
        super().__init__()
        self.generator, self.guides = generator, nn.ModuleList(guides)
        self.first = 1 if clusters else 0  # z[:, 0] picks a self-conditioned generator's cluster: kept
        self.temperature, self.steps, self.step_size = temperature, steps, step_size
        self.noise = torch.Generator().manual_seed(seed)
        self.passes_per_image = steps + 1  # each step a forward and a backward pass, then the image
        self.requires_grad_(False)  # gradients with respect to the noise only

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return sum(guide(images) for guide in self.guides).view(-1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        head, rest = z[:, :self.first], z[:, self.first:].clone()
        with torch.enable_grad():
            for _ in range(self.steps):
                rest.requires_grad_(True)
                energy = 0.5 * rest.pow(2).sum(1) / self.temperature ** 2 - self.score(
                    self.generator(torch.cat([head, rest], 1), labels))
                grad, = torch.autograd.grad(energy.sum(), rest)
                step_noise = torch.randn(rest.shape, generator=self.noise).to(rest.device)
                rest = rest.detach() - 0.5 * self.step_size * grad + math.sqrt(self.step_size) * step_noise
        with torch.no_grad():
            return self.generator(torch.cat([head, rest], 1), labels)


def calibrate(run: str) -> list[float]:
    """Per guide stage: the scale a (and shift b) of its logit that minimise the balanced loss on its held-out
    tenth of the training images against fresh samples of the sampler below it; prints and returns each a."""
    loaded = load_gan(run, True, "cpu")
    temperature = loaded.temperature()
    seed = _read_guide(loaded)[1]["seed"]
    stages = load_stages(loaded, DEFAULT_GUIDED, True, temperature)
    training = load_training_data(loaded.run_config, loaded.model_config, run)
    labels = (torch.arange(CALIBRATION_SAMPLES) % loaded.model_config.num_classes
              if loaded.model_config.conditional else None)
    scales = []
    for index, stage in enumerate(stages):
        # fit_guide's split: the first permutation drawn from the stage's seed holds the real held-out share
        split = torch.Generator().manual_seed(seed + STAGE_SEED_STEP * index)
        _, held = _split(len(training.images), GuideRecipe.held_out, split)
        below = stacked(loaded.generator, stages[:index], loaded.model_config, temperature,
                        seed + CALIBRATION_SAMPLER_SEED)
        fake = quantize(generate_images(below, loaded.model_config, CALIBRATION_SAMPLES, labels,
                                        seed=CALIBRATION_NOISE_SEED + index, temperature=temperature))
        real_logits, fake_logits = _logits(stage.guide, training.images[held]).view(-1), _logits(stage.guide, fake).view(-1)
        scale_shift = torch.tensor([1.0, 0.0], requires_grad=True)
        optimizer = torch.optim.LBFGS([scale_shift], max_iter=200)

        def loss() -> torch.Tensor:
            optimizer.zero_grad()
            value = balanced_loss(scale_shift[0] * real_logits + scale_shift[1],
                                  scale_shift[0] * fake_logits + scale_shift[1])
            value.backward()
            return value

        before = balanced_loss(real_logits, fake_logits).item()
        optimizer.step(loss)
        print(f"{run} stage {index + 1}: {len(held)} held-out real, {CALIBRATION_SAMPLES} fresh samples; balanced loss "
              f"{before:.4f} as fitted, {loss().item():.4f} calibrated: scale {scale_shift[0].item():.3f}, "
              f"shift {scale_shift[1].item():.3f}")
        scales.append(scale_shift[0].item())
    return scales


def extend(run: Path, out: Path, candidates: int, seconds: float) -> None:
    """Copy ``run`` to ``out`` and stack one more guide stage on the copy's guide (see the module docstring)."""
    if out.exists():
        raise SystemExit(f"{out} exists")
    shutil.copytree(run, out)
    loaded = load_gan(out, True, "cpu")
    temperature = loaded.temperature()
    guide_info = _read_guide(loaded)[1]
    counts = guide_info.get("stage_candidates", [DEFAULT_GUIDED])
    fitted = load_stages(loaded, counts[0], True, temperature)
    training = load_training_data(loaded.run_config, loaded.model_config, str(out))
    labels = training.labels if loaded.model_config.conditional else None
    recipe = GuideRecipe(samples_per_real=BUDGETED_LATER_SAMPLES_PER_REAL, seconds=seconds)
    seed = guide_info["seed"]
    below = stacked(loaded.generator, fitted, loaded.model_config, temperature, seed)
    guide, new_info = fit_guide(below, loaded.model_config, training.images, labels, temperature, recipe,
                                seed + STAGE_SEED_STEP * len(fitted))
    print(f"stage {len(fitted) + 1}: held-out loss {new_info['held_out_loss']:.4f}, balanced accuracy "
          f"{new_info['held_out_accuracy']:.3f}, best at step {new_info['best_step']} of {new_info['steps']}")
    new_info.pop("history")
    guide_info.update(stage_candidates=counts + [candidates],
                      later_stages=guide_info.get("later_stages", []) + [new_info])
    runs.save_weights(out / GUIDE_FILE, stacked_tensors([stage.guide for stage in fitted] + [guide]),
                      metadata={"guide": json.dumps(guide_info)})


def evaluate(args: argparse.Namespace) -> None:
    """``aigc gan eval`` of the run with the variant's sampler in place of the default guided one."""
    def variant(loaded, k, ema, temperature, seed, stages=None):  # the signature of aigc.gan.guide.guided
        fitted = load_stages(loaded, DEFAULT_GUIDED, ema, temperature)
        if args.langevin_steps:
            return LatentLangevin(loaded.generator, [stage.guide for stage in fitted],
                                  bool(loaded.model_config.clusters), temperature, args.langevin_steps,
                                  args.langevin_step_size, seed)
        scales = args.weight_scale + args.weight_scale[-1:] * (len(fitted) - len(args.weight_scale))
        for stage, scale in zip(fitted, scales):
            stage.guide = ScaledLogit(stage.guide, scale)
        return stacked(loaded.generator, fitted, loaded.model_config, temperature, seed)

    gan_evaluate.guided = variant  # evaluate_run builds its sampler with this name
    gan_evaluate.evaluate_run(GanEvalConfig(run=str(args.run), ref=str(MNIST_TEST), n=args.n, seed=args.seed,
                                            json=str(args.json)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["calibrate", "eval", "extend"])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--weight-scale", type=float, nargs="+", default=[1.0], help="per stage; the last repeats")
    parser.add_argument("--out", type=Path, help="extend: where to copy the run")
    parser.add_argument("--candidates", type=int, default=2, help="extend: the new stage's candidates per image")
    parser.add_argument("--seconds", type=float, default=90.0, help="extend: the new stage's time (samples included)")
    parser.add_argument("--langevin-steps", type=int, default=0)
    parser.add_argument("--langevin-step-size", type=float, default=0.1)
    args = parser.parse_args()
    keep_freed_memory()  # as the `aigc` command does
    os.environ.setdefault("XDG_CACHE_HOME", str(QUALITY_OUT / "cache"))  # gan_quality.py's evaluators
    if args.what == "calibrate":
        calibrate(str(args.run))
    elif args.what == "extend":
        extend(args.run, args.out, args.candidates, args.seconds)
    else:
        if args.json is None:
            parser.error("eval needs --json")
        evaluate(args)


if __name__ == "__main__":
    main()
