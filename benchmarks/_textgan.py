"""Shared by the text-GAN benchmarks: the runs per seed (MLE, early-stopped on validation NLL;
from it: MLE + adversarial, the constant-reward control, and the residual discriminator that
guides sampling), the guided samplers' points, curves over temperatures, the plot."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch
from _common import OUT_DIR, each_in_workers, machine

from aigc import runs
from aigc.textgan import guided
from aigc.textgan.config import TextGanTrainConfig
from aigc.textgan.loading import load_discriminator, load_textgan
from aigc.textgan.train import train


VARIANTS = ("mle", "adversarial", "constant")  # trained generators, each scored as it is
RUNS = (*VARIANTS, "residual")  # what --runs may name; residual: the discriminator of the guided points
LABELS = {"mle": "MLE", "adversarial": "MLE + adversarial (SeqGAN rewards)",
          "constant": "MLE + constant-reward control"}
SIR_SUBSETS = 1000  # Monte-Carlo sums behind each sampler density (guided.sir_log_prob)


def label(variant: str) -> str:
    if variant.startswith("perfect-"):
        return label(variant.removeprefix("perfect-")).replace("discriminator", "true log-ratio")
    if variant.startswith("guided-"):
        return f"MLE + discriminator, importance resampling from K={variant.split('-')[1]}"
    if variant.startswith("rejection-"):
        return f"MLE + discriminator, rejection keeping 1/{variant.split('-')[1]}"
    return LABELS[variant]


def benchmark_arguments(description: str, name: str) -> argparse.ArgumentParser:
    """The settings both benchmarks take, at their full values; each script adds its scoring ones.
    Results go to ``benchmarks/out/<name>`` and the plot to ``docs/img/<name with dashes>.png``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny setting that checks the script end to end")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--temperatures", default="0.7,0.8,0.9,1.0,1.1,1.2,1.3")
    p.add_argument("--max-iters", type=int, default=3000, help="MLE steps")
    p.add_argument("--adv-rounds", type=int, default=100)
    p.add_argument("--d-pretrain-steps", type=int, default=300)
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--mle-steps", type=int, default=0, help="MLE steps interleaved in each round")
    p.add_argument("--g-lr", type=float, default=3e-4, help="generator learning rate in the adversarial rounds")
    p.add_argument("--d-lr", type=float, default=1e-3, help="discriminator learning rate")
    p.add_argument("--runs", default=",".join(RUNS), type=lambda text: text.split(","),
                   help="which runs to train and score per seed (mle always): mle, adversarial, constant, residual")
    p.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=True,
                   help="end MLE at its lowest validation NLL (checked every --mle-eval-every steps)")
    p.add_argument("--mle-eval-every", type=int, default=100)
    p.add_argument("--residual-steps", type=int, default=1000, help="discriminator steps of the residual run")
    p.add_argument("--residual-disc", default="cnn", choices=("cnn", "transformer", "likelihood"),
                   help="the residual run's discriminator (aigc textgan train --disc)")
    p.add_argument("--residual-real", default="train", choices=("train", "held-out"),
                   help="the residual discriminator's real sequences (aigc textgan train --d-real)")
    p.add_argument("--guided-k", default=[4, 16, 64], type=lambda text: [int(k) for k in text.split(",")],
                   help="candidates per sample of the importance-resampling points")
    p.add_argument("--accept-rate", type=float, default=1 / 16, help="rejection point's acceptance rate (0: none)")
    p.add_argument("--guided-samples", type=int, default=2000, help="samples per guided point")
    p.add_argument("--guided-temperatures", default="0.8,0.9,1.0,1.1,1.2",
                   help="temperatures of the guided points' candidates")
    p.add_argument("--threads", type=int, default=1, help="torch threads (small models: more only busy-wait)")
    p.add_argument("--jobs", type=int, default=1, help="seeds measured at once, each in its own process with "
                   "--threads threads (2 or 3 on a 2-core machine: see README)")
    p.add_argument("--out", type=Path, default=OUT_DIR / name)
    p.add_argument("--plot", type=Path, default=OUT_DIR / f"{name}.png",
                   help="the curves' picture (give docs/img/... for a run that goes into the docs: by default "
                   "a --quick run must not overwrite a committed plot)")
    return p


