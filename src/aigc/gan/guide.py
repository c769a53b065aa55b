"""Discriminator-guided sampling for image GANs: ``aigc gan guide`` (and the end of ``aigc gan train``),
then ``--guided K`` (by default 16 where a run has a guide).

After training, a fresh classifier, the *guide*, learns to tell the run's training images from
its generator's samples, with a balanced loss, so that its logit s(x) estimates the density
ratio log p_data(x) / q(x) of the generator q it was fitted to. That makes the corrected model

    p(x) = q(x) exp(s(x)) / Z

(likelihood-free importance weighting, Grover et al. 2019; the residual energy model of Deng et
al. 2020; the target of discriminator rejection sampling, Azadi et al. 2019), and ``--guided K``
samples from it by importance resampling: each image is one of K candidates drawn from q, kept
with probability softmax(s) over them. K = 1 is plain sampling; each image costs K generator and
guide passes.

Why a fresh classifier rather than the run's discriminator: D was trained against the live
generator, not the EMA copy that draws the samples, and it ends fitted to the last few hundred
batches. Resampling the EMA generator's samples by D's own logits made FID and the judge's test
worse (docs/benchmarks-gan-quality.md). The guide learns from the run's training data only, never
from the images an evaluation compares with, and it is early-stopped on a held-out tenth of both
sides (the real images and the samples).

Guided samples are samples of another model, q1 = q exp(s1) / Z1 (nearly, at finite K), and a second
guide fitted to tell the training images from *them* estimates log p_data / q1: ``aigc gan guide
--stages 2`` fits one on top of the other, and sampling resamples K2 images of the first stage, each
the pick of K1 candidates (nested importance resampling, K1 x K2 generator passes per image). On the
benchmark it corrected what one guide left (docs/benchmarks-gan-quality.md).

The guide is the small CNN of the C2ST judge (:class:`aigc.metrics.image.Judge`), saved as
``RUN/guide.safetensors`` with what it was fitted to (checkpoint, temperature, EMA or not) in its
metadata: sampling with a guide fitted to another generator is an error, not a silent mismatch.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aigc import runs
from aigc.errors import UserError
from aigc.gan.generation import generate_images, quantize, scale_noise
from aigc.gan.loading import GanRun
from aigc.gan.models import GanModelConfig
from aigc.metrics.image import Judge

GUIDE_FILE = "guide.safetensors"
DEFAULT_GUIDED = 16  # candidates per image when a run has a guide and --guided is not given
DEFAULT_STAGE_CANDIDATES = 4  # candidates per image of each stage after the first (--stages 2: 16 x 4 passes)
STAGE_SEED_STEP = 1000  # stage i's samples, split, weights and noise use seed + 1000 (i - 1): its own
CANDIDATE_CHUNK = 256  # candidates generated and scored at a time: (256, 64, 14, 14) floats at most. Larger chunks
# spent more time in the kernel than in the models (fresh pages for every chunk): 4096 made K = 15 sampling 1.8x slower.
# The guide's own noise stream, apart from the seeds that sampling and evaluation use (0, 1, ...).
GUIDE_NOISE_SEED = 7_919_003


@dataclass
class GuideRecipe:
    samples_per_real: int = 4  # generated images per training image: more fakes, a less noisy ratio
    max_generated: int = 20_000  # but no more than this (mnist5k's 5,000 x 4): 4 per image of 50,000 3-channel
    # images took a minute and 1.9 GB to draw, where 3,000 steps of 64 see fewer than 200,000 anyway
    steps: int = 3000  # Adam steps, each on a batch of real and one of generated images
    batch_size: int = 64  # of each side
    lr: float = 1e-3
    eval_every: int = 250  # held-out loss every this many steps; the best guide is kept
    held_out: float = 0.1  # share of both sides kept out of training for the early stop
    seconds: float | None = None  # stop training after this long (drawing the samples included), if sooner

    def generated_count(self, real_count: int) -> int:
        """How many samples to draw: samples_per_real per training image, at most max_generated, and no
        more than ``steps`` batches can see (after a short run's few steps, 20,000 were mostly never used)."""
        seen = math.ceil(self.steps * self.batch_size / (1 - self.held_out))
        return min(real_count * self.samples_per_real, self.max_generated, seen)


def balanced_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with both sides weighted equally whatever their sizes, so the optimal
    logit is log p_data / q with no prior shift; ln 2 for a constant guess."""
    return (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()) / 2


def _split(count: int, held_out: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(count, generator=generator)
    cut = max(1, round(count * held_out))
    return order[cut:], order[:cut]


@torch.no_grad()
def _logits(guide: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([guide(chunk) for chunk in images.split(CANDIDATE_CHUNK)])


def fit_guide(generator: nn.Module, model_cfg: GanModelConfig, real: torch.Tensor, real_labels: torch.Tensor | None,
              temperature: float, recipe: GuideRecipe, seed: int) -> tuple[Judge, dict]:
    """Train a guide on real images (N, C, H, W) in [-1, 1] against 8-bit samples of ``generator`` at
    ``temperature`` (conditional samples take the real images' labels, so the classes keep their shares);
    return the guide of the lowest held-out :func:`balanced_loss` (eval mode) and how it was found."""
    started = time.perf_counter()
    count = recipe.generated_count(len(real))
    labels = None if real_labels is None else real_labels.repeat(recipe.samples_per_real)
    if labels is not None and len(labels) > count:  # capped: a random subset keeps the classes' shares
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:count]]
    fake = quantize(generate_images(generator, model_cfg, count, labels, seed=GUIDE_NOISE_SEED + seed,
                                    temperature=temperature))
    split = torch.Generator().manual_seed(seed)
    (real_train, real_held), (fake_train, fake_held) = (_split(len(real), recipe.held_out, split),
                                                        _split(len(fake), recipe.held_out, split))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        guide = Judge(model_cfg.channels)
    optimizer = torch.optim.Adam(guide.parameters(), lr=recipe.lr)
    best = {"step": 0, "loss": float("inf"), "state": None}
    history = []
    for step in range(1, recipe.steps + 1):
        out_of_time = recipe.seconds is not None and time.perf_counter() - started > recipe.seconds
        real_batch = real[real_train[torch.randint(len(real_train), (recipe.batch_size,), generator=split)]]
        fake_batch = fake[fake_train[torch.randint(len(fake_train), (recipe.batch_size,), generator=split)]]
        loss = balanced_loss(guide(real_batch), guide(fake_batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % recipe.eval_every == 0 or step == recipe.steps or out_of_time:
            held = balanced_loss(_logits(guide, real[real_held]), _logits(guide, fake[fake_held])).item()
            history.append({"step": step, "held_out_loss": held})
            if held < best["loss"]:
                best = {"step": step, "loss": held, "state": copy.deepcopy(guide.state_dict())}
        if out_of_time:
            break
    guide.load_state_dict(best["state"])
    guide.eval()
    real_right = (_logits(guide, real[real_held]) > 0).float().mean().item()
    fake_right = (_logits(guide, fake[fake_held]) <= 0).float().mean().item()
    info = {"steps": step, "best_step": best["step"], "held_out_loss": best["loss"],
            "held_out_accuracy": (real_right + fake_right) / 2, "history": history,
            "real_images": len(real), "generated_images": len(fake), "temperature": temperature, "seed": seed}
    return guide, info


class GuidedGenerator(nn.Module):
    """Samples of the guided model p = q exp(s) / Z through the generator interface (z, labels) -> images:
    each noise row becomes K candidates, its own noise and K - 1 fresh draws at the same temperature with
    the same label, and one is kept by importance resampling with the guide's logits. A self-conditioned
    generator's candidates share the row's cluster too (z[:, 0], which picks it): resampling within a
    cluster keeps each cluster's share, as within a class it keeps each class's. (Across clusters, the
    guide's errors moved the mix: unconditional samples drifted to 0s and 1s, class KL 0.007 -> 0.04-0.07,
    FID x2.8.) Each row's fresh noise and the draw that picks its candidate come from a random stream of the
    row's own, seeded by the sampler's seed and the row's index among all the rows it has drawn: an image
    depends on its noise row and place, not on how the rows were split into calls (batches, or the candidates
    of a stage above)."""

    def __init__(self, generator: nn.Module, guide: Judge, model_cfg: GanModelConfig, k: int,
                 temperature: float, seed: int):
        super().__init__()
        self.generator, self.guide, self.model_cfg = generator, guide, model_cfg
        self.k, self.temperature = k, temperature
        self.seed = GUIDE_NOISE_SEED + 1 + seed
        self.rows_drawn = 0  # rows sampled so far: the index of the next row's stream
        # generator passes per image kept: K, times the passes of each candidate when the generator is guided too
        self.passes_per_image = k * getattr(generator, "passes_per_image", 1)

    @torch.no_grad()
    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        rows, k = len(z), self.k
        fresh, uniforms = self._row_draws(rows)
        fresh = scale_noise(fresh.flatten(0, 1), self.model_cfg, self.temperature).to(z.device).view(rows, k - 1, -1)
        if self.model_cfg.clusters:
            fresh[:, :, 0] = z[:, None, 0]  # the row's cluster for every candidate
        candidates = torch.cat([z[:, None], fresh], dim=1).flatten(0, 1)  # (rows * K, z_dim), row-major
        candidate_labels = None if labels is None else labels.repeat_interleave(k, dim=0)
        images, scores = [], []
        for start in range(0, len(candidates), CANDIDATE_CHUNK):
            chunk_labels = None if candidate_labels is None else candidate_labels[start:start + CANDIDATE_CHUNK]
            chunk = self.generator(candidates[start:start + CANDIDATE_CHUNK], chunk_labels).float()
            images.append(chunk)
            scores.append(self.guide(quantize(chunk).to(chunk.device)).float().cpu())
        images = torch.cat(images).view(rows, k, *images[0].shape[1:])  # (rows, K, C, H, W)
        weights = torch.cat(scores).view(rows, k).softmax(dim=1)  # exp(s), normalised over each row's candidates
        # the candidate whose slice of the cumulative weights holds the row's uniform draw: one draw from weights
        kept = (weights.cumsum(dim=1) < uniforms[:, None]).sum(dim=1).clamp(max=k - 1)  # (rows,)
        return images[torch.arange(rows, device=images.device), kept.to(images.device)]

    def _row_draws(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``rows`` rows' K - 1 fresh noise vectors (rows, K - 1, z_dim), at temperature 1, and
        uniform draws (rows,) in [0, 1), each row from its own stream (the class docstring says why)."""
        fresh = torch.empty(rows, self.k - 1, self.model_cfg.z_dim)
        uniforms = torch.empty(rows)
        stream = torch.Generator()
        for i in range(rows):
            # CPU generators keep 32 bits of a seed: (seed, row) is hashed into them, not added; a negative seed
            # (the server takes any) is read as manual_seed reads it, modulo 2**64
            entropy = [self.seed % 2**64, self.rows_drawn + i]
            stream.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
            fresh[i] = torch.randn(self.k - 1, self.model_cfg.z_dim, generator=stream)
            uniforms[i] = torch.rand((), generator=stream)
        self.rows_drawn += rows
        return fresh, uniforms


# --- the guide of a run: what it was fitted to, loading ----------------------------------------------

def fitted_to(loaded: GanRun, ema: bool, temperature: float) -> dict:
    """What a guide depends on: the checkpoint whose generator drew its samples, and how they were drawn."""
    return {"checkpoint": runs.checkpoint_dir(loaded.path, "last").name, "ema": ema, "temperature": temperature}


def _read_guide(loaded: GanRun) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights of the run's guide and what it was fitted to."""
    path = loaded.path / GUIDE_FILE
    if not path.is_file():
        raise UserError(f"{loaded.path} has no guide; fit one first with `aigc gan guide --run {loaded.path}`")
    tensors, metadata = runs.load_weights(path)
    try:
        return tensors, json.loads(metadata["guide"])
    except (KeyError, ValueError):
        raise UserError(f"{path} is not a guide written by `aigc gan guide`") from None


def guide_stages(run: Path) -> int:
    """How many stages the run's guide has: 0 where it has none (or none that reads as a guide)."""
    try:
        _, metadata = runs.load_weights(run / GUIDE_FILE)
        return len(json.loads(metadata["guide"]).get("stage_candidates", [DEFAULT_GUIDED]))
    except (UserError, KeyError, ValueError):
        return 0


def _mismatch(loaded: GanRun, info: dict, ema: bool, temperature: float) -> str | None:
    """Why a guide does not belong to this generator and temperature; None when it does."""
    wanted = fitted_to(loaded, ema, temperature)
    differences = [f"{name} {info.get(name)} (asked: {value})" for name, value in wanted.items()
                   if info.get(name) != value]
    if not differences:
        return None
    return (f"{loaded.path / GUIDE_FILE} was fitted to another generator: {', '.join(differences)}; refit it with "
            f"`aigc gan guide --run {loaded.path}` and the same options")


@dataclass
class GuideStage:
    guide: Judge  # eval mode, on the generator's device
    candidates: int  # images drawn from the sampler below it for each one it keeps


def _stage_tensors(tensors: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Stage ``index``'s weights in a guide file: the first stage's unprefixed (as a one-stage guide
    stores them), a later one's under ``stage2.``, ``stage3.``, ..."""
    if index == 0:
        return {name: t for name, t in tensors.items() if not name.startswith("stage")}
    prefix = f"stage{index + 1}."
    return {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}


def stacked_tensors(guides: list[Judge]) -> dict[str, torch.Tensor]:
    """The weights of a stack of guides as one file stores them (the inverse of :func:`_stage_tensors`)."""
    prefixes = [""] + [f"stage{index + 1}." for index in range(1, len(guides))]
    return {prefix + name: t for prefix, guide in zip(prefixes, guides) for name, t in guide.state_dict().items()}


def load_stages(loaded: GanRun, k: int, ema: bool, temperature: float, stages: int | None = None) -> list[GuideStage]:
    """The run's guide as ``--guided K`` samples with it, checked to belong to this generator and temperature:
    its first stage with K candidates, then the later stages of a guide fitted with ``--stages``, each with
    the candidates it was fitted with, when K is the count they were fitted over (if not, a note says that
    only the first stage is used). ``stages`` (``--guide-stages``): the first that many stages only."""
    tensors, info = _read_guide(loaded)
    if (mismatch := _mismatch(loaded, info, ema, temperature)) is not None:
        raise UserError(mismatch)
    counts = info.get("stage_candidates", [k])
    if stages is not None:
        if stages > len(counts):
            raise UserError(f"--guide-stages {stages}: {loaded.path / GUIDE_FILE} has {len(counts)} "
                            f"stage{'s' if len(counts) > 1 else ''}")
        if stages > 1 and k != counts[0]:
            raise UserError(f"--guide-stages {stages} needs --guided {counts[0]}: the later stages were fitted "
                            f"over {counts[0]} candidates per image, not {k}")
        counts = counts[:stages]
    if k != counts[0]:
        if len(counts) > 1:
            print(f"note: the first stage of the guide only: its later stages were fitted over {counts[0]} "
                  f"candidates per image (--guided {counts[0]})", file=sys.stderr)
        counts = [k]
    device = next(loaded.generator.parameters()).device
    stages = []
    for index, candidates in enumerate(counts):
        guide = Judge(loaded.model_config.channels)
        try:
            guide.load_state_dict(_stage_tensors(tensors, index))
        except RuntimeError:
            raise UserError(f"{loaded.path / GUIDE_FILE}: weights do not fit the guide of a "
                            f"{loaded.model_config.channels}-channel model") from None
        stages.append(GuideStage(guide.eval().to(device), candidates))
    return stages


def stacked(generator: nn.Module, stages: list[GuideStage], model_cfg: GanModelConfig, temperature: float,
            seed: int) -> nn.Module:
    """The sampler of a stack of guides: each stage keeps one of its candidates, drawn from the stage below
    (the first from the generator), so stage i corrects what the stages below it left (nested importance
    resampling, one generator pass per candidate of the first stage)."""
    sampler = generator
    for index, stage in enumerate(stages):
        sampler = GuidedGenerator(sampler, stage.guide, model_cfg, stage.candidates, temperature,
                                  seed + STAGE_SEED_STEP * index)
    return sampler


def candidates_per_image(loaded: GanRun, requested: int | None, ema: bool, temperature: float) -> int:
    """``--guided`` as asked, or by default :data:`DEFAULT_GUIDED` where the run has a guide fitted to this
    generator and temperature (as ``aigc gan train`` leaves one), and 1 (plain sampling) where it has none or
    one fitted to another (a note says so). A guide that cannot be read is an error either way."""
    if requested is not None:
        return requested
    if not (loaded.path / GUIDE_FILE).is_file():
        return 1
    if (mismatch := _mismatch(loaded, _read_guide(loaded)[1], ema, temperature)) is not None:
        print(f"note: plain samples, not guided: {mismatch}", file=sys.stderr)
        return 1
    return DEFAULT_GUIDED


def guided(loaded: GanRun, k: int, ema: bool, temperature: float, seed: int, stages: int | None = None) -> nn.Module:
    """The generator that ``--guided K`` samples with: the run's own for K = 1, else its guide's stages
    (:func:`stacked`; ``stages``: the first that many, see :func:`load_stages`); its ``passes_per_image``
    says what each image costs."""
    if k == 1:
        if stages is not None:
            raise UserError(f"--guide-stages {stages} resamples through the run's guide, but these samples are "
                            "plain (--guided 1, or no guide fitted to this generator and temperature)")
        return loaded.generator
    return stacked(loaded.generator, load_stages(loaded, k, ema, temperature, stages), loaded.model_config,
                   temperature, seed)
