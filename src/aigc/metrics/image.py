"""Metrics that compare generated images with real ones. Each is a plain function.

- :func:`frechet_distance`: FID (Heusel et al. 2017) on any features, through torchmetrics.
- :func:`kernel_distance`: KID (Binkowski et al. 2018), an unbiased MMD^2, mean and std over subsets.
- :func:`intra_class_fid`: FID class by class (Miyato & Koyama 2018), for conditional generators.
- :func:`c2st`: the classifier two-sample test (Lopez-Paz & Oquab 2017), "can a judge tell?".
- :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019), k = 3.
- :func:`density_coverage`: density and coverage (Naeem et al. 2020), k = 5.
- :func:`mode_coverage`: predicted-class histogram, classes covered, KL to the reference.
- :func:`label_accuracy`: the share of conditional samples read as the class they were asked for.

Features and predictions come from :mod:`aigc.metrics.evaluator` (or any other extractor).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class _GivenFeatures(nn.Module):
    """A torchmetrics "feature extractor" that passes precomputed features (B, D) through."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID between two feature sets (N, D) and (M, D): ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2),
    computed by torchmetrics' ``FrechetInceptionDistance`` in float64."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_GivenFeatures(real_features.shape[1]))
    fid.update(real_features.double(), real=True)
    fid.update(fake_features.double(), real=False)
    return max(0.0, float(fid.compute()))  # rounding can give -1e-12 for identical sets


def kernel_distance(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018, "Demystifying MMD GANs") between (N, D) and (M, D) features:
    the unbiased estimate of MMD^2 with the cubic kernel k(x, y) = (x.y / D + 1)^3,

        1/(s(s-1)) sum_{i!=j} [k(x_i, x_j) + k(y_i, y_j)] - 2/s^2 sum_{i,j} k(x_i, y_j),

    on ``subsets`` random draws of s = min(``subset_size``, N, M) points from each set, computed by
    torchmetrics' ``KernelInceptionDistance``. Returns the mean and the standard deviation over the
    draws (0 when s = N = M: every draw is then the whole set). Unlike FID it is unbiased, so it
    can dip below 0 when the sets share a distribution. The draws are seeded by ``seed``; the global random state is left as it was.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real_features), len(fake_features))
    if size < 2:
        raise ValueError("KID needs at least 2 points in each set")
    with warnings.catch_warnings():  # it warns that it keeps every feature: ours are already in memory
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(feature=_GivenFeatures(real_features.shape[1]), subsets=subsets,
                                      subset_size=size)
    kid.update(real_features.double(), real=True)
    kid.update(fake_features.double(), real=False)
    with torch.random.fork_rng():  # torchmetrics draws the subsets with the global torch.randperm
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


def intra_class_fid(real_features: torch.Tensor, real_labels: torch.Tensor, fake_features: torch.Tensor,
                    fake_labels: torch.Tensor, num_classes: int) -> list[float]:
    """FID of each class c in turn: the fake features (M, D) labelled c against the real features
    (N, D) labelled c (Miyato & Koyama 2018, "cGANs with projection discriminator"). Labels are
    (M,) and (N,): for samples, the class asked for. Its mean over classes judges whether each class
    looks like its own data, which plain FID misses when classes are swapped or blended.
    """
    fids = []
    for c in range(num_classes):
        real, fake = real_features[real_labels == c], fake_features[fake_labels == c]
        if min(len(real), len(fake)) < 2:
            raise ValueError(f"intra-class FID needs at least 2 points of class {c} in each set")
        fids.append(frechet_distance(real, fake))
    return fids


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point (N, D) to its k-th nearest other point in the same set: (N,)."""
    radii = []
    for block in features.split(chunk):
        distances = torch.cdist(block, features)  # (b, N); each point is its own 0-th neighbour
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """The share of ``points`` that lie within ``radii`` of at least one of ``centres``."""
    inside = [(torch.cdist(block, centres) <= radii[None, :]).any(dim=1) for block in points.split(chunk)]
    return torch.cat(inside).float().mean().item()


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3,
                     chunk: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour. Precision: the share of fake points inside the real manifold (are samples
    realistic?). Recall: the share of real points inside the fake manifold (is all of the data
    covered?). Compare numbers computed on equally large sets: the radii shrink as sets grow.
    """
    if min(len(real_features), len(fake_features)) <= k:
        raise ValueError(f"precision/recall with k={k} need more than {k} points in each set")
    real, fake = real_features.double(), fake_features.double()
    precision = _share_inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk)
    recall = _share_inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk)
    return precision, recall


