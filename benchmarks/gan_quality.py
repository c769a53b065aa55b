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
import time
from pathlib import Path

import torch

from _common import OUT_DIR, machine, matmul_peak_gflops, write_json
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
START, END = "<!-- results:start -->", "<!-- results:end -->"

SETUPS = {  # name -> GanTrainConfig overrides
    "mlp-bce": dict(model="mlp", loss="bce"),
    "dcgan-bce": dict(model="dcgan", loss="bce"),
    "dcgan-hinge-sn": dict(model="dcgan", loss="hinge", spectral_norm=True),
    "dcgan-wgan-gp": dict(model="dcgan", loss="wgan-gp"),
    "dcgan-conditional": dict(model="dcgan", loss="bce", conditional=True),
}


def train_for(name: str, budget: float, seed: int) -> dict:
    """Train one setup for ``budget`` seconds, save it as a run, and return its speed."""
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = GanTrainConfig(data="mnist5k", out=str(out), device="cpu", seed=seed, time_budget=budget, **SETUPS[name])
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    last = [m for m in read_metrics(out / runs.METRICS_FILE) if "d_loss" in m][-1]
    steps, n_critic = last["step"], 5 if cfg.loss == "wgan-gp" else 1
    print(f"{name}: {steps} steps in {seconds:.0f} s, last losses d_loss={last['d_loss']:.3g} "
          f"g_loss={last['g_loss']:.3g}", flush=True)
    return {"steps": steps, "seconds": seconds, "epochs": last["epoch"],
            "images_per_s": steps * cfg.batch_size * n_critic / seconds}


def save_pictures(name: str) -> dict[str, str]:
    """A 10x10 grid from the run's EMA generator (one row per class when conditional), and a copy
    of the judge's picks, into docs/img."""
    generator, model_cfg, _ = load_generator(OUT / name)
    labels = sample_labels(model_cfg, 100, None)
    grid, judge = IMAGES / f"gan-quality-{name}.png", IMAGES / f"gan-quality-{name}-judge.png"
    save_grid(generate_images(generator, model_cfg, 100, labels, seed=0), grid, nrow=10)
    shutil.copyfile(OUT / name / "judge.png", judge)
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
    floor = next(iter(payload["results"].values()))["eval"]["real_floor"]
    lines = [
        f"Trained {payload['date']}" + (f", evaluated {payload['evaluated']}" if "evaluated" in payload else "")
        + f" on {payload['machine']['cpu']} ({payload['machine']['cores']} cores, "
        f"{payload['threads']} torch thread(s); fp32 matmul peak {payload['matmul_gflops']:.0f} GFLOP/s), "
        f"{payload['budget_s']:.0f} s of training per setup on mnist5k, seed {payload['seed']}. "
        f"Evaluator `{payload['evaluator']['key']}`: trained in {payload['evaluator']['train_seconds']:.0f} s, "
        f"{100 * payload['evaluator']['test_accuracy']:.2f}% accuracy on the 10,000 MNIST test digits. "
        f"{payload['n']} samples per model ({floor_n(payload)} per set-level metric) against one half of the "
        "test set; the real-data floor is the other half.",
        "",
        "| setup | steps | images/s | FID | FID / floor | C2ST acc. [95%] | precision | recall | classes | KL | label acc. |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in payload["results"].items():
        model, train = result["eval"]["model"], result["train"]
        lines.append(row(name, model, floor, f"{train['steps']}", f"{train['images_per_s']:.0f}"))
    lines.append(row("**real floor** (test half A vs B)", floor, floor, "", ""))
    lines += ["", "Samples (EMA generator, fixed noise; the conditional model draws one row per digit), and the "
              "held-out samples the judge found most fake (left block) and most real (right block):", "",
              "| setup | samples | judge: most fake, most real |", "|---|---|---|"]
    for name, result in payload["results"].items():
        grid, judge = (Path(result[k]).relative_to(DOC.parent).as_posix() for k in ("grid", "judge"))
        lines.append(f"| `{name}` | ![{name}]({grid}) | ![{name} judge]({judge}) |")
    return "\n".join(lines)


def floor_n(payload: dict) -> int:
    return next(iter(payload["results"].values()))["eval"]["n_compared"]


def row(name: str, m: dict, floor: dict, steps: str, speed: str) -> str:
    label = "" if m["label_accuracy"] is None else f"{m['label_accuracy']:.3f}"
    ratio = m["fid"] / floor["fid"] if floor["fid"] > 0 else float("inf")
    return (f"| {name} | {steps} | {speed} | {m['fid']:.2f} | {ratio:.1f} | {m['c2st_accuracy']:.3f} "
            f"[{m['c2st_low']:.3f}, {m['c2st_high']:.3f}] | {m['precision']:.3f} | {m['recall']:.3f} | "
            f"{m['classes_covered']} | {m['kl']:.4f} | {label} |")


def write_doc(section: str) -> None:
    """Replace the results section of the doc (the hand-written text around it stays)."""
    text = DOC.read_text() if DOC.exists() else f"# GAN sample quality\n\n{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    DOC.write_text(pattern.sub(lambda _: f"{START}\n{section}\n{END}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=300, help="training seconds per setup (default: 300)")
    parser.add_argument("--n", type=int, default=10000, help="samples per evaluation (default: 10000)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1; busy-waiting threads on a shared 2-core machine can "
                             "run many times slower)")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-only", action="store_true",
                        help="re-evaluate the runs a previous benchmark trained (its training numbers are kept)")
    args = parser.parse_args()
    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"the benchmark needs the MNIST test set at {MNIST_TEST}")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(OUT / "cache")  # an empty cache: the evaluator's training is timed
    shutil.rmtree(OUT / "cache", ignore_errors=True)

    payload = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               "threads": args.threads, "matmul_gflops": matmul_peak_gflops(torch.float32),
               "budget_s": args.budget, "n": args.n, "seed": args.seed, "evaluator": time_evaluator(), "results": {}}
    trained = json.loads((OUT_DIR / "gan_quality.json").read_text()) if args.eval_only else None
    if trained is not None:  # the training half of the numbers comes from the run that trained them
        payload.update({k: trained[k] for k in ("date", "threads", "matmul_gflops", "budget_s", "seed")})
        payload["evaluated"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in args.setups:
        train = trained["results"][name]["train"] if trained else train_for(name, args.budget, args.seed)
        result = evaluate_run(GanEvalConfig(run=str(OUT / name), ref=str(MNIST_TEST), n=args.n, seed=args.seed,
                                            json=str(OUT / name / "eval.json"), device="cpu"))
        payload["results"][name] = {"train": train, "eval": result, **save_pictures(name)}
        write_json("gan_quality", payload)  # after every setup, so a stopped run keeps what it measured
    write_doc(markdown(payload))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
