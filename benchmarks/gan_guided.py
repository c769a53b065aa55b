"""Guided sampling against plain sampling, on trained GAN runs (``aigc gan guide``, ``--guided K``).

For each run: fit its guide (a classifier of the run's training images against its samples,
early-stopped on a held-out tenth; timed), then evaluate it as ``aigc gan eval`` does against the
MNIST test set, plainly (K = 1: the reference, measured in the same invocation) and guided from K
candidates per image. Runs named ``SETUP-seedN`` (as ``gan_quality.py`` writes them) are grouped
by setup, and each is evaluated with ``--seed N``.

    flock /tmp/aigc-bench.lock python benchmarks/gan_guided.py --section NAME \\
        --runs benchmarks/out/gan_quality/cond-selfcond-10-seed{0,1,2} --k 1 16 [--temperature 1.2]

Writes ``benchmarks/out/gan_guided_NAME.json`` and the section's table into
docs/benchmarks-gan-quality.md (between ``<!-- guided-NAME:start/end -->``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import torch

from _common import OUT_DIR, machine, machine_line, matmul_peak_gflops, write_json
from gan_quality import MNIST_TEST, OUT as QUALITY_OUT, spread, write_doc
from aigc import runs
from aigc.gan.config import GanEvalConfig, GanGuideConfig
from aigc.gan.evaluate import evaluate_run
from aigc.gan.guide_command import guide_command

QUALITY_CACHE = QUALITY_OUT / "cache"
METRICS = (("c2st_accuracy", 3), ("fid", 2), ("precision", 3), ("recall", 3), ("coverage", 3), ("kl", 4),
           ("label_accuracy", 3))


def setup_and_seed(run: Path) -> tuple[str, int]:
    match = re.fullmatch(r"(.+)-seed(\d+)", run.name)
    if not match:
        raise SystemExit(f"{run}: expected a run named SETUP-seedN")
    return match.group(1), int(match.group(2))


def measure(run: Path, ks: list[int], temperature: float, guide_steps: int, section: str) -> dict:
    setup, seed = setup_and_seed(run)
    started = time.perf_counter()
    _, metadata = runs.load_weights(guide_command(GanGuideConfig(run=str(run), steps=guide_steps,
                                                                 temperature=temperature)))
    guide_info = json.loads(metadata["guide"])
    guide_seconds = time.perf_counter() - started
    evals = {}
    for k in ks:
        json_path = OUT_DIR / f"gan_guided_{section}" / f"{run.name}-k{k}-t{temperature:g}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = evaluate_run(GanEvalConfig(run=str(run), ref=str(MNIST_TEST), n=10000, seed=seed, guided=k,
                                            temperature=temperature, json=str(json_path)))
        evals[k] = {"model": result["model"], "real_floor": result["real_floor"],
                    "seconds": round(time.perf_counter() - started, 1)}
    return {"run": str(run), "setup": setup, "seed": seed, "guide": {**guide_info, "wall_seconds": guide_seconds},
            "evals": evals}


def cell(values: list, digits: int) -> str:
    """mean ± std, or empty where a metric does not apply (label accuracy of an unconditional run)."""
    return "" if None in values else spread(values, digits)


def markdown(payload: dict) -> str:
    ks, temperature = payload["k"], payload["temperature"]
    lines = [f"Measured {payload['date']} on {machine_line(payload['machine'])}; fp32 matmul peak "
             f"{payload['fp32_gflops']:.0f} GFLOP/s. Noise temperature {temperature:g}; 10,000 samples per evaluation "
             "against the MNIST test set; guide fitted with `aigc gan guide` defaults"
             f" ({payload['guide_steps']} steps). Mean ± standard deviation over the seeds.", "",
             "| setup | seeds | K (generator passes per image) | C2ST | FID | precision | recall | coverage | "
             "class KL | label accuracy | guide: held-out accuracy | guide: fit seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    setups = sorted({r["setup"] for r in payload["results"]})
    for setup in setups:
        results = [r for r in payload["results"] if r["setup"] == setup]
        seeds = ", ".join(str(r["seed"]) for r in results)
        for k in ks:
            cells = [cell([r["evals"][str(k)]["model"][key] for r in results], digits) for key, digits in METRICS]
            guide_cells = ("", "") if k == 1 else (
                spread([r["guide"]["held_out_accuracy"] for r in results], 3),
                spread([r["guide"]["wall_seconds"] for r in results], 0))
            lines.append(f"| {setup} | {seeds} | {k} | " + " | ".join(cells) + " | " + " | ".join(guide_cells) + " |")
    floors = [r["evals"][str(ks[0])]["real_floor"] for r in payload["results"]]
    floor_cells = [cell([f[key] for f in floors], digits) for key, digits in METRICS]
    lines.append("| **real floor** (half the test set against the other half) | | | " + " | ".join(floor_cells)
                 + " | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, help="GAN runs named SETUP-seedN")
    parser.add_argument("--k", nargs="+", type=int, default=[1, 16], help="candidates per image (1 = plain)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--guide-steps", type=int, default=GanGuideConfig.steps)
    parser.add_argument("--section", required=True, help="names the JSON and the doc section")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="only rewrite the doc section from the section's JSON")
    args = parser.parse_args()
    if args.render:
        write_doc(markdown(json.loads((OUT_DIR / f"gan_guided_{args.section}.json").read_text())),
                  f"guided-{args.section}")
        return
    if not args.runs:
        parser.error("--runs is required (unless --render)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XDG_CACHE_HOME", str(QUALITY_CACHE))  # the evaluator gan_quality.py's runs were scored with
    payload = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "k": args.k,
               "temperature": args.temperature, "guide_steps": args.guide_steps,
               "fp32_gflops": matmul_peak_gflops(torch.float32), "machine": machine(), "results": []}
    for run in args.runs:
        payload["results"].append(measure(run, args.k, args.temperature, args.guide_steps, args.section))
        payload["results"][-1]["evals"] = {str(k): v for k, v in payload["results"][-1]["evals"].items()}
        path = write_json(f"gan_guided_{args.section}", payload)  # after every run: a crash keeps the others
    write_doc(markdown(payload), f"guided-{args.section}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
