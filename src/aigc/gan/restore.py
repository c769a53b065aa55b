"""Repairing images with a trained GAN generator: inpainting, super-resolution and denoising by
GAN inversion (Yeh et al. 2017, "Semantic image inpainting with deep generative models"; Bora et
al. 2017, "Compressed sensing using generative models"), optionally with the generator's weights
fine-tuned a little around the code found (Deep Generative Prior, Pan et al. 2020).

An image x (N, C, H, W) in [-1, 1] is seen only through a degradation: the pixels a mask keeps,
the block means of a downsampling, or the whole image plus noise. We search the latent code z
(and, for a conditional generator, the class) so that the degraded G(z) matches what was seen,
from several random starts at once, and keep the best start of each image, or average the few
best (the mean of several plausible repairs approximates the posterior mean, the repair with the
lowest expected squared error, though blurrier than any one of them). What is known exactly
(a mask's known pixels, the low-resolution image's block means) can then be put back: the output
is projected onto the images that agree with the measurement.

Components only: no files, no printing. ``aigc gan restore`` (``aigc.gan.restore_command``) and
``benchmarks/gan_restore.py`` are built on :func:`inpaint`, :func:`super_resolve` and :func:`denoise`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc.devices import autocast
from aigc.gan.models import GanModelConfig

# ------------------------------------------------------------------------------ degradations


@dataclass(frozen=True)
class Mask:
    """Pixels where ``known`` is True are seen exactly, the others are missing.

    ``known``: (N or 1, C or 1, H, W) bool, broadcast over the images and channels."""

    known: torch.Tensor

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.known, x, torch.zeros((), dtype=x.dtype))  # (N, C, H, W), missing pixels 0

    def error(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the known pixels, per image: (N,)."""
        known = self.known.expand_as(x)
        squared = torch.where(known, (x - y).square(), torch.zeros((), dtype=x.dtype))
        return squared.flatten(1).sum(1) / known.flatten(1).sum(1).clamp(min=1)

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Paste the known pixels of ``y`` into ``x``: they come out bit for bit as given."""
        return torch.where(self.known, y, x)

    def take(self, rows: torch.Tensor) -> Mask:
        """The mask of images ``rows`` (a shared mask stays shared)."""
        return self if self.known.shape[0] == 1 else Mask(self.known[rows])


@dataclass(frozen=True)
class Downsample:
    """Seen: the means of ``factor`` x ``factor`` blocks (area downsampling, as a camera's pixels
    average the light on them): (N, C, H, W) -> (N, C, H / factor, W / factor)."""

    factor: int

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.factor)

    def error(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.measure(x) - y).square().flatten(1).mean(1)  # (N,)

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The nearest image to ``x`` whose block means are ``y``: add each block's missing mean."""
        return x + F.interpolate(y - self.measure(x), scale_factor=self.factor, mode="nearest")

    def take(self, rows: torch.Tensor) -> Downsample:
        return self


@dataclass(frozen=True)
class Noise:
    """Seen: the whole image plus noise. Nothing is known exactly, so nothing is pasted back."""

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def error(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).square().flatten(1).mean(1)  # (N,)

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def take(self, rows: torch.Tensor) -> Noise:
        return self


Degradation = Mask | Downsample | Noise


def box_mask(size: int, x: int, y: int, width: int, height: int) -> torch.Tensor:
    """Known pixels of a ``size`` x ``size`` image with the box (``x``, ``y`` its top-left corner)
    missing: (1, 1, size, size) bool."""
    known = torch.ones(1, 1, size, size, dtype=torch.bool)
    known[..., y:y + height, x:x + width] = False
    return known


def random_mask(n: int, size: int, missing: float, seed: int) -> torch.Tensor:
    """Known pixels of ``n`` images, each with its own random ``missing`` share of the pixels
    gone (exactly round(missing * size**2) of them): (n, 1, size, size) bool."""
    noise = torch.Generator().manual_seed(seed)
    count = round(missing * size * size)
    order = torch.rand(n, size * size, generator=noise).argsort(1)  # a random permutation per image
    known = torch.ones(n, size * size, dtype=torch.bool)
    known.scatter_(1, order[:, :count], False)
    return known.view(n, 1, size, size)


