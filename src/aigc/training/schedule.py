"""Learning-rate schedules, from plain numbers (no recipe config)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr`` (Loshchilov & Hutter 2017)
    over ``decay_steps`` steps, or over ``time_budget`` seconds, whichever runs out first."""

    lr: float
    min_lr: float
    warmup_steps: int
    decay_steps: int | None = None
    time_budget: float | None = None

    def progress(self, step: int, elapsed: float) -> float:
        """How far through the decay we are, in [0, 1]: the furthest of steps and time."""
        fractions = []
        if self.decay_steps:
            fractions.append((step - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps))
        if self.time_budget:
            fractions.append(elapsed / self.time_budget)
        return min(1.0, max(0.0, *fractions))

    def __call__(self, step: int, elapsed: float) -> float:
        """The learning rate of step number ``step`` (0-based), ``elapsed`` seconds into the run."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress(step, elapsed)))
        return self.min_lr + cosine * (self.lr - self.min_lr)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
