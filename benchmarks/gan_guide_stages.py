"""A probe: does a second guide, fitted against the first guide's samples, correct what the first left?

The guided sampler of ``--guided K1`` draws from q1 = q exp(s1) / Z (approximately, at finite K1). A second guide
fitted to tell the run's training images from q1's samples estimates log p_data / q1, so importance resampling
of q1's samples by it, K2 candidates per image, moves towards p_data again: nested resampling at K1 x K2
generator passes per image. This script fits that second guide (``aigc gan guide``'s recipe, its own seeds) on a
run that already has its guide (``aigc gan train`` fits one), and scores the nested sampler with ``aigc gan
eval``'s evaluation (10,000 samples against the MNIST test set; ``--seed`` as the run's own evaluation used).

    flock /tmp/aigc-bench.lock python benchmarks/gan_guide_stages.py --run benchmarks/out/gan_quality/RUN --seed S

Writes ``benchmarks/out/gan_guide_stages/RUN-k1K1-k2K2.json``: the machine, the second guide's fit and the
evaluation. Not a feature of the toolkit (yet): a probe of whether one is worth building.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _common import OUT_DIR, machine
from gan_quality import MNIST_TEST
from aigc.gan import evaluate
from aigc.gan.config import GanEvalConfig
from aigc.gan.guide import GuidedGenerator, GuideRecipe, fit_guide, load_guide
from aigc.gan.loading import load_gan, load_training_data

SECOND_STAGE_SEED = 1000  # added to --seed: the second guide's samples, split and noise are its own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a GAN run with a guide fitted at temperature 1 (EMA generator)")
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's seed (and the second guide's base seed)")
    parser.add_argument("--k1", type=int, default=16, help="candidates per image of the first stage")
    parser.add_argument("--k2", type=int, default=4, help="first-stage images per image of the second stage")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_gan(args.run, ema=True)
    model_cfg = loaded.model_config
    training = load_training_data(loaded.run_config, model_cfg, args.run)
    first_guide, first_info = load_guide(loaded, ema=True, temperature=1.0)
    first_stage = GuidedGenerator(loaded.generator, first_guide, model_cfg, args.k1, 1.0, args.seed)
    started = time.perf_counter()
    second_guide, second_info = fit_guide(first_stage, model_cfg, training.images,
                                          training.labels if model_cfg.conditional else None, 1.0, GuideRecipe(),
                                          args.seed + SECOND_STAGE_SEED)
    fit_seconds = time.perf_counter() - started
    print(f"second guide: held-out accuracy {second_info['held_out_accuracy']:.3f}, best at step "
          f"{second_info['best_step']}, {fit_seconds:.0f} s", flush=True)
    nested = GuidedGenerator(first_stage, second_guide, model_cfg, args.k2, 1.0, args.seed + SECOND_STAGE_SEED)

    out = OUT_DIR / "gan_guide_stages" / f"{Path(args.run).name}-k1{args.k1}-k2{args.k2}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    original = evaluate.guided  # the evaluation's seam from a loaded run to the generator it samples
    evaluate.guided = lambda *_, **__: nested
    try:
        started = time.perf_counter()
        result = evaluate.evaluate_run(GanEvalConfig(run=args.run, ref=str(MNIST_TEST), n=10000, seed=args.seed,
                                                     guided=args.k1 * args.k2, json=str(out), device="cpu"))
        eval_seconds = time.perf_counter() - started
    finally:
        evaluate.guided = original
    result.update(machine=machine(), stages={"k1": args.k1, "k2": args.k2}, eval_seconds=eval_seconds,
                  first_guide={k: v for k, v in first_info.items() if k != "history"},
                  second_guide={**{k: v for k, v in second_info.items() if k != "history"}, "seconds": fit_seconds})
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
