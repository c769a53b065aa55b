"""Config of ``aigc demo`` (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from aigc.config import option, parse_duration, require


@dataclass
class DemoConfig:
    out: str = option("aigc-demo", "folder for the demo runs (a fresh name is chosen if it exists)")
    gan_steps: int = option(2000, "generator updates of the demo's conditional DCGAN, unless --gan-time runs out first")
    gan_time: float = option(55.0, "stop the GAN's training after this long (e.g. 55s, 2m), done or not, its "
                             "guide's fit included (the GAN trains for at most 85%% of it)",
                             parse=parse_duration)
    gpt_iters: int = option(1500, "optimizer steps of the demo's character-level GPT, unless --gpt-time runs out first")
    gpt_time: float = option(40.0, "stop the GPT's training after this long (its learning rate decays to fit)",
                             parse=parse_duration)
    seed: int = option(0, "random seed")

    def validate(self) -> None:
        require(self.gan_steps > 0, f"--gan-steps must be positive, got {self.gan_steps}")
        require(self.gpt_iters > 0, f"--gpt-iters must be positive, got {self.gpt_iters}")
        require(self.gan_time > 0, f"--gan-time must be positive, got {self.gan_time}")
        require(self.gpt_time > 0, f"--gpt-time must be positive, got {self.gpt_time}")
