"""``aigc demo``: a minute of training on bundled data, and something to look at."""

from __future__ import annotations

from pathlib import Path

from aigc.demo_config import DemoConfig
from aigc.runs import unique_dir


def run_demo(cfg: DemoConfig) -> Path:
    from aigc.gan.config import GanSampleConfig, GanTrainConfig
    from aigc.gan.sample import sample
    from aigc.gan.train import train

    out = unique_dir(cfg.out)
    out.mkdir(parents=True)
    gan_run = train(GanTrainConfig(model="dcgan", conditional=True, steps=cfg.gan_steps, seed=cfg.seed,
                                   out=str(out / "gan"), sample_every=cfg.gan_steps))
    grid = out / "digits.png"
    sample(GanSampleConfig(run=str(gan_run), n=100, out=str(grid), seed=cfg.seed))
    print(f"\nConditional DCGAN digits, one row per class 0-9: {grid}")
    print(f"Draw more: aigc gan sample --run {gan_run} --label 7 --out sevens.png")
    return out
