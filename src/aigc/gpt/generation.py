"""Generating text with a GPT: token-by-token sampling with a KV cache.

``Generator`` holds a loaded model and tokenizer (load once, generate many times, e.g. in a
server); :func:`generate` is the one-call Python API and :func:`generate_command` the CLI.
Prompts longer than the model's context keep only their last ``block_size`` tokens, and
generation continues past the context with a sliding window: when the cache is full it is
rebuilt from the last three quarters of the context.
"""

from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass
from typing import Iterator

import torch

from aigc.data.tokenizers import Tokenizer
from aigc.devices import resolve_device
from aigc.errors import UserError
from aigc.gpt.model import GPT, KVCache


@dataclass
class Sampling:
    """How the next token is picked from the logits."""

    temperature: float = 0.8  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0


def next_token(logits: torch.Tensor, history: torch.Tensor, sampling: Sampling,
               generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V), history (B, t) of tokens so far -> next tokens (B,)."""
    logits = logits.float()
    if sampling.repetition_penalty != 1.0:
        # CTRL's penalty (Keskar et al. 2019): make tokens already present less likely.
        seen = logits.gather(1, history)  # (B, t)
        penalised = torch.where(seen > 0, seen / sampling.repetition_penalty, seen * sampling.repetition_penalty)
        logits = logits.scatter(1, history, penalised)
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.size(-1):
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        # Nucleus sampling (Holtzman et al. 2020): the fewest tokens whose probabilities reach top_p.
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs > sampling.top_p  # mass before this token already reaches p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(outside, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


@torch.inference_mode()
def generate_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling,
                    generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next tokens (B,) continuing idx (B, T).

    ``use_cache=False`` recomputes the whole (cropped) context for every token; it is the
    reference the cached path is tested against.
    """
    block = model.config.block_size
    history = idx
    if not use_cache:
        for _ in range(max_new_tokens):
            logits, _ = model(history[:, -block:])  # (B, T, V)
            token = next_token(logits[:, -1], history, sampling, generator)
            history = torch.cat([history, token[:, None]], dim=1)
            yield token
        return
    weight = model.transformer.wte.weight
    cache = KVCache(model.config, idx.size(0), weight.device, weight.dtype)
    logits, _ = model(idx[:, -block:], cache=cache)
    for i in range(max_new_tokens):
        token = next_token(logits[:, -1], history, sampling, generator)
        history = torch.cat([history, token[:, None]], dim=1)
        yield token
        if i == max_new_tokens - 1:
            return
        if cache.length == block:  # full: slide the window, rebuilding the cache from the last 3/4
            cache.length = 0
            logits, _ = model(history[:, -max(1, block - block // 4):], cache=cache)
        else:
            logits, _ = model(token[:, None], cache=cache)


class Generator:
    """A loaded GPT and its tokenizer, ready to continue prompts."""

    def __init__(self, model: GPT, tokenizer: Tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = model.transformer.wte.weight.device

    @classmethod
    def from_run(cls, run: str, checkpoint: str = "best", device: str = "auto") -> "Generator":
        from aigc.gpt.checkpoints import load_run

        model, tokenizer, _ = load_run(run, checkpoint, resolve_device(device))
        return cls(model, tokenizer)

    def _prompt_ids(self, prompt: str, num_samples: int) -> torch.Tensor:
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty; give at least one character")
        return torch.tensor([ids] * num_samples, device=self.device)  # (num_samples, T)

    def stream(self, prompt: str, max_new_tokens: int = 200, sampling: Sampling | None = None,
               stop: str | None = None, seed: int = 0) -> Iterator[str]:
        """Yield the continuation of ``prompt`` piece by piece as tokens are generated."""
        _check_max_new_tokens(max_new_tokens)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        tokens = generate_tokens(self.model, self._prompt_ids(prompt, 1), max_new_tokens,
                                 sampling or Sampling(), generator)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, shown = "", 0
        for token in tokens:
            text += decoder.decode(self.tokenizer.token_bytes[int(token)])
            if stop is not None and stop in text:
                yield text[shown:text.index(stop)]
                return
            # Hold back a tail that could be the start of the stop string.
            safe = len(text) - (len(stop) - 1 if stop else 0)
            if safe > shown:
                yield text[shown:safe]
                shown = safe
        text += decoder.decode(b"", final=True)
        if len(text) > shown:
            yield text[shown:]

    def generate(self, prompt: str, max_new_tokens: int = 200, sampling: Sampling | None = None,
                 stop: str | None = None, num_samples: int = 1, seed: int = 0) -> list[str]:
        """``num_samples`` continuations of ``prompt`` (generated as one batch)."""
        _check_max_new_tokens(max_new_tokens)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        rows: list[list[int]] = [[] for _ in range(num_samples)]
        for token in generate_tokens(self.model, self._prompt_ids(prompt, num_samples), max_new_tokens,
                                     sampling or Sampling(), generator):
            for row, t in zip(rows, token.tolist()):
                row.append(t)
            if stop is not None and all(stop in self.tokenizer.decode(row) for row in rows):
                break
        texts = [self.tokenizer.decode(row) for row in rows]
        return [t[:t.index(stop)] if stop is not None and stop in t else t for t in texts]


def _check_max_new_tokens(n: int) -> None:
    if n <= 0:
        raise UserError(f"max_new_tokens must be positive, got {n}")


def generate(run: str, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             stop: str | None = None, num_samples: int = 1, seed: int = 0, checkpoint: str = "best",
             device: str = "auto") -> list[str]:
    """Continue ``prompt`` with the GPT in run directory ``run``; returns ``num_samples`` texts."""
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    return Generator.from_run(run, checkpoint, device).generate(prompt, max_new_tokens, sampling, stop,
                                                                num_samples, seed)


def generate_command(config) -> None:
    """``aigc gpt generate``: print the samples (or stream one)."""
    generator = Generator.from_run(config.run, config.checkpoint, config.device)
    sampling = Sampling(config.temperature, config.top_k, config.top_p, config.repetition_penalty)
    if config.stream:
        sys.stdout.write(config.prompt)
        for piece in generator.stream(config.prompt, config.max_new_tokens, sampling, config.stop, config.seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    samples = generator.generate(config.prompt, config.max_new_tokens, sampling, config.stop,
                                 config.num_samples, config.seed)
    for i, sample in enumerate(samples):
        if config.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(config.prompt + sample)
