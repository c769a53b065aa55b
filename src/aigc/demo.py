"""``aigc demo``: a minute of training per model family on bundled data, and something to look at."""

from __future__ import annotations

from pathlib import Path

from aigc.demo_config import DemoConfig
from aigc.outputs import output_dir
from aigc.runs import unique_dir

GPT_PROMPT = "The "


def run_demo(cfg: DemoConfig) -> Path:
    out = output_dir(unique_dir(cfg.out), "--out")  # a fresh name, in a folder that can take it
    out.mkdir(parents=True)
    grid, gan_run = _gan_part(cfg, out)
    sample, gpt_run = _gpt_part(cfg, out)
    print(f"\nConditional DCGAN digits, one row per class 0-9: {grid}")
    print(f"Draw more: aigc gan sample --run {gan_run} --label 7 --out sevens.png")
    print(f"\nA {cfg.gpt_iters}-step character GPT trained on Python's language reference writes:\n")
    print(GPT_PROMPT + sample)
    print(f"\nMore: aigc gpt generate --run {gpt_run} --prompt 'The ' --max-new-tokens 400")
    return out


def _gan_part(cfg: DemoConfig, out: Path) -> tuple[Path, Path]:
    from aigc.gan.config import GanSampleConfig, GanTrainConfig
    from aigc.gan.sample import sample
    from aigc.gan.train import train

    run = train(GanTrainConfig(model="dcgan", conditional=True, steps=cfg.gan_steps, seed=cfg.seed,
                               out=str(out / "gan"), sample_every=cfg.gan_steps))
    grid = out / "digits.png"
    sample(GanSampleConfig(run=str(run), n=100, out=str(grid), seed=cfg.seed))
    return grid, run


def _gpt_part(cfg: DemoConfig, out: Path) -> tuple[str, Path]:
    from aigc.gpt.config import GptTrainConfig
    from aigc.gpt.generation import generate
    from aigc.gpt.train import train

    run = train(GptTrainConfig(max_iters=cfg.gpt_iters, seed=cfg.seed, out=str(out / "gpt")))
    (text,) = generate(str(run), GPT_PROMPT, max_new_tokens=400, temperature=0.8, seed=cfg.seed)
    return text, run
