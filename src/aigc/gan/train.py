"""The GAN training recipe: alternating discriminator and generator updates.

Read top to bottom: load data, build models and optimizers (or restore them with
``--resume``), then loop over steps. One step is ``n_critic`` discriminator updates, each on a
fresh real batch, followed by one generator update. Everything random draws from generators
whose states are checkpointed, so a resumed run continues the same trajectory bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from aigc import __version__, runs
from aigc.data.images import ImageData, load_images, save_grid
from aigc.devices import autocast, resolve_device
from aigc.errors import TrainingDiverged, UserError
from aigc.gan.config import GanTrainConfig
from aigc.gan.losses import LOSSES, GanLoss, gradient_penalty
from aigc.gan.models import GanModelConfig, build_discriminator, build_generator
from aigc.logging import MetricsLog, Progress, RunningMeans, plot_metrics, read_metrics

DEFAULT_STEPS = 2000
# Settings a resumed run takes from the command line; all others come from the saved run.
RESUME_OVERRIDABLE = {"steps", "epochs", "log_every", "sample_every", "save_every", "device", "out", "resume"}


class EpochSampler:
    """Shuffled fixed-size batches, one permutation per epoch (the partial last batch is
    dropped so batch norm always sees full batches). Its position is part of the resume state."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < batch_size:
            raise UserError(f"the data set has {size} images, fewer than one batch of {batch_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.position = 0, 0
        self._permutation = self._shuffle()

    def _shuffle(self) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))

    def next_batch(self) -> torch.Tensor:
        if self.position + self.batch_size > self.size:
            self.epoch, self.position = self.epoch + 1, 0
            self._permutation = self._shuffle()
        indices = self._permutation[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return indices

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._permutation = self._shuffle()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for weights; buffers (batch-norm stats) copied."""
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def fixed_sample_inputs(cfg: GanModelConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise (and labels) rendered at every sample interval: 10x10, or one row per class."""
    rows = cfg.num_classes if cfg.conditional else 10
    z = torch.randn(rows * 10, cfg.z_dim, generator=torch.Generator().manual_seed(seed + 1))
    labels = torch.arange(rows).repeat_interleave(10) if cfg.conditional else None
    return z, labels


def _resolve_resumed_config(cfg: GanTrainConfig, out: Path) -> tuple[GanTrainConfig, dict]:
    saved_run = runs.read_run_config(out, "gan")
    saved = saved_run["train"]
    return dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k not in RESUME_OVERRIDABLE}), saved_run


def _model_config(cfg: GanTrainConfig, data: ImageData) -> GanModelConfig:
    return GanModelConfig(
        model=cfg.model, z_dim=cfg.z_dim, image_size=data.image_size, channels=data.channels,
        num_classes=data.num_classes if cfg.conditional else 0,
        width=cfg.width or (256 if cfg.model == "mlp" else 64),
        spectral_norm=cfg.spectral_norm,
        # Batch norm couples the samples of a batch, which a per-sample gradient penalty must
        # not see; spectral norm replaces it as the discriminator's regulariser.
        disc_norm="none" if cfg.spectral_norm or cfg.loss == "wgan-gp" else "batch",
    )