def density_coverage(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 5,
                     chunk: int = 1000) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
    Generative Models") of fake points Y (M, D) against real points X (N, D).

    Around each real point X_i lies a ball B_i reaching its k-th nearest other real point.

        density  = 1/(k M) sum_j sum_i 1[Y_j in B_i]   (fidelity: ~1 when Y follows X's density)
        coverage = 1/N sum_i 1[some Y_j in B_i]        (diversity: the share of real balls hit)

    Unlike precision and recall, only the real set's balls are used, so fake outliers cannot
    inflate them. Density is not capped at 1: samples packed into dense real regions exceed it.
    """
    if len(real_features) <= k:
        raise ValueError(f"density/coverage with k={k} need more than {k} real points")
    real, fake = real_features.double(), fake_features.double()
    radii = _kth_neighbour_radii(real, k, chunk)  # (N,)
    hits, covered = 0, []
    for block, block_radii in zip(real.split(chunk), radii.split(chunk)):
        inside = torch.cdist(block, fake) <= block_radii[:, None]  # (b, M): Y_j in B_i
        hits += int(inside.sum())
        covered.append(inside.any(dim=1))
    return hits / (k * len(fake)), torch.cat(covered).double().mean().item()


@dataclass
class C2STResult:
    accuracy: float  # on the held-out halves; 0.5: the judge cannot tell, 1.0: it always can
    low: float  # 95% Wilson interval of the accuracy
    high: float
    n_test: int  # held-out images judged (real + fake)
    fake_indices: torch.Tensor  # (M,) indices into the fake set of the held-out fakes
    fake_realness: torch.Tensor  # (M,) the judge's P(real) for each of them


class _PoolTo(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling that passes an input of the output's size through: a 28 x 28 image
    reaches the pool at 7 x 7 already, and the identity pool and its backward took ~8% of a step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size, self.output_size)
        return x if tuple(x.shape[-2:]) == size else super().forward(x)


class Judge(nn.Module):
    """A small fresh CNN. Its first convolution keeps full resolution, so pixel-level texture
    (noise, speckles) is visible to it: (B, C, H, W) -> (B, 32, H, W) -> (B, 32, H/2, W/2)
    -> (B, 64, H/4, W/4) -> adaptive pool (B, 64, 7, 7) -> logit (B,).

    It runs in channels-last memory format, weights and activations: oneDNN's convolutions then
    read and write it directly, where in the default layout every convolution of 1 or 32 channels
    reordered its input and output: on an AVX2-only Zen 3 a training step of 128 images ran 1.40x as
    fast, a forward pass of 256 1.53x (``benchmarks/judge_speed.py``, docs/benchmarks.md)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 32, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 3, 2, 1), nn.LeakyReLU(0.2),
            _PoolTo(7), nn.Flatten(), nn.Linear(64 * 49, 1),
        )
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last)).squeeze(1)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def c2st(real_images: torch.Tensor, fake_images: torch.Tensor, steps: int = 1500, batch_size: int = 64,
         lr: float = 1e-3, seed: int = 0) -> C2STResult:
    """Classifier two-sample test: train a fresh :class:`Judge` on half of the real images
    (label 1) and half of the fake ones (label 0), and report its accuracy on the other halves.

    Both sets are cut to the smaller size so chance is exactly 0.5. The judge trains for a fixed
    number of Adam ``steps`` on shuffled batches, whatever the set size. A judge that cannot beat
    chance on data it was not trained on is evidence the two sets come from one distribution.
    """
    generator = torch.Generator().manual_seed(seed)
    n = min(len(real_images), len(fake_images))
    real_order, fake_order = torch.randperm(len(real_images), generator=generator)[:n], \
        torch.randperm(len(fake_images), generator=generator)[:n]
    half = n // 2
    train_x = torch.cat([real_images[real_order[:half]], fake_images[fake_order[:half]]])
    train_y = torch.cat([torch.ones(half), torch.zeros(half)])
    test_fake = fake_order[half:]
    test_x = torch.cat([real_images[real_order[half:]], fake_images[test_fake]])
    test_y = torch.cat([torch.ones(n - half), torch.zeros(n - half)])

    judge = _train_judge(train_x, train_y, steps, batch_size, lr, generator, seed)
    with torch.no_grad():
        realness = torch.cat([torch.sigmoid(judge(chunk)) for chunk in test_x.split(1000)])
    correct = int(((realness > 0.5).float() == test_y).sum())
    low, high = wilson_interval(correct, len(test_y))
    return C2STResult(correct / len(test_y), low, high, len(test_y), test_fake, realness[n - half:])


def _train_judge(images: torch.Tensor, targets: torch.Tensor, steps: int, batch_size: int, lr: float,
                 generator: torch.Generator, seed: int) -> Judge:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        judge = Judge(images.shape[1])
    optimizer = torch.optim.Adam(judge.parameters(), lr=lr)
    batches = []
    for _ in range(steps):
        if not batches:  # a new epoch
            batches = list(torch.randperm(len(images), generator=generator).split(batch_size))
        batch = batches.pop()
        loss = F.binary_cross_entropy_with_logits(judge(images[batch]), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return judge.eval()


@dataclass
class Coverage:
    histogram: list[float]  # share of samples predicted as each class
    classes_covered: int  # classes holding at least ``threshold`` of the samples
    kl: float  # KL(sample histogram || reference histogram), nats


def class_histogram(predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Predicted classes (N,) -> the share of each class (K,)."""
    return torch.bincount(predicted, minlength=num_classes).double() / len(predicted)


def mode_coverage(sample_classes: torch.Tensor, reference_classes: torch.Tensor, num_classes: int,
                  threshold: float = 0.01, eps: float = 1e-6) -> Coverage:
    """How the samples spread over the classes, judged by predicted classes (N,) and (M,).

    A collapsed GAN leaves classes empty (fewer covered) and skews the histogram (higher KL).
    The reference histogram is smoothed by ``eps`` so an empty reference class gives a large,
    finite KL.
    """
    p = class_histogram(sample_classes, num_classes)
    q = class_histogram(reference_classes, num_classes).clamp_min(eps)
    q = q / q.sum()
    terms = torch.where(p > 0, p * (p / q).log(), torch.zeros_like(p))
    return Coverage(p.tolist(), int((p >= threshold).sum()), max(0.0, float(terms.sum())))


def label_accuracy(predicted: torch.Tensor, requested: torch.Tensor) -> float:
    """The share of samples whose predicted class (N,) is the class asked for (N,)."""
    return (predicted == requested).double().mean().item()
