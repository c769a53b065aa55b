"""Compression measured against quality, in one run: size on disk, load time, decode speed and
quality of every variant of (a) the Shakespeare char GPT, (b) a GPT-2-small-shaped model
(124M, random weights) with ``transformers.generate`` fp32 on the same weights as the
reference, and (c) the conditional DCGAN.

    flock /tmp/aigc-bench.lock python benchmarks/compress.py [--parts a b c] [--skip-onnx]

Decode: batch 1 and batch 16, greedy, ``--tokens`` new tokens after an 8-token prompt, the
median of ``--repeats`` timed runs after one warm-up. Quality: validation perplexity on the
last 10% of Tiny Shakespeare (a); greedy agreement with fp32 and the largest logit difference
over the prompt (b: random weights have no perplexity worth the name); FID and C2ST against the
MNIST test set (c). Variants come from ``aigc compress`` (and ``aigc gpt export-onnx``) exactly as a
user runs them; torchao's int8 configs are measured in memory beside them, as the reason they
are not the ones used.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, matmul_peak_gflops, write_json  # noqa: E402
from _machine import memory_bandwidth  # noqa: E402

from aigc.cli import main as aigc  # noqa: E402
from aigc.gpt.generation import generate_tokens  # noqa: E402
from aigc.gpt.loading import load_gpt  # noqa: E402
from aigc.gpt.sampling import Sampling  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data"
SHAKESPEARE = SHARED / "shakespeare" / "input.txt"
MNIST_TEST = SHARED / "mnist"
GREEDY = Sampling(temperature=0)
# nanoGPT's CPU recipe, as benchmarks/gpt_shakespeare.py trains it
SHAKESPEARE_RECIPE = ["--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64", "--batch-size", "12",
                      "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-iters", "100", "--beta2", "0.99",
                      "--max-iters", "2000", "--eval-interval", "500", "--tokenizer", "char"]


def cli(*args) -> None:
    """Run an aigc command quietly; its failure stops the benchmark."""
    with contextlib.redirect_stdout(io.StringIO()):
        status = aigc([str(a) for a in args])
    if status:
        raise SystemExit(f"aigc {' '.join(map(str, args))} failed with status {status}")


def median_of(repeats: int, measure) -> float:
    return statistics.median(measure() for _ in range(repeats))


def decode_seconds(model, vocab: int, batch: int, tokens: int) -> float:
    """Seconds to decode ``tokens`` greedy tokens for ``batch`` rows after an 8-token prompt."""
    prompt = torch.randint(0, vocab, (batch, 8), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in generate_tokens(model, prompt, tokens, GREEDY):
        pass
    return time.perf_counter() - start


def decode_speed(model, vocab: int, batch: int, tokens: int, repeats: int) -> float:
    """Tokens per second summed over the batch, the median of ``repeats`` runs after a warm-up."""
    decode_seconds(model, vocab, batch, tokens)
    return median_of(repeats, lambda: batch * tokens / decode_seconds(model, vocab, batch, tokens))


def load_seconds(run: Path, dtype: str = "fp32") -> float:
    def once() -> float:
        start = time.perf_counter()
        load_gpt(run, dtype=dtype)
        return time.perf_counter() - start
    return median_of(3, once)


def weights_megabytes(run: Path) -> float:
    return sum(p.stat().st_size for p in run.glob("checkpoints/*/model.safetensors")) / 1e6


def gpt_variants(source: Path, work: Path, calibration: Path | None, recover_steps: int) -> dict[str, dict]:
    """name -> {"run": run dir, "dtype": decode dtype} for every compressed form of ``source``."""
    variants = {"fp32": {"run": source, "dtype": "fp32"}, "fp32 weights, default --dtype auto":
                {"run": source, "dtype": "auto"}}
    for scheme in ("bf16", "int8", "int8-dynamic"):
        cli("compress", "--run", source, "--out", work / scheme, "--quantize", scheme)
        variants[scheme] = {"run": work / scheme, "dtype": "fp32"}
    prune = ["--prune-heads", "0.25", "--prune-mlp", "0.25"]
    cli("compress", "--run", source, "--out", work / "pruned", *prune)
    variants["pruned 25%"] = {"run": work / "pruned", "dtype": "fp32"}
    if calibration is not None and recover_steps:
        recover = ["--calibration-data", calibration, "--recover-steps", recover_steps]
        cli("compress", "--run", source, "--out", work / "pruned-recovered", *prune, *recover)
        cli("compress", "--run", source, "--out", work / "pruned-recovered-int8", *prune, *recover,
            "--quantize", "int8")
        variants[f"pruned 25% + {recover_steps} recovery steps"] = {"run": work / "pruned-recovered", "dtype": "fp32"}
        variants[f"pruned 25% + {recover_steps} recovery steps, int8"] = {"run": work / "pruned-recovered-int8",
                                                                          "dtype": "fp32"}
    else:
        cli("compress", "--run", source, "--out", work / "pruned-int8", *prune, "--quantize", "int8")
        variants["pruned 25%, int8"] = {"run": work / "pruned-int8", "dtype": "fp32"}
    for name in ("fp32", "bf16", "int8"):  # `aigc gpt generate --compile`
        variants[f"{name}, --compile"] = {**variants[name], "compile": True}
    return variants


def new_tokens(args, model) -> int:
    """--tokens, or fewer where the context is shorter: decoding stays inside one window."""
    return min(args.tokens, model.config.block_size - 8)


def measure_gpt(variants: dict, args, quality) -> dict[str, dict]:
    rows = {}
    for name, v in variants.items():
        model = load_gpt(v["run"], dtype=v["dtype"], compile=v.get("compile", False)).model
        vocab, tokens = model.config.vocab_size, new_tokens(args, model)
        rows[name] = {"megabytes": weights_megabytes(v["run"]), "load_s": load_seconds(v["run"], v["dtype"]),
                      "params": model.num_params(), "new_tokens": tokens}
        if v.get("compile"):  # the first decode compiles the step: its time, beyond the decoding itself
            rows[name]["first_decode_s"] = decode_seconds(model, vocab, 1, tokens)
        rows[name] |= {"tokens_per_s_b1": decode_speed(model, vocab, 1, tokens, args.repeats),
                      "tokens_per_s_b16": decode_speed(model, vocab, 16, tokens, args.repeats),
                      **quality(model)}
        print(f"  {name}: {rows[name]}", flush=True)
    return rows


# ---------------------------------------------------------------- (a) Shakespeare

def shakespeare(args, work: Path) -> dict:
    from aigc.data import text
    from aigc.gpt.evaluate import EvalInput, perplexity

    source = Path(args.shakespeare_run) if args.shakespeare_run else work / "shakespeare"
    if not (source / "checkpoint.json").exists():
        start = time.perf_counter()
        cli("gpt", "train", "--data", SHAKESPEARE, "--out", source, "--device", "cpu", *SHAKESPEARE_RECIPE)
        print(f"(a) trained the Shakespeare GPT in {time.perf_counter() - start:.0f} s", flush=True)
    tokenizer = load_gpt(source).tokenizer
    val_tokens = text.split(text.encode_cached(SHAKESPEARE.read_bytes(), tokenizer))[1]
    train_part = work / "shakespeare-train.txt"  # recovery trains on the training 90% only
    train_part.write_bytes(SHAKESPEARE.read_bytes()[:int(0.9 * SHAKESPEARE.stat().st_size)])

    def quality(model) -> dict:
        return {"val_perplexity": perplexity(EvalInput(model, tokenizer, val_tokens, batch_size=64))["perplexity"]}

    rows = measure_gpt(gpt_variants(source, work / "a", train_part, args.recover_steps), args, quality)
    if not args.skip_onnx:
        rows.update(onnx_rows(source, work / "a", args, val_tokens))
    return {"source": str(source), "rows": rows}


def pruning_curve(args, work: Path) -> dict:
    """Perplexity against decode speed of (a) pruned by several ratios (heads and MLP channels
    alike), before and after recovery, with a plot into docs/img."""
    import matplotlib.pyplot as plt

    from aigc.data import text
    from aigc.gpt.evaluate import EvalInput, perplexity

    source = Path(args.shakespeare_run) if args.shakespeare_run else work / "shakespeare"
    if not (source / "checkpoint.json").exists():
        raise SystemExit("the pruning curve needs the Shakespeare run: run --parts a first (with --work)")
    tokenizer = load_gpt(source).tokenizer
    val_tokens = text.split(text.encode_cached(SHAKESPEARE.read_bytes(), tokenizer))[1]
    train_part = work / "shakespeare-train.txt"
    train_part.write_bytes(SHAKESPEARE.read_bytes()[:int(0.9 * SHAKESPEARE.stat().st_size)])
    points = []
    for ratio in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625):
        for steps in ((0,) if ratio == 0 else (0, args.recover_steps)):
            run = source
            if ratio:
                run = work / "curve" / f"{ratio}-{steps}"
                recover = ["--calibration-data", train_part, "--recover-steps", steps] if steps else []
                cli("compress", "--run", source, "--out", run, "--prune-heads", ratio, "--prune-mlp", ratio, *recover)
            model = load_gpt(run).model
            points.append({"ratio": ratio, "recover_steps": steps, "params": model.num_params(),
                           "tokens_per_s_b16": decode_speed(model, model.config.vocab_size, 16,
                                                            new_tokens(args, model), args.repeats),
                           "val_perplexity": perplexity(EvalInput(model, tokenizer, val_tokens,
                                                                  batch_size=64))["perplexity"]})
            print(f"  {points[-1]}", flush=True)
    figure, axis = plt.subplots(figsize=(6, 4))
    for steps, label in ((0, "pruned"), (args.recover_steps, f"pruned + {args.recover_steps} recovery steps")):
        chosen = [p for p in points if p["recover_steps"] == steps or p["ratio"] == 0]
        axis.plot([p["tokens_per_s_b16"] for p in chosen], [p["val_perplexity"] for p in chosen], "o-", label=label)
        for p in chosen:
            axis.annotate(f"{p['ratio']:g}", (p["tokens_per_s_b16"], p["val_perplexity"]), fontsize=8)
    axis.set_xlabel("decode tokens/s, batch 16")
    axis.set_ylabel("validation perplexity")
    axis.set_title("Shakespeare char GPT: heads and MLP channels pruned (fraction)")
    axis.legend()
    figure.tight_layout()
    picture = HERE.parent / "docs" / "img" / "compress-pruning.png"
    figure.savefig(picture, dpi=120)
    return {"points": points, "plot": str(picture)}


# ---------------------------------------------------------------- (b) GPT-2 small shape

def gpt2_small(args, work: Path) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    from aigc.data.tokenizers import train_tokenizer
    from aigc.gpt.hf import from_hf
    from aigc.gpt.loading import save_inference_run
    from aigc.runs import create_run_dir

    logging.set_verbosity_error()
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config(bos_token_id=None, eos_token_id=None, pad_token_id=None)).eval()
    source = create_run_dir(work / "gpt2-small")
    tokenizer = train_tokenizer("bpe", SHAKESPEARE.read_bytes()[:100_000], 300)  # decode speed ignores it
    save_inference_run(source, from_hf(hf_model), tokenizer)
    reference = load_gpt(source).model
    prompt = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(0))
    expected = [int(t) for t in generate_tokens(reference, prompt, args.tokens, GREEDY)]
    with torch.no_grad():
        expected_logits = reference(prompt)[0]

    def quality(model) -> dict:
        got = [int(t) for t in generate_tokens(model, prompt, args.tokens, GREEDY)]
        with torch.no_grad():
            difference = (model(prompt)[0].float() - expected_logits).abs().max().item()
        return {"greedy_agreement": sum(a == b for a, b in zip(got, expected)) / len(expected),
                "max_logit_difference": difference}

    variants = gpt_variants(source, work / "b", None, 0)
    rows = {"transformers.generate fp32": transformers_row(hf_model, args)}
    rows.update(measure_gpt(variants, args, quality))
    rows.update(torchao_rows(reference, args, quality))
    if not args.skip_onnx:
        rows.update(onnx_rows(source, work / "b", args, None))
    # The reference again at the end: the machine's speed drifts over the run.
    rows["transformers.generate fp32, again at the end"] = transformers_row(hf_model, args)
    reference_speed = statistics.mean(rows[f"transformers.generate fp32{when}"]["tokens_per_s_b1"]
                                      for when in ("", ", again at the end"))
    for row in rows.values():
        row["vs_transformers_b1"] = row["tokens_per_s_b1"] / reference_speed
    bandwidth = memory_bandwidth()
    return {"rows": rows, "memory_bandwidth_gb_s": bandwidth,
            "fp32_bandwidth_bound_tokens_per_s": bandwidth * 1e9 / (reference.num_params() * 4)}


def transformers_row(hf_model, args) -> dict:
    def speed(batch: int) -> float:
        prompt = torch.randint(0, 50257, (batch, 8), generator=torch.Generator().manual_seed(0))

        def once() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.tokens,
                                  min_new_tokens=args.tokens, do_sample=False)
            return batch * args.tokens / (time.perf_counter() - start)
        once()
        return median_of(args.repeats, once)

    row = {"tokens_per_s_b1": speed(1), "tokens_per_s_b16": speed(16)}
    print(f"  transformers.generate fp32: {row}", flush=True)
    return row


def torchao_rows(reference, args, quality) -> dict:
    """torchao 0.x's int8 configs on the same fp32 model, in memory (why they are not used)."""
    import copy

    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return {}
    rows = {}
    for name, config in (("torchao int8 weight-only", Int8WeightOnlyConfig()),
                         ("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig())):
        model = copy.deepcopy(reference)
        quantize_(model, config)
        rows[name] = {"tokens_per_s_b1": decode_speed(model, 50257, 1, args.tokens, args.repeats),
                      "tokens_per_s_b16": decode_speed(model, 50257, 16, args.tokens, args.repeats), **quality(model)}
        print(f"  {name}: {rows[name]}", flush=True)
    return rows


# ---------------------------------------------------------------- ONNX Runtime

def onnx_rows(source: Path, work: Path, args, val_tokens) -> dict:
    """The graph with its KV cache in ONNX Runtime, fp32 and ORT's dynamic int8."""
    import onnxruntime

    rows = {}
    for name, flags in (("ONNX Runtime fp32", []), ("ONNX Runtime int8", ["--quantize", "int8"])):
        path = work / (name.split()[-1] + ".onnx")
        start = time.perf_counter()
        cli("gpt", "export-onnx", "--run", source, "--out", path, *flags)
        export_s = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        start = time.perf_counter()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - start
        model = load_gpt(source).model
        rows[name] = {"megabytes": sum(p.stat().st_size for p in work.glob(path.name + "*")) / 1e6,
                      "load_s": load_s, "export_s": export_s,
                      "tokens_per_s_b1": ort_decode_speed(session, model, 1, new_tokens(args, model), args.repeats),
                      "tokens_per_s_b16": ort_decode_speed(session, model, 16, new_tokens(args, model),
                                                           args.repeats)}
        if val_tokens is not None:
            rows[name]["val_perplexity"] = ort_perplexity(session, model, val_tokens)
        print(f"  {name}: {rows[name]}", flush=True)
    return rows


def ort_decode_speed(session, model, batch: int, tokens: int, repeats: int) -> float:
    from aigc.compress.onnx import OUTPUTS, empty_past

    prompt = torch.randint(0, model.config.vocab_size, (batch, 8), generator=torch.Generator().manual_seed(0)).numpy()

    def once() -> float:
        keys, values = (t.numpy() for t in empty_past(model, batch))
        idx = prompt
        start = time.perf_counter()
        for _ in range(tokens):
            logits, keys, values = session.run(OUTPUTS, {"input_ids": idx, "past_keys": keys, "past_values": values})
            idx = logits[:, -1].argmax(axis=-1)[:, None]
        return batch * tokens / (time.perf_counter() - start)

    once()
    return median_of(repeats, once)


def ort_perplexity(session, model, val_tokens: np.ndarray) -> float:
    """exp(mean next-token cross-entropy) over non-overlapping windows, as aigc gpt eval tiles them."""
    from aigc.compress.onnx import OUTPUTS, empty_past
    from aigc.data import text

    block = model.config.block_size
    windows = text.tiling_windows(val_tokens, block)
    nll, count = 0.0, 0
    for x, y in windows:  # (T,) each: one sequence at a time
        keys, values = (t.numpy() for t in empty_past(model, 1))
        logits = torch.from_numpy(session.run(OUTPUTS, {"input_ids": x[None], "past_keys": keys,
                                                        "past_values": values})[0])
        target = torch.from_numpy(y[None])
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum").item()
        count += target.numel()
    return float(np.exp(nll / count))


# ---------------------------------------------------------------- (c) conditional DCGAN

def dcgan(args, work: Path) -> dict:
    from aigc.gan.config import GanEvalConfig
    from aigc.gan.evaluate import evaluate_run
    from aigc.gan.generation import generate_images
    from aigc.gan.loading import load_gan

    source = Path(args.gan_run) if args.gan_run else work / "cdcgan"
    if not (source / "checkpoint.json").exists():
        cli("gan", "train", "--model", "dcgan", "--conditional", "--steps", args.gan_steps, "--out", source,
            "--device", "cpu", "--no-guide")  # the compressed runs sample plain: so does the source
    cli("compress", "--run", source, "--out", work / "cdcgan-bf16", "--quantize", "bf16")
    rows = {}
    for name, run in (("fp32", source), ("bf16", work / "cdcgan-bf16")):
        loaded = load_gan(run)
        labels = torch.arange(250) % 10

        def once() -> float:
            start = time.perf_counter()
            generate_images(loaded.generator, loaded.model_config, 250, labels, seed=0, batch_size=250)
            return 250 / (time.perf_counter() - start)

        once()
        with contextlib.redirect_stdout(io.StringIO()):
            judged = evaluate_run(GanEvalConfig(run=str(run), ref=str(MNIST_TEST), n=args.gan_n, device="cpu",
                                                json=str(work / f"cdcgan-{name}.json")))
        generator_bytes = sum(t.numel() * t.element_size() for t in loaded.generator.state_dict().values())
        rows[name] = {"generator_megabytes": generator_bytes / 1e6, "file_megabytes": weights_megabytes(run),
                      "images_per_s": median_of(args.repeats, once),
                      "fid": judged["model"]["fid"], "fid_floor": judged["real_floor"]["fid"],
                      "c2st": judged["model"]["c2st_accuracy"],
                      "label_accuracy": judged["model"]["label_accuracy"]}
        print(f"  {name}: {rows[name]}", flush=True)
    return {"source": str(source), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["a", "p", "b", "c"], choices=["a", "p", "b", "c"],
                        help="a, b, c: the three models; p: the pruning curve of (a)")
    parser.add_argument("--shakespeare-run", help="a trained run of the Shakespeare recipe (default: train one)")
    parser.add_argument("--gan-run", help="a trained conditional DCGAN run (default: train one)")
    parser.add_argument("--gan-steps", type=int, default=1500)
    parser.add_argument("--gan-n", type=int, default=2000, help="samples per GAN evaluation")
    parser.add_argument("--recover-steps", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--work", help="keep the trained and compressed runs here (a rerun reuses the trained "
                                       "ones; default: a temporary folder)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    payload = {"args": vars(args), "matmul_gflops": {"fp32": matmul_peak_gflops(torch.float32),
                                                     "bf16": matmul_peak_gflops(torch.bfloat16)},
               "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(f"machine: {machine()}; {payload['matmul_gflops']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for name in ("a", "b", "curve", "gpt2-small", "cdcgan-bf16"):  # compressed (and random) runs are made afresh
            shutil.rmtree(work / name, ignore_errors=True)
        for part, measure in (("a", shakespeare), ("p", pruning_curve), ("b", gpt2_small), ("c", dcgan)):
            if part in args.parts:
                print(f"({part})", flush=True)
                payload[part] = measure(args, work)
    print(f"wrote {write_json('compress', payload)}")


if __name__ == "__main__":
    main()
