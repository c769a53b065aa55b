"""The GAN training recipe: alternating discriminator and generator updates.

Read top to bottom: load data, build models and optimizers (or restore them with
``--resume``), then the shared loop (``aigc.training.loop``) over steps. One step is
``n_critic`` discriminator updates, each on a fresh real batch, followed by one generator
update. Everything random draws from generators whose states are checkpointed, so a resumed
run continues the same trajectory bit for bit. Under torchrun, G and D train in
DistributedDataParallel, each rank on its own slice of every global batch (of images and of
noise); rank 0 writes.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from aigc import __version__, runs
from aigc.data.images import ImageData, load_images, save_grid
from aigc.devices import autocast
from aigc.errors import UserError
from aigc.gan.augment import AdaptiveProbability, DiffAugment
from aigc.gan.clusters import cluster_prior, kmeans, kmeans_within_classes
from aigc.gan.config import GanTrainConfig, parse_augment
from aigc.gan.guide import GuideRecipe, guide_stages
from aigc.gan.guide_command import fit_run_guide
from aigc.gan.loading import GAN_KIND, load_prefixed, model_config_of
from aigc.gan.losses import LOSSES, GanLoss, gradient_penalty, r1_penalty
from aigc.gan.models import GanModelConfig, build_discriminator, build_generator, judges_samples_independently
from aigc.logging import plot_metrics, read_metrics
from aigc.training import distributed, loop
from aigc.training.samplers import EpochBatches
from aigc.training.schedule import CosineSchedule, set_lr

DEFAULT_STEPS = 2000
# Settings a resumed run takes from the command line; all others come from the saved run.
RESUME_OVERRIDABLE = {"steps", "epochs", "time_budget", "log_every", "sample_every", "save_every", "device", "out",
                      "resume", "tracker", "guide", "guide_stages", "temperature"}
# Share of --time-budget kept for fitting each stage of the guide at the end (--guide): on a 2-core AMX Xeon the
# guide's 3,000 steps take 66-82 s, 11-14% of 10 minutes; a slower CPU stops it early, at the best held-out loss so far.
GUIDE_SHARE = 0.15
# A later stage learns from guided samples, each the pick of 16 candidates: 4 per training image, as `aigc gan guide`
# draws, took 130 s of an AVX2 Zen 3's 90 s share, so within a budget it draws one (~35 s there).
BUDGETED_LATER_SAMPLES_PER_REAL = 1


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for weights, in one multi-tensor call, not a Python
    loop of small ones (the MLP GAN's step is ~4 ms). Batch-norm statistics are not copied: the
    live generator's describe its own activations, not the averaged weights' (see
    :func:`standing_statistics`)."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


# Self-conditioning's default (issue 17, docs/benchmarks-gan-quality.md): on the 5,000 mnist5k digits,
# 100 clusters (50 images each on average) beat 50 and 10, and the DCGAN without clusters by far.
DEFAULT_CLUSTERS = 100
MIN_CLUSTER_IMAGES = 50
DEFAULT_LR = 2e-4  # Adam's rate in the DCGAN paper (Radford et al. 2016)
# A self-conditioned DCGAN learns faster at eight times that rate: at the 10-minute budget on two AVX2 cores the
# conditional one's C2ST fell from 0.787 to 0.719 and its FID from 14.2 to 12.8 (3 seeds; 8e-4 did less for
# the judge and worse for FID; docs/benchmarks-gan-quality.md, "Faster learning rates").
SELF_CONDITIONED_DCGAN_LR = 1.6e-3
DEFAULT_EMA_DECAY = 0.999
# At that rate the live generator moves fast, and a 0.999 average of its weights (warmed up as (1 + t) / (10 + t),
# ~0.9967 after the ~2,800 steps of 10 minutes on two AVX2 cores) draws too narrow a distribution: 0.99 took the
# conditional FID from 12.8 to 9.9 and recall from 0.59 to 0.65 at an unchanged judge (3 seeds;
# docs/benchmarks-gan-quality.md, "A shorter EMA at the faster rate").
SELF_CONDITIONED_DCGAN_EMA_DECAY = 0.99
# Its samples are still a little too alike: drawn from N(0, 1.2^2) noise and resampled by a guide fitted to those
# samples, the unconditional model's cover more of the test digits, at a lower FID and judge accuracy, than at
# temperature 1 (Zen 3, the same 3 runs: recall 0.658 -> 0.735, FID 10.99 -> 9.13, C2ST 0.691 -> 0.674, precision
# 0.836 -> 0.805; 3 fresh seeds: recall 0.731). With labels 1.2 cost label accuracy (99.0% -> 98.0%); 1.1 cost less
# (98.6%) and bought most of the FID (9.62 -> 7.69) at an unchanged judge (0.684 against 0.686; the same 3 runs).
# docs/benchmarks-gan-quality.md, "Sampling the defaults at a temperature above 1".
SELF_CONDITIONED_DCGAN_TEMPERATURE = {False: 1.2, True: 1.1}  # conditional or not -> the noise temperature
# With labels, a second guide fitted against the first's picks lowers the judge's accuracy further: on an AVX2 Zen 3,
# within the 10-minute budget, C2ST 0.705 -> 0.670 and FID 9.6 -> 8.0 on the same 3 runs (every seed better); fitted
# in full after training on 3 others, 0.668 -> 0.649 (docs/benchmarks-gan-quality.md, "Two guides within the 10 minutes").
SELF_CONDITIONED_CONDITIONAL_GUIDE_STAGES = 2
STANDING_SAMPLES = 2048  # noise vectors whose activations set the EMA generator's batch-norm statistics


@torch.no_grad()
def standing_statistics(generator: nn.Module, cfg: GanModelConfig, batch_size: int, device: torch.device) -> None:
    """Set ``generator``'s batch-norm running statistics to the mean and variance of its own
    activations over ``STANDING_SAMPLES`` fixed noise vectors (classes in turn when conditional),
    in batches of the training batch size: BigGAN's "standing statistics", SWA's ``update_bn``.

    An EMA generator needs this: its weights are an average, and the live generator's running
    statistics, which describe the live weights' activations, normalise the average's wrongly (a
    conditional DCGAN's FID at 3,000 steps: 19.5 with copied statistics, 15.6 with its own)."""
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    was_training = generator.training
    generator.train()
    noise = torch.Generator().manual_seed(0)
    for start in range(0, STANDING_SAMPLES, batch_size):
        count = min(batch_size, STANDING_SAMPLES - start)
        z = torch.randn(count, cfg.z_dim, generator=noise).to(device)
        labels = (torch.arange(start, start + count) % cfg.num_classes).to(device) if cfg.conditional else None
        generator(z, labels)
    generator.train(was_training)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def fixed_sample_inputs(cfg: GanModelConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise (and labels) rendered at every sample interval: 10x10, or one row per class."""
    rows = cfg.num_classes if cfg.conditional else 10
    z = torch.randn(rows * 10, cfg.z_dim, generator=torch.Generator().manual_seed(seed + 1))
    labels = torch.arange(rows).repeat_interleave(10) if cfg.conditional else None
    return z, labels


def _smallest_class(data: ImageData) -> tuple[int, int]:
    """(class, its number of training images) of the class with the fewest."""
    sizes = torch.bincount(data.labels, minlength=data.num_classes)
    return int(sizes.argmin()), int(sizes.min())


def _cluster_count(cfg: GanTrainConfig, data: ImageData) -> int:
    """The clusters to self-condition on (per class when conditional): --self-condition, or by
    default, for DCGAN without --pack, DEFAULT_CLUSTERS in all, fewer where a cluster would
    average under MIN_CLUSTER_IMAGES images, none where that leaves fewer than two."""
    if cfg.self_condition is not None:
        return cfg.self_condition
    if cfg.model != "dcgan" or cfg.pack > 1:
        return 0
    groups, smallest = (data.num_classes, _smallest_class(data)[1]) if cfg.conditional else (1, len(data))
    count = min(DEFAULT_CLUSTERS // groups, smallest // MIN_CLUSTER_IMAGES)
    return count if count >= 2 else 0


def _model_config(cfg: GanTrainConfig, data: ImageData, clusters: int | None = None) -> GanModelConfig:
    """The model ``cfg`` trains on ``data``; ``clusters`` (default: :func:`_cluster_count`) fixes them."""
    clusters = _cluster_count(cfg, data) if clusters is None else clusters
    if clusters > len(data):
        raise UserError(f"--self-condition {clusters}: more clusters than the {len(data)} training images")
    if clusters and cfg.conditional:  # clusters within each class
        label, size = _smallest_class(data)
        if clusters > size:
            raise UserError(f"--self-condition {clusters} --conditional: class {label} has only {size} training "
                            "images, fewer than the clusters to split it into")
    return GanModelConfig(
        model=cfg.model, z_dim=cfg.z_dim, image_size=data.image_size, channels=data.channels,
        num_classes=data.num_classes if cfg.conditional else 0,
        width=cfg.width or (256 if cfg.model == "mlp" else 64),
        spectral_norm=cfg.spectral_norm, minibatch_std=cfg.minibatch_std, pack=cfg.pack, clusters=clusters,
        # Batch norm couples the samples of a batch, which a per-sample gradient penalty must
        # not see; spectral norm replaces it as the discriminator's regulariser.
        disc_norm="none" if cfg.spectral_norm or cfg.loss == "wgan-gp" or cfg.r1_gamma > 0 else "batch",
    )


def _max_steps(cfg: GanTrainConfig, data_size: int, n_critic: int) -> int | None:
    if cfg.epochs is not None:
        return max(1, cfg.epochs * (data_size // (cfg.batch_size * distributed.world_size())) // n_critic)
    if cfg.steps is None and cfg.time_budget is not None:
        return None
    return cfg.steps or DEFAULT_STEPS


def _training_budget(cfg: GanTrainConfig, model_cfg: GanModelConfig) -> float | None:
    """The seconds of --time-budget that the GAN trains for: all of them, less the guide stages' shares."""
    if cfg.time_budget is None or not cfg.guide:
        return cfg.time_budget
    return cfg.time_budget * (1 - GUIDE_SHARE * guide_stage_count(cfg, model_cfg))


def _length_text(cfg: GanTrainConfig, plan: loop.Plan) -> str:
    """How long the GAN trains, for the start line: its steps, or its seconds of --time-budget (and who has the rest)."""
    if plan.max_steps:
        return f"{plan.max_steps:g} steps"
    rest = f" (its guide's fit has the rest of the {cfg.time_budget:g} s budget)" if cfg.guide else ""
    return f"{plan.time_budget:g} seconds{rest}"


def _guide_recipes(cfg: GanTrainConfig, max_steps: int | None, elapsed: float) -> list[GuideRecipe]:
    """The recipe of each stage of a run's guide: ``aigc gan guide``'s, with no more steps than the GAN had and,
    under a --time-budget, an equal part of what the GAN left of it after ``elapsed`` seconds (at least each
    stage's share), later stages drawing fewer samples to fit in it."""
    steps = GuideRecipe.steps if max_steps is None else min(GuideRecipe.steps, max_steps)
    if cfg.time_budget is None:
        return [GuideRecipe(steps=steps)] * cfg.guide_stages
    seconds = max(cfg.time_budget * GUIDE_SHARE, (cfg.time_budget - elapsed) / cfg.guide_stages)
    later = GuideRecipe(samples_per_real=BUDGETED_LATER_SAMPLES_PER_REAL, steps=steps, seconds=seconds)
    return [GuideRecipe(steps=steps, seconds=seconds)] + [later] * (cfg.guide_stages - 1)


def _note_replaced_stages(out: Path, stages: int) -> None:
    """A resumed run's guide was fitted to an earlier checkpoint, so training refits it, with ``stages``
    stages; where the old one had more (`aigc gan guide --stages N`), say how to fit them again."""
    if (old := guide_stages(out)) > stages:
        print(f"note: the {old}-stage guide of the earlier checkpoint is replaced by a {stages}-stage guide; fit "
              f"{old} again with `aigc gan guide --run {out} --stages {old}`", flush=True)


def _self_conditioned_dcgan(model_cfg: GanModelConfig) -> bool:
    return model_cfg.model == "dcgan" and bool(model_cfg.clusters)


def learning_rates(cfg: GanTrainConfig, model_cfg: GanModelConfig) -> tuple[float, float]:
    """(G's, D's) Adam learning rates: --lr and --lr-d, or the default for the model."""
    lr = cfg.lr or (SELF_CONDITIONED_DCGAN_LR if _self_conditioned_dcgan(model_cfg) else DEFAULT_LR)
    return lr, cfg.lr_d or lr


def ema_decay(cfg: GanTrainConfig, model_cfg: GanModelConfig) -> float:
    """The EMA generator's decay: --ema-decay (0: no EMA), or the default for the model."""
    if cfg.ema_decay is not None:
        return cfg.ema_decay
    return SELF_CONDITIONED_DCGAN_EMA_DECAY if _self_conditioned_dcgan(model_cfg) else DEFAULT_EMA_DECAY


def sampling_temperature(cfg: GanTrainConfig, model_cfg: GanModelConfig) -> float:
    """The noise temperature the run samples at by default, and its guide is fitted to: --temperature, or the
    default for the model."""
    if cfg.temperature is not None:
        return cfg.temperature
    if _self_conditioned_dcgan(model_cfg):
        return SELF_CONDITIONED_DCGAN_TEMPERATURE[model_cfg.conditional]
    return 1.0


def guide_stage_count(cfg: GanTrainConfig, model_cfg: GanModelConfig) -> int:
    """How many guides the run stacks at the end: --guide-stages, or the default for the model."""
    if cfg.guide_stages is not None:
        return cfg.guide_stages
    return SELF_CONDITIONED_CONDITIONAL_GUIDE_STAGES if _self_conditioned_dcgan(model_cfg) and model_cfg.conditional else 1


def uses_autocast(cfg: GanTrainConfig, model_cfg: GanModelConfig) -> bool:
    """Whether the step runs under bf16 autocast (where the CPU or GPU has it): --amp/--no-amp, or by
    default for the convolutional models only. The MLP GAN's products (64 x 100 x 256 at batch 64) are
    too small to pay for the casts: 2.9 ms a step with autocast, 2.4 ms without, on a CPU with AMX."""
    return cfg.amp if cfg.amp is not None else model_cfg.model != "mlp"


class GanTrainer:
    """The state of one run (models, optimizers, RNGs, data position), its step and its
    evaluation (the fixed-noise sample grid); driven by ``aigc.training.loop``."""

    def __init__(self, cfg: GanTrainConfig, model_cfg: GanModelConfig, data: ImageData, device: torch.device,
                 out: Path | None = None):
        self.cfg, self.model_cfg, self.data, self.device, self.out = cfg, model_cfg, data, device, out
        self.loss: GanLoss = LOSSES[cfg.loss]
        self.n_critic = cfg.n_critic or self.loss.default_n_critic
        # The labels D sees with each real image: its class, or with --self-condition its cluster
        # (found by rank 0, so that every process of a torchrun group holds the same clusters; a
        # resumed run takes the clusters it started with from its state, in load_state)
        self.labels = data.labels.to(device)
        self.clustering_seconds = 0.0
        clustering = model_cfg.clusters and not cfg.resume
        if clustering:
            started = time.perf_counter()
            clusters = self._clusters() if distributed.is_main() else None
            self.labels = distributed.from_main(clusters).to(device)
            self.clustering_seconds = time.perf_counter() - started
        torch.manual_seed(cfg.seed)
        self.generator = build_generator(model_cfg).to(device)
        if clustering:
            self.generator.cluster_prior.copy_(cluster_prior(self.labels, model_cfg.clusters, model_cfg.num_classes))
        self.discriminator = build_discriminator(model_cfg).to(device)
        self.ema_decay = ema_decay(cfg, model_cfg)
        self.amp = uses_autocast(cfg, model_cfg)
        self.ema = copy.deepcopy(self.generator).requires_grad_(False) if self.ema_decay > 0 else None
        self.ema_statistics_stale = True
        # What the updates call: in DDP under torchrun (the same parameters as the plain modules,
        # which sampling, EMA and checkpoints use). G's update calls the plain D, whose weights
        # take no gradient there.
        self.train_generator = distributed.wrap(self.generator)
        self.train_discriminator = distributed.wrap(self.discriminator)
        self.joint_pass = judges_samples_independently(self.discriminator)
        # Fused Adam: one kernel for all parameters' updates. It took the MLP GAN's step from 5.6 to
        # 3.6 ms (AMD Zen 4 held to AVX2 kernels, docs/benchmarks.md); the multi-tensor default spends it in dispatch.
        adam = dict(betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda"))
        self.lr_g, self.lr_d = learning_rates(cfg, model_cfg)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr_d, **adam)
        # --lr-schedule cosine: both rates, as fractions of their own, decay to 0 over the steps or the budget
        self.decay = (CosineSchedule(1.0, 0.0, 0, _max_steps(cfg, len(data), self.n_critic),
                                      _training_budget(cfg, model_cfg))
                      if cfg.lr_schedule == "cosine" else None)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.sampler = EpochBatches(len(data), cfg.batch_size, cfg.seed, self.rank, self.world_size)
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + 2)
        self.augment = DiffAugment(parse_augment(cfg.augment), model_cfg.image_size)
        # the share of D's images that are augmented: fixed, or adapted by ADA from D's verdicts on real images
        self.ada = (AdaptiveProbability(cfg.ada_target, cfg.batch_size * self.world_size, cfg.augment_p or 0.0)
                    if cfg.ada_target is not None else None)
        self.fixed_augment_p = 1.0 if cfg.augment_p is None else cfg.augment_p
        self.images = data.images.to(device)
        self.fixed_z, self.fixed_labels = fixed_sample_inputs(model_cfg, cfg.seed)
        conditional = "+cond" if model_cfg.conditional else ""
        if model_cfg.clusters:
            conditional += f"+{model_cfg.clusters} clusters" + (" per class" if model_cfg.conditional else "")
        self.name = f"gan {cfg.model}{conditional} {cfg.loss}"
        self.throughput = ("images_per_s", cfg.batch_size * self.n_critic * self.world_size)

    def _clusters(self) -> torch.Tensor:
        """k-means labels of the training images (N,): clusters of all, or within each class."""
        data, model_cfg = self.data, self.model_cfg
        if model_cfg.conditional:
            return kmeans_within_classes(data.images, data.labels, model_cfg.num_classes, model_cfg.clusters,
                                         self.cfg.seed)
        return kmeans(data.images, model_cfg.clusters, self.cfg.seed)

    # --- one training step -------------------------------------------------------------
    def _my_slice(self, draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """This rank's slice of ``draw(global batch size)``: every rank draws the whole global
        batch of noise from the same generator and keeps its own rows, as the samplers slice
        images, so N processes draw what one process with N times the batch does."""
        mine = slice(self.rank * self.cfg.batch_size, (self.rank + 1) * self.cfg.batch_size)
        return draw(self.cfg.batch_size * self.world_size)[mine]

    def _sample_noise(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self._my_slice(lambda n: torch.randn(n, self.model_cfg.z_dim, generator=self.noise, device=self.device))
        labels = None
        if self.model_cfg.conditional:
            labels = self._my_slice(lambda n: torch.randint(0, self.model_cfg.num_classes, (n,),
                                                            generator=self.noise, device=self.device))
        return z, labels

    def _augmented(self, images: torch.Tensor) -> torch.Tensor:
        """What D sees of ``images``: DiffAugment's transforms, with parameters drawn like noise."""
        probability = self.augment_p
        if not self.augment or probability == 0:
            return images
        params = self._my_slice(lambda n: self.augment.draw(n, self.noise, self.device, probability))
        return self.augment.apply(images, params)

    @property
    def augment_p(self) -> float:
        return self.ada.probability if self.ada is not None else self.fixed_augment_p

    def _discriminator_update(self, fake: torch.Tensor, fake_labels: torch.Tensor | None,
                              update: int) -> dict[str, torch.Tensor]:
        indices = self.sampler.next().to(self.device)
        real = self.images[indices]
        real_labels = self.labels[indices] if self.model_cfg.label_count else None
        r1_due = self.cfg.r1_gamma > 0 and update % self.cfg.r1_every == 0
        real.requires_grad_(r1_due)
        real_logits, fake_logits = self._judge(real, real_labels, fake.detach(), fake_labels)
        loss = self.loss.discriminator(real_logits, fake_logits)
        if self.loss.gradient_penalty:
            alpha = self._my_slice(lambda n: torch.rand(n, *([1] * (real.dim() - 1)), generator=self.noise,
                                                        device=self.device))
            loss = loss + self.cfg.gp_weight * gradient_penalty(self.train_discriminator, real, fake.float(),
                                                                real_labels, alpha)
        if r1_due:  # lazy regularisation: every r1_every updates, weighted by r1_every
            loss = loss + self.cfg.r1_gamma / 2 * self.cfg.r1_every * r1_penalty(real_logits, real)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        stats = {"d_loss": loss.detach(), "d_real": self._mean_output(real_logits),
                 "d_fake": self._mean_output(fake_logits)}
        if self.ada is not None:
            self.ada.observe(real_logits, distributed.mean_over_ranks)
            stats["augment_p"] = torch.tensor(self.ada.probability, dtype=torch.float64)
        return stats

    def _judge(self, real: torch.Tensor, real_labels: torch.Tensor | None, fake: torch.Tensor,
               fake_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """D's fp32 logits on the real and on the fake batch. Where D judges each sample on its own,
        in one pass over both: half the calls, and one weight-gradient product per layer instead of
        two summed (the MLP GAN's step: 3.1 -> 2.9 ms, Zen 4 held to AVX2 kernels, docs/benchmarks.md)."""
        real, fake = self._augmented(real), self._augmented(fake)
        with autocast(self.device, self.amp):
            if self.joint_pass:
                labels = None if real_labels is None else torch.cat([real_labels, fake_labels])
                real_logits, fake_logits = self.train_discriminator(torch.cat([real, fake]), labels).float().chunk(2)
                return real_logits, fake_logits
            return (self.train_discriminator(real, real_labels).float(),
                    self.train_discriminator(fake, fake_labels).float())

    def _mean_output(self, logits: torch.Tensor) -> torch.Tensor:
        """D's mean verdict: a probability for bce, a raw score for hinge and Wasserstein."""
        logits = logits.detach()
        return (torch.sigmoid(logits) if self.loss.probabilities else logits).mean()

    def train_step(self, step: int, elapsed: float = 0.0) -> dict[str, float]:
        if self.decay is not None:
            fraction = self.decay(step, elapsed)
            set_lr(self.opt_g, self.lr_g * fraction)
            set_lr(self.opt_d, self.lr_d * fraction)
        for critic_step in range(self.n_critic):
            z, labels = self._sample_noise()
            fake_labels = self.generator.internal_labels(z, labels)  # with clusters: the one G reads from z
            last = critic_step == self.n_critic - 1
            # The generator's graph is kept only for the fake batch the generator update reuses.
            with torch.set_grad_enabled(last), autocast(self.device, self.amp):
                fake = self.train_generator(z, labels)
            stats = self._discriminator_update(fake, fake_labels, step * self.n_critic + critic_step)
        self.discriminator.requires_grad_(False)  # no weight gradients for D in G's update
        with autocast(self.device, self.amp):
            g_loss = self.loss.generator(self.discriminator(self._augmented(fake), fake_labels).float())
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.discriminator.requires_grad_(True)
        if self.ema is not None:
            done = step + 1
            update_ema(self.ema, self.generator, min(self.ema_decay, (1 + done) / (10 + done)))
            self.ema_statistics_stale = True
        return {name: value.item() for name, value in {**stats, "g_loss": g_loss.detach()}.items()}

    def status(self) -> dict:
        return {"epoch": self.sampler.epoch}

    def evaluate(self, step: int) -> dict[str, float]:
        """The fixed noise's sample grid, samples/step_NNNNNN.png (GAN losses do not say how good
        the images are; `aigc gan eval` measures that). Rank 0 draws it."""
        if distributed.is_main():
            render_samples(self.sampling_generator(), self.fixed_z, self.fixed_labels,
                           self.out / runs.SAMPLES_DIR / f"step_{step:06d}.png", self.device)
        return {}

    # --- checkpoints ---------------------------------------------------------------------
    def sampling_generator(self) -> nn.Module:
        """The EMA generator, with its batch-norm statistics brought up to date, or the live one."""
        if self.ema is None:
            return self.generator
        if self.ema_statistics_stale:
            standing_statistics(self.ema, self.model_cfg, self.cfg.batch_size, self.device)
            self.ema_statistics_stale = False
        return self.ema

    def _modules(self) -> dict[str, nn.Module]:
        modules = {"generator": self.generator, "discriminator": self.discriminator}
        if self.ema is not None:
            modules["ema_generator"] = self.ema
        return modules

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        self.sampling_generator()  # the EMA generator's statistics up to date before they are saved
        return {runs.WEIGHTS_FILE: {f"{prefix}.{name}": tensor for prefix, module in self._modules().items()
                                    for name, tensor in module.state_dict().items()}}

    def best(self) -> None:
        return None  # GAN losses do not rank checkpoints

    def state_dict(self) -> dict:
        return {"optimizers": {"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()},
                "samplers": {"images": self.sampler.state_dict()}, "rng": {"noise": self.noise.get_state()},
                "trainer": {**({"cluster_labels": self.labels.cpu()} if self.model_cfg.clusters else {}),
                            **({"ada": self.ada.state_dict()} if self.ada is not None else {})}}

    def load_state(self, folder: Path, state: dict) -> None:
        tensors, _ = runs.load_weights(folder / runs.WEIGHTS_FILE)
        for prefix, module in self._modules().items():
            load_prefixed(module, tensors, prefix, folder)
        self.opt_g.load_state_dict(state["optimizers"]["generator"])
        self.opt_d.load_state_dict(state["optimizers"]["discriminator"])
        self.sampler.load_state_dict(state["samplers"]["images"])
        self.noise.set_state(state["rng"]["noise"])
        if self.model_cfg.clusters:  # the clusters found at the start, not a new k-means on this machine
            self.labels = state["trainer"]["cluster_labels"].to(self.device)
        if self.ada is not None:
            self.ada.load_state_dict(state["trainer"]["ada"])


def train(cfg: GanTrainConfig) -> Path:
    """Train a GAN as configured; returns the run directory."""
    distributed.setup(cfg)
    cfg, out = loop.open_run(cfg, GAN_KIND, "gan", lambda name: name in RESUME_OVERRIDABLE)
    saved_model = model_config_of(runs.read_run_config(out, GAN_KIND), out) if cfg.resume else None
    device = distributed.device(cfg)
    data = load_images(cfg.data, saved_model.image_size if saved_model else cfg.image_size,
                       saved_model.channels if saved_model else cfg.channels)
    # a resumed run keeps its clusters (one saved before the default existed may have none)
    model_cfg = _model_config(cfg, data, saved_model.clusters if saved_model else None)
    if saved_model is not None and model_cfg != saved_model:
        raise UserError(f"the data in --data {cfg.data} no longer fits the saved model of {out}")
    # saved resolved, so that sampling reads it from config.json, and a later default leaves the run as it is
    cfg = dataclasses.replace(cfg, temperature=sampling_temperature(cfg, model_cfg),
                              guide_stages=guide_stage_count(cfg, model_cfg))
    trainer = GanTrainer(cfg, model_cfg, data, device, out)
    plan = loop.Plan(_max_steps(cfg, len(data), trainer.n_critic), _training_budget(cfg, model_cfg), cfg.log_every,
                     cfg.sample_every, cfg.save_every, steps_flag="--steps", trackers=cfg.trackers())
    start = loop.restore(trainer, out, plan) if cfg.resume else loop.Start()
    main = distributed.is_main()
    if main:
        runs.create_run_dir(out)
        runs.save_json(out / runs.CONFIG_FILE, {
            "kind": GAN_KIND, "aigc_version": __version__, "model": model_cfg.to_dict(),
            "train": dataclasses.asdict(cfg), "class_names": data.class_names, "data_source": data.source})
        (out / runs.SAMPLES_DIR).mkdir(exist_ok=True)
        processes = f" x {described}" if (described := distributed.describe()) else ""
        per_class = " per class" if model_cfg.conditional else ""
        clusters = (f", {model_cfg.clusters} k-means clusters{per_class} found in {trainer.clustering_seconds:.1f} s"
                    if model_cfg.clusters else "")
        print(f"training {out}: {len(data)} images of {data.source}{clusters}, {_length_text(cfg, plan)}, "
              f"batch {cfg.batch_size}{processes}, device {device}", flush=True)
    started = time.perf_counter() - start.elapsed  # the budget counts a resumed run's earlier time too
    loop.run(trainer, plan, out, start)
    if main:
        plot_metrics(read_metrics(out / runs.METRICS_FILE), ["d_loss", "g_loss"], out / runs.PLOT_FILE,
                     title=f"{cfg.model} {cfg.loss}")
        if cfg.guide:
            _note_replaced_stages(out, cfg.guide_stages)
            recipes = _guide_recipes(cfg, plan.max_steps, time.perf_counter() - started)
            fit_run_guide(out, recipes, temperature=cfg.temperature, seed=cfg.seed, ema=True, device=device)
        print(f"done: {out} (samples in {out / runs.SAMPLES_DIR}, loss curve {out / runs.PLOT_FILE})", flush=True)
    distributed.teardown()
    return out


@torch.no_grad()
def render_samples(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, path: Path,
                   device: torch.device) -> None:
    was_training = generator.training
    generator.eval()
    images = generator(z.to(device), None if labels is None else labels.to(device))
    generator.train(was_training)
    save_grid(images, path, nrow=10)
