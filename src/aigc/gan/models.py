"""GAN generators and discriminators: the classic MLP and DCGAN, each optionally conditional on
classes, or self-conditioned on k-means clusters of the training images (:mod:`aigc.gan.clusters`).

Generators map noise ``z`` (B, z_dim) [and labels y (B,)] to images (B, C, H, W) in [-1, 1].
Discriminators map images [and labels] to one logit per image (B,), or per pack of ``pack``
images (B / pack,) with PacGAN's packing (:func:`packed`). Conditional models use a
one-hot label concatenated to the noise in G, and the projection discriminator of Miyato &
Koyama (2018) in D: ``logit = w . phi(x) + b + embed(y) . phi(x)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from aigc.errors import UserError
from aigc.gan.clusters import cluster_of_noise
from aigc.gan.config import MODELS, dcgan_sizes_text, dcgan_supports


@dataclass
class GanModelConfig:
    model: str = "dcgan"  # "mlp" or "dcgan"
    z_dim: int = 100
    image_size: int = 28
    channels: int = 1
    num_classes: int = 0  # 0 = unconditional
    width: int = 64  # mlp: hidden units; dcgan: base channels
    spectral_norm: bool = False
    disc_norm: str = "batch"  # "batch" or "none" (wgan-gp critics and spectral norm use none)
    minibatch_std: bool = False  # D sees each batch's feature spread (Karras et al. 2018)
    pack: int = 1  # D judges packs of this many samples together (PacGAN, Lin et al. 2018)
    clusters: int = 0  # self-conditioning on this many k-means clusters (within each class if any; aigc.gan.clusters)

    def __post_init__(self) -> None:
        """Refuse a config no model can be built from (e.g. a run's config.json edited by hand)."""
        for name, kind in (("model", str), ("disc_norm", str), ("spectral_norm", bool),
                           ("minibatch_std", bool), ("z_dim", int), ("pack", int),
                           ("image_size", int), ("channels", int), ("num_classes", int), ("width", int),
                           ("clusters", int)):
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise UserError(f"GAN model config: {name} must be {'an' if kind is int else 'a'} {kind.__name__}, "
                                f"got {value!r}")
        if self.model not in MODELS:
            raise UserError(f"GAN model config: unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.disc_norm not in ("batch", "none"):
            raise UserError(f"GAN model config: disc_norm must be 'batch' or 'none', got {self.disc_norm!r}")
        for name in ("z_dim", "image_size", "width"):
            if getattr(self, name) <= 0:
                raise UserError(f"GAN model config: {name} must be positive, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise UserError(f"GAN model config: channels must be 1 or 3, got {self.channels}")
        if self.num_classes < 0:
            raise UserError(f"GAN model config: num_classes must be 0 (unconditional) or more, got {self.num_classes}")
        if self.clusters < 0:
            raise UserError(f"GAN model config: clusters must be 0 (off) or more, got {self.clusters}")
        if self.pack < 1 or (self.pack > 1 and self.label_count):
            raise UserError(f"GAN model config: pack must be 1, or more for an unconditional model without clusters, "
                            f"got {self.pack}")
        if self.model == "dcgan" and not dcgan_supports(self.image_size):
            raise UserError(f"GAN model config: dcgan needs an image size of 7 or 4 times a power of two ({dcgan_sizes_text()}), "
                            f"got {self.image_size}")

    @property
    def conditional(self) -> bool:
        """Whether the user asks for classes: a self-conditioned model is unconditional from outside."""
        return self.num_classes > 0

    @property
    def label_count(self) -> int:
        """The labels G and D take inside: the classes, the clusters of a self-conditioned model, or
        (class, cluster) pairs when a conditional model's classes are split into clusters."""
        if self.clusters:
            return max(self.num_classes, 1) * self.clusters
        return self.num_classes

    def to_dict(self) -> dict:
        return asdict(self)


def with_one_hot(z: torch.Tensor, labels: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """Append the one-hot label to the noise, as in the conditional GAN of Mirza & Osindero (2014):
    (B, z_dim) -> (B, z_dim + num_classes). Unconditional models pass z through.

    ``labels`` is (B,) class numbers, or (B, num_classes) float class weights (a relaxed label, e.g.
    a softmax that GAN inversion optimises; a one-hot row gives the same image as its class number)."""
    if not num_classes:
        return z
    if labels.is_floating_point():
        return torch.cat([z, labels.to(z.dtype)], dim=1)
    return torch.cat([z, nn.functional.one_hot(labels, num_classes).to(z.dtype)], dim=1)


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(module) if enabled else module


def packed(x: torch.Tensor, pack: int) -> torch.Tensor:
    """PacGAN's discriminator input (Lin et al. 2018): images (B, C, H, W) -> (B / pack, pack * C, H, W),
    each run of ``pack`` consecutive samples stacked as channels of one input. Judging several
    samples at once lets D see that a collapsed generator's samples look alike."""
    if x.shape[0] % pack:
        raise ValueError(f"a batch of {x.shape[0]} images does not split into packs of {pack}")
    return x.reshape(x.shape[0] // pack, pack * x.shape[1], *x.shape[2:])


class MinibatchStd(nn.Module):
    """Append the spread of the batch as one more feature (Karras et al. 2018): (B, C, ...) -> (B, C + 1, ...).

    The batch is cut into groups of ``group`` samples (or fewer, to divide B); each group's
    per-feature standard deviation, averaged to one number, is appended to its samples. A
    collapsed generator makes batches with little spread, which D can then see and punish."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        group = next(g for g in range(min(self.group, batch), 0, -1) if batch % g == 0)
        grouped = x.reshape(group, batch // group, *x.shape[1:])  # sample i is in group i % (B / g)
        spread = (grouped.float().var(dim=0, unbiased=False) + 1e-8).sqrt().flatten(1).mean(1)  # (B / g,)
        spread = spread.repeat(group).to(x.dtype).view(batch, *[1] * (x.dim() - 1))  # (B, 1, ...)
        return torch.cat([x, spread.expand(batch, 1, *x.shape[2:])], dim=1)


class ProjectionHead(nn.Module):
    """Features (B, F) [+ labels (B,)] -> logits (B,), with class projection when conditional."""

    def __init__(self, features: int, num_classes: int, spectral_norm: bool):
        super().__init__()
        self.linear = _sn(nn.Linear(features, 1), spectral_norm)
        self.embed = _sn(nn.Embedding(num_classes, features), spectral_norm) if num_classes else None

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        logits = self.linear(h).squeeze(1)  # (B,)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(1)
        return logits


class _Generator(nn.Module):
    """What every generator shares: the labels it is conditioned on. A self-conditioned one keeps its
    clusters' share of the training data (``cluster_prior``, saved with its weights: (K,), or (C, K)
    shares within each class) and takes each sample's cluster from its noise."""

    def __init__(self, cfg: GanModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.clusters:
            shape = (cfg.num_classes, cfg.clusters) if cfg.conditional else (cfg.clusters,)
            self.register_buffer("cluster_prior", torch.full(shape, 1 / cfg.clusters))

    def conditioned(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(B, z_dim) -> (B, z_dim + label_count): the noise with its one-hot label."""
        return with_one_hot(z, self.internal_labels(z, labels), self.cfg.label_count)

    def internal_labels(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels G (and D, in training) take inside for noise z and the caller's ``labels``.

        Without clusters, the caller's classes. Self-conditioned and unconditional: the cluster read
        from z, unless the caller names one. Classes split into clusters: ``class * K + cluster``,
        the cluster read from z within the requested class; class weights (B, C) become weights
        (B, C * K), each class's weight on its cluster of z."""
        if not self.cfg.clusters:
            return labels
        if not self.cfg.conditional:
            return cluster_of_noise(z, self.cluster_prior) if labels is None else labels
        k = self.cfg.clusters
        within = cluster_of_noise(z, self.cluster_prior)  # (B, C): z's cluster in every class
        if labels.is_floating_point():
            pairs = torch.arange(self.cfg.num_classes, device=z.device) * k + within  # (B, C)
            return labels.new_zeros(len(labels), self.cfg.label_count).scatter_(1, pairs, labels)
        return labels * k + within.gather(1, labels.unsqueeze(1)).squeeze(1)


class MLPGenerator(_Generator):
    """The textbook generator z -> 256 -> 784 (LeakyReLU, Tanh), made correct."""

    def __init__(self, cfg: GanModelConfig):
        super().__init__(cfg)
        in_dim = cfg.z_dim + cfg.label_count
        out_dim = cfg.channels * cfg.image_size**2
        self.net = nn.Sequential(nn.Linear(in_dim, cfg.width), nn.LeakyReLU(0.2),
                                 nn.Linear(cfg.width, out_dim), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        c, s = self.cfg.channels, self.cfg.image_size
        return self.net(self.conditioned(z, labels)).view(-1, c, s, s)


class MLPDiscriminator(nn.Module):
    """The textbook discriminator 784 -> 256 -> 1, returning logits (no sigmoid: the loss has it)."""

    def __init__(self, cfg: GanModelConfig):
        super().__init__()
        self.pack = cfg.pack
        in_dim = cfg.pack * cfg.channels * cfg.image_size**2
        layers = [_sn(nn.Linear(in_dim, cfg.width), cfg.spectral_norm), nn.LeakyReLU(0.2)]
        if cfg.minibatch_std:
            layers.append(MinibatchStd())
        self.features = nn.Sequential(*layers)
        self.head = ProjectionHead(cfg.width + int(cfg.minibatch_std), cfg.label_count, cfg.spectral_norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(packed(x, self.pack).flatten(1)), labels)


def _dcgan_start_size(image_size: int) -> int:
    """Spatial size of the first feature map: DCGAN doubles it per stage up to image_size."""
    for start in (7, 4):
        ratio = image_size // start
        if image_size % start == 0 and ratio >= 2 and ratio & (ratio - 1) == 0:
            return start
    raise ValueError(f"dcgan needs an image size of 7 or 4 times a power of two (28, 32, 64, ...), got {image_size}")


class NoiseProjection(nn.ConvTranspose2d):
    """DCGAN's first layer, a transposed convolution of the noise seen as a 1x1 image with a
    start x start kernel: (B, in, 1, 1) -> (B, out, start, start). That is one matrix product,
    computed as one (oneDNN's transposed-convolution kernel took 4x as long, Zen 4 held to AVX2 kernels);
    the weight keeps ConvTranspose2d's shape, so saved runs load unchanged."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        in_dim, out_channels, height, width = self.weight.shape
        return (z.flatten(1) @ self.weight.view(in_dim, -1)).view(-1, out_channels, height, width)


class DCGANGenerator(_Generator):
    """Radford et al. (2015): project z, then transposed convolutions with batch norm and ReLU.

    For 28x28: z (B, 100) -> (B, 2w, 7, 7) -> (B, w, 14, 14) -> (B, C, 28, 28), Tanh.
    """

    def __init__(self, cfg: GanModelConfig):
        super().__init__(cfg)
        start = _dcgan_start_size(cfg.image_size)
        stages = (cfg.image_size // start).bit_length() - 1
        channels = [cfg.width * 2 ** (stages - 1 - i) for i in range(stages)]  # 28x28: [2w, w]; 64x64: [8w, .., w]
        in_dim = cfg.z_dim + cfg.label_count
        layers: list[nn.Module] = [NoiseProjection(in_dim, channels[0], start, 1, 0, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(True)]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(channels[-1], cfg.channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.conditioned(z, labels))  # (B, in_dim) -> (B, 2w, start, start) -> ... -> (B, C, H, W)


class DCGANDiscriminator(nn.Module):
    """Strided convolutions with LeakyReLU 0.2 (and batch norm after the first), then a linear
    head over the last feature map, i.e. DCGAN's final full-size convolution.

    For 28x28: (B, C, 28, 28) -> (B, w, 14, 14) -> (B, 2w, 7, 7) -> flatten -> logit (B,).
    """

    def __init__(self, cfg: GanModelConfig):
        super().__init__()
        start = _dcgan_start_size(cfg.image_size)
        stages = (cfg.image_size // start).bit_length() - 1
        self.pack = cfg.pack
        channels = [cfg.pack * cfg.channels] + [cfg.width * 2**i for i in range(stages)]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            layers.append(_sn(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=i == 0 or cfg.disc_norm != "batch"),
                              cfg.spectral_norm))
            if i > 0 and cfg.disc_norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, True))
        if cfg.minibatch_std:
            layers.append(MinibatchStd())
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = ProjectionHead((channels[-1] + int(cfg.minibatch_std)) * start * start, cfg.label_count,
                                   cfg.spectral_norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(packed(x, self.pack)), labels)


def judges_samples_independently(discriminator: nn.Module) -> bool:
    """Whether each sample's logit depends on that sample alone: no batch norm and no minibatch
    statistics. Then one pass over real and fake together gives the two passes' logits."""
    return not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, MinibatchStd)) for m in discriminator.modules())


ARCHITECTURES = {
    "mlp": (MLPGenerator, MLPDiscriminator),
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
}


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights for convolutions and linear layers, N(1, 0.02) for batch-norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_generator(cfg: GanModelConfig) -> nn.Module:
    generator = ARCHITECTURES[cfg.model][0](cfg)
    if cfg.model == "dcgan":
        dcgan_init(generator)
    return generator


def build_discriminator(cfg: GanModelConfig) -> nn.Module:
    discriminator = ARCHITECTURES[cfg.model][1](cfg)
    if cfg.model == "dcgan":
        dcgan_init(discriminator)
    return discriminator
