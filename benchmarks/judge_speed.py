"""Speed of the C2ST judge, which is also the guide of guided GAN sampling: channels-last against
PyTorch's default layout.

``aigc.metrics.image.Judge`` keeps its weights and activations in channels-last memory format and
passes 7 x 7 features by its adaptive pool. The reference is the same network, with the same
weights, as it ran before: the default (NCHW) layout and an adaptive pool that always pools.
Interleaved windows of each, after a warm-up:
  - a training step on 128 images (64 real, 64 generated, one forward): what ``aigc gan guide``
    repeats for up to 3,000 steps, and the C2ST of ``aigc gan eval`` for 1,500 (of 64 images);
  - a forward pass of 256 images without gradients: the chunk guided sampling scores at a time.
Reports the median milliseconds and the ratio. Run: ``python benchmarks/judge_speed.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import nn

from _common import interleaved_windows, machine, machine_line, matmul_peak_gflops, write_json
from aigc.gan.guide import balanced_loss
from aigc.metrics.image import Judge


def reference_network(judge: Judge) -> nn.Module:
    """The judge's layers and weights in the default memory layout, with an adaptive pool that always pools."""
    net = copy.deepcopy(judge.net).to(memory_format=torch.contiguous_format)
    net[6] = nn.AdaptiveAvgPool2d(7)
    return net


def training_step(model: nn.Module, images: torch.Tensor):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    half = len(images) // 2

    def step() -> None:
        logits = model(images).flatten()
        loss = balanced_loss(logits[:half], logits[half:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def forward_pass(model: nn.Module, images: torch.Tensor):
    @torch.no_grad()
    def forward() -> None:
        model(images)

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=9)
    parser.add_argument("--steps-per-window", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    judge = Judge(channels=1)
    models = {"reference (NCHW)": reference_network(judge), "aigc (channels-last)": judge}
    train_images, score_images = torch.rand(128, 1, 28, 28) * 2 - 1, torch.rand(256, 1, 28, 28) * 2 - 1
    tasks = {"training step, 128 images": {name: training_step(m, train_images) for name, m in models.items()},
             "forward pass, 256 images": {name: forward_pass(m, score_images) for name, m in models.items()}}
    results = {}
    for task, steps in tasks.items():
        seconds = interleaved_windows(steps, args.windows, args.steps_per_window, args.warmup)
        ms = {name: 1000 * statistics.median(s) for name, s in seconds.items()}
        results[task] = {"ms": ms, "speedup": ms["reference (NCHW)"] / ms["aigc (channels-last)"],
                         "windows_ms": {name: [round(1000 * x, 2) for x in s] for name, s in seconds.items()}}
    peak = round(matmul_peak_gflops(torch.float32, n=1024), 1)
    print(f"machine: {machine_line(machine())}; fp32 matmul peak {peak} GFLOP/s")
    print("| task | reference (NCHW) ms | aigc (channels-last) ms | speedup |")
    print("|---|---:|---:|---:|")
    for task, r in results.items():
        print(f"| {task} | {r['ms']['reference (NCHW)']:.1f} | {r['ms']['aigc (channels-last)']:.1f} "
              f"| {r['speedup']:.2f}x |")
    path = write_json("judge_speed", {"settings": vars(args), "matmul_peak_gflops": peak, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
