"""Text GAN on the SeqGAN synthetic oracle: does adversarial training beat MLE + temperature?

Per seed, three generators: MLE on ``oracle_train.txt``; MLE then SeqGAN adversarial rounds
(rollout rewards from a CNN discriminator); MLE then the same rounds with a constant reward
(the control). Each is sampled at several temperatures and scored by
  NLL-oracle: the oracle's per-token NLL of the generator's samples (quality; lower is better);
  NLL-test:   the tempered generator's per-token NLL of fresh oracle samples (coverage; lower is better).
The curves over temperature are the comparison that counts (Caccia et al. 2020). The final
checkpoint of every run is scored; nothing is picked on test data.

    flock /tmp/aigc-bench.lock python benchmarks/textgan_oracle.py --jobs 2   # full setting, 2 seeds at a time
    flock /tmp/aigc-bench.lock python benchmarks/textgan_oracle.py --quick    # end-to-end check, minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _textgan import (VARIANTS, benchmark_arguments, compare_with_curve, load_variant, plot_curves,  # noqa: E402
                      plot_title, run_benchmark, set_threads, train_settings, train_variants, use_quick_setting)

from aigc.textgan import generator as gen  # noqa: E402
from aigc.textgan.config import TextGanTrainConfig  # noqa: E402
from aigc.textgan.oracle import Oracle  # noqa: E402

SEQGAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "seqgan"
PUBLISHED = {"MLE (SeqGAN paper)": 9.038, "SeqGAN": 8.736, "RankGAN": 8.247, "LeakGAN": 7.038}
LENGTH = 20


def parse_args() -> argparse.Namespace:
    p = benchmark_arguments(__doc__, "textgan_oracle")
    p.add_argument("--samples", type=int, default=10_000, help="generated sequences per NLL-oracle, and fresh "
                                                              "oracle sequences for NLL-test")
    args = p.parse_args()
    if args.quick:
        use_quick_setting(args, seeds="0,1,2", temperatures="0.8,1.0,1.2", samples=1000, max_iters=200,
                          adv_rounds=4, d_pretrain_steps=20, rollouts=4)
    return args


def train_config(args: argparse.Namespace) -> TextGanTrainConfig:
    return TextGanTrainConfig(data=str(SEQGAN / "oracle_train.txt"), oracle=str(SEQGAN / "oracle_params.npz"),
                              **train_settings(args))


def oracle_and_test(samples: int) -> tuple[Oracle, torch.Tensor]:
    """The oracle and ``samples`` fresh sequences of it (a fixed seed, never trained on)."""
    oracle = Oracle.load(SEQGAN / "oracle_params.npz")
    return oracle, oracle.sample(samples, LENGTH, torch.Generator().manual_seed(20_170_200))


def measure_seed(args: argparse.Namespace, seed: int) -> tuple[dict, dict]:
    """Train one seed's three generators and score each at every temperature:
    (training seconds per variant, results[variant][temperature][metric])."""
    set_threads(args.threads)
    oracle, test = oracle_and_test(args.samples)
    seconds = train_variants(train_config(args), args.out, seed)
    results: dict[str, dict] = {}
    for variant in VARIANTS:
        model, codec = load_variant(args.out, seed, variant)
        temperatures = args.temperatures.split(",")
        nll_test = gen.nll_at_temperatures(model, test, codec.bos, [float(t) for t in temperatures])
        results[variant] = {}
        for i, temp in enumerate(temperatures):
            g = torch.Generator().manual_seed(1000 * seed + i)
            samples = gen.sample(model, args.samples, codec.bos, float(temp), generator=g)
            results[variant][temp] = {"nll_oracle": oracle.nll(samples), "nll_test": nll_test[i]}
        print(f"seed {seed} {variant}: T=1.0 " + json.dumps(results[variant].get("1.0")), flush=True)
    return seconds, results


def main() -> None:
    args = parse_args()
    set_threads(args.threads)
    oracle, test = oracle_and_test(args.samples)
    floor = oracle.nll(test)

    def report(summary: dict, seeds_done: list[int]) -> dict:
        verdict = targets(summary)
        print_table(summary, floor, verdict)
        plot_curves(summary, "nll_test", "nll_oracle", "NLL-test (coverage; lower is better)",
                    "NLL-oracle (quality; lower is better)", plot_title("SeqGAN oracle", args, seeds_done), args.plot)
        return {"oracle_nll_of_test": floor, "published_nll_oracle": PUBLISHED, "targets": verdict}

    run_benchmark(args, measure_seed, ("nll_oracle", "nll_test"), train_config(args), report)


def targets(summary: dict) -> dict:
    """The issue's targets at temperature 1, and whether the adversarial curve beats MLE + temperature."""
    t1 = {v: summary[v]["1.0"]["nll_oracle"] for v in VARIANTS} if "1.0" in summary["mle"] else None
    out = {}
    if t1:
        (mle, mle_sd), (adv, adv_sd), (const, _) = t1["mle"], t1["adversarial"], t1["constant"]
        out["mle_beats_seqgan_mle_9.038"] = mle < 9.038
        out["adversarial_gain"] = mle - adv
        out["seed_spread"] = max(mle_sd, adv_sd)
        out["adversarial_gain_exceeds_spread"] = mle - adv > max(mle_sd, adv_sd)
        out["adversarial_beats_seqgan_8.736"] = adv < 8.736
        out["adversarial_beats_constant_control"] = adv < const
    # A point beats the MLE curve when no MLE temperature reaches its NLL-test (coverage) with an
    # NLL-oracle within the point's seed spread of its own.
    for variant in ("adversarial", "constant"):
        out[f"{variant}_vs_mle_curve"] = compare_with_curve(summary, variant, "nll_test", "nll_oracle", 1.0)
    return out


def print_table(summary: dict, floor: float, verdict: dict) -> None:
    print(f"\noracle's own NLL of the test samples (the floor): {floor:.3f}")
    print("| generator | T | NLL-oracle | NLL-test |\n|---|---|---|---|")
    for variant in VARIANTS:
        for temp, s in summary[variant].items():
            print(f"| {variant} | {temp} | {s['nll_oracle'][0]:.3f} ± {s['nll_oracle'][1]:.3f} | "
                  f"{s['nll_test'][0]:.3f} ± {s['nll_test'][1]:.3f} |")
    print("published NLL-oracle: " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    print("targets: " + json.dumps(verdict))


if __name__ == "__main__":
    main()
