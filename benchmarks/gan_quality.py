"""GAN sample quality at a fixed budget: setups judged by ``aigc gan eval`` against held-out digits.

Trains each setup of ``SETUPS`` on mnist5k with ``aigc gan train``, for ``--budget`` seconds
(``--time-budget``: the budget includes the sample grids and checkpoints) or, for ablations
whose quality must not depend on what else the machine does, for ``--steps``; ``--seeds`` repeat
each setup and ``--jobs`` runs that many at once, each in its own process with ``--threads``
torch threads. Each run is then evaluated against the MNIST test set (``../shared/data/mnist``)
with ``aigc.gan.evaluate.evaluate_run``: FID, KID, C2ST, precision/recall, density/coverage,
mode coverage, label accuracy and intra-class FID, each beside its real-data floor. It also
times the evaluator's training from an empty cache, measures its accuracy on the whole test set
and the machine's fp32 matmul peak.

Writes ``benchmarks/out/gan_quality_SECTION.json``, the runs under ``benchmarks/out/gan_quality/``,
a sample grid and a judge picture per setup under ``docs/img/`` and the ``--section`` of
``docs/benchmarks-gan-quality.md``. Run it under the shared lock, alone on the machine:

    flock /tmp/aigc-bench.lock python benchmarks/gan_quality.py --setups dcgan-conditional --seeds 0 1 2 --jobs 2
    flock /tmp/aigc-bench.lock python benchmarks/gan_quality.py --steps 3000 --section ablation --jobs 2 --setups ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from _common import OUT_DIR, each_in_workers, machine, matmul_peak_gflops, write_json
from aigc import runs
from aigc.data.images import load_images
from aigc.gan.config import GanEvalConfig, GanSampleConfig, GanTrainConfig
from aigc.gan.evaluate import DEFAULT_RECIPE, JUDGE_STEPS, evaluate_run
from aigc.gan.sample import sample
from aigc.gan.train import train
from aigc.logging import read_metrics
from aigc.memory import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist"
OUT = ROOT / "benchmarks" / "out" / "gan_quality"
DOC = ROOT / "docs" / "benchmarks-gan-quality.md"
IMAGES = ROOT / "docs" / "img"

# What a setup that does not name them trains with, as when it was measured (before self-conditioning, then 1.6e-3
# and EMA 0.99, became defaults of DCGAN runs, and before runs ended by fitting a guide): no clusters, Adam 2e-4,
# EMA 0.999, no guide (plain samples). Also gan_modes.py's.
MEASURED_WITH = {"self_condition": 0, "lr": 2e-4, "ema_decay": 0.999, "guide": False}

# name -> GanTrainConfig overrides of MEASURED_WITH
SETUPS = {
    "mlp-bce": dict(model="mlp", loss="bce"),
    "dcgan-bce": dict(model="dcgan", loss="bce"),
    "dcgan-hinge-sn": dict(model="dcgan", loss="hinge", spectral_norm=True),
    "dcgan-wgan-gp": dict(model="dcgan", loss="wgan-gp"),
    "dcgan-conditional": dict(model="dcgan", loss="bce", conditional=True),
    # The tricks of issue 17, one at a time on the conditional DCGAN, then on the unconditional one.
    "cond-translation": dict(conditional=True, augment="translation"),
    "cond-diffaug": dict(conditional=True, augment="translation,cutout"),
    "cond-r1": dict(conditional=True, r1_gamma=1.0),
    "cond-mbstd": dict(conditional=True, minibatch_std=True),
    "cond-ttur": dict(conditional=True, lr=1e-4, lr_d=4e-4),
    "cond-hinge-sn": dict(conditional=True, loss="hinge", spectral_norm=True),
    # Round two, around what won round one (R1, and hinge with spectral norm: D without batch norm).
    "cond-r1-g10": dict(conditional=True, r1_gamma=10.0),
    "cond-r1-g0.1": dict(conditional=True, r1_gamma=0.1),
    "cond-r1-hinge-sn": dict(conditional=True, r1_gamma=1.0, loss="hinge", spectral_norm=True),
    "cond-r1-batch128": dict(conditional=True, r1_gamma=1.0, batch_size=128, lr=4e-4),
    "uncond-translation": dict(augment="translation"),
    "uncond-diffaug": dict(augment="translation,cutout"),
    "uncond-r1": dict(r1_gamma=1.0),
    "uncond-mbstd": dict(minibatch_std=True),
    "uncond-mbstd-translation": dict(minibatch_std=True, augment="translation"),
    "uncond-r1-g10": dict(r1_gamma=10.0),
    "uncond-r1-hinge-sn": dict(r1_gamma=1.0, loss="hinge", spectral_norm=True),
    # Round three: both rates decayed to 0 by a cosine over the budget, on the best 10-minute recipe.
    "cond-r1-g10-cosine": dict(conditional=True, r1_gamma=10.0, lr_schedule="cosine"),
    "cond-ema-0.99": dict(conditional=True, ema_decay=0.99),
    "cond-r1-g10-ema-0.99": dict(conditional=True, r1_gamma=10.0, ema_decay=0.99),
    "uncond-r1-g10-ema-0.99": dict(r1_gamma=10.0, ema_decay=0.99),
    # Self-conditioning (Liu et al. 2020): the unconditional DCGAN conditioned on k-means clusters of the pixels.
    "uncond-selfcond-10": dict(self_condition=10),
    "uncond-selfcond-50": dict(self_condition=50),
    "uncond-selfcond-100": dict(self_condition=100),
    # Round two of self-conditioning: does R1 (recall up, measured without clusters) or a shorter EMA lift its recall?
    "uncond-selfcond-100-ema-0.99": dict(self_condition=100, ema_decay=0.99),
    "uncond-selfcond-100-r1-g10-ema-0.99": dict(self_condition=100, r1_gamma=10.0, ema_decay=0.99),
    # Class splitting (Grinblat et al. 2017): the conditional DCGAN on k-means clusters within each class.
    "cond-selfcond-5": dict(conditional=True, self_condition=5),
    "cond-selfcond-10": dict(conditional=True, self_condition=10),
    # Half the channels (a quarter of the middle layers' arithmetic): 2.6x the steps in a budget on an AVX2 CPU.
    "cond-selfcond-10-w32": dict(conditional=True, self_condition=10, width=32),
    "uncond-selfcond-100-w32": dict(self_condition=100, width=32),
    # ~7,000 steps are 90 passes over the 5,000 images: does DiffAugment's translation help a D that may memorise them?
    "cond-selfcond-10-w32-translation": dict(conditional=True, self_condition=10, width=32, augment="translation"),
    "cond-selfcond-10-w48": dict(conditional=True, self_condition=10, width=48),
    # Faster learning for the ~2,650 steps an AVX2 CPU makes in 10 minutes: both rates raised (Adam, beta1 0.5).
    "cond-selfcond-10-lr4e-4": dict(conditional=True, self_condition=10, lr=4e-4),
    "cond-selfcond-10-lr8e-4": dict(conditional=True, self_condition=10, lr=8e-4),
    "cond-selfcond-10-lr1.6e-3": dict(conditional=True, self_condition=10, lr=1.6e-3),
    "cond-selfcond-10-lr3.2e-3": dict(conditional=True, self_condition=10, lr=3.2e-3),
    "cond-selfcond-10-w32-lr8e-4": dict(conditional=True, self_condition=10, width=32, lr=8e-4),
    "uncond-selfcond-100-lr1.6e-3": dict(self_condition=100, lr=1.6e-3),
    # A shorter EMA at that rate (the default of a self-conditioned DCGAN since 2026-12-06 13:00).
    "cond-selfcond-10-lr1.6e-3-ema0.99": dict(conditional=True, self_condition=10, lr=1.6e-3, ema_decay=0.99),
    "uncond-selfcond-100-lr1.6e-3-ema0.99": dict(self_condition=100, lr=1.6e-3, ema_decay=0.99),
    # A CPU that makes 6x the steps in 10 minutes (an AMX Xeon, ~17,500): the rate decayed to 0 over the budget.
    "cond-selfcond-10-lr1.6e-3-ema0.99-cosine": dict(conditional=True, self_condition=10, lr=1.6e-3, ema_decay=0.99,
                                                     lr_schedule="cosine"),
    # D memorises the 5,000 images over ~220 passes there (its loss 0.07-0.16 at the end): adaptive augmentation
    # (ADA, Karras et al. 2020) with DiffAugment's translation, on the default and on the paper's rate.
    "cond-selfcond-10-lr1.6e-3-ema0.99-ada": dict(conditional=True, self_condition=10, lr=1.6e-3, ema_decay=0.99,
                                                  augment="translation", ada_target=0.6),
    "cond-selfcond-10-ada": dict(conditional=True, self_condition=10, augment="translation", ada_target=0.6),
    # There 2e-4 beat 1.6e-3 on the judge: is slower better still?
    "cond-selfcond-10-lr1e-4": dict(conditional=True, self_condition=10, lr=1e-4),
    # ... or do its steps buy more with 1.5x the channels (2.25x the arithmetic of the middle layers)?
    "cond-selfcond-10-w96": dict(conditional=True, self_condition=10, width=96),
    # The judge prefers the averaged generator (0.70 against the live one's 0.77): does a longer average help more?
    "cond-selfcond-10-ema0.9999": dict(conditional=True, self_condition=10, ema_decay=0.9999),
    # `aigc gan train --conditional` and `aigc gan train` as they are today, every default as the command has it:
    # since 2026-12-06 the guide is fitted within the budget's last 15%, and evaluation samples with it (K = 16);
    # since 2026-12-07 a conditional run fits two guides, 15% each, and samples through both (16 x 4).
    "cond-default": dict(conditional=True, self_condition=None, lr=None, ema_decay=None, guide=True),
    "uncond-default": dict(self_condition=None, lr=None, ema_decay=None, guide=True),
}


def run_name(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


def train_for(name: str, seed: int, budget: float | None, steps: int | None) -> dict:
    """Train one setup for ``budget`` seconds (or ``steps``), save it as a run, and return its speed."""
    out = OUT / run_name(name, seed)
    shutil.rmtree(out, ignore_errors=True)
    cfg = GanTrainConfig(data="mnist5k", out=str(out), device="cpu", seed=seed, time_budget=budget, steps=steps,
                         **{**MEASURED_WITH, **SETUPS[name]})
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    last = [m for m in read_metrics(out / runs.METRICS_FILE) if "d_loss" in m][-1]
    steps, n_critic = last["step"], 5 if cfg.loss == "wgan-gp" else 1
    print(f"{run_name(name, seed)}: {steps} steps in {seconds:.0f} s, last losses d_loss={last['d_loss']:.3g} "
          f"g_loss={last['g_loss']:.3g}", flush=True)
    return {"steps": steps, "seconds": seconds, "epochs": last["epoch"],
            "images_per_s": steps * cfg.batch_size * n_critic / seconds}


def measure(job: tuple[str, int], args: argparse.Namespace) -> dict:
    """Train and judge one (setup, seed) in this process; the first seed's pictures go into docs/img."""
    name, seed = job
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the `aigc` command does
    train_result = train_for(name, seed, None if args.steps else args.budget, args.steps)
    run = OUT / run_name(name, seed)
    result = evaluate_run(GanEvalConfig(run=str(run), ref=str(MNIST_TEST), n=args.n, seed=seed,
                                        json=str(run / "eval.json"), device="cpu"))
    pictures = save_pictures(name, seed, args.section) if seed == args.seeds[0] else {}
    return {"train": train_result, "eval": result, **pictures}


