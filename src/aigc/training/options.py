"""Option groups the trainers share, declared once (torch-free: ``aigc --help`` builds on them).

A trainer's config inherits the groups it uses; ``--help`` shows each group under its own
heading (the first line of its docstring). A field a config declares again (to give it
another default) is shown with the config's own options.
"""

from __future__ import annotations

from dataclasses import dataclass

from aigc.config import DEVICE_CHOICES, option, parse_duration, require
from aigc.trackers import parse_trackers, tracker_names

STRATEGIES = ("ddp", "fsdp")
DIST_BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class RunOptions:
    """run options (every trainer)"""

    device: str = option("auto", "where to train", choices=DEVICE_CHOICES)
    seed: int = option(0, "random seed: the same seed and data give the same run")
    out: str | None = option(None, "run directory (default: runs/<kind>-<date>-<time>)")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")
    resume_if_exists: bool = option(False, "continue the run in --out if it has a checkpoint, else start it "
                                           "(for restarts by torchrun --max-restarts)")
    time_budget: float | None = option(None, "train for this long (e.g. 90s, 10m); with a step count too, whichever "
                                             "ends first; a learning-rate schedule then decays over the budget",
                                       parse=parse_duration)
    strategy: str = option("ddp", "under torchrun: ddp keeps a whole model on every process; fsdp shards "
                                  "parameters and optimizer state (gpt train only)", choices=STRATEGIES)
    dist_backend: str = option("auto", "under torchrun: gloo on CPU, nccl on CUDA", choices=DIST_BACKENDS)
    dist_timeout: float = option(60.0, "under torchrun: seconds a process waits for the others (to join, and at "
                                       "each step) before it gives up", parse=parse_duration)
    tracker: str = option("tensorboard", "where metrics go besides metrics.jsonl: tensorboard (RUN/tb), wandb "
                                         "(Weights & Biases; offline unless WANDB_MODE=online), none, or a comma "
                                         "list such as tensorboard,wandb; may change on --resume",
                          parse=parse_trackers)

    def validate_run(self) -> None:
        require(self.time_budget is None or self.time_budget > 0,
                f"--time-budget must be positive, got {self.time_budget}")
        require(not self.resume or self.out is not None, "--resume needs --out RUN")
        require(not self.resume_if_exists or self.out is not None, "--resume-if-exists needs --out RUN")
        require(self.dist_timeout > 0, f"--dist-timeout must be positive, got {self.dist_timeout}")
        self.trackers()

    def trackers(self) -> tuple[str, ...]:
        """The trackers --tracker names, checked (a config made in Python included)."""
        return tracker_names(self.tracker)


@dataclass
class LmOptimizerOptions:
    """optimiser options (AdamW with warm-up and cosine decay)"""

    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr_decay_iters: int | None = option(None, "steps over which the cosine decays (default: --max-iters)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 turns clipping off)")
    amp: bool = option(True, "bf16 autocast where the hardware supports it")

    def validate_optimizer(self) -> None:
        require(self.grad_accum > 0, f"--grad-accum must be positive, got {self.grad_accum}")
        require(self.lr_decay_iters is None or self.lr_decay_iters > 0,
                f"--lr-decay-iters must be positive, got {self.lr_decay_iters}")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1 and --beta2 must be in [0, 1)")
        require(self.grad_clip >= 0, f"--grad-clip must be non-negative, got {self.grad_clip}")