def use_quick_setting(args: argparse.Namespace, **setting) -> None:
    """--quick: the given tiny setting, with results and plot beside (not over) the real ones."""
    for name, value in setting.items():
        setattr(args, name, value)
    args.out = args.out.with_name(args.out.name + "_quick")
    args.plot = args.out.with_name(args.out.name + ".png")


def train_settings(args: argparse.Namespace) -> dict:
    """The ``TextGanTrainConfig`` fields that both benchmarks set from their arguments."""
    return dict(max_iters=args.max_iters, adv_rounds=args.adv_rounds, d_pretrain_steps=args.d_pretrain_steps,
                rollouts=args.rollouts, mle_steps=args.mle_steps, g_lr=args.g_lr, d_lr=args.d_lr, device="cpu",
                log_every=50, eval_every=args.mle_eval_every if args.early_stop else 500, save_every=500,
                early_stop=args.early_stop, tracker="none")


def run_benchmark(args: argparse.Namespace, measure: Callable[[argparse.Namespace, int], tuple[dict, dict]],
                  metrics: tuple[str, ...], train_config: TextGanTrainConfig,
                  report: Callable[[dict, list[int]], dict]) -> None:
    """Measure every seed with ``measure(args, seed)``; after each one, summarise the seeds done
    over ``metrics``, let ``report(summary, seeds_done)`` print and plot them and return its own
    fields, and write ``<out>.json``: a stopped run keeps what it measured."""
    set_threads(args.threads)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    for results, train_seconds in measure_seeds(partial(measure, args), seeds, args.temperatures.split(","),
                                                args.jobs):
        summary = summarise(results, metrics)
        done = list(train_seconds)
        fields = report(summary, done)
        payload = {"machine": machine(), "settings": {**vars(args), "out": str(args.out), "plot": str(args.plot),
                                                       "train_config": train_config.__dict__},
                   "seeds_done": done, **fields, "results": results, "summary": summary,
                   "train_seconds": train_seconds, "wall_seconds": round(time.perf_counter() - started, 1)}
        path = args.out.with_suffix(".json")
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path} and {args.plot}; wall {payload['wall_seconds']} s", flush=True)


def plot_title(dataset: str, args: argparse.Namespace, seeds_done: list[int]) -> str:
    temperatures = args.temperatures.split(",")
    return (f"{dataset}, seeds {', '.join(map(str, seeds_done))}, temperatures {temperatures[0]}-{temperatures[-1]}"
            + (" (--quick)" if args.quick else ""))


def residual_settings(args: argparse.Namespace) -> dict:
    """The residual run's own ``TextGanTrainConfig`` fields."""
    return dict(d_pretrain_steps=args.residual_steps, disc=args.residual_disc, d_real=args.residual_real)


def train_variants(base_config: TextGanTrainConfig, out: Path, seed: int, names: list[str],
                   residual: dict) -> dict[str, float]:
    """Train the runs ``names`` (and MLE) of one seed under ``out/seed<seed>``, the residual one with
    the ``residual`` settings; returns wall seconds of each."""
    seconds = {}
    mle_dir = out / f"seed{seed}" / "mle"
    configs = {
        "mle": replace(base_config, seed=seed, out=str(mle_dir), d_pretrain_steps=0, adv_rounds=0),
        "adversarial": replace(base_config, seed=seed, out=str(mle_dir.with_name("adversarial")), base=str(mle_dir)),
        "constant": replace(base_config, seed=seed, out=str(mle_dir.with_name("constant")), base=str(mle_dir),
                            reward="constant"),
        "residual": replace(base_config, seed=seed, out=str(mle_dir.with_name("residual")), base=str(mle_dir),
                            mode="residual", eval_every=50, **residual),  # eval_every: the early stop's grain
    }
    for variant in [run for run in RUNS if run == "mle" or run in names]:
        if (Path(configs[variant].out) / runs.POINTER_FILE).is_file():
            print(f"seed {seed} {variant}: reusing {configs[variant].out}", flush=True)
            continue
        started = time.perf_counter()
        train(configs[variant])
        seconds[variant] = round(time.perf_counter() - started, 1)
        print(f"seed {seed} {variant}: trained in {seconds[variant]} s", flush=True)
    return seconds