# ------------------------------------------------------------------------------ inversion


@dataclass(frozen=True)
class InversionSettings:
    """How the code is searched (defaults are those of ``aigc gan restore``)."""

    steps: int = 300  # Adam steps on the codes, the learning rate cosine-decayed to 0
    restarts: int = 8  # random starts per image, optimised together in one batch; the best is kept
    average: int = 1  # > 1: the output is the mean of this many best starts (each fine-tuned with DGP), see below
    lr: float = 0.05
    prior: float = 1e-4  # weight of mean(z^2): keeps z where G was trained (z ~ N(0, I))
    hard_class_from: float = 2 / 3  # conditional, no label given: the class is fixed to its argmax after this share
    class_start: float = 0.0  # > 0: restart r leans to class r mod K with this logit; 0: a uniform mixture
    finetune_steps: int = 0  # > 0: Deep Generative Prior, fine-tune G's weights (and z) per image
    finetune_lr: float = 1e-4  # Adam on G's weights; z moves at ``lr / 10``
    seed: int = 0  # the starting codes: the same for every image, so a batch gives what one image alone gives
    amp: bool = True  # bf16 autocast in the search where the hardware computes bf16 natively; the pick, DGP: fp32


@dataclass
class Restored:
    """The repaired images and how they were found."""

    images: torch.Tensor  # (N, C, H, W) in [-1, 1]: the output (known values pasted back unless told not to)
    generated: torch.Tensor  # (N, C, H, W): the generator's own image for the best code
    z: torch.Tensor  # (N, z_dim): the best code (with ``average`` > 1: of the best start)
    labels: torch.Tensor | None  # (N,) the class found (or given; of the best start); None if unconditional
    error: torch.Tensor  # (N,) the measurement error of ``generated`` (mean squared, on [-1, 1])


def start_codes(model_cfg: GanModelConfig, n: int, restarts: int, seed: int) -> torch.Tensor:
    """The starting codes: ``restarts`` draws from N(0, I), the same for each of the ``n`` images:
    (n * restarts, z_dim), image i's starts in rows i * restarts ... (i + 1) * restarts - 1.
    Drawn one code at a time, so more restarts begin with the starts of fewer."""
    noise = torch.Generator().manual_seed(seed)
    z = torch.stack([torch.randn(model_cfg.z_dim, generator=noise) for _ in range(restarts)])  # (R, z_dim)
    return z.repeat(n, 1)


def start_class_logits(model_cfg: GanModelConfig, n: int, restarts: int, start: float) -> torch.Tensor:
    """Relaxed class of each start: restart r leans to class r mod K by ``start`` (0: every start
    begins at the uniform mixture, which did better in a pilot on MNIST): (n * restarts, K) logits."""
    classes = torch.arange(restarts) % model_cfg.num_classes
    return (start * F.one_hot(classes, model_cfg.num_classes).float()).repeat(n, 1)


def _labels(logits: torch.Tensor | None, fixed: torch.Tensor | None, hard: bool) -> torch.Tensor | None:
    """What the generator is given: a fixed class (B,), the argmax (B,) or the softmax (B, K) of
    the optimised logits, or None (unconditional)."""
    if fixed is not None or logits is None:
        return fixed
    return logits.argmax(1) if hard else logits.softmax(1)


def _device_of(generator: nn.Module) -> torch.device:
    return next(generator.parameters()).device


