"""glibc's malloc keeping freed memory (``aigc.memory.keep_freed_memory``, set by the ``aigc`` command)
against its defaults, which give large freed blocks back to the kernel.

The setting is per process, so each side runs in processes of its own, alternating (``--rounds``
of each, one at a time): ``keep`` calls :func:`aigc.memory.keep_freed_memory` first, ``return`` does
not. Each process times, in interleaved windows after a warm-up:
  - scoring 256 candidates of guided sampling: a forward pass of the DCGAN generator (conditional,
    the default width) and one of the guide over its images, as ``GuidedGenerator`` does per chunk;
  - a training step of the guide / C2ST judge on 128 images (``aigc gan guide``, ``aigc gan eval``);
  - a DCGAN training step at batch 64 (``GanTrainer.train_step``, conditional, no clusters);
  - a GPT training step of nanoGPT's CPU recipe (``gpt_shakespeare.py``'s ``aigc_step``, fp32);
and counts minor page faults (fresh pages the kernel zeroes) per call. Reports the median over
rounds of each side's milliseconds, the ratio of the medians, and the faults. Run:
``python benchmarks/allocator.py`` (nothing else running).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys

SIDES = ("return", "keep")


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def tasks() -> dict:
    """name -> a call to time, built after the allocator is set."""
    import torch

    from gpt_shakespeare import aigc_step, char_data
    from aigc.data.images import load_images
    from aigc.gan.config import GanTrainConfig
    from aigc.gan.guide import balanced_loss
    from aigc.gan.train import GanTrainer, _model_config
    from aigc.metrics.image import Judge

    torch.manual_seed(0)
    data = load_images("mnist5k")
    cfg = GanTrainConfig(model="dcgan", batch_size=64, conditional=True, self_condition=0)
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    generator, guide = copy.deepcopy(trainer.generator).eval(), Judge(1)  # the sampler: a copy, as the EMA is
    noise, labels = torch.randn(256, cfg.z_dim), torch.randint(10, (256,))
    images = torch.rand(128, 1, 28, 28) * 2 - 1
    optimizer = torch.optim.Adam(guide.parameters(), lr=1e-3)

    @torch.no_grad()
    def score_candidates() -> None:
        guide.eval()
        guide(generator(noise, labels))

    def guide_step() -> None:
        guide.train()
        logits = guide(images)
        loss = balanced_loss(logits[:64], logits[64:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"score 256 candidates (G + guide forward)": score_candidates,
            "guide / judge training step, 128 images": guide_step,
            "DCGAN training step, batch 64": lambda: trainer.train_step(0),
            "GPT training step, nanoGPT's CPU recipe (12 x 64 tokens)": aigc_step(*char_data(), amp=False)}


def worker(side: str, windows: int, steps_per_window: int, warmup: int) -> dict:
    """One process's measurement: per task, the median ms of its windows and minor faults per call."""
    kept = False
    if side == "keep":
        from aigc.memory import keep_freed_memory
        kept = keep_freed_memory()
    from _common import interleaved_windows

    calls = tasks()
    for call in calls.values():  # warm-up first, so that its faults (the heap growing to its peak) are not counted
        for _ in range(warmup):
            call()
    faults = {name: 0 for name in calls}

    def counting(name: str, call):
        def counted() -> None:
            before = minor_faults()
            call()
            faults[name] += minor_faults() - before
        return counted

    seconds = interleaved_windows({name: counting(name, call) for name, call in calls.items()}, windows,
                                  steps_per_window, warmup=0)
    return {"kept": kept, "results": {name: {"ms": 1000 * statistics.median(s),
                                             "faults_per_call": faults[name] / (windows * steps_per_window)}
                                      for name, s in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="processes of each side, alternating")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps-per-window", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.windows, args.steps_per_window, args.warmup)))
        return
    import torch

    from _common import machine, machine_line, matmul_peak_gflops, write_json

    runs = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            command = [sys.executable, __file__, "--worker", side, "--windows", str(args.windows),
                       "--steps-per-window", str(args.steps_per_window), "--warmup", str(args.warmup)]
            runs[side].append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    if not all(run["kept"] for run in runs["keep"]):
        sys.exit("keep_freed_memory() did nothing here (not glibc, or AIGC_RETURN_FREED_MEMORY is set)")
    names = list(runs["keep"][0]["results"])
    summary = {}
    for name in names:
        ms = {side: [run["results"][name]["ms"] for run in runs[side]] for side in SIDES}
        faults = {side: statistics.median(run["results"][name]["faults_per_call"] for run in runs[side]) for side in SIDES}
        summary[name] = {"ms": ms, "median_ms": {side: statistics.median(v) for side, v in ms.items()},
                         "faults_per_call": faults}
        summary[name]["speedup"] = summary[name]["median_ms"]["return"] / summary[name]["median_ms"]["keep"]
    peak = round(matmul_peak_gflops(torch.float32, n=1024), 1)
    print(f"machine: {machine_line(machine())}; fp32 matmul peak {peak} GFLOP/s; {args.rounds} processes a side")
    print("| task | glibc defaults ms (per process) | keep freed memory ms | speedup | minor faults a call |")
    print("|---|---|---|---:|---|")
    for name, r in summary.items():
        per = {side: ", ".join(f"{x:.1f}" for x in r["ms"][side]) for side in SIDES}
        print(f"| {name} | {r['median_ms']['return']:.1f} ({per['return']}) | {r['median_ms']['keep']:.1f} "
              f"({per['keep']}) | {r['speedup']:.2f}x | {r['faults_per_call']['return']:,.0f} -> "
              f"{r['faults_per_call']['keep']:,.0f} |")
    path = write_json("allocator", {"settings": vars(args), "matmul_peak_gflops": peak, "results": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
