"""Stacked MNIST: does a GAN cover all 1,000 modes? (the mode-collapse benchmark of VEEGAN and PacGAN)

Each training image stacks three digits of the bundled ``mnist5k`` as its red, green and blue
channels (``aigc gan train --data stacked-mnist5k``: 50,000 seeded triples), so the data has
10 x 10 x 10 = 1,000 equally likely modes. Each setup trains an unconditional DCGAN for
``--budget`` seconds; then ``--n`` (26,000, as in Lin et al. 2018) samples are drawn as ``aigc gan
sample`` draws them by default (the EMA generator at the run's noise temperature, guided where the run
has a guide), rounded to 8 bits, and each channel is read by the evaluator of ``aigc gan eval`` (the LeNet trained on
mnist5k). Reported: modes covered (triples with at least one sample) and KL(samples || uniform).

The real-data floor reads 26,000 random triples of MNIST *test* digits the same way: it shows
what the evaluator's errors and a finite sample cost (even a perfect generator has KL about
999 / (2 x 26,000) = 0.019 from sampling alone). Published anchors (Lin et al. 2018, Table 3,
their smaller-discriminator setting, 26,000 samples, a pretrained MNIST classifier): DCGAN 99
modes, KL 3.40; PacDCGAN2 1,000 modes, KL 0.06.

    flock /tmp/aigc-bench.lock python benchmarks/gan_modes.py --budget 600 --jobs 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from functools import partial
from pathlib import Path

import torch

from _common import each_in_workers, machine, matmul_peak_gflops, write_json
from gan_quality import MEASURED_WITH, cpu_kind, spread, write_doc
from aigc import runs
from aigc.data.images import load_images, save_grid, stack_digits
from aigc.gan.config import GanTrainConfig
from aigc.gan.evaluate import DEFAULT_RECIPE
from aigc.gan.generation import generate_images, quantize
from aigc.gan.guide import candidates_per_image, guided
from aigc.gan.loading import load_gan
from aigc.gan.train import train
from aigc.logging import read_metrics
from aigc.memory import keep_freed_memory
from aigc.metrics.evaluator import load_or_train_evaluator
from aigc.metrics.image import mode_coverage

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist"
OUT = ROOT / "benchmarks" / "out" / "gan_modes"
DOC = ROOT / "docs" / "benchmarks-gan-quality.md"
IMAGES = ROOT / "docs" / "img"
MODES = 1000
ANCHORS = [("DCGAN (Lin et al. 2018)", 99, 3.40), ("PacDCGAN2 (Lin et al. 2018)", 1000, 0.06)]

# name -> GanTrainConfig overrides (unconditional DCGAN on stacked-mnist5k) of gan_quality.MEASURED_WITH: what a
# setup that does not name them was measured with (no clusters, Adam 2e-4, EMA 0.999)
SETUPS = {
    "dcgan-bce": dict(),
    "dcgan-r1-g10": dict(r1_gamma=10.0),
    "dcgan-mbstd": dict(minibatch_std=True),
    "dcgan-pac2": dict(pack=2),  # PacGAN (Lin et al. 2018): D judges two samples at once
    "dcgan-pac4": dict(pack=4),
    "dcgan-pac2-r1-g10": dict(pack=2, r1_gamma=10.0),
    "dcgan-selfcond-100": dict(self_condition=100),  # self-conditioned on 100 k-means clusters (Liu et al. 2020)
    # the default of an unconditional DCGAN since 2026-12-06: self-conditioned, Adam 1.6e-3, EMA 0.99
    "dcgan-selfcond-100-lr1.6e-3-ema0.99": dict(self_condition=100, lr=1.6e-3, ema_decay=0.99),
    # `aigc gan train --data stacked-mnist5k` as it is today, every default as the command has it (since 2026-12-07:
    # sampled at noise temperature 1.2, guided by a guide fitted within the budget)
    "uncond-default": dict(self_condition=None, lr=None, ema_decay=None, guide=True),
}


def digit_evaluator():
    digits = load_images("mnist5k")
    return load_or_train_evaluator(digits.images, digits.labels, digits.num_classes, DEFAULT_RECIPE)


def count_modes(images: torch.Tensor, evaluator) -> dict:
    """Stacked images (N, 3, H, W) -> the evaluator's digit per channel -> modes hit at least once
    and KL(samples || uniform)."""
    digits = [evaluator.features_and_logits(images[:, c:c + 1])[1].argmax(1) for c in range(3)]  # 3 x (N,)
    modes = digits[0] * 100 + digits[1] * 10 + digits[2]
    coverage = mode_coverage(modes, torch.arange(MODES), MODES, threshold=1 / len(modes))
    return {"modes": coverage.classes_covered, "kl": coverage.kl}


def real_floor(n: int, evaluator) -> dict:
    """The same count on ``n`` random triples of MNIST test digits (never seen by the evaluator)."""
    test = load_images(str(MNIST_TEST))
    return count_modes(stack_digits(test, count=n, seed=1).images, evaluator)


def measure(job: tuple[str, int], args: argparse.Namespace) -> dict:
    """Train one setup with one seed, then count its samples' modes."""
    name, seed = job
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the `aigc` command does
    out = OUT / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = GanTrainConfig(data="stacked-mnist5k", out=str(out), device="cpu", seed=seed, time_budget=args.budget,
                         **{**MEASURED_WITH, **SETUPS[name]})
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    last = [m for m in read_metrics(out / runs.METRICS_FILE) if "d_loss" in m][-1]
    steps = last["step"]
    # sampled as `aigc gan sample --run OUT --seed SEED` samples: the EMA generator at the run's temperature,
    # guided where the run has a guide fitted to it
    loaded = load_gan(out, ema=True)
    temperature = loaded.temperature()
    k = candidates_per_image(loaded, None, True, temperature)
    generator = guided(loaded, k, True, temperature, seed)
    samples = quantize(generate_images(generator, loaded.model_config, args.n, None, seed=seed,
                                       temperature=temperature))  # (n, 3, 28, 28), 8-bit
    # images/s over the training clock: a --self-condition run's k-means comes before it starts
    result = {"steps": steps, "seconds": seconds, "images_per_s": steps * cfg.batch_size / last["elapsed"],
              "temperature": temperature, "generator_passes_per_image": getattr(generator, "passes_per_image", 1),
              **count_modes(samples, digit_evaluator())}
    if seed == args.seeds[0]:
        prefix = "gan-modes" if args.section == "modes" else f"gan-{args.section}"  # never another section's grid
        result["grid"] = str(IMAGES / f"{prefix}-{name}.png")
        save_grid(samples[:100], result["grid"], nrow=10)
    print(f"{name} seed {seed}: {steps} steps, {result['modes']} modes, KL {result['kl']:.3f}", flush=True)
    return result


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [f"Measured {payload['date']} on {m['cpu']} ({cpu_kind(m)}, {m['cores']} cores; {payload['jobs']} run(s) at a time with "
             f"{payload['threads']} torch thread(s) each; fp32 matmul peak {payload['matmul_gflops']:.0f} GFLOP/s): "
             f"{payload['budget_s']:.0f} s of training per run on stacked-mnist5k, seeds "
             f"{', '.join(map(str, payload['seeds']))}, {payload['n']} samples each (mean ± standard deviation).", "",
             "| setup | steps | images/s | modes (of 1,000) | KL(samples ‖ uniform) |", "|---|---:|---:|---:|---:|"]
    for name, by_seed in payload["results"].items():
        results = list(by_seed.values())
        lines.append(f"| {name} | {spread([r['steps'] for r in results], 0)} | "
                     f"{spread([r['images_per_s'] for r in results], 0)} | {spread([r['modes'] for r in results], 0)} | "
                     f"{spread([r['kl'] for r in results], 3)} |")
    floor = payload["real_floor"]
    lines.append(f"| **real floor** ({payload['n']} random triples of MNIST test digits) |  |  | {floor['modes']} | "
                 f"{floor['kl']:.3f} |")
    lines += [f"| *{name}* (published) |  |  | {modes} | {kl:.2f} |" for name, modes, kl in ANCHORS]
    lines += ["", "| setup | 100 samples (first seed) |", "|---|---|"]
    for name, by_seed in payload["results"].items():
        grid = next((r["grid"] for r in by_seed.values() if "grid" in r), None)
        if grid:
            lines.append(f"| `{name}` | ![{name}]({Path(grid).relative_to(DOC.parent).as_posix()}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600, help="training seconds per run (default: 600)")
    parser.add_argument("--n", type=int, default=26000, help="samples counted per run (default: 26000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--section", default="modes", help="the doc section (and JSON name) to write: modes "
                        "(default) or any other name, appended to the doc on first use")
    args = parser.parse_args()
    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"the benchmark needs the MNIST test set at {MNIST_TEST}")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(OUT / "cache")
    payload = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               "threads": args.threads, "jobs": args.jobs, "matmul_gflops": matmul_peak_gflops(torch.float32),
               "budget_s": args.budget, "n": args.n, "seeds": args.seeds,
               "real_floor": real_floor(args.n, digit_evaluator()), "results": {name: {} for name in args.setups}}
    print(f"real floor: {payload['real_floor']}", flush=True)
    jobs = [(name, seed) for name in args.setups for seed in args.seeds]
    json_name = "gan_modes" if args.section == "modes" else f"gan_modes_{args.section}"
    for (name, seed), result in each_in_workers(partial(measure, args=args), jobs, args.jobs):
        payload["results"][name][seed] = result
        write_json(json_name, payload)
    for name in args.setups:
        payload["results"][name] = dict(sorted(payload["results"][name].items()))
    write_json(json_name, payload)
    write_doc(markdown(payload), args.section)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
