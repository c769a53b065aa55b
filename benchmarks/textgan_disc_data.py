"""Is real data what the residual discriminator lacks? A diagnostic on the SeqGAN oracle (#18).

The guided samplers reach SeqGAN's 8.736 with the true log-ratio log p_oracle / q as their
discriminator and fall far short with a trained one (docs/benchmarks-textgan.md). A trained one
could learn from only ~250 real sequences the generator never saw. On the oracle, fresh real
sequences can be drawn at will, so this script gives the discriminators N of them (a luxury no
user has) and asks: does a discriminator then learn the log-ratio well enough to guide?

For one early-stopped MLE generator (a run of ``textgan_oracle.py``), each discriminator trains
on N fresh oracle sequences against fresh generator samples (batches of 64, Adam), is checked
every 100 steps on 1,000 other fresh oracle sequences against 1,000 samples (binary cross-entropy
and accuracy, kept at its best check), then guides importance resampling at T = 1:
  likelihood  ``aigc textgan train --disc likelihood``'s ~200-parameter MLP on the generator's
              per-token statistics
  lm-ratio    s(x) = log q_phi(x) - log q(x) + b, q_phi a trainable copy of the frozen generator q
              (as many parameters as the generator; starts at s = 0, "can't tell")
  perfect     s*(x) = log p_oracle(x) - log q(x), the optimum of the training (not trained)
NLL-oracle of the guided samples (quality; lower is better) is the number that counts.

    flock /tmp/aigc-bench.lock python benchmarks/textgan_oracle.py --runs "" --jobs 3 --max-iters 1500 \\
        --out benchmarks/out/textgan_oracle_perfect              # the MLE runs, if not there yet
    flock /tmp/aigc-bench.lock python benchmarks/textgan_disc_data.py \\
        --mle-run benchmarks/out/textgan_oracle_perfect/seed0/mle
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, machine_line, write_json  # noqa: E402
from textgan_oracle import PerfectLogRatio  # noqa: E402

from aigc.textgan import generator as gen  # noqa: E402
from aigc.textgan import guided  # noqa: E402
from aigc.textgan.discriminators import build_discriminator, discriminator_loss  # noqa: E402
from aigc.textgan.loading import load_textgan  # noqa: E402
from aigc.textgan.oracle import Oracle  # noqa: E402

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "seqgan" / "oracle_params.npz"
LENGTH, CHECK, BATCH = 20, 1000, 64


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mle-run", required=True, help="an early-stopped MLE run of textgan_oracle.py")
    p.add_argument("--real", default="250,5000", help="fresh oracle sequences the discriminators learn from")
    p.add_argument("--discriminators", default="likelihood,lm-ratio", help="which to train")
    p.add_argument("--steps", type=int, default=1000, help="training steps per discriminator")
    p.add_argument("--k", default="16,64", help="candidates per guided sample")
    p.add_argument("--guided-samples", type=int, default=1000, help="guided samples per point")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="textgan_disc_data", help="JSON name under benchmarks/out/")
    args = p.parse_args()
    if args.steps < 100:
        p.error("--steps must be at least 100: the discriminators are checked, and the best kept, every 100 steps")
    return args


class LogLikelihoodRatio(nn.Module):
    """s(x) = log q_phi(x) - log q(x) + b: a copy q_phi of the frozen generator q, trained as a
    discriminator. Its optimum makes q_phi(x) exp(b) = p_data(x): a second language model that
    learns only where the data differs from q."""

    def __init__(self, model: nn.Module, bos: int):
        super().__init__()
        self.copy = copy.deepcopy(model)
        self._frozen = (model,)  # a tuple: not a submodule, so not trained
        self.bos = bos
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B,)
        with torch.no_grad():
            base = gen.token_log_probs(self._frozen[0], tokens, self.bos).sum(dim=1)
        return gen.token_log_probs(self.copy, tokens, self.bos).sum(dim=1) - base + self.bias


def build(kind: str, model: nn.Module, bos: int) -> tuple[nn.Module, float]:
    """The discriminator and its learning rate (the likelihood one's from the #18 runs)."""
    if kind == "lm-ratio":
        return LogLikelihoodRatio(model, bos), 1e-4
    return build_discriminator(kind, model.config.vocab_size, LENGTH, generator=model, bos=bos), 3e-3


@torch.no_grad()
def check(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float]:
    """Held-out (binary cross-entropy, accuracy) of real (N, L) as 1 and fake (N, L) as 0."""
    was_training = disc.training
    disc.eval()
    loss, accuracy = discriminator_loss(disc, real, fake)
    disc.train(was_training)
    return loss.item(), accuracy


def train(disc: nn.Module, lr: float, real: torch.Tensor, model: nn.Module, bos: int, steps: int,
          held_out: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Adam on batches of real vs fresh samples; the discriminator of the best check is kept."""
    optimizer = torch.optim.Adam([p for p in disc.parameters() if p.requires_grad], lr=lr)
    best, curve, start = {"loss": math.inf}, [], time.perf_counter()
    disc.train()
    for step in range(1, steps + 1):
        batch = real[torch.randint(len(real), (BATCH,))]
        loss, _ = discriminator_loss(disc, batch, gen.sample(model, BATCH, bos))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            held_out_loss, accuracy = check(disc, *held_out)
            curve.append([step, held_out_loss, accuracy])
            if held_out_loss < best["loss"]:
                best = {"loss": held_out_loss, "accuracy": accuracy, "step": step,
                        "weights": copy.deepcopy(disc.state_dict())}
    disc.load_state_dict(best.pop("weights"))
    return {**best, "curve": curve, "seconds": time.perf_counter() - start}


def guided_nll_oracle(model: nn.Module, disc: nn.Module, oracle: Oracle, bos: int, ks: list[int],
                      n: int) -> dict[str, float]:
    """NLL-oracle of n importance-resampled sequences at each K (the same candidate pools for
    every discriminator: the generator's seed depends on K only)."""
    out = {}
    for k in ks:
        samples = guided.guided_sample(model, disc, n, k, bos, generator=torch.Generator().manual_seed(k))
        out[str(k)] = oracle.nll(samples.tokens)
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    run = load_textgan(args.mle_run)
    model, bos = run.model, run.codec.bos
    oracle = Oracle.load(ORACLE)
    fresh = torch.Generator().manual_seed(20_260_123)
    real_pool = oracle.sample(max(map(int, args.real.split(","))), LENGTH, fresh)
    held_out = oracle.sample(CHECK, LENGTH, fresh), gen.sample(model, CHECK, bos, generator=fresh)
    ks = [int(k) for k in args.k.split(",")]
    print(machine_line(machine()), flush=True)

    plain = gen.sample(model, args.guided_samples, bos, generator=torch.Generator().manual_seed(1))
    results = {"mle": {"nll_oracle": oracle.nll(plain)}}
    perfect = PerfectLogRatio(oracle, model, bos, temperature=1.0)
    results["perfect"] = dict(zip(("loss", "accuracy"), check(perfect, *held_out)))
    results["perfect"]["guided_nll_oracle"] = guided_nll_oracle(model, perfect, oracle, bos, ks, args.guided_samples)
    print(json.dumps(results), flush=True)
    for n_real in map(int, args.real.split(",")):
        for kind in args.discriminators.split(","):
            torch.manual_seed(0)
            disc, lr = build(kind, model, bos)
            trained = train(disc, lr, real_pool[:n_real], model, bos, args.steps, held_out)
            trained["guided_nll_oracle"] = guided_nll_oracle(model, disc.eval(), oracle, bos, ks,
                                                             args.guided_samples)
            results[f"{kind}, {n_real} real"] = trained
            print(f"{kind}, {n_real} real: " + json.dumps({k: v for k, v in trained.items() if k != "curve"}),
                  flush=True)
    path = write_json(args.out, {"mle_run": args.mle_run, "settings": vars(args), "results": results})
    print_table(results, ks)
    print(f"wrote {path}")


def print_table(results: dict, ks: list[int]) -> None:
    print("| discriminator | held-out BCE | held-out accuracy | best step | "
          + " | ".join(f"NLL-oracle, K={k}" for k in ks) + " |")
    print("|---|---|---|---|" + "---|" * len(ks))
    print(f"| none (MLE, T=1) | | | | {results['mle']['nll_oracle']:.3f} |")
    for name, r in results.items():
        if name != "mle":
            print(f"| {name} | {r['loss']:.4f} | {r['accuracy']:.3f} | {r.get('step', '')} | "
                  + " | ".join(f"{r['guided_nll_oracle'][str(k)]:.3f}" for k in ks) + " |")


if __name__ == "__main__":
    main()