def save_pictures(name: str, seed: int, section: str) -> dict[str, str]:
    """A 10x10 grid as `aigc gan sample --n 100` draws it (the EMA generator, one row per class when conditional,
    guided where the run has a guide), and a copy of the judge's picks, into docs/img (named by section: each
    section keeps its own pictures)."""
    run = OUT / run_name(name, seed)
    grid, judge = IMAGES / f"gan-quality-{section}-{name}.png", IMAGES / f"gan-quality-{section}-{name}-judge.png"
    sample(GanSampleConfig(run=str(run), n=100, out=str(grid), seed=0, device="cpu"))
    shutil.copyfile(run / "judge.png", judge)
    return {"grid": str(grid), "judge": str(judge)}


def time_evaluator() -> dict:
    """Train the default evaluator into an empty cache (timed) and score it on the whole test set."""
    from aigc.metrics.evaluator import load_or_train_evaluator

    train, test = load_images("mnist5k"), load_images(str(MNIST_TEST))
    start = time.perf_counter()
    evaluator = load_or_train_evaluator(train.images, train.labels, train.num_classes, DEFAULT_RECIPE)
    seconds = time.perf_counter() - start
    _, logits = evaluator.features_and_logits(test.images)
    accuracy = (logits.argmax(1) == test.labels).double().mean().item()
    print(f"evaluator {evaluator.key}: trained in {seconds:.0f} s, {accuracy:.4f} on the MNIST test set", flush=True)
    return {"key": evaluator.key, "train_seconds": seconds, "test_accuracy": accuracy,
            "recipe": dataclasses.asdict(DEFAULT_RECIPE)}