def measure_seeds(measure: Callable[[int], tuple[dict, dict]], seeds: list[int], temperatures: list[str],
                  jobs: int) -> Iterator[tuple[dict, dict]]:
    """Run ``measure(seed)`` (training seconds, results[variant][temperature]) for every seed,
    ``jobs`` seeds at a time in worker processes, and after each one finishes yield all measured
    so far: results[variant][temperature][seed] and training seconds by seed, in seed order.
    Seeds are independent runs, so on a 2-core machine two one-thread workers halve the wall
    time where one process with two threads would mostly busy-wait."""
    results: dict[str, dict] = {}
    train_seconds = {}
    for seed, (seconds, by_variant) in each_in_workers(measure, seeds, jobs):
        train_seconds[seed] = seconds
        for variant, by_temp in by_variant.items():
            for temp, metrics in by_temp.items():
                results.setdefault(variant, {}).setdefault(temp, {})[seed] = metrics
        yield results, dict(sorted(train_seconds.items()))


def load_variant(out: Path, seed: int, variant: str):
    loaded = load_textgan(out / f"seed{seed}" / variant)
    return loaded.model, loaded.codec


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: dict, metrics: tuple[str, ...]) -> dict:
    """results[variant][temperature][seed][metric] -> mean and std over seeds per variant/temperature/metric."""
    out = {}
    for variant, by_temp in results.items():
        out[variant] = {}
        for temp, by_seed in by_temp.items():
            out[variant][temp] = {m: mean_std([by_seed[s][m] for s in by_seed]) for m in metrics
                                  if all(m in by_seed[s] for s in by_seed)}  # a point may lack one
    return out


