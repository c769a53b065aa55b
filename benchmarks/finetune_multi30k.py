"""Fine-tuning a small GPT as a German->English translator on Multi30k, with each method.

1. A joint byte-level BPE learned from the training text of both languages.
2. A GPT pretrained on that text (the German and English training sentences, one a line): it
   has seen both languages but never a translation.
3. Fine-tuned on the 29,000 training pairs, rendered as ``"<de> => <en>\\n"`` with the loss on
   the English side only, once per method (full, lora, adalora, adapter), validated on ``val``.
4. ``test_2016_flickr`` (1,000 pairs) translated greedily and with beam search (4 beams,
   length penalty 1), scored with sacreBLEU (signature printed), chrF and ROUGE-L.

Targets (issue 5): full fine-tuning sacreBLEU >= 30 with pretraining + full fine-tuning +
scoring within 60 minutes on the 2-core CPU; LoRA within 2 BLEU of full with <= 5% of the
parameters trained. Anchors: attention RNN encoder-decoders 28-36 BLEU, Transformers 35-40
(GPU, tens of epochs). AdaLoRA is scheduled over the step count the LoRA run reached in its
time budget (its rank budget needs a known length).

    flock /tmp/aigc-bench.lock python benchmarks/finetune_multi30k.py            # the full benchmark
    flock /tmp/aigc-bench.lock python benchmarks/finetune_multi30k.py --quick    # a few minutes: wiring only
    # more methods on an earlier run's pretrained GPT (pretraining is not repeated nor timed again):
    flock /tmp/aigc-bench.lock python benchmarks/finetune_multi30k.py --methods adalora,adapter \
        --pretrained benchmarks/out/finetune_multi30k/pretrain --out benchmarks/out/finetune_multi30k_more

Writes ``<out>.json`` (by default ``benchmarks/out/finetune_multi30k.json``) (machine, settings, results), the runs and the
test-set translations under ``benchmarks/out/finetune_multi30k/``, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine as describe  # noqa: E402
from _machine import matmul_peak  # noqa: E402

from aigc.gpt.config import GptFinetuneConfig, GptTrainConfig  # noqa: E402
from aigc.gpt.finetune import finetune  # noqa: E402
from aigc.gpt.loading import load_finetuned  # noqa: E402
from aigc.gpt.peft_methods import count_parameters  # noqa: E402
from aigc.gpt.task_eval import complete  # noqa: E402
from aigc.gpt.train import train  # noqa: E402
from aigc.logging import read_metrics  # noqa: E402
from aigc.metrics import text as text_metrics  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data" / "multi30k"
METHODS = ("full", "lora", "adalora", "adapter")

# Learning rates from 500-step probes on a pretrained base (validation loss at step 500, see
# docs/benchmarks-finetune.md); LoRA's rank is the largest power of two under 5% of the parameters.
LR_FULL, LR_LORA, LR_ADAPTER = 1e-3, 5e-3, 5e-3
METHOD_SETTINGS = dict(
    full=dict(lr=LR_FULL), lora=dict(lr=LR_LORA, rank=16, alpha=32.0), adalora=dict(lr=LR_LORA, rank=16, alpha=32.0),
    adapter=dict(lr=LR_ADAPTER),
)
FULL = dict(
    vocab_size=8000, n_layer=4, n_head=4, n_embd=256, block_size=128, dropout=0.1,
    pretrain=dict(batch_size=32, lr=1e-3, min_lr=1e-4, warmup_iters=200, time_budget=15 * 60, eval_interval=500,
                  eval_iters=20),
    finetune=dict(batch_size=32, warmup_iters=100, time_budget=35 * 60, eval_interval=500, eval_examples=500),
    methods=METHOD_SETTINGS, test_limit=None, beams=4,
)
QUICK = dict(
    vocab_size=1000, n_layer=2, n_head=2, n_embd=64, block_size=128, dropout=0.0,
    pretrain=dict(batch_size=16, lr=3e-3, min_lr=3e-4, warmup_iters=20, max_iters=150, eval_interval=150,
                  eval_iters=4),
    finetune=dict(batch_size=16, warmup_iters=10, max_iters=60, eval_interval=60, eval_examples=64),
    methods=METHOD_SETTINGS, test_limit=100, beams=4,
)


def lines(name: str) -> list[str]:
    return gzip.decompress((DATA / name).read_bytes()).decode("utf-8").splitlines()


def pretrain(recipe: dict, work: Path) -> tuple[Path, float]:
    """Joint BPE + GPT pretraining on the German and English training sentences."""
    corpus, val = work / "pretrain.txt", work / "pretrain-val.txt"
    corpus.write_text("\n".join(lines("train.de.gz") + lines("train.en.gz")) + "\n")
    val.write_text("\n".join(lines("val.de.gz") + lines("val.en.gz")) + "\n")
    started = time.perf_counter()
    run = train(GptTrainConfig(
        data=str(corpus), val_data=str(val), tokenizer="bpe", vocab_size=recipe["vocab_size"],
        n_layer=recipe["n_layer"], n_head=recipe["n_head"], n_embd=recipe["n_embd"],
        block_size=recipe["block_size"], dropout=recipe["dropout"], out=str(work / "pretrain"), device="cpu",
        **recipe["pretrain"]))
    return run, time.perf_counter() - started


def finetune_method(recipe: dict, base: Path, method: str, work: Path, max_iters: int | None) -> tuple[Path, float]:
    settings = {**recipe["finetune"], **recipe["methods"][method]}
    if max_iters is not None:  # adalora: a fixed step count instead of the time budget
        settings.pop("time_budget", None)
        settings["max_iters"] = max_iters
    started = time.perf_counter()
    run = finetune(GptFinetuneConfig(
        base=str(base), out=str(work / method), task="completion", method=method, device="cpu",
        source=str(DATA / "train.de.gz"), target=str(DATA / "train.en.gz"),
        val_source=str(DATA / "val.de.gz"), val_target=str(DATA / "val.en.gz"), **settings))
    return run, time.perf_counter() - started


def score(run: Path, sources: list[str], references: list[str], beams: int, work: Path) -> dict:
    """sacreBLEU, chrF and ROUGE-L of greedy and beam-search translations of the test set."""
    finetuned = load_finetuned(run, "best")
    trainable, total = count_parameters(finetuned.model)
    results = {"trainable_params": trainable, "total_params": total, "trainable_share": trainable / total,
               "steps": max(m["step"] for m in read_metrics(run / "metrics.jsonl"))}
    for name, width in (("greedy", 1), (f"beam{beams}", beams)):
        started = time.perf_counter()
        with torch.inference_mode():
            hypotheses = complete(finetuned, sources, max_new_tokens=96, beams=width, batch_size=64)
        (work / f"{run.name}.{name}.en").write_text("\n".join(hypotheses) + "\n")
        results[name] = {**text_metrics.bleu(hypotheses, [references]), **text_metrics.chrf(hypotheses, [references]),
                         "rougeL": text_metrics.rouge(hypotheses, [references])["rougeL"],
                         "decode_seconds": time.perf_counter() - started}
    return results


def table(results: dict, beams: int) -> str:
    rows = ["| method | trainable params (share) | steps | fine-tune time | BLEU greedy | BLEU beam "
            f"{beams} | chrF beam {beams} | ROUGE-L beam {beams} |", "|---|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        beam = r[f"beam{beams}"]
        rows.append(f"| {method} | {r['trainable_params']:,} ({100 * r['trainable_share']:.2f}%) | {r['steps']} | "
                    f"{r['finetune_seconds'] / 60:.1f} min | {r['greedy']['bleu']:.2f} | {beam['bleu']:.2f} | "
                    f"{beam['chrf']:.2f} | {beam['rougeL']:.2f} |")
    return "\n".join(rows)


def report(args, recipe: dict, machine: dict, base: Path, pretrain_seconds: float, results: dict,
           test_sentences: int, total: float) -> None:
    """Write the JSON and print the table so far (after every method: a stopped run keeps its results)."""
    full_pipeline = (pretrain_seconds + results["full"]["finetune_seconds"] + results["full"]["score_seconds"]
                     if "full" in results else None)
    payload = {"machine": machine, "quick": args.quick, "recipe": recipe, "pretrained": str(base),
               "pretrain_seconds": pretrain_seconds,
               "pretrain_val_loss": min(m["val_loss"] for m in read_metrics(base / "metrics.jsonl") if "val_loss" in m),
               "full_pipeline_seconds": full_pipeline, "total_seconds": total, "test_sentences": test_sentences,
               "results": results}
    Path(args.out).with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print()
    print(table(results, recipe["beams"]))
    print(f"\npretraining {pretrain_seconds / 60:.1f} min (val loss {payload['pretrain_val_loss']:.3f}); "
          + (f"pretraining + full fine-tuning + scoring {full_pipeline / 60:.1f} min; " if full_pipeline else "")
          + f"benchmark so far {total / 60:.1f} min; {test_sentences} test sentences", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps: checks the wiring")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    parser.add_argument("--pretrain-budget", help="override the pretraining time budget (e.g. 15m)")
    parser.add_argument("--finetune-budget", help="override each fine-tuning time budget (e.g. 35m)")
    parser.add_argument("--pretrained", help="reuse this pretraining run (a previous run's <out>/pretrain) "
                        "instead of pretraining; its time is then read from its metrics")
    parser.add_argument("--adalora-steps", type=int, help="AdaLoRA's step count when lora is not in the same run "
                        "(default: the steps LoRA reached, else 3000)")
    parser.add_argument("--out", default=str(HERE / "out" / "finetune_multi30k"))
    args = parser.parse_args()
    from aigc.config import parse_duration

    recipe = json.loads(json.dumps(QUICK if args.quick else FULL))
    if args.pretrain_budget:
        recipe["pretrain"].pop("max_iters", None)
        recipe["pretrain"]["time_budget"] = parse_duration(args.pretrain_budget)
    if args.finetune_budget:
        recipe["finetune"].pop("max_iters", None)
        recipe["finetune"]["time_budget"] = parse_duration(args.finetune_budget)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    machine = {**describe(), "matmul_fp32_gflops": matmul_peak(torch.float32)}

    if args.pretrained:
        base = Path(args.pretrained).resolve()
        pretrain_seconds = max(m.get("elapsed", 0.0) for m in read_metrics(base / "metrics.jsonl"))
    else:
        base, pretrain_seconds = pretrain(recipe, work)
    sources, references = lines("test_2016_flickr.de.gz"), lines("test_2016_flickr.en.gz")
    if recipe["test_limit"]:
        sources, references = sources[:recipe["test_limit"]], references[:recipe["test_limit"]]
    results: dict[str, dict] = {}
    for method in methods:
        fixed_steps = results["lora"]["steps"] if method == "adalora" and "lora" in results else None
        if method == "adalora" and fixed_steps is None:
            fixed_steps = args.adalora_steps or recipe["finetune"].get("max_iters") or 3000
        run, seconds = finetune_method(recipe, base, method, work, fixed_steps)
        results[method] = {"finetune_seconds": seconds, **score(run, sources, references, recipe["beams"], work)}
        result, beam = results[method], f"beam{recipe['beams']}"
        result["score_seconds"] = result["greedy"]["decode_seconds"] + result[beam]["decode_seconds"]
        print(f"{method}: BLEU greedy {result['greedy']['bleu']:.2f}, {beam} {result[beam]['bleu']:.2f} "
              f"({result['greedy']['bleu_signature']})", flush=True)
        report(args, recipe, machine, base, pretrain_seconds, results, len(sources), time.perf_counter() - started)


if __name__ == "__main__":
    main()