def training_data_scores(seeds: list[int], n: int) -> dict:
    """The training images themselves (mnist5k) judged as if a model had drawn them, per seed: what a generator
    that reproduced its 5,000 training digits exactly would score against the held-out half B."""
    from aigc.gan.evaluate import compare, scored_reference, split_reference
    from aigc.metrics.evaluator import load_or_train_evaluator

    train, test = load_images("mnist5k"), load_images(str(MNIST_TEST))
    evaluator = load_or_train_evaluator(train.images, train.labels, train.num_classes, DEFAULT_RECIPE)
    features, logits = evaluator.features_and_logits(train.images)
    scores = {}
    for seed in seeds:
        reference = scored_reference(split_reference(test, seed)[1], evaluator, by_class=True)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))  # compare keeps the first m
        m = min(n, len(train), len(reference["images"]))
        scores[seed], _ = compare(train.images[order], features[order], logits.argmax(1)[order], train.labels[order],
                                  reference, m, seed, JUDGE_STEPS)
        print(f"training data, seed {seed}: FID {scores[seed]['fid']:.2f}, C2ST {scores[seed]['c2st_accuracy']:.3f}, "
              f"recall {scores[seed]['recall']:.3f}", flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "n_compared": m,
            "scores": scores}


def markdown(payload: dict) -> str:
    first = next(iter(payload["results"].values()))
    budget = f"{payload['steps']} steps" if payload["steps"] else f"{payload['budget_s']:.0f} s of training"
    lines = [
        f"Measured {payload['date']} on {payload['machine']['cpu']} ({cpu_kind(payload['machine'])}, "
        f"{payload['machine']['cores']} cores; {payload['jobs']} run(s) at a time with {payload['threads']} torch "
        f"thread(s) each; fp32 matmul peak {payload['matmul_gflops']:.0f} GFLOP/s): {budget} per setup on mnist5k, "
        f"seeds {', '.join(map(str, payload['seeds']))} (mean ± standard deviation over seeds). "
        f"Evaluator `{payload['evaluator']['key']}`: trained in {payload['evaluator']['train_seconds']:.0f} s, "
        f"{100 * payload['evaluator']['test_accuracy']:.2f}% accuracy on the 10,000 MNIST test digits. "
        f"{payload['n']} samples per model ({next(iter(first.values()))['eval']['n_compared']} per set-level metric) against one half of the test set; "
        "the real-data floor is the other half (each seed splits the test set its own way).",
        "",
        "| setup | steps | images/s | FID | FID / floor | KID | C2ST acc. | precision | recall | density | coverage "
        "| classes | KL | label acc. | intra-class FID |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_seed in payload["results"].items():
        lines.append(row(name, list(by_seed.values())))
    lines.append(row("**real floor** (test half A vs B)", list(first.values()), "real_floor"))
    lines += ["", "Samples (EMA generator of the first seed, fixed noise, guided where the run has a guide; "
              "conditional models draw one row per digit), "
              "and the held-out samples the judge found most fake (left block) and most real (right block):", "",
              "| setup | samples | judge: most fake, most real |", "|---|---|---|"]
    for name, by_seed in payload["results"].items():
        pictured = [r for r in by_seed.values() if "grid" in r]
        if pictured:
            grid, judge = (Path(pictured[0][k]).relative_to(DOC.parent).as_posix() for k in ("grid", "judge"))
            lines.append(f"| `{name}` | ![{name}]({grid}) | ![{name} judge]({judge}) |")
    return "\n".join(lines)


def cpu_kind(machine_info: dict) -> str:
    flags = [flag for flag, present in machine_info["cpu_flags"].items() if present]
    return " ".join(flags) if flags else "no AVX2"


def spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def row(name: str, results: list[dict], floor_side: str = "model") -> str:
    """One table row: each metric's mean ± std over the seeds' results (``floor_side`` "real_floor":
    the real-data floors of those seeds instead); FID / floor divides each seed by its own floor."""
    scores = [r["eval"][floor_side] for r in results]

    def column(key: str, digits: int) -> str:
        values = [m[key] for m in scores]
        return "" if None in values else spread(values, digits)

    ratios = [r["eval"][floor_side]["fid"] / r["eval"]["real_floor"]["fid"] for r in results]
    steps, speed = ("", "") if floor_side != "model" else (
        spread([r["train"]["steps"] for r in results], 0), spread([r["train"]["images_per_s"] for r in results], 0))
    return (f"| {name} | {steps} | {speed} | {column('fid', 2)} | {spread(ratios, 1)} | {column('kid', 3)} | "
            f"{column('c2st_accuracy', 3)} | {column('precision', 3)} | {column('recall', 3)} | {column('density', 3)} | "
            f"{column('coverage', 3)} | {column('classes_covered', 0)} | {column('kl', 4)} | "
            f"{column('label_accuracy', 3)} | {column('intra_fid', 2)} |")


def write_doc(section: str, marker: str) -> None:
    """Replace one generated section of the doc (the hand-written text around it stays)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = DOC.read_text() if DOC.exists() else "# GAN sample quality\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    DOC.write_text(pattern.sub(lambda _: f"{start}\n{section}\n{end}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600, help="training seconds per setup (default: 600)")
    parser.add_argument("--steps", type=int, help="train each setup for this many steps instead (ablations at "
                        "equal steps: their quality does not depend on what else the machine runs)")
    parser.add_argument("--n", type=int, default=10000, help="samples per evaluation (default: 10000)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default: 1; busy-waiting threads on a shared 2-core machine "
                             "can run many times slower)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default: 1)")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS)[:5], choices=list(SETUPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--section", default="results", help="the doc section to write: results (default), "
                        "ablation, or any other name (appended to the doc on first use)")
    parser.add_argument("--training-data", action="store_true", help="only score the training images themselves "
                        "against the test halves of --seeds (benchmarks/out/gan_quality_training_data.json)")
    parser.add_argument("--render", action="store_true", help="only rewrite the doc section from the section's "
                        "saved JSON (benchmarks/out/gan_quality_SECTION.json)")
    args = parser.parse_args()
    if args.render:
        write_doc(markdown(json.loads((OUT_DIR / f"gan_quality_{args.section}.json").read_text())), args.section)
        return
    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"the benchmark needs the MNIST test set at {MNIST_TEST}")
    torch.set_num_threads(args.threads)
    if args.training_data:
        write_json("gan_quality_training_data", training_data_scores(args.seeds, args.n))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(OUT / "cache")  # an empty cache: the evaluator's training is timed
    shutil.rmtree(OUT / "cache", ignore_errors=True)

    payload = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               "threads": args.threads, "jobs": args.jobs, "matmul_gflops": matmul_peak_gflops(torch.float32),
               "budget_s": None if args.steps else args.budget, "steps": args.steps, "n": args.n, "seeds": args.seeds,
               "evaluator": time_evaluator(), "results": {name: {} for name in args.setups}}
    jobs = [(name, seed) for name in args.setups for seed in args.seeds]
    for (name, seed), result in each_in_workers(partial(measure, args=args), jobs, args.jobs):
        payload["results"][name][seed] = result
        write_json(f"gan_quality_{args.section}", payload)  # after every run, so a stopped run keeps what it measured
    for name in args.setups:
        payload["results"][name] = dict(sorted(payload["results"][name].items()))
    write_json(f"gan_quality_{args.section}", payload)
    write_doc(markdown(payload), args.section)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