def plot_curves(summary: dict, x: str, y: str, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """One line per variant through its temperatures (labelled), seed-to-seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for variant, by_temp in summary.items():
        temps = sorted(by_temp, key=float)
        xs = [by_temp[t][x][0] for t in temps]
        ys = [by_temp[t][y][0] for t in temps]
        ax.errorbar(xs, ys, xerr=[by_temp[t][x][1] for t in temps], yerr=[by_temp[t][y][1] for t in temps],
                    marker="o", markersize=3, linewidth=1, capsize=2, label=label(variant))
        for t, xv, yv in zip(temps, xs, ys):
            ax.annotate(t, (xv, yv), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def best_on_curve(curve: list[tuple[float, float]], x: float, steps: int = 100) -> float | None:
    """The lowest y that the piecewise-linear curve (points in temperature order) reaches at
    an x no higher than ``x``; None when it never gets that low in x. With both axes "lower is
    better", a point (x, y) lies above (beats) the curve when y is lower than this."""
    points = [curve[0]] + [(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps)
                           for (x0, y0), (x1, y1) in zip(curve, curve[1:]) for k in range(1, steps + 1)]
    reachable = [py for px, py in points if px <= x]
    return min(reachable) if reachable else None


def compare_with_curve(summary: dict, variant: str, x: str, y: str, sign: float) -> dict:
    """For each temperature of ``variant``: its point, the best ``y`` the MLE curve reaches at no
    worse ``x`` (where no MLE temperature gets its ``x`` that low: the ``y`` of the curve's
    lowest-``x`` point), and whether the point beats that by more than its seed-to-seed spread.
    ``sign`` is 1 when lower ``y`` is better and -1 when higher is (x: lower is better)."""
    temps = sorted(summary["mle"], key=float)
    curve = [(summary["mle"][t][x][0], sign * summary["mle"][t][y][0]) for t in temps]
    out = {}
    for temp, s in summary[variant].items():
        best = best_on_curve(curve, s[x][0])
        beyond = best is None  # no MLE temperature reaches its x: compare with the curve's best-x point
        if beyond:
            best = min(curve)[1]
        out[temp] = {x: s[x][0], y: s[y][0], "mle_curve_best": sign * best, "beyond_the_curve": beyond,
                     "better": sign * s[y][0] < best - s[y][1]}
    return out


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def load_residual(out: Path, seed: int):
    """The residual run of a seed: its (frozen MLE) generator, discriminator and vocabulary."""
    loaded = load_textgan(out / f"seed{seed}" / "residual")
    return loaded.model, load_discriminator(loaded), loaded.codec


@torch.no_grad()
def guided_points(model, disc, codec, temperature: float, args: argparse.Namespace, generator: torch.Generator,
                  test: torch.Tensor | None = None, test_log_q: torch.Tensor | None = None) -> dict[str, dict]:
    """The guided samplers at one temperature: per point, its samples and what they cost, and
    with ``test`` sequences (N, L) and their log q_T (N,), the sampler's NLL-test (per token; the
    density of what it outputs) and that of the ideal residual model (K -> infinity).

    One pool of fresh candidates serves every point: K = k uses the first n*k of them in groups
    of k (each point's samples are exact independent draws of its sampler), the rejection point
    keeps its first n; the whole pool stands in for fresh samples of q in the densities."""
    n, ks = args.guided_samples, args.guided_k
    needed = max([n * k for k in ks] + ([math.ceil(2 * n / args.accept_rate)] if args.accept_rate else []))
    pool = guided.draw_candidates(model, disc, needed, codec.bos, temperature, generator, codec.eos)
    test_scores = guided.scores(disc, test) if test is not None else None
    points = {}
    for k in ks:
        drawn = guided.resample(guided.Candidates(pool.tokens[:n * k], pool.scores[:n * k]), k, generator)
        log_p = (None if test is None else
                 guided.sir_log_prob(test_log_q, test_scores, pool.scores, k, SIR_SUBSETS, generator))
        points[f"guided-{k}"] = (drawn.tokens, {"generated_per_sample": float(k)}, log_p)
    if args.accept_rate:
        threshold = guided.calibrate_threshold(pool.scores, args.accept_rate)
        kept = pool.tokens[guided.rejection_keep(pool.scores, threshold, generator)]
        log_p = None if test is None else guided.rejection_log_prob(test_log_q, test_scores, threshold,
                                                                     args.accept_rate)
        points[f"rejection-{round(1 / args.accept_rate)}"] = (
            kept[:n], {"generated_per_sample": len(pool.tokens) / len(kept), "threshold": threshold}, log_p)
    ideal = {} if test is None else ideal_nll_test(pool.scores, test, test_log_q, test_scores)
    out = {}
    for name, (tokens, extra, log_p) in points.items():
        out[name] = {"tokens": tokens, **extra, **ideal}
        if test is not None:
            out[name]["nll_test"] = -log_p.sum().item() / test.numel()
    return out


def ideal_nll_test(pool_scores: torch.Tensor, test: torch.Tensor, test_log_q: torch.Tensor,
                   test_scores: torch.Tensor) -> dict:
    """Per-token NLL-test of the ideal residual model (K -> infinity), with the interval that
    log Z's brings, from the pool's logits (M,) and the test sequences' log q (N,) and logits (N,)."""
    log_z = guided.LogPartition.estimate(pool_scores)
    total = -guided.ebm_log_prob(test_log_q, test_scores, log_z).sum().item()
    return {"ebm_nll_test": total / test.numel(),
            "ebm_nll_test_interval": [(total + len(test) * (bound - log_z.value)) / test.numel()
                                      for bound in (log_z.low, log_z.high)]}
