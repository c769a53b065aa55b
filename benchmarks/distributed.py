"""One process x 2 threads against 2 processes x 1 thread (torchrun, gloo) on this machine.

For the GPT (tokens/s) and the DCGAN (images/s), trains the same global batch both ways with
the ``aigc`` command -- 1 process with batch 2B, 2 processes with batch B each -- and reports
the throughput the runs logged (the mean of their metrics lines after the first, which holds
the warm-up), the parity of the two runs (largest relative loss difference, largest weight
difference) and, apart, the time of one gloo all-reduce of the model's gradients per step.

Run: ``PYTHONPATH=src python benchmarks/distributed.py`` (``--quick`` for a few steps: a wiring check, not a
measurement). Writes benchmarks/out/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from _common import write_json
from aigc.runs import WEIGHTS_FILE, checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare" / "input.txt"


def command(steps: int, quick: bool) -> dict[str, list[str]]:
    gpt = ["gpt", "train", "--data", str(SHAKESPEARE), "--n-layer", "4", "--n-head", "4", "--n-embd", "128",
           "--block-size", "64", "--max-iters", str(steps), "--eval-interval", str(steps), "--eval-iters", "1",
           "--log-every", str(max(1, steps // 5)), "--no-amp", "--device", "cpu"]
    gan = ["gan", "train", "--model", "dcgan", "--width", "16" if quick else "64", "--steps", str(steps),
           "--log-every", str(max(1, steps // 5)), "--sample-every", str(steps), "--save-every", str(steps),
           "--no-amp", "--no-guide", "--device", "cpu"]  # the training loop alone is measured
    return {"gpt": gpt, "gan": gan}


def run(args: list[str], processes: int, threads: int, batch: int, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
                if processes > 1 else [sys.executable])
    started = time.perf_counter()
    subprocess.run([*launcher, "-m", "aigc", *args, "--batch-size", str(batch), "--out", str(out)], env=env,
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def throughput(run_dir: Path, name: str) -> float:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [line[name] for line in lines if name in line][1:]
    return statistics.fmean(values) if values else float("nan")


def parity(one: Path, two: Path, loss: str) -> dict:
    def losses(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [line[loss] for line in lines if loss in line]

    a, b = (load_file(checkpoint_dir(run) / WEIGHTS_FILE) for run in (one, two))
    return {"max_rel_loss_diff": max(abs(x - y) / abs(x) for x, y in zip(losses(one), losses(two))),
            "max_abs_weight_diff": max((a[k] - b[k]).abs().max().item() for k in a)}


def allreduce_worker(numel: int, repeats: int) -> None:
    """Under torchrun: the median time of one all-reduce of ``numel`` fp32 values."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    grads = torch.randn(numel)
    times = []
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(grads)
        times.append(time.perf_counter() - started)
    if dist.get_rank() == 0:
        print(json.dumps({"numel": numel, "seconds": statistics.median(times)}))
    dist.destroy_process_group()


def allreduce_seconds(numel: int, repeats: int) -> float:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, "--allreduce", str(numel), "--repeats", str(repeats)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: checks the wiring, measures nothing")
    parser.add_argument("--allreduce", type=int, help=argparse.SUPPRESS)  # the torchrun worker
    parser.add_argument("--repeats", type=int, default=20, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce:
        return allreduce_worker(args.allreduce, args.repeats)
    steps = 6 if args.quick else 200
    global_batch = {"gpt": 24, "gan": 64}
    measures = {"gpt": "tokens_per_s", "gan": "images_per_s"}
    losses = {"gpt": "loss", "gan": "d_loss"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, args_ in command(steps, args.quick).items():
            one, two = Path(tmp) / f"{kind}-1", Path(tmp) / f"{kind}-2"
            wall_one = run(args_, 1, 2, global_batch[kind], one)
            wall_two = run(args_, 2, 1, global_batch[kind] // 2, two)
            weights = load_file(checkpoint_dir(one) / WEIGHTS_FILE)
            gradients = sum(t.numel() for name, t in weights.items() if not name.startswith("ema_generator"))
            results[kind] = {
                "global_batch": global_batch[kind], "steps": steps,
                f"1x2_{measures[kind]}": throughput(one, measures[kind]),
                f"2x1_{measures[kind]}": throughput(two, measures[kind]),
                "1x2_wall_s": round(wall_one, 2), "2x1_wall_s": round(wall_two, 2),
                "parity": parity(one, two, losses[kind]),
                "allreduce_s_per_step": allreduce_seconds(gradients, 5 if args.quick else 50),
            }
    payload = {"quick": args.quick, "note": "--quick: a wiring check, not a measurement" if args.quick else "",
               "results": results}
    print(json.dumps(payload, indent=2))
    print(f"wrote {write_json('distributed', payload)}")


if __name__ == "__main__":
    main()
