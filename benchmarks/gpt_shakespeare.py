"""GPT pretraining on Tiny Shakespeare, character level: nanoGPT's CPU recipe, timed against
nanoGPT itself (its model.py, vendored in _nanogpt.py, and its train.py step, fp32 eager as its CPU
recipe runs) measured in the same run.

Recipe: n_layer 4, n_head 4, n_embd 128, block 64, batch 12, dropout 0, AdamW (beta2 0.99,
weight decay 0.1), lr 1e-3 -> 1e-4 cosine over 2000 iterations after 100 warm-up, clip 1.0;
first 90% of the text to train, last 10% to validate. Reference figures from nanoGPT on this
machine kind: 37.4 ms/iteration (20.5k tokens/s), validation loss 1.886 at 2000 iterations.

    flock /tmp/aigc-bench.lock python benchmarks/gpt_shakespeare.py            # everything (~6 min)
    flock /tmp/aigc-bench.lock python benchmarks/gpt_shakespeare.py --iters 300 --skip-budget   # quick

Each training phase runs in a fresh subprocess so its peak memory is its own. The speed ratio
to read is the interleaved one: the reference loop and aigc's own training step timed in turns
in one process (``--rounds`` x ``--round-iters``), the median of the per-round ratios; the
whole runs' ms/iteration, minutes apart, drift with a shared host.
Targets: (a) fp32 validation loss <= 1.90 at 2000 iterations; (b) default path >= 1.5x
nanoGPT's tokens/s; (c) --time-budget 90s with the best recipe found: validation loss <= 1.75.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine as describe, machine_line  # noqa: E402
from _machine import matmul_peak  # noqa: E402
import _nanogpt  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data" / "shakespeare" / "input.txt"
RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, lr=1e-3, min_lr=1e-4,
              warmup_iters=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0)
# The best recipe found for a 90 s budget on 2 cores (see docs/benchmarks-gpt.md): in 90 s a one-layer
# model makes four times the steps of the recipe's four layers and learns more from them.
BUDGET_RECIPE = dict(RECIPE, n_layer=1, lr=6e-3, min_lr=1e-4, warmup_iters=50, batch_size=24)
REFERENCE = {"ms_per_iter": 37.4, "tokens_per_s": 20.5e3, "val_loss_2000": 1.886}


def flops_per_iter(n_params: int, config: dict) -> float:
    """nanoGPT's estimate (PaLM appendix B): 6 N + 12 L H Q T FLOPs per token, forward and backward."""
    L, H, T = config["n_layer"], config["n_head"], config["block_size"]
    Q = config["n_embd"] // H
    return (6 * n_params + 12 * L * H * Q * T) * T * config["batch_size"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- phases (each in a subprocess)

def char_data() -> tuple[np.ndarray, int]:
    """Tiny Shakespeare as character ids (uint16, the first 90%: the training part) and the vocabulary size."""
    text = DATA.read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.uint16)
    return data[: int(0.9 * len(data))], len(chars)


def recipe_model(vocab_size: int, activation: str):
    """The recipe's GPT with the same initial weights every time."""
    from aigc.gpt.model import GPT, GPTConfig

    c = RECIPE
    torch.manual_seed(1337)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=c["block_size"], n_layer=c["n_layer"],
                         n_head=c["n_head"], n_embd=c["n_embd"], activation=activation))