def _total_steps(cfg: GanTrainConfig, data_size: int, n_critic: int) -> int:
    if cfg.epochs is not None:
        return max(1, cfg.epochs * (data_size // cfg.batch_size) // n_critic)
    return cfg.steps or DEFAULT_STEPS


class GanTrainer:
    """The state of one run (models, optimizers, RNGs, data position) and its step."""

    def __init__(self, cfg: GanTrainConfig, model_cfg: GanModelConfig, data: ImageData, device: torch.device):
        self.cfg, self.model_cfg, self.data, self.device = cfg, model_cfg, data, device
        self.loss: GanLoss = LOSSES[cfg.loss]
        self.n_critic = cfg.n_critic or self.loss.default_n_critic
        torch.manual_seed(cfg.seed)
        self.generator = build_generator(model_cfg).to(device)
        self.discriminator = build_discriminator(model_cfg).to(device)
        self.ema = copy.deepcopy(self.generator).requires_grad_(False) if cfg.ema_decay > 0 else None
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=betas)
        self.sampler = EpochSampler(len(data), cfg.batch_size, cfg.seed)
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + 2)
        self.step = 0
        self.window = RunningMeans()  # losses since the last metrics line
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)

    # --- one training step -------------------------------------------------------------
    def _sample_noise(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = self.cfg.batch_size
        z = torch.randn(batch, self.model_cfg.z_dim, generator=self.noise, device=self.device)
        labels = None
        if self.model_cfg.conditional:
            labels = torch.randint(0, self.model_cfg.num_classes, (batch,), generator=self.noise, device=self.device)
        return z, labels

    def _discriminator_update(self, fake: torch.Tensor, fake_labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        indices = self.sampler.next_batch().to(self.device)
        real = self.images[indices]
        real_labels = self.labels[indices] if self.model_cfg.conditional else None
        with autocast(self.device, self.cfg.amp):
            real_logits = self.discriminator(real, real_labels).float()
            fake_logits = self.discriminator(fake.detach(), fake_labels).float()
        loss = self.loss.discriminator(real_logits, fake_logits)
        if self.loss.gradient_penalty:
            loss = loss + self.cfg.gp_weight * gradient_penalty(self.discriminator, real, fake.float(), real_labels)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return {"d_loss": loss.detach(), "d_real": self._mean_output(real_logits),
                "d_fake": self._mean_output(fake_logits)}

    def _mean_output(self, logits: torch.Tensor) -> torch.Tensor:
        """D's mean verdict: a probability for bce, a raw score for hinge and Wasserstein."""
        logits = logits.detach()
        return (torch.sigmoid(logits) if self.loss.probabilities else logits).mean()

    def train_step(self) -> dict[str, float]:
        for critic_step in range(self.n_critic):
            z, fake_labels = self._sample_noise()
            last = critic_step == self.n_critic - 1
            # The generator's graph is kept only for the fake batch the generator update reuses.
            with torch.set_grad_enabled(last), autocast(self.device, self.cfg.amp):
                fake = self.generator(z, fake_labels)
            stats = self._discriminator_update(fake, fake_labels)
        self.discriminator.requires_grad_(False)  # no weight gradients for D in G's update
        with autocast(self.device, self.cfg.amp):
            g_loss = self.loss.generator(self.discriminator(fake, fake_labels).float())
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.discriminator.requires_grad_(True)
        self.step += 1
        if self.ema is not None:
            update_ema(self.ema, self.generator, min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step)))
        values = {name: value.item() for name, value in {**stats, "g_loss": g_loss.detach()}.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingDiverged(f"training diverged at step {self.step} ({_format(values)}); "
                                   "the last good checkpoint is kept; try a lower --lr or another --loss")
        return values

    # --- checkpoints ---------------------------------------------------------------------
    def sampling_generator(self) -> nn.Module:
        return self.ema if self.ema is not None else self.generator

    def weights(self) -> dict[str, torch.Tensor]:
        modules = {"generator": self.generator, "discriminator": self.discriminator}
        if self.ema is not None:
            modules["ema_generator"] = self.ema
        return {f"{prefix}.{name}": tensor for prefix, module in modules.items()
                for name, tensor in module.state_dict().items()}

    def save(self, out: Path) -> None:
        runs.save_weights(out / runs.WEIGHTS_FILE, self.weights(), {"step": str(self.step)})
        runs.save_state(out / runs.STATE_FILE, {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_noise": self.noise.get_state(),
            "log_window": self.window.state_dict(),
        })

    def load(self, out: Path) -> None:
        tensors, metadata = runs.load_weights(out / runs.WEIGHTS_FILE)
        state = runs.load_state(out / runs.STATE_FILE)
        if metadata.get("step") != str(state.get("step")):
            raise UserError(f"{out}: model.safetensors (step {metadata.get('step')}) and state.pt "
                            f"(step {state.get('step')}) disagree; the checkpoint is inconsistent")
        modules = {"generator": self.generator, "discriminator": self.discriminator, "ema_generator": self.ema}
        for prefix, module in modules.items():
            if module is not None:
                load_prefixed(module, tensors, prefix, out)
        self.opt_g.load_state_dict(state["optimizer_g"])
        self.opt_d.load_state_dict(state["optimizer_d"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng_torch"])
        self.noise.set_state(state["rng_noise"])
        self.window.load_state_dict(state["log_window"])
        self.step = state["step"]


def load_prefixed(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: Path) -> None:
    """Load the ``prefix.``-named tensors into ``module``; a mismatch is a UserError."""
    own = {name[len(prefix) + 1:]: t for name, t in tensors.items() if name.startswith(prefix + ".")}
    try:
        module.load_state_dict(own)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise UserError(f"{where}: weights do not fit the model in config.json ({first_line})") from None


def _format(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())


def train(cfg: GanTrainConfig) -> Path:
    """Train a GAN as configured; returns the run directory."""
    out = Path(cfg.out or f"runs/gan-{datetime.now():%Y%m%d-%H%M%S}")
    saved_run = None
    if cfg.resume:
        runs.prepare_run_dir(out, resume=True)
        cfg, saved_run = _resolve_resumed_config(cfg, out)
    device = resolve_device(cfg.device)
    if saved_run is not None:
        saved_model = GanModelConfig(**saved_run["model"])
        data = load_images(cfg.data, saved_model.image_size, saved_model.channels)
    else:
        data = load_images(cfg.data, cfg.image_size, cfg.channels)
    model_cfg = _model_config(cfg, data)
    if saved_run is not None and model_cfg != saved_model:
        raise UserError(f"the data in --data {cfg.data} no longer fits the saved model of {out}")
    trainer = GanTrainer(cfg, model_cfg, data, device)
    total = _total_steps(cfg, len(data), trainer.n_critic)
    if saved_run is not None:
        trainer.load(out)
        if trainer.step >= total:
            raise UserError(f"{out} is already at step {trainer.step}; ask for more --steps to continue it")
    else:
        runs.prepare_run_dir(out, resume=False)
        runs.save_json(out / runs.CONFIG_FILE, {
            "kind": "gan", "aigc_version": __version__, "model": model_cfg.to_dict(),
            "train": dataclasses.asdict(cfg), "class_names": data.class_names, "data_source": data.source})
    (out / "samples").mkdir(exist_ok=True)
    _run_loop(trainer, out, total, resumed=saved_run is not None)
    return out


def _run_loop(trainer: GanTrainer, out: Path, total: int, resumed: bool) -> None:
    cfg = trainer.cfg
    metrics = MetricsLog(out, resume_step=trainer.step if resumed else None)
    progress = Progress(total, f"gan {cfg.model}{'+cond' if trainer.model_cfg.conditional else ''} {cfg.loss}",
                        initial=trainer.step)
    fixed_z, fixed_labels = fixed_sample_inputs(trainer.model_cfg, cfg.seed)
    progress.write(f"training {out}: {len(trainer.data)} images of {trainer.data.source}, "
                   f"{total} steps, batch {cfg.batch_size}, device {trainer.device}")
    window_start, window_steps = time.perf_counter(), 0
    try:
        while trainer.step < total:
            trainer.window.add(trainer.train_step())
            window_steps += 1
            aligned = trainer.step % cfg.log_every == 0
            if aligned or trainer.step == total:
                images_per_s = window_steps * cfg.batch_size * trainer.n_critic / (time.perf_counter() - window_start)
                means = trainer.window.means()
                # A run's last line may average a partial window; a resumed run completes it.
                extra = {} if aligned else {"partial": True}
                metrics.log(trainer.step, epoch=trainer.sampler.epoch, images_per_s=images_per_s, **means, **extra)
                progress.update(trainer.step, **means)
                window_start, window_steps = time.perf_counter(), 0
                if aligned:
                    trainer.window.reset()
            if trainer.step % cfg.sample_every == 0 or trainer.step == total:
                render_samples(trainer.sampling_generator(), fixed_z, fixed_labels,
                               out / "samples" / f"step_{trainer.step:06d}.png", trainer.device)
            if trainer.step % cfg.save_every == 0 or trainer.step == total:
                trainer.save(out)
    finally:
        progress.close()
        metrics.close()
    plot_metrics(read_metrics(out / runs.METRICS_FILE), ["d_loss", "g_loss"], out / "losses.png",
                 title=f"{cfg.model} {cfg.loss}")
    progress.write(f"done: {out} (samples in {out / 'samples'}, loss curve {out / 'losses.png'})")


@torch.no_grad()
def render_samples(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, path: Path,
                   device: torch.device) -> None:
    was_training = generator.training
    generator.eval()
    images = generator(z.to(device), None if labels is None else labels.to(device))
    generator.train(was_training)
    save_grid(images, path, nrow=10)