def invert(generator: nn.Module, model_cfg: GanModelConfig, degradation: Degradation, seen: torch.Tensor,
           settings: InversionSettings = InversionSettings(), label: int | None = None) -> Restored:
    """Search codes z (and the class) with degradation(G(z)) close to ``seen`` (N, ...): the best
    of ``settings.restarts`` starts per image; with ``settings.average`` = k > 1 the k best, in
    N * k rows (image i's in rows i * k ... i * k + k - 1, best first; ``mean_of_starts`` averages
    them). The generator is left untouched (eval mode assumed: batch norm uses its running
    statistics, so each image is independent of the others)."""
    if label is not None and not model_cfg.conditional:
        raise ValueError("a label needs a conditional generator")
    if not 1 <= settings.average <= settings.restarts:
        raise ValueError(f"average ({settings.average}) must be between 1 and restarts ({settings.restarts})")
    n, r, device = seen.shape[0], settings.restarts, _device_of(generator)
    rows = torch.arange(n).repeat_interleave(r)  # start -> its image
    targets, degraded = seen[rows.to(seen.device)].to(device), degradation.take(rows)
    z = start_codes(model_cfg, n, r, settings.seed).to(device).requires_grad_()  # (N*R, z_dim)
    fixed = None if label is None else torch.full((n * r,), label, device=device)
    logits = None
    if model_cfg.conditional and fixed is None:
        logits = start_class_logits(model_cfg, n, r, settings.class_start).to(device).requires_grad_()  # (N*R, K)
    free = [p for p in (z, logits) if p is not None]
    optimizer = torch.optim.Adam(free, lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    hard_from = round(settings.steps * settings.hard_class_from) if logits is not None else settings.steps
    for step in range(settings.steps):
        hard = step >= hard_from
        params = [z] if hard else free  # once the class is fixed, only z moves
        with autocast(device, settings.amp):
            generated = generator(z, _labels(logits, fixed, hard))  # (N*R, C, H, W)
        error = degraded.error(generated.float(), targets)  # (N*R,)
        loss = (error + settings.prior * z.square().mean(1)).sum()  # a sum: each image's own gradient
        for param, grad in zip(params, torch.autograd.grad(loss, params)):  # no gradients for G's weights
            param.grad = grad
        optimizer.step()
        schedule.step()
    return _best_starts(generator, degraded, targets, z.detach(), _labels(logits, fixed, True), n, r,
                        settings.average)


@torch.no_grad()
def _best_starts(generator: nn.Module, degraded: Degradation, targets: torch.Tensor, z: torch.Tensor,
                 labels: torch.Tensor | None, n: int, r: int, keep: int) -> Restored:
    """Of each image's ``r`` starts (rows of z (N*R, z_dim)), the ``keep`` with the lowest error,
    best first: N * keep rows."""
    images = generator(z, labels)  # (N*R, C, H, W)
    error = degraded.error(images, targets).view(n, r)
    ranked = error.topk(keep, dim=1, largest=False).indices  # (N, keep), sorted best first
    best = (ranked + torch.arange(n, device=error.device)[:, None] * r).view(-1)  # rows of the kept starts
    chosen = None if labels is None else labels[best]
    return Restored(images[best], images[best], z[best], chosen, error.view(-1)[best])


def mean_of_starts(found: Restored, degradation: Degradation, seen: torch.Tensor) -> Restored:
    """Average each image's kept starts (``found`` has N * k rows, best first; ``seen`` N):
    the mean of k plausible repairs approximates the posterior mean, the repair with the lowest
    expected squared error (higher PSNR), at the price of blur where the starts disagree. The
    code and class reported are the best start's."""
    n = seen.shape[0]
    k = found.generated.shape[0] // n
    if k == 1:
        return found
    generated = found.generated.view(n, k, *found.generated.shape[1:]).mean(1)  # (N, C, H, W)
    labels = None if found.labels is None else found.labels[::k]
    error = degradation.error(generated, seen.to(generated.device))
    return Restored(generated, generated, found.z[::k], labels, error)


def finetune(generator: nn.Module, degradation: Degradation, seen: torch.Tensor, found: Restored,
             settings: InversionSettings) -> Restored:
    """Deep Generative Prior: for each kept start of ``found`` (N * k rows for the N images of
    ``seen``, as ``invert`` returns them), a copy of G whose weights (and the code) take
    ``settings.finetune_steps`` small Adam steps to fit what was seen. Batch norm keeps its
    running statistics (eval mode), so the images stay independent."""
    k = found.z.shape[0] // seen.shape[0]  # kept starts per image
    images, codes = [], []
    for row in range(found.z.shape[0]):
        image = row // k  # the image this start repairs
        own = copy.deepcopy(generator).eval().requires_grad_(True)
        z = found.z[row:row + 1].clone().requires_grad_()  # (1, z_dim)
        label = None if found.labels is None else found.labels[row:row + 1]
        target, degraded = seen[image:image + 1].to(z.device), degradation.take(torch.tensor([image]))
        optimizer = torch.optim.Adam([{"params": own.parameters(), "lr": settings.finetune_lr},
                                      {"params": [z], "lr": settings.lr / 10}], fused=True)  # 2x faster at batch 1
        for _ in range(settings.finetune_steps):
            loss = (degraded.error(own(z, label), target) + settings.prior * z.square().mean(1)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            images.append(own(z, label))
            codes.append(z.detach())
    generated = torch.cat(images)  # (N * k, C, H, W)
    rows = torch.arange(seen.shape[0]).repeat_interleave(k)  # kept start -> its image
    error = degradation.take(rows).error(generated, seen[rows.to(seen.device)].to(generated.device))
    return Restored(generated, generated, torch.cat(codes), found.labels, error)


def restore(generator: nn.Module, model_cfg: GanModelConfig, degradation: Degradation, seen: torch.Tensor,
            settings: InversionSettings = InversionSettings(), label: int | None = None,
            paste: bool = True) -> Restored:
    """Invert, optionally fine-tune (``settings.finetune_steps``), average the ``settings.average``
    best starts, then paste back what is known (``paste``) and clip to [-1, 1]. ``seen`` is the
    degraded images (N, ...)."""
    found = invert(generator, model_cfg, degradation, seen, settings, label)
    if settings.finetune_steps > 0:
        found = finetune(generator, degradation, seen, found, settings)
    found = mean_of_starts(found, degradation, seen)
    output = found.generated
    if paste:
        output = degradation.project(output, seen.to(output.device))
    found.images = output.clamp(-1, 1)
    return found


# ------------------------------------------------------------------------------ the three tasks


def inpaint(generator: nn.Module, model_cfg: GanModelConfig, images: torch.Tensor, known: torch.Tensor,
            settings: InversionSettings = InversionSettings(), label: int | None = None,
            paste: bool = True) -> Restored:
    """Fill the missing pixels of ``images`` (N, C, H, W) in [-1, 1]; ``known`` (N or 1, C or 1,
    H, W) bool is True where a pixel is known (the others' values are ignored)."""
    mask = Mask(known.to(images.device))
    return restore(generator, model_cfg, mask, mask.measure(images), settings, label, paste)


def super_resolve(generator: nn.Module, model_cfg: GanModelConfig, low_res: torch.Tensor, factor: int,
                  settings: InversionSettings = InversionSettings(), label: int | None = None,
                  paste: bool = True) -> Restored:
    """Images (N, C, H * factor, W * factor) whose ``factor`` x ``factor`` block means are
    ``low_res`` (N, C, H, W) in [-1, 1] (with ``paste``, exactly, up to the clip to [-1, 1])."""
    return restore(generator, model_cfg, Downsample(factor), low_res, settings, label, paste)


def denoise(generator: nn.Module, model_cfg: GanModelConfig, noisy: torch.Tensor,
            settings: InversionSettings = InversionSettings(), label: int | None = None) -> Restored:
    """The generator's nearest image to each of ``noisy`` (N, C, H, W) (values may leave [-1, 1])."""
    return restore(generator, model_cfg, Noise(), noisy, settings, label, paste=False)
