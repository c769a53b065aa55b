"""The evaluator: a small LeNet-like classifier whose penultimate layer gives image features.

Inception features (the FID of Heusel et al. 2017) need downloaded ImageNet weights, so the
features come from a classifier trained on the data itself. Training is deterministic (fixed
seed and recipe) and the result is cached under ``$XDG_CACHE_HOME/aigc/evaluators`` (or
``~/.cache/aigc/evaluators``), named by a hash of the training images, labels and recipe: that
key goes into every result, and two numbers are comparable only when their keys match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aigc import runs
from aigc.errors import UserError
from aigc.outputs import cache_folder

ARCHITECTURE_VERSION = 1  # bump when LeNet changes, so old cache entries are not reused


@dataclass(frozen=True)
class EvaluatorRecipe:
    """How the evaluator is trained; every field is part of the cache key."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3  # Adam, cosine-decayed to zero
    width: int = 16  # channels of the first convolution (the second has twice as many)
    features: int = 128  # size of the penultimate layer: the feature vector
    max_shift: float = 0.1  # augmentation: random translation, as a fraction of the image size
    max_rotation: float = 10.0  # augmentation: random rotation, degrees
    seed: int = 0


class LeNet(nn.Module):
    """LeCun et al. (1998), modernised (ReLU, max-pooling, dropout).

    (B, C, H, W) -> conv5 -> pool -> (B, w, H/2, W/2) -> conv5 -> pool -> (B, 2w, H/4, W/4)
    -> adaptive pool -> (B, 2w, 7, 7) -> linear -> features (B, F) -> linear -> logits (B, K).
    """

    def __init__(self, channels: int, num_classes: int, width: int, features: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),
            nn.Linear(2 * width * 49, features), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.body(x)))  # (B, K)


@dataclass
class Evaluator:
    """A trained LeNet in eval mode, with its cache key and the image shape it accepts."""

    network: LeNet
    key: str
    channels: int
    image_size: int
    num_classes: int

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) in [-1, 1] -> features (N, F) and class logits (N, K), batched."""
        features, logits = [], []
        for chunk in images.split(batch_size):
            h = self.network.features(chunk)
            features.append(h)
            logits.append(self.network.classifier(h))
        return torch.cat(features), torch.cat(logits)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/aigc`` or ``~/.cache/aigc``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "aigc"


def evaluator_key(images: torch.Tensor, labels: torch.Tensor, recipe: EvaluatorRecipe) -> str:
    """A short hash of the training data and the recipe."""
    digest = hashlib.sha256()
    digest.update(f"lenet-v{ARCHITECTURE_VERSION}|{list(images.shape)}|".encode())
    digest.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    # Quantised to 8 bits so the key does not depend on float noise from resizing.
    digest.update(((images.float() + 1) * 127.5).round().to(torch.uint8).numpy().tobytes())
    digest.update(labels.to(torch.int64).numpy().tobytes())
    return f"lenet-{digest.hexdigest()[:16]}"


def augment(images: torch.Tensor, recipe: EvaluatorRecipe, generator: torch.Generator) -> torch.Tensor:
    """Random small rotations and shifts (the background, -1, fills in from the border)."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(recipe.max_rotation)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 2 * recipe.max_shift  # grid units span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


def train_evaluator(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    recipe: EvaluatorRecipe) -> LeNet:
    """Train a LeNet on (N, C, H, W) images in [-1, 1]; the same inputs give the same weights."""
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng():  # weight init and dropout draw from the global RNG
        torch.manual_seed(recipe.seed)
        network = LeNet(images.shape[1], num_classes, recipe.width, recipe.features)
        optimizer = torch.optim.Adam(network.parameters(), lr=recipe.lr)
        steps_per_epoch = math.ceil(len(images) / recipe.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs * steps_per_epoch)
        network.train()
        for _ in range(recipe.epochs):
            for batch in torch.randperm(len(images), generator=generator).split(recipe.batch_size):
                loss = F.cross_entropy(network(augment(images[batch], recipe, generator)), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return network.eval()


def load_or_train_evaluator(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                            recipe: EvaluatorRecipe = EvaluatorRecipe(), cache: Path | None = None) -> Evaluator:
    """The evaluator for this data and recipe: from the cache, or trained now and cached."""
    key = evaluator_key(images, labels, recipe)
    path = (cache or cache_dir()) / "evaluators" / f"{key}.safetensors"
    network = LeNet(images.shape[1], num_classes, recipe.width, recipe.features)
    if not _load_cached(network, path):
        cache_folder(path.parent, "the cache argument" if cache else  # before the training, not after it
                     "$XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "the home folder's .cache")
        network = train_evaluator(images, labels, num_classes, recipe)
        runs.save_weights(path, network.state_dict(), {"key": key, "recipe": json.dumps(dataclasses.asdict(recipe))})
    return Evaluator(network.requires_grad_(False), key, images.shape[1], images.shape[-1], num_classes)


def _load_cached(network: LeNet, path: Path) -> bool:
    """Load the cached weights into ``network``; False when absent or unreadable (then retrain)."""
    if not path.is_file():
        return False
    try:
        tensors, _ = runs.load_weights(path)
        network.load_state_dict(tensors)
    except (UserError, RuntimeError):
        return False
    network.eval()
    return True
