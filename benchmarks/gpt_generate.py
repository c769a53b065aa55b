"""GPT decoding speed: (i) KV cache vs full recomputation on the Shakespeare model, 500 new
tokens; (ii) a GPT-2-small-shaped model (12 layers, 768 wide, vocabulary 50257, random
weights) against ``transformers`` ``generate`` on the same weights, greedy, 200 new tokens.

    flock /tmp/aigc-bench.lock python benchmarks/gpt_generate.py [--run RUN]

``--run`` takes a trained Shakespeare run (e.g. one kept by ``gpt_shakespeare.py --keep-run``);
without it, a randomly initialised model of the same shape is timed (decode speed does not
depend on the weights' values). Batch size 1 throughout. Targets: (i) cache >= 2x
recomputation; (ii) >= 1.5x transformers. Bound for (ii): weight bytes read per token over
the measured memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine as describe, machine_line  # noqa: E402
from _machine import memory_bandwidth  # noqa: E402

from aigc.gpt.generation import Sampling, generate_tokens  # noqa: E402
from aigc.gpt.loading import in_decode_dtype  # noqa: E402
from aigc.gpt.model import GPT, GPTConfig  # noqa: E402


def tokens_per_second(model: GPT, prompt: torch.Tensor, new_tokens: int, sampling: Sampling,
                      use_cache: bool) -> tuple[float, list[int]]:
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    tokens = [int(t) for t in generate_tokens(model, prompt, new_tokens, sampling, generator, use_cache)]
    return new_tokens / (time.perf_counter() - start), tokens


def best_of(repeats: int, measure) -> tuple[float, list[int]]:
    results = [measure() for _ in range(repeats)]
    return max(r[0] for r in results), results[0][1]


def shakespeare(run: str | None, new_tokens: int, repeats: int) -> dict:
    if run:
        from aigc.gpt.loading import load_gpt

        model = load_gpt(run).model
        what = f"trained run {run}"
    else:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)).eval()
        what = "random weights, Shakespeare shape"
    prompt = torch.zeros(1, 1, dtype=torch.long)
    sampling = Sampling(temperature=0.8, top_k=None)
    cached, _ = best_of(repeats, lambda: tokens_per_second(model, prompt, new_tokens, sampling, True))
    recomputed, _ = best_of(repeats, lambda: tokens_per_second(model, prompt, new_tokens, sampling, False))
    return {"model": what, "new_tokens": new_tokens, "kv_cache_tokens_per_s": cached,
            "recompute_tokens_per_s": recomputed, "speedup": cached / recomputed}


def gpt2_small(new_tokens: int, repeats: int, bandwidth: float) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    from aigc.gpt.hf import from_hf

    logging.set_verbosity_error()
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config(bos_token_id=None, eos_token_id=None, pad_token_id=None)).eval()
    model = from_hf(hf_model)
    prompt = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(0))

    def ours() -> tuple[float, list[int]]:
        return tokens_per_second(model, prompt, new_tokens, Sampling(temperature=0), True)

    def theirs() -> tuple[float, list[int]]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                    min_new_tokens=new_tokens, do_sample=False, use_cache=True)
        return new_tokens / (time.perf_counter() - start), out[0, prompt.size(1):].tolist()

    ours_speed, ours_tokens = best_of(repeats, ours)
    hf_speed, hf_tokens = best_of(repeats, theirs)
    default_model = GPT(model.config).eval()  # what `aigc gpt generate` runs by default (--dtype auto)
    default_model.load_weights(model.weights())
    default_model = in_decode_dtype(default_model, "auto")
    default_speed, default_tokens = best_of(
        repeats, lambda: tokens_per_second(default_model, prompt, new_tokens, Sampling(temperature=0), True))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"new_tokens": new_tokens, "params": model.num_params(), "weight_bytes": weight_bytes,
            "aigc_tokens_per_s": ours_speed, "transformers_tokens_per_s": hf_speed, "speedup": ours_speed / hf_speed,
            "default_dtype": str(default_model.activation_dtype), "default_tokens_per_s": default_speed,
            "default_speedup": default_speed / hf_speed,
            "default_same_tokens_fraction": sum(a == b for a, b in zip(default_tokens, hf_tokens)) / len(hf_tokens),
            "same_tokens": ours_tokens == hf_tokens, "memory_bandwidth_gb_s": bandwidth,
            "bandwidth_bound_tokens_per_s": bandwidth * 1e9 / weight_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained Shakespeare GPT run (default: random weights of that shape)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    parser.add_argument("--shakespeare-tokens", type=int, default=500)
    parser.add_argument("--gpt2-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(HERE / "out" / "gpt_generate.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = describe()
    bandwidth = memory_bandwidth()
    small = shakespeare(args.run, args.shakespeare_tokens, args.repeats)
    big = gpt2_small(args.gpt2_tokens, args.repeats, bandwidth)
    print(f"machine: {machine_line(machine)}; memory bandwidth {bandwidth:.1f} GB/s")
    print(f"(i) {small['model']}, {small['new_tokens']} tokens: KV cache {small['kv_cache_tokens_per_s']:.0f} "
          f"tokens/s, recompute {small['recompute_tokens_per_s']:.0f} tokens/s -> {small['speedup']:.2f}x "
          "(target >= 2x; nanoGPT sampling without cache: 589 tokens/s)")
    print(f"(ii) GPT-2-small shape ({big['params'] / 1e6:.0f}M params, {big['weight_bytes'] / 1e6:.0f} MB fp32), "
          f"greedy {big['new_tokens']} tokens: aigc {big['aigc_tokens_per_s']:.1f} tokens/s, transformers "
          f"{big['transformers_tokens_per_s']:.1f} tokens/s -> {big['speedup']:.2f}x (target >= 1.5x); "
          f"same tokens: {big['same_tokens']}; bandwidth bound {big['bandwidth_bound_tokens_per_s']:.1f} tokens/s")
    print(f"    default path (--dtype auto: {big['default_dtype']}): {big['default_tokens_per_s']:.1f} tokens/s -> "
          f"{big['default_speedup']:.2f}x transformers; greedy tokens equal to fp32's: "
          f"{big['default_same_tokens_fraction']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "shakespeare": small, "gpt2_small": big, "args": vars(args),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
