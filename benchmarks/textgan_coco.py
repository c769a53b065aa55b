"""Text GAN on COCO captions (the literature's "image_coco"): BLEU vs Self-BLEU across temperatures.

Per seed, MLE on ``coco_captions/train.txt`` (early-stopped on validation NLL), MLE then SeqGAN
adversarial rounds, MLE then the constant-reward control, and the MLE generator guided by a
residual discriminator (importance resampling from K candidates, rejection sampling), all from
the same MLE run. Each is sampled at several temperatures and scored, by the Texygen protocol, with
  BLEU-2..5:       mean sentence BLEU (smoothing method 1) of each of --hypotheses generated
                   sentences against the *whole* test file as references (quality);
  Self-BLEU-2..4:  the same for --self-bleu-sentences generated sentences against each other
                   (diversity; lower is more diverse);
  NLL-test:        the tempered generator's per-token NLL of the test captions (<eos> included;
                   test words never seen in training are <unk>, which the generator never learned;
                   not measured for the guided points).
Words are the file's space-separated tokens (a final period stays on its word, as in the file).

    flock /tmp/aigc-bench.lock python benchmarks/textgan_coco.py [--quick] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _textgan import (VARIANTS, benchmark_arguments, compare_with_curve, guided_points, load_residual,  # noqa: E402
                      load_variant, plot_curves, plot_title, residual_settings, run_benchmark, set_threads,
                      train_settings, train_variants, use_quick_setting)

from aigc.metrics.text_gan import References, bleu, self_bleu  # noqa: E402
from aigc.textgan import generator as gen  # noqa: E402
from aigc.textgan.config import TextGanTrainConfig  # noqa: E402
from aigc.textgan.data import UNK, read_lines  # noqa: E402

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_captions"
PUBLISHED = {"MLE": (0.731, 0.497, 0.305, 0.189), "SeqGAN": (0.745, 0.498, 0.294, 0.180),
             "LeakGAN": (0.746, 0.528, 0.355, 0.230), "RelGAN(100)": (0.849, 0.687, 0.502, 0.331)}
METRICS = ("bleu2", "bleu3", "bleu4", "bleu5", "self_bleu2", "self_bleu3", "self_bleu4", "nll_test")


def parse_args() -> argparse.Namespace:
    p = benchmark_arguments(__doc__, "textgan_coco")
    p.add_argument("--hypotheses", type=int, default=2000, help="generated sentences scored by BLEU")
    p.add_argument("--self-bleu-sentences", type=int, default=1000)
    args = p.parse_args()
    if args.quick:
        use_quick_setting(args, seeds="0,1,2", temperatures="0.8,1.0,1.2", hypotheses=200, self_bleu_sentences=200,
                          max_iters=200, adv_rounds=3, d_pretrain_steps=20, rollouts=2, mle_eval_every=50,
                          residual_steps=50, guided_k=[4], guided_samples=100, guided_temperatures="1.0")
    return args


def train_config(args: argparse.Namespace) -> TextGanTrainConfig:
    return TextGanTrainConfig(data=str(COCO / "train.txt"), **train_settings(args))


def measure_seed(args: argparse.Namespace, seed: int) -> tuple[dict, dict]:
    """Train one seed's runs and score each at every temperature:
    (training seconds per run, results[variant][temperature][metric])."""
    set_threads(args.threads)
    test_sentences = read_lines(COCO / "test.txt")
    references = References(test_sentences, 5)
    seconds = train_variants(train_config(args), args.out, seed, args.runs, residual_settings(args))
    results: dict[str, dict] = {}
    for variant in [v for v in VARIANTS if v == "mle" or v in args.runs]:
        model, codec = load_variant(args.out, seed, variant)
        test = codec.encode(test_sentences, model.config.block_size)
        temperatures = args.temperatures.split(",")
        nll_test = gen.nll_at_temperatures(model, test, codec.bos, [float(t) for t in temperatures])
        results[variant] = {}
        for i, temp in enumerate(temperatures):
            g = torch.Generator().manual_seed(1000 * seed + i)
            sentences = codec.decode(gen.sample(model, args.hypotheses, codec.bos, float(temp), generator=g,
                                                eos=codec.eos))
            results[variant][temp] = {**text_scores(sentences, references, args), "nll_test": nll_test[i]}
        print(f"seed {seed} {variant}: T=1.0 " + json.dumps(results[variant].get("1.0")), flush=True)
    if "residual" in args.runs:
        results.update(score_guided(args, seed, references))
    return seconds, results


def text_scores(sentences: list[list[str]], references: References, args: argparse.Namespace) -> dict:
    return {**{f"bleu{n}": bleu(sentences, references, n) for n in (2, 3, 4, 5)},
            **{f"self_bleu{n}": self_bleu(sentences[:args.self_bleu_sentences], n) for n in (2, 3, 4)},
            "empty": sum(not s for s in sentences) / len(sentences)}


def score_guided(args: argparse.Namespace, seed: int, references: References) -> dict[str, dict]:
    """The guided points of one seed at every guided temperature: results[variant][temperature]."""
    model, disc, codec = load_residual(args.out, seed)
    results: dict[str, dict] = {}
    for i, temp in enumerate(args.guided_temperatures.split(",")):
        g = torch.Generator().manual_seed(1000 * seed + 500 + i)
        for name, point in guided_points(model, disc, codec, float(temp), args, g).items():
            sentences = codec.decode(point.pop("tokens")[:args.hypotheses])
            results.setdefault(name, {})[temp] = {**text_scores(sentences, references, args), **point}
    for name in results:
        print(f"seed {seed} {name}: T=1.0 " + json.dumps(results[name].get("1.0")), flush=True)
    return results


def main() -> None:
    args = parse_args()
    test_sentences = read_lines(COCO / "test.txt")

    def report(summary: dict, seeds_done: list[int]) -> dict:
        known = set(load_variant(args.out, seeds_done[0], "mle")[1].words) - {UNK}
        oov = sum(w not in known for s in test_sentences for w in s) / sum(map(len, test_sentences))
        verdict = targets(summary)
        print_table(summary, verdict, args, oov)
        plot_curves(summary, "self_bleu4", "bleu4", "Self-BLEU-4 (lower is more diverse)", "BLEU-4 (higher is better)",
                    plot_title("COCO captions", args, seeds_done), args.plot)
        return {"references": len(test_sentences), "test_oov_rate": oov, "published_bleu_2345": PUBLISHED,
                "targets": verdict}

    run_benchmark(args, measure_seed, (*METRICS, "generated_per_sample"), train_config(args), report)


def targets(summary: dict) -> dict:
    """Best adversarial BLEU-4 at a Self-BLEU-4 no worse than MLE's at temperature 1, vs RelGAN(100)'s 0.502."""
    if "1.0" not in summary["mle"]:
        return {}
    limit = summary["mle"]["1.0"]["self_bleu4"][0]
    out = {"mle_self_bleu4_at_T1": limit}
    for variant in [v for v in summary if v not in ("mle", "constant")]:
        eligible = {t: s["bleu4"][0] for t, s in summary[variant].items() if s["self_bleu4"][0] <= limit}
        best = max(eligible.items(), key=lambda item: item[1]) if eligible else None
        out[f"best_{variant}_bleu4_within_that_diversity"] = best
        out[f"{variant}_beats_relgan_0.502"] = bool(best and best[1] > 0.502)
    for variant in [v for v in summary if v != "mle"]:
        out[f"{variant}_vs_mle_curve"] = compare_with_curve(summary, variant, "self_bleu4", "bleu4", -1.0)
    return out


def print_table(summary: dict, verdict: dict, args: argparse.Namespace, oov: float) -> None:
    print(f"\nBLEU: {args.hypotheses} generated sentences per point against all test captions; Self-BLEU over "
          f"{args.self_bleu_sentences}; test tokens outside the training vocabulary: {oov:.2%}")
    print("| generator | T | BLEU-2 | BLEU-3 | BLEU-4 | BLEU-5 | Self-BLEU-2 | Self-BLEU-3 | Self-BLEU-4 | NLL-test "
          "| generated per sample |")
    print("|---|---|" + "---|" * 9)
    for variant in summary:
        for temp, s in sorted(summary[variant].items(), key=lambda item: float(item[0])):
            cells = " | ".join(f"{s[m][0]:.3f} ± {s[m][1]:.3f}" if m in s else "" for m in METRICS)
            cost = f"{s['generated_per_sample'][0]:.1f}" if "generated_per_sample" in s else "1"
            print(f"| {variant} | {temp} | {cells} | {cost} |")
    print("published BLEU-2/3/4/5: " + ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in PUBLISHED.items()))
    print("targets: " + json.dumps(verdict))


if __name__ == "__main__":
    main()