def reference_step(train: np.ndarray, vocab_size: int):
    """nanoGPT on CPU: its model (exact GELU, no biases: train.py's default ``bias = False``), its
    AdamW groups (foreach, not fused, off CUDA), its batches and its step: fp32 eager, clip, the
    loss read every step (``log_interval=1``). Returns (one training step, the model)."""
    c = RECIPE
    torch.manual_seed(1337)
    model = _nanogpt.GPT(_nanogpt.GPTConfig(block_size=c["block_size"], vocab_size=vocab_size, n_layer=c["n_layer"],
                                            n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, bias=False))
    optimizer = model.configure_optimizers(c["weight_decay"], c["lr"], (0.9, c["beta2"]), "cpu")
    T, B = c["block_size"], c["batch_size"]

    def step() -> float:
        ix = torch.randint(len(train) - T, (B,))
        x = torch.stack([torch.from_numpy(train[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(train[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, model


def phase_reference(iters: int) -> dict:
    step, model = reference_step(*char_data())
    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    seconds = (time.perf_counter() - start) / iters
    return {"ms_per_iter": seconds * 1e3, "n_params": model.get_num_params(),
            "peak_rss_mb": peak_rss_mb()}


def aigc_step(train: np.ndarray, vocab_size: int, amp: bool, activation: str | None = None):
    """``aigc gpt train``'s own step (GptTrainer.train_step: schedule, autocast, fused AdamW, clip),
    with its default GELU unless ``activation`` is given."""
    from aigc.gpt.config import GptTrainConfig
    from aigc.gpt.train import GptTrainer

    config = GptTrainConfig(data=str(DATA), tokenizer="char", device="cpu", amp=amp, max_iters=2000, **RECIPE)
    model = recipe_model(vocab_size, activation or config.activation)
    trainer = GptTrainer(config, model, train, train[:10_000], torch.device("cpu"))
    counter = iter(range(10**9))
    return lambda: trainer.train_step(next(counter), 0.0)


def phase_interleaved(rounds: int, iters: int) -> dict:
    """The step times of nanoGPT's step and of aigc's default (bf16 autocast where the CPU has it),
    fp32, and fp32 with GPT-2's tanh GELU (aigc's GELU before 2026-12-05) steps, measured in turns in
    one process: ``rounds`` x (``iters`` steps of each).
    A shared host that slows down for a while slows every variant of that round alike, so the
    median of the per-round ratios is steadier than ratios of runs made minutes apart."""
    from aigc.devices import bf16_supported

    train, vocab_size = char_data()
    variants = {"reference": reference_step(train, vocab_size)[0],
                "default": aigc_step(train, vocab_size, amp=bf16_supported(torch.device("cpu"))),
                "fp32": aigc_step(train, vocab_size, amp=False),
                "fp32-tanh": aigc_step(train, vocab_size, amp=False, activation="gelu_tanh")}
    for step in variants.values():  # warm-up
        for _ in range(20):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(iters):
                step()
            times[name].append((time.perf_counter() - start) / iters * 1e3)
    ratios = {name: float(np.median([r / t for r, t in zip(times["reference"], times[name])]))
              for name in ("default", "fp32", "fp32-tanh")}
    return {"ms_per_iter": {name: float(np.median(t)) for name, t in times.items()}, "rounds_ms": times,
            "speedup_median": ratios, "rounds": rounds, "iters_per_round": iters}


def phase_recipe(overrides: dict, keep_run: str | None) -> dict:
    """Our recipe, `aigc gpt train`, in-process; returns timing and validation losses."""
    from aigc.data import text
    from aigc.gpt.loading import load_gpt
    from aigc.gpt.config import GptTrainConfig
    from aigc.gpt.evaluate import EvalInput, perplexity
    from aigc.gpt.train import train
    from aigc.logging import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("AIGC_CACHE_DIR", str(Path(tmp) / "cache"))
        config = GptTrainConfig(data=str(DATA), tokenizer="char", out=str(Path(tmp) / "run"), eval_interval=250,
                                eval_iters=50, log_every=50, device="cpu", **overrides)
        start = time.perf_counter()
        run = train(config)
        wall = time.perf_counter() - start
        metrics = read_metrics(run / "metrics.jsonl")
        loaded = load_gpt(run, "last")
        model, tokenizer = loaded.model, loaded.tokenizer
        n_params = model.num_params() - model.transformer.wpe.weight.numel()  # as nanoGPT counts them
        val_tokens = text.split(text.encode_cached(DATA.read_bytes(), tokenizer))[1]
        full_val = perplexity(EvalInput(model, tokenizer, val_tokens, batch_size=64))["loss"]
        if keep_run:
            shutil.copytree(run, keep_run)
    steps = max(m["step"] for m in metrics)
    train_seconds = max(m.get("elapsed", 0) for m in metrics) - sum(m.get("eval_seconds", 0) for m in metrics)
    return {"steps": steps, "ms_per_iter": steady_ms_per_iter(metrics),
            "ms_per_iter_overall": train_seconds / steps * 1e3, "wall_s": wall, "train_s": train_seconds,
            "val_curve": [[m["step"], round(m["val_loss"], 4)] for m in metrics if "val_loss" in m],
            "val_loss_full_split": full_val, "peak_rss_mb": peak_rss_mb(), "n_params": n_params}


def steady_ms_per_iter(metrics: list[dict], skip: int = 100) -> float:
    """Step time after the first ``skip`` steps (warm-up, compilation), evaluations left out."""
    logs = [m for m in metrics if "elapsed" in m]
    first = next((m for m in logs if m["step"] >= skip), logs[0])
    last = logs[-1]
    evals = sum(m["eval_seconds"] for m in metrics
                if "eval_seconds" in m and first["step"] <= m["step"] < last["step"])  # in later "elapsed"
    return (last["elapsed"] - first["elapsed"] - evals) / max(1, last["step"] - first["step"]) * 1e3


def run_phase(name: str, *args: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--phase", name, "--phase-out", out.name,
                   "--threads", str(torch.get_num_threads()), *args]
        subprocess.run(command, check=True)
        return json.loads(Path(out.name).read_text())


# ---------------------------------------------------------------- the benchmark

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=2000, help="iterations of the fp32 and default runs")
    parser.add_argument("--reference-iters", type=int, default=150, help="timed iterations of the reference loop")
    parser.add_argument("--time-budget", default="90s", help="budget of the best-recipe run")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the interleaved step timing")
    parser.add_argument("--round-iters", type=int, default=40, help="steps of each variant per round")
    parser.add_argument("--skip-budget", action="store_true", help="skip the time-budget run")
    parser.add_argument("--skip-fp32", action="store_true", help="skip the fp32 parity run")
    parser.add_argument("--compile", action="store_true", help="also run the default path with torch.compile")
    parser.add_argument("--threads", type=int, help="torch threads in every phase (default: torch's choice); "
                        "1 gives stable ratios when another process shares the cores")
    parser.add_argument("--keep-run", help="copy the default-path run here (for gpt_generate.py --run)")
    parser.add_argument("--out", default=str(HERE / "out" / "gpt_shakespeare.json"))
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.phase:
        if args.phase == "reference":
            result = phase_reference(args.reference_iters)
        elif args.phase == "interleaved":
            result = phase_interleaved(args.rounds, args.round_iters)
        else:
            result = phase_recipe(json.loads(args.overrides), args.keep_run)
        Path(args.phase_out).write_text(json.dumps(result))
        return
    if not DATA.is_file():
        sys.exit(f"Tiny Shakespeare not found at {DATA}")

    from aigc.devices import bf16_supported

    machine = describe()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"machine: {machine_line(machine)}; matmul peaks fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
    default_path = f"aigc default ({'bf16 autocast' if bf16_supported(torch.device('cpu')) else 'fp32'})"
    reference = run_phase("reference", "--reference-iters", str(args.reference_iters))
    flops = flops_per_iter(reference["n_params"], RECIPE)
    print("timing the reference and aigc's steps in turns", flush=True)
    interleaved = run_phase("interleaved", "--rounds", str(args.rounds), "--round-iters", str(args.round_iters))

    runs = {"nanoGPT (its model and step, fp32)": reference}
    plans = [(default_path, dict(RECIPE, max_iters=args.iters))]
    if not args.skip_fp32:
        plans.append(("aigc fp32 (--no-amp)", dict(RECIPE, max_iters=args.iters, amp=False)))
    if args.compile:
        plans.append(("aigc default + --compile", dict(RECIPE, max_iters=args.iters, compile=True)))
    if not args.skip_budget:
        from aigc.config import parse_duration

        changes = ", ".join(f"{k} {v:g}" for k, v in BUDGET_RECIPE.items() if v != RECIPE[k])
        plans.append((f"aigc best recipe ({changes}), --time-budget {args.time_budget}",
                      dict(BUDGET_RECIPE, time_budget=parse_duration(args.time_budget))))
    for name, overrides in plans:
        print(f"running: {name}", flush=True)
        keep = ["--keep-run", args.keep_run] if args.keep_run and name == default_path else []
        runs[name] = run_phase("recipe", "--overrides", json.dumps(overrides), *keep)
        runs[name]["overrides"] = overrides

    rows = []
    for name, r in runs.items():
        tokens_per_iter = (r.get("overrides") or RECIPE)["batch_size"] * RECIPE["block_size"]
        iter_flops = flops_per_iter(r.get("n_params", reference["n_params"]), r.get("overrides") or RECIPE)
        gflops = iter_flops / r["ms_per_iter"] * 1e3 / 1e9
        r.update(tokens_per_s=tokens_per_iter / r["ms_per_iter"] * 1e3, gflops=gflops,
                 frac_fp32_peak=gflops / peaks["fp32"], frac_bf16_peak=gflops / peaks["bf16"],
                 speedup_vs_reference=(tokens_per_iter / r["ms_per_iter"]) /
                 (RECIPE["batch_size"] * RECIPE["block_size"] / reference["ms_per_iter"]))
        rows.append(r)
    print()
    print(f"{'run':90s} {'ms/it':>7s} {'tok/s':>8s} {'x ref':>6s} {'GFLOP/s':>8s} {'%fp32':>6s} {'%bf16':>6s} "
          f"{'steps':>6s} {'val':>7s} {'peakMB':>7s}")
    for name, r in runs.items():
        val = r.get("val_loss_full_split")
        print(f"{name:90s} {r['ms_per_iter']:7.1f} {r['tokens_per_s']:8.0f} {r['speedup_vs_reference']:6.2f} "
              f"{r['gflops']:8.1f} {100 * r['frac_fp32_peak']:6.1f} {100 * r['frac_bf16_peak']:6.1f} "
              f"{r.get('steps', '-'):>6} {'-' if val is None else f'{val:.4f}':>7} {r['peak_rss_mb']:7.0f}")
    for name, r in runs.items():
        if "val_curve" in r:
            print(f"val loss every 250 ({name}): " + ", ".join(f"{s}:{v:.3f}" for s, v in r["val_curve"]))
    ms = interleaved["ms_per_iter"]
    print(f"interleaved step times ({args.rounds} rounds x {args.round_iters} steps, medians): nanoGPT "
          f"{ms['reference']:.1f} ms, aigc default {ms['default']:.1f} ms, aigc fp32 {ms['fp32']:.1f} ms, aigc fp32 "
          f"with tanh GELU {ms['fp32-tanh']:.1f} ms; median per-round speed-up: "
          + ", ".join(f"{name} {x:.2f}x" for name, x in interleaved["speedup_median"].items()))
    print(f"flops per iteration (recipe): {flops / 1e9:.2f} GFLOP; nanoGPT reference on this machine kind: "
          f"{REFERENCE['ms_per_iter']} ms/it, val {REFERENCE['val_loss_2000']}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "matmul_peak_gflops": peaks, "flops_per_iter": flops,
                               "nanogpt_reference": REFERENCE, "args": vars(args), "runs": runs,
                               "interleaved": interleaved,
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
