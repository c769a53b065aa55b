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
- ``refit --run RUN --out COPY``: a copy of the run whose guide is refitted from ``--from-stage`` on as training
  fitted it (each stage's recorded steps and samples, no time limit), at Adam ``--lr``, or with ``--warm-start``
  each stage starting from the weights of the stage below it (its head zeroed: no correction at first).
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
import aigc.gan.guide as guide_module
from aigc.gan.guide import (DEFAULT_GUIDED, GUIDE_FILE, STAGE_SEED_STEP, GuideRecipe, GuideStage, _logits, _read_guide,
                            _split, balanced_loss, fit_guide, load_stages, stacked, stacked_tensors)
from aigc.gan.loading import load_gan, load_training_data
from aigc.gan.train import BUDGETED_LATER_SAMPLES_PER_REAL
from aigc.memory import keep_freed_memory
from aigc.metrics.image import Judge

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


def _copy(run: Path, out: Path):
    """Copy ``run`` to ``out``; the copy loaded, its guide's record and stages, and its training images and labels."""
    if out.exists():
        raise SystemExit(f"{out} exists")
    shutil.copytree(run, out)
    loaded = load_gan(out, True, "cpu")
    guide_info = _read_guide(loaded)[1]
    fitted = load_stages(loaded, guide_info.get("stage_candidates", [DEFAULT_GUIDED])[0], True, loaded.temperature())
    training = load_training_data(loaded.run_config, loaded.model_config, str(out))
    return loaded, guide_info, fitted, training.images, training.labels if loaded.model_config.conditional else None


def _fit_stage(loaded, fitted: list, images, labels, recipe: GuideRecipe, seed: int):
    """A guide stage fitted on top of ``fitted`` as training fits one; its record without the loss history."""
    temperature = loaded.temperature()
    below = stacked(loaded.generator, fitted, loaded.model_config, temperature, seed)
    guide, info = fit_guide(below, loaded.model_config, images, labels, temperature, recipe,
                            seed + STAGE_SEED_STEP * len(fitted))
    print(f"stage {len(fitted) + 1}: held-out loss {info['held_out_loss']:.4f}, balanced accuracy "
          f"{info['held_out_accuracy']:.3f}, best at step {info['best_step']} of {info['steps']}", flush=True)
    info.pop("history")
    return guide, info


def _save(out: Path, guides: list, guide_info: dict) -> None:
    runs.save_weights(out / GUIDE_FILE, stacked_tensors(guides), metadata={"guide": json.dumps(guide_info)})


def extend(run: Path, out: Path, candidates: int, seconds: float) -> None:
    """Copy ``run`` to ``out`` and stack one more guide stage on the copy's guide (see the module docstring)."""
    loaded, guide_info, fitted, images, labels = _copy(run, out)
    recipe = GuideRecipe(samples_per_real=BUDGETED_LATER_SAMPLES_PER_REAL, seconds=seconds)
    guide, new_info = _fit_stage(loaded, fitted, images, labels, recipe, guide_info["seed"])
    guide_info.update(stage_candidates=guide_info.get("stage_candidates", [DEFAULT_GUIDED]) + [candidates],
                      later_stages=guide_info.get("later_stages", []) + [new_info])
    _save(out, [stage.guide for stage in fitted] + [guide], guide_info)


def _warm_started(below: nn.Module):
    """A stand-in for ``Judge(channels)`` whose guide starts from ``below``'s weights with a zero head."""
    def judge(channels: int) -> Judge:
        guide = Judge(channels)
        guide.load_state_dict(below.state_dict())
        nn.init.zeros_(guide.net[-1].weight)
        nn.init.zeros_(guide.net[-1].bias)
        return guide
    return judge


def refit(run: Path, out: Path, from_stage: int, lr: float, warm_start: bool) -> None:
    """Copy ``run`` to ``out`` and refit the copy's guide from stage ``from_stage`` on (the stages below kept), each
    stage as training fitted it (its recorded steps and samples, no time limit), with Adam at ``lr``; with
    ``warm_start`` a stage starts from the weights of the stage below it, its head zeroed."""
    loaded, guide_info, fitted, images, labels = _copy(run, out)
    records = [guide_info] + guide_info.get("later_stages", [])
    kept, infos = fitted[:from_stage - 1], records[:from_stage - 1]
    for record in records[from_stage - 1:]:
        recipe = GuideRecipe(samples_per_real=record["generated_images"] // record["real_images"],
                             steps=record["steps"], lr=lr)
        if warm_start and kept:
            guide_module.Judge = _warm_started(kept[-1].guide)  # the name fit_guide builds its guide with
        try:
            guide, info = _fit_stage(loaded, kept, images, labels, recipe, guide_info["seed"])
        finally:
            guide_module.Judge = Judge
        kept.append(GuideStage(guide, fitted[len(kept)].candidates))
        infos.append(info)
    first = guide_info | infos[0]  # what the guide was fitted to, with the first stage's new record
    if len(infos) > 1:
        first["later_stages"] = infos[1:]
    _save(out, [stage.guide for stage in kept], first)


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
    parser.add_argument("what", choices=["calibrate", "eval", "extend", "refit"])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--weight-scale", type=float, nargs="+", default=[1.0], help="per stage; the last repeats")
    parser.add_argument("--out", type=Path, help="extend, refit: where to copy the run")
    parser.add_argument("--candidates", type=int, default=2, help="extend: the new stage's candidates per image")
    parser.add_argument("--seconds", type=float, default=90.0, help="extend: the new stage's time (samples included)")
    parser.add_argument("--from-stage", type=int, default=1, help="refit: the first stage refitted")
    parser.add_argument("--lr", type=float, default=GuideRecipe.lr, help="refit: the guides' Adam rate")
    parser.add_argument("--warm-start", action="store_true", help="refit: start from the stage below's weights")
    parser.add_argument("--langevin-steps", type=int, default=0)
    parser.add_argument("--langevin-step-size", type=float, default=0.1)
    args = parser.parse_args()
    keep_freed_memory()  # as the `aigc` command does
    os.environ.setdefault("XDG_CACHE_HOME", str(QUALITY_OUT / "cache"))  # gan_quality.py's evaluators
    if args.what == "calibrate":
        calibrate(str(args.run))
    elif args.what == "extend":
        extend(args.run, args.out, args.candidates, args.seconds)
    elif args.what == "refit":
        refit(args.run, args.out, args.from_stage, args.lr, args.warm_start)
    else:
        if args.json is None:
            parser.error("eval needs --json")
        evaluate(args)


if __name__ == "__main__":
    main()
