"""GAN sample quality at a fixed wall-clock budget: five classic setups judged by ``aigc gan eval``.

Trains, on mnist5k and for ``--budget`` seconds each, ``mlp``+``bce``, ``dcgan``+``bce``,
``dcgan``+``hinge``+spectral norm, ``dcgan``+``wgan-gp`` and the conditional ``dcgan``, by
``aigc gan train --time-budget`` (the budget includes the sample grids and checkpoints). Each run is then evaluated against the MNIST test set (``../shared/data/mnist``) with
``aigc.gan.evaluate.evaluate_run``: FID on evaluator features, C2ST, precision/recall, mode
coverage, label accuracy, each beside its real-data floor. It also times the evaluator's
training from an empty cache and measures its accuracy on the whole test set, and the
machine's fp32 matmul peak, so images/second can be read as a share of what the CPU can do.

Writes ``benchmarks/out/gan_quality.json``, the runs under ``benchmarks/out/gan_quality/``, a
sample grid per setup under ``docs/img/`` and the results section of
``docs/benchmarks-gan-quality.md``. Run it under the shared lock, alone on the machine:
``flock /tmp/aigc-bench.lock python benchmarks/gan_quality.py``.
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

from _common import each_in_workers, machine, matmul_peak_gflops, write_json
from aigc import runs
from aigc.data.images import load_images, save_grid
from aigc.gan.config import GanEvalConfig, GanTrainConfig
from aigc.gan.evaluate import DEFAULT_RECIPE, evaluate_run
from aigc.gan.loading import load_generator
from aigc.gan.generation import generate_images, sample_labels
from aigc.gan.train import train
from aigc.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist"
OUT = ROOT / "benchmarks" / "out" / "gan_quality"
DOC = ROOT / "docs" / "benchmarks-gan-quality.md"
IMAGES = ROOT / "docs" / "img"

SETUPS = {  # name -> GanTrainConfig overrides
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
    "uncond-translation": dict(augment="translation"),
    "uncond-diffaug": dict(augment="translation,cutout"),
    "uncond-r1": dict(r1_gamma=1.0),
    "uncond-mbstd": dict(minibatch_std=True),
    "uncond-mbstd-translation": dict(minibatch_std=True, augment="translation"),
}
SCORES = ("fid", "c2st_accuracy", "precision", "recall", "classes_covered", "kl", "label_accuracy")


def run_name(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


def train_for(name: str, seed: int, budget: float | None, steps: int | None) -> dict:
    """Train one setup for ``budget`` seconds (or ``steps``), save it as a run, and return its speed."""
    out = OUT / run_name(name, seed)
    shutil.rmtree(out, ignore_errors=True)
    cfg = GanTrainConfig(data="mnist5k", out=str(out), device="cpu", seed=seed, time_budget=budget, steps=steps,
                         **SETUPS[name])
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
    train_result = train_for(name, seed, None if args.steps else args.budget, args.steps)
    run = OUT / run_name(name, seed)
    result = evaluate_run(GanEvalConfig(run=str(run), ref=str(MNIST_TEST), n=args.n, seed=seed,
                                        json=str(run / "eval.json"), device="cpu"))
    pictures = save_pictures(name, seed) if seed == args.seeds[0] else {}
    return {"train": train_result, "eval": result, **pictures}


def save_pictures(name: str, seed: int) -> dict[str, str]:
    """A 10x10 grid from the run's EMA generator (one row per class when conditional), and a copy
    of the judge's picks, into docs/img."""
    run = OUT / run_name(name, seed)
    generator, model_cfg, _ = load_generator(run)
    labels = sample_labels(model_cfg, 100, None)
    grid, judge = IMAGES / f"gan-quality-{name}.png", IMAGES / f"gan-quality-{name}-judge.png"
    save_grid(generate_images(generator, model_cfg, 100, labels, seed=0), grid, nrow=10)
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


def markdown(payload: dict) -> str:
    first = next(iter(payload["results"].values()))
    floor = next(iter(first.values()))["eval"]["real_floor"]
    budget = f"{payload['steps']} steps" if payload["steps"] else f"{payload['budget_s']:.0f} s of training"
    lines = [
        f"Measured {payload['date']} on {payload['machine']['cpu']} ({cpu_kind(payload['machine'])}, "
        f"{payload['machine']['cores']} cores; {payload['jobs']} run(s) at a time with {payload['threads']} torch "
        f"thread(s) each; fp32 matmul peak {payload['matmul_gflops']:.0f} GFLOP/s): {budget} per setup on mnist5k, "
        f"seeds {', '.join(map(str, payload['seeds']))} (mean ± standard deviation over seeds). "
        f"Evaluator `{payload['evaluator']['key']}`: trained in {payload['evaluator']['train_seconds']:.0f} s, "
        f"{100 * payload['evaluator']['test_accuracy']:.2f}% accuracy on the 10,000 MNIST test digits. "
        f"{payload['n']} samples per model ({next(iter(first.values()))['eval']['n_compared']} per set-level metric) against one half of the test set; "
        "the real-data floor is the other half (seed 0's split).",
        "",
        "| setup | steps | images/s | FID | FID / floor | C2ST acc. | precision | recall | classes | KL | label acc. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_seed in payload["results"].items():
        lines.append(row(name, list(by_seed.values()), floor))
    lines.append(floor_row(floor))
    lines += ["", "Samples (EMA generator of the first seed, fixed noise; conditional models draw one row per digit), "
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


def row(name: str, results: list[dict], floor: dict) -> str:
    models = [r["eval"]["model"] for r in results]

    def column(key: str, digits: int) -> str:
        values = [m[key] for m in models]
        return "" if None in values else spread(values, digits)

    ratios = [m["fid"] / floor["fid"] for m in models]
    steps = spread([r["train"]["steps"] for r in results], 0)
    speed = spread([r["train"]["images_per_s"] for r in results], 0)
    return (f"| {name} | {steps} | {speed} | {column('fid', 2)} | {spread(ratios, 1)} | {column('c2st_accuracy', 3)} | "
            f"{column('precision', 3)} | {column('recall', 3)} | {column('classes_covered', 0)} | {column('kl', 4)} | "
            f"{column('label_accuracy', 3)} |")


def floor_row(floor: dict) -> str:
    label = "" if floor["label_accuracy"] is None else f"{floor['label_accuracy']:.3f}"
    return (f"| **real floor** (test half A vs B) |  |  | {floor['fid']:.2f} | 1.0 | {floor['c2st_accuracy']:.3f} | "
            f"{floor['precision']:.3f} | {floor['recall']:.3f} | {floor['classes_covered']} | {floor['kl']:.4f} | "
            f"{label} |")


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
    args = parser.parse_args()
    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"the benchmark needs the MNIST test set at {MNIST_TEST}")
    torch.set_num_threads(args.threads)
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
