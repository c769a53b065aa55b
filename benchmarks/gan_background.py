"""Does the C2ST judge tell a GAN's digits from real ones by their faint background?

A tanh generator reaches black (-1) only asymptotically, so its 8-bit samples keep faint pixels
where MNIST's background is exactly 0. This script counts the pixel values of a run's samples
beside the test set's, then scores the run with ``aigc gan eval``'s evaluation twice more, with
every pixel at most ``--thresholds`` levels above black set to black: if the judge's accuracy
falls, the background gave the samples away.

    flock /tmp/aigc-bench.lock python benchmarks/gan_background.py --run benchmarks/out/gan_quality/RUN

Writes ``benchmarks/out/gan_background/RUN-tT.json`` (the evaluation's JSON) per threshold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from _common import OUT_DIR
from gan_quality import MNIST_TEST
from aigc.data.images import load_images, to_uint8
from aigc.gan import evaluate
from aigc.gan.config import GanEvalConfig
from aigc.gan.generation import generate_images
from aigc.gan.loading import load_generator

BANDS = [(0, 0), (1, 20), (21, 234), (235, 254), (255, 255)]  # 8-bit pixel values, inclusive


def band_shares(pixels: np.ndarray) -> list[float]:
    return [float(((pixels >= low) & (pixels <= high)).mean()) for low, high in BANDS]


class BlackBelow(torch.nn.Module):
    """A generator whose pixels at most ``levels`` 8-bit levels above black are set to black."""

    def __init__(self, generator: torch.nn.Module, levels: int):
        super().__init__()
        self.generator, self.cut = generator, -1 + 2 * (levels + 0.5) / 255

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = self.generator(z, labels)
        return torch.where(images < self.cut, torch.full_like(images, -1.0), images)


def evaluate_blackened(run: str, levels: int, seed: int, json_path: Path) -> dict:
    original = evaluate.guided  # the evaluation's seam from a loaded run to the generator it samples

    def blackened(*args, **kwargs):
        return BlackBelow(original(*args, **kwargs), levels).eval()

    evaluate.guided = blackened
    try:
        return evaluate.evaluate_run(GanEvalConfig(run=run, ref=str(MNIST_TEST), n=10000, seed=seed,
                                                   json=str(json_path)))
    finally:
        evaluate.guided = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a conditional or unconditional `aigc gan train` run")
    parser.add_argument("--thresholds", type=int, nargs="+", default=[8, 20], help="8-bit levels above black")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    real = np.asarray(to_uint8(load_images(str(MNIST_TEST)).images[:2000]))
    generator, model_cfg, _ = load_generator(args.run)
    labels = torch.arange(2000) % model_cfg.num_classes if model_cfg.conditional else None
    with torch.no_grad():
        fake = np.asarray(to_uint8(generate_images(generator.eval(), model_cfg, 2000, labels, seed=args.seed)))
    print("share of pixels at 8-bit values " + ", ".join(f"{low}-{high}" for low, high in BANDS))
    for name, pixels in (("MNIST test digits", real), ("samples of the run", fake)):
        print(f"{name:20s} " + "  ".join(f"{share:.4f}" for share in band_shares(pixels)))

    out = OUT_DIR / "gan_background"
    out.mkdir(parents=True, exist_ok=True)
    for levels in args.thresholds:
        result = evaluate_blackened(args.run, levels, args.seed, out / f"{Path(args.run).name}-t{levels}.json")
        print(f"pixels <= {levels} set to black: C2ST {result['model']['c2st_accuracy']:.3f}, "
              f"FID {result['model']['fid']:.2f}")


if __name__ == "__main__":
    main()
