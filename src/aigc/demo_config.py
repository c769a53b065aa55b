"""Config of ``aigc demo`` (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from aigc.config import option, require


@dataclass
class DemoConfig:
    out: str = option("aigc-demo", "folder for the demo runs (a fresh name is chosen if it exists)")
    gan_steps: int = option(2000, "generator updates of the demo's conditional DCGAN (about a minute on a laptop CPU)")
    gpt_iters: int = option(1500, "optimizer steps of the demo's character-level GPT (about a minute on a laptop CPU)")
    seed: int = option(0, "random seed")

    def validate(self) -> None:
        require(self.gan_steps > 0, f"--gan-steps must be positive, got {self.gan_steps}")
        require(self.gpt_iters > 0, f"--gpt-iters must be positive, got {self.gpt_iters}")
