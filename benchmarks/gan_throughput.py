"""GAN training throughput: the aigc recipe's default path against the textbook loop.

For each model at batch 64 on mnist5k, times repeated windows of training steps after a
warm-up, alternating between
  - reference: the textbook loop done right, plain fp32 eager PyTorch (BCEWithLogits against
    label tensors, fake.detach() for D, the same fake reused for G), no autocast, no tricks;
  - aigc: ``GanTrainer.train_step`` with the default settings (bf16 autocast where the CPU
    supports it, no weight gradients for D in G's update, EMA of G).
Both use the same networks and initial weights. Reports median images/second (real images
through D per second) and the ratio. Run: ``python benchmarks/gan_throughput.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from _common import interleaved_windows, machine, machine_line, matmul_peak_gflops, write_json
from aigc.data.images import load_images
from aigc.devices import bf16_supported
from aigc.gan.config import GanTrainConfig
from aigc.gan.models import DCGANGenerator
from aigc.gan.train import GanTrainer, _model_config


class TextbookDCGANGenerator(nn.Module):
    """aigc's DCGAN generator as the tutorials write it: the noise as a 1x1 image through a
    ConvTranspose2d, where aigc computes that first layer as one matrix product."""

    def __init__(self, generator: DCGANGenerator):
        super().__init__()
        first = generator.net[0]
        plain = nn.ConvTranspose2d(first.in_channels, first.out_channels, first.kernel_size, bias=False)
        plain.weight.data.copy_(first.weight)
        self.net = nn.Sequential(plain, *copy.deepcopy(list(generator.net)[1:]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


def reference_step_fn(trainer: GanTrainer, batch_size: int):
    """The textbook loop on private, plain torch.nn copies of the trainer's networks."""
    generator = (TextbookDCGANGenerator(trainer.generator) if isinstance(trainer.generator, DCGANGenerator)
                 else copy.deepcopy(trainer.generator))
    discriminator = copy.deepcopy(trainer.discriminator)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    images = trainer.images
    ones, zeros = torch.ones(batch_size), torch.zeros(batch_size)
    z_dim = trainer.model_cfg.z_dim

    def step() -> None:
        real = images[torch.randint(0, len(images), (batch_size,))]
        fake = generator(torch.randn(batch_size, z_dim))
        d_loss = (F.binary_cross_entropy_with_logits(discriminator(real), ones)
                  + F.binary_cross_entropy_with_logits(discriminator(fake.detach()), zeros))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()

    return step


def measure(model: str, batch_size: int, windows: int, steps_per_window: int, warmup: int) -> dict:
    data = load_images("mnist5k")
    # no clusters: the textbook networks have no label input (self-conditioning, DCGAN's default since issue 17,
    # adds a one-hot to G's input and a projection to D's head, the same networks the conditional model has)
    cfg = GanTrainConfig(model=model, batch_size=batch_size, self_condition=0)
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    paths = {"reference fp32": reference_step_fn(trainer, batch_size), "aigc default": lambda: trainer.train_step(0)}
    seconds = interleaved_windows(paths, windows, steps_per_window, warmup)
    result = {name: {"ms_per_step": 1000 * statistics.median(s), "images_per_s": batch_size / statistics.median(s),
                     "windows_ms": [round(1000 * x, 2) for x in s]} for name, s in seconds.items()}
    result["speedup"] = result["aigc default"]["images_per_s"] / result["reference fp32"]["images_per_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--steps-per-window", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {model: measure(model, args.batch_size, args.windows, args.steps_per_window, args.warmup)
               for model in ("mlp", "dcgan")}
    # n = 1024: a bf16 product runs at ~1 GFLOP/s on an AVX2-only CPU, 2,048 would take a minute
    peaks = {str(dtype).removeprefix("torch."): round(matmul_peak_gflops(dtype, n=1024), 1)
             for dtype in (torch.float32, torch.bfloat16)}
    autocast = "on" if bf16_supported(torch.device("cpu")) else "off"
    print(f"machine: {machine_line(machine())}; bf16 autocast {autocast}; matmul peaks GFLOP/s {peaks}")
    print("| model | reference fp32 img/s | aigc default img/s | speedup | ms/step ref -> aigc |")
    print("|---|---|---|---|---|")
    for model, r in results.items():
        ref, ours = r["reference fp32"], r["aigc default"]
        print(f"| {model} | {ref['images_per_s']:.0f} | {ours['images_per_s']:.0f} | {r['speedup']:.2f}x "
              f"| {ref['ms_per_step']:.1f} -> {ours['ms_per_step']:.1f} |")
    path = write_json("gan_throughput", {"settings": vars(args), "matmul_peak_gflops": peaks, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
