"""Text GAN on the SeqGAN synthetic oracle: do adversarial training, or a discriminator guiding
the sampler, beat MLE + temperature?

Per seed: MLE on ``oracle_train.txt`` (early-stopped on validation NLL); from it, SeqGAN
adversarial rounds (rollout rewards from a CNN discriminator), the same rounds with a constant
reward (the control), and a residual run: a CNN discriminator trained on real vs the frozen MLE
generator's samples, whose logits guide sampling (importance resampling from K candidates,
rejection sampling; ``aigc.textgan.guided``). With --perfect-discriminator, the same samplers
also reweight the same candidates by the true log-ratio log p_oracle(x) / q_T(x), the optimum a
discriminator's training aims at: what a perfect discriminator would give at each K. Each is
sampled at several temperatures and scored by
  NLL-oracle: the oracle's per-token NLL of the generator's samples (quality; lower is better);
  NLL-test:   the tempered generator's per-token NLL of fresh oracle samples (coverage; lower is better);
              for a guided point, that of the sampler's own output density (guided.sir_log_prob).
The curves over temperature are the comparison that counts (Caccia et al. 2020). The final
checkpoint of every run is scored; nothing is picked on test data.

    flock /tmp/aigc-bench.lock python benchmarks/textgan_oracle.py --jobs 2   # full setting, 2 seeds at a time
    flock /tmp/aigc-bench.lock python benchmarks/textgan_oracle.py --quick    # end-to-end check, minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _textgan import (VARIANTS, benchmark_arguments, compare_with_curve, guided_points,  # noqa: E402
                      load_residual, load_variant, plot_curves, plot_title, run_benchmark, set_threads,
                      residual_settings, train_settings, train_variants, use_quick_setting)

from aigc.textgan import generator as gen  # noqa: E402
from aigc.textgan import guided  # noqa: E402
from aigc.textgan.config import TextGanTrainConfig  # noqa: E402
from aigc.textgan.oracle import Oracle  # noqa: E402

SEQGAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "seqgan"
PUBLISHED = {"MLE (SeqGAN paper)": 9.038, "SeqGAN": 8.736, "RankGAN": 8.247, "LeakGAN": 7.038}
LENGTH = 20


def parse_args() -> argparse.Namespace:
    p = benchmark_arguments(__doc__, "textgan_oracle")
    p.add_argument("--samples", type=int, default=10_000, help="generated sequences per NLL-oracle, and fresh "
                                                              "oracle sequences for NLL-test")
    p.add_argument("--perfect-discriminator", action="store_true",
                   help="also score the guided samplers on the MLE generator with the true log-ratio "
                        "log p_oracle / q_T as the discriminator: what a perfect discriminator gives at each K")
    args = p.parse_args()
    if args.quick:
        use_quick_setting(args, seeds="0,1,2", temperatures="0.8,1.0,1.2", samples=1000, max_iters=200,
                          adv_rounds=4, d_pretrain_steps=20, rollouts=4, mle_eval_every=50, residual_steps=50,
                          guided_k=[4, 16], guided_samples=200, guided_temperatures="1.0")
    return args


def train_config(args: argparse.Namespace) -> TextGanTrainConfig:
    return TextGanTrainConfig(data=str(SEQGAN / "oracle_train.txt"), oracle=str(SEQGAN / "oracle_params.npz"),
                              **train_settings(args))


def oracle_and_test(samples: int) -> tuple[Oracle, torch.Tensor]:
    """The oracle and ``samples`` fresh sequences of it (a fixed seed, never trained on)."""
    oracle = Oracle.load(SEQGAN / "oracle_params.npz")
    return oracle, oracle.sample(samples, LENGTH, torch.Generator().manual_seed(20_170_200))


def measure_seed(args: argparse.Namespace, seed: int) -> tuple[dict, dict]:
    """Train one seed's runs and score each at every temperature:
    (training seconds per run, results[variant][temperature][metric])."""
    set_threads(args.threads)
    oracle, test = oracle_and_test(args.samples)
    seconds = train_variants(train_config(args), args.out, seed, args.runs, residual_settings(args))
    results: dict[str, dict] = {}
    for variant in [v for v in VARIANTS if v == "mle" or v in args.runs]:
        model, codec = load_variant(args.out, seed, variant)
        temperatures = args.temperatures.split(",")
        nll_test = gen.nll_at_temperatures(model, test, codec.bos, [float(t) for t in temperatures])
        results[variant] = {}
        for i, temp in enumerate(temperatures):
            g = torch.Generator().manual_seed(1000 * seed + i)
            samples = gen.sample(model, args.samples, codec.bos, float(temp), generator=g)
            results[variant][temp] = {"nll_oracle": oracle.nll(samples), "nll_test": nll_test[i]}
        print(f"seed {seed} {variant}: T=1.0 " + json.dumps(results[variant].get("1.0")), flush=True)
    if "residual" in args.runs:
        model, disc, codec = load_residual(args.out, seed)
        results.update(score_guided(args, seed, oracle, test, model, codec, lambda temperature: disc))
    if args.perfect_discriminator:
        model, codec = load_variant(args.out, seed, "mle")
        results.update(score_guided(args, seed, oracle, test, model, codec,
                                    partial(PerfectLogRatio, oracle, model, codec.bos), prefix="perfect-"))
    return seconds, results


class PerfectLogRatio(torch.nn.Module):
    """The optimum of the discriminator's training: s(x) = log p_oracle(x) - log q_T(x), the logit
    of the best classifier between real sequences and the generator's samples at temperature T.
    Importance resampling with its weights tends to the oracle itself as K grows, so its points show
    what training the discriminator better could still buy at each K; not a method (it reads the
    oracle)."""

    def __init__(self, oracle: Oracle, model: torch.nn.Module, bos: int, temperature: float):
        super().__init__()
        self.oracle, self.model, self.bos, self.temperature = oracle, model, bos, temperature

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, L) -> (N,)
        return self.oracle.log_prob(tokens) - guided.sequence_log_probs(self.model, tokens, self.bos, self.temperature)


def score_guided(args: argparse.Namespace, seed: int, oracle: Oracle, test: torch.Tensor, model, codec,
                 discriminator_at: Callable[[float], torch.nn.Module], prefix: str = "") -> dict[str, dict]:
    """The guided points of one seed at every guided temperature, weighted by the discriminator
    ``discriminator_at(temperature)``: results[prefix + variant][temperature]. The candidate pools
    depend on the seed and temperature only, so every discriminator reweights the same candidates."""
    temperatures = args.guided_temperatures.split(",")
    test_log_q = -gen.sequence_nll_at_temperatures(model, test, codec.bos, [float(t) for t in temperatures])
    results: dict[str, dict] = {}
    for i, temp in enumerate(temperatures):
        g = torch.Generator().manual_seed(1000 * seed + 500 + i)
        disc = discriminator_at(float(temp))
        for name, point in guided_points(model, disc, codec, float(temp), args, g, test, test_log_q[i]).items():
            tokens = point.pop("tokens")
            if prefix:  # with the true log-ratio the ideal residual model is the oracle: no estimate of it
                point = {k: v for k, v in point.items() if not k.startswith("ebm_")}
            results.setdefault(prefix + name, {})[temp] = {"nll_oracle": oracle.nll(tokens), **point}
    for name in results:
        print(f"seed {seed} {name}: T=1.0 " + json.dumps(results[name].get("1.0")), flush=True)
    return results


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

    run_benchmark(args, measure_seed, ("nll_oracle", "nll_test", "ebm_nll_test", "generated_per_sample"),
                  train_config(args), report)


def targets(summary: dict) -> dict:
    """The issues' targets at temperature 1, and whether each curve beats MLE + temperature."""
    t1 = ({v: summary[v]["1.0"]["nll_oracle"] for v in VARIANTS}
          if all("1.0" in summary.get(v, {}) for v in VARIANTS) else None)
    out = {}
    if "1.0" in summary["mle"]:
        out["mle_nll_oracle_at_T1"] = summary["mle"]["1.0"]["nll_oracle"]
    for variant in [v for v in summary if v.startswith(("guided-", "rejection-", "perfect-")) and "1.0" in summary[v]]:
        out[f"{variant}_at_T1_beats_seqgan_8.736"] = summary[variant]["1.0"]["nll_oracle"][0] < 8.736
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
    for variant in [v for v in summary if v != "mle"]:
        out[f"{variant}_vs_mle_curve"] = compare_with_curve(summary, variant, "nll_test", "nll_oracle", 1.0)
    return out


def print_table(summary: dict, floor: float, verdict: dict) -> None:
    print(f"\noracle's own NLL of the test samples (the floor): {floor:.3f}")
    print("| generator | T | NLL-oracle | NLL-test | NLL-test of the ideal residual model | generated per sample |")
    print("|---|---|---|---|---|---|")
    for variant in summary:
        for temp, s in sorted(summary[variant].items(), key=lambda item: float(item[0])):
            cells = [f"{s[m][0]:.3f} ± {s[m][1]:.3f}" if m in s else "" for m in ("nll_oracle", "nll_test",
                                                                                  "ebm_nll_test")]
            cost = f"{s['generated_per_sample'][0]:.1f}" if "generated_per_sample" in s else "1"
            print(f"| {variant} | {temp} | {' | '.join(cells)} | {cost} |")
    print("published NLL-oracle: " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    print("targets: " + json.dumps(verdict))


if __name__ == "__main__":
    main()
