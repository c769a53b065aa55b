"""``aigc demo``: under a minute of training per model family on bundled data, and something to look at.

Each part stops at its step count or its time, whichever comes first, so the whole demo takes
under two minutes on a 2-core AVX2 laptop CPU (measured: docs/benchmarks.md); faster CPUs do
all the steps. The GAN is DCGAN at width 32: its digits at 2,000 steps look like width 64's,
in half the time."""

from __future__ import annotations

from pathlib import Path

from aigc.demo_config import DemoConfig
from aigc.outputs import output_dir
from aigc.runs import read_pointer, unique_dir

GPT_PROMPT = "The "
DEMO_GAN_WIDTH = 32
# The rate and EMA the demo's digits were measured and drawn at (README). The defaults of a self-conditioned
# DCGAN (1.6e-3, EMA 0.99) were measured at width 64 with a 10-minute budget, not at the demo's width and 55 seconds.
DEMO_GAN_LR = 2e-4
DEMO_GAN_EMA_DECAY = 0.999
# One guide: a second one's samples alone (16 generator passes each) take longer to draw than its share of 55 s.
DEMO_GUIDE_STAGES = 1


def run_demo(cfg: DemoConfig) -> Path:
    out = output_dir(unique_dir(cfg.out), "--out")  # a fresh name, in a folder that can take it
    out.mkdir(parents=True)
    grid, gan_run = _gan_part(cfg, out)
    sample, gpt_run = _gpt_part(cfg, out)
    print(f"\nConditional DCGAN digits after {_steps_done(gan_run)} steps, one row per class 0-9: {grid}")
    print(f"Draw more: aigc gan sample --run {gan_run} --label 7 --out sevens.png")
    print(f"\nA character GPT, {_steps_done(gpt_run)} steps on Python's language reference, writes:\n")
    print(GPT_PROMPT + sample)
    print(f"\nMore: aigc gpt generate --run {gpt_run} --prompt 'The ' --max-new-tokens 400")
    return out


def _steps_done(run: Path) -> int:
    """The steps a finished run trained for (its last checkpoint's)."""
    return read_pointer(run)["step"]


def _gan_part(cfg: DemoConfig, out: Path) -> tuple[Path, Path]:
    from aigc.gan.config import GanSampleConfig, GanTrainConfig
    from aigc.gan.sample import sample
    from aigc.gan.train import train

    run = train(GanTrainConfig(model="dcgan", conditional=True, width=DEMO_GAN_WIDTH, lr=DEMO_GAN_LR,
                               ema_decay=DEMO_GAN_EMA_DECAY, guide_stages=DEMO_GUIDE_STAGES,
                               steps=cfg.gan_steps, time_budget=cfg.gan_time,
                               seed=cfg.seed, out=str(out / "gan"), sample_every=cfg.gan_steps))
    grid = out / "digits.png"
    sample(GanSampleConfig(run=str(run), n=100, out=str(grid), seed=cfg.seed))
    return grid, run


def _gpt_part(cfg: DemoConfig, out: Path) -> tuple[str, Path]:
    from aigc.gpt.config import GptTrainConfig
    from aigc.gpt.generation import generate
    from aigc.gpt.train import train

    run = train(GptTrainConfig(max_iters=cfg.gpt_iters, time_budget=cfg.gpt_time, seed=cfg.seed, out=str(out / "gpt")))
    (text,) = generate(str(run), GPT_PROMPT, max_new_tokens=400, temperature=0.8, seed=cfg.seed)
    return text, run
