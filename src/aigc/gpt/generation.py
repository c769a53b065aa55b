"""Generating text with a GPT: token-by-token sampling with a KV cache (the loop is
:func:`aigc.gpt.sampling.sample_tokens`, shared with the text GAN), and beam search.

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
from aigc.gpt.model import GPT
from aigc.gpt.sampling import Sampling, next_token, sample_tokens


@torch.inference_mode()
def generate_tokens(model: GPT, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling,
                    generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens next tokens (B,) continuing idx (B, T).

    ``use_cache=False`` recomputes the whole (cropped) context for every token; it is the
    reference the cached path is tested against.
    """
    block = model.config.block_size
    if not use_cache:
        history = idx
        for _ in range(max_new_tokens):
            logits, _ = model(history[:, -block:])  # (B, T, V)
            token = next_token(logits[:, -1], history, sampling, generator)
            history = torch.cat([history, token[:, None]], dim=1)
            yield token
        return
    cache = model.new_cache(idx.size(0))
    logits, _ = model(idx[:, -block:], cache=cache)  # (B, T, V)
    tokens = torch.cat([idx, idx.new_empty(idx.size(0), max_new_tokens)], dim=1)  # (B, T + max_new_tokens)
    yield from sample_tokens(model, cache, logits[:, -1], tokens, idx.size(1), sampling, generator)


@torch.inference_mode()
def beam_search(model: GPT, idx: torch.Tensor, max_new_tokens: int, beams: int = 1, length_penalty: float = 1.0,
                stop_tokens: torch.Tensor | None = None) -> list[list[int]]:
    """The best continuation of each prompt in idx (B, T) (prompts of one length) by beam search.

    Every step keeps, per prompt, the ``beams`` highest-scoring sequences (sum of token
    log-probabilities). A beam that emits a token of ``stop_tokens`` (bool (V,)) is finished: it
    keeps its score and place, extended by a free filler token. At the end the beam with the
    highest score / length ** length_penalty wins (Wu et al. 2016, with their alpha as the
    exponent). With one beam this is greedy decoding. Returns each winner's tokens, stop token
    included. Generation stops at the context length (no sliding window).
    """
    B, T = idx.shape
    k, V = beams, model.config.vocab_size
    steps = min(max_new_tokens, model.config.block_size - T)
    if steps <= 0:
        raise UserError(f"a prompt of {T} tokens leaves no room in the context of {model.config.block_size}")
    stop = torch.zeros(V, dtype=torch.bool, device=idx.device) if stop_tokens is None else stop_tokens.to(idx.device)
    cache = model.new_cache(B * k)
    logits, _ = model(idx.repeat_interleave(k, dim=0), cache=cache)  # (B*k, T, V)
    scores = torch.full((B, k), float("-inf"), device=idx.device)
    scores[:, 0] = 0.0  # all beams hold the same prompt: start from one
    tokens = idx.new_zeros(B * k, 0)
    lengths = torch.zeros(B * k, dtype=torch.long, device=idx.device)
    done = torch.zeros(B * k, dtype=torch.bool, device=idx.device)
    rows = torch.arange(B, device=idx.device)[:, None] * k  # (B, 1): the first beam row of each prompt
    for _ in range(steps):
        logp = logits[:, -1].float().log_softmax(dim=-1)  # (B*k, V)
        logp[done] = float("-inf")
        logp[done, 0] = 0.0  # a finished beam goes on only with a free filler token
        total = (scores.reshape(-1, 1) + logp).view(B, k * V)
        scores, best = total.topk(k, dim=1)  # (B, k)
        origin = (rows + best // V).view(-1)  # (B*k,): the beam each new one extends
        token = (best % V).view(-1)
        tokens = torch.cat([tokens[origin], token[:, None]], dim=1)
        lengths = lengths[origin] + (~done[origin]).long()
        done = done[origin] | stop[token]
        if done.all():
            break
        cache.reorder(origin)
        logits, _ = model(token[:, None], cache=cache)
    normalised = scores.view(-1) / lengths.clamp(min=1).float() ** length_penalty
    winners = (rows.view(-1) + normalised.view(B, k).argmax(dim=1)).tolist()
    return [tokens[w, :lengths[w]].tolist() for w in winners]


@dataclass
class Completion:
    """One continuation of a prompt, with what an OpenAI-style completion reports about it."""

    text: str  # cut before the first stop string
    finish_reason: str  # "stop": a stop string ended it; "length": max_new_tokens ran out
    prompt_tokens: int
    completion_tokens: int  # generated tokens, up to the one that completed the stop string


class StopText:
    """One row's continuation, decoded token by token (UTF-8, incrementally) and cut before the
    first stop string.

    Text is released once no stop string can start in it: all but the last len(longest stop) - 1
    characters are. Only those held-back characters and the new piece are searched, so the work
    is linear in the length of the output (re-decoding the whole row after every token is not).
    """

    def __init__(self, token_bytes: list[bytes], stops: list[str]):
        self.token_bytes, self.stops = token_bytes, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""  # decoded but not yet released: where a stop string might begin
        self.tokens = 0  # tokens read, up to the one that completed a stop string
        self.stopped = False

    def add(self, token: int) -> str:
        """Read one more token; return the text it releases. Tokens after a stop are ignored."""
        if self.stopped:
            return ""
        self.tokens += 1
        return self._release(self.decoder.decode(self.token_bytes[token]), final=False)

    def finish(self) -> str:
        """The text still held back, once no token follows."""
        if self.stopped:
            return ""
        return self._release(self.decoder.decode(b"", final=True), final=True)

    def _release(self, piece: str, final: bool) -> str:
        text = self.held + piece
        found = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if found:
            self.stopped, self.held = True, ""
            return text[:min(found)]
        kept = 0 if final else min(self.hold, len(text))
        self.held = text[len(text) - kept:]
        return text[:len(text) - kept]


def _stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if "" in stops:
        raise UserError("a stop string is empty; give at least one character")
    return stops


class Generator:
    """A loaded GPT and its tokenizer, ready to continue prompts."""

    def __init__(self, model: GPT, tokenizer: Tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = model.device

    @classmethod
    def from_run(cls, run: str, checkpoint: str = "best", device: str = "auto", dtype: str = "auto",
                 compile: bool = False) -> "Generator":
        """Load a run to generate with (``dtype``: see :func:`aigc.gpt.loading.decode_dtype`;
        ``compile``: see :meth:`aigc.gpt.model.GPT.compile_decoding`)."""
        from aigc.gpt.loading import load_gpt

        loaded = load_gpt(run, checkpoint, resolve_device(device), dtype=dtype, compile=compile)
        return cls(loaded.model, loaded.tokenizer)

    def _prompt_ids(self, prompt: str, num_samples: int) -> torch.Tensor:
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty; give at least one character")
        return torch.tensor([ids] * num_samples, device=self.device)  # (num_samples, T)

    def stream(self, prompt: str, max_new_tokens: int = 200, sampling: Sampling | None = None,
               stop: str | list[str] | None = None, seed: int = 0) -> Iterator[str]:
        """Yield the continuation of ``prompt`` piece by piece as tokens are generated, ending
        before the first stop string."""
        _check_max_new_tokens(max_new_tokens)
        text = StopText(self.tokenizer.token_bytes, _stop_strings(stop))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for token in generate_tokens(self.model, self._prompt_ids(prompt, 1), max_new_tokens,
                                     sampling or Sampling(), generator):
            piece = text.add(int(token))
            if piece:
                yield piece
            if text.stopped:
                return
        tail = text.finish()
        if tail:
            yield tail

    def completions(self, prompt: str, max_new_tokens: int = 200, sampling: Sampling | None = None,
                    stop: str | list[str] | None = None, num_samples: int = 1, seed: int = 0) -> list[Completion]:
        """``num_samples`` continuations of ``prompt`` (generated as one batch), each cut before its
        first stop string, with why it ended and its token counts."""
        _check_max_new_tokens(max_new_tokens)
        stops = _stop_strings(stop)
        idx = self._prompt_ids(prompt, num_samples)  # (num_samples, T)
        rows = [StopText(self.tokenizer.token_bytes, stops) for _ in range(num_samples)]
        pieces: list[list[str]] = [[] for _ in rows]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for token in generate_tokens(self.model, idx, max_new_tokens, sampling or Sampling(), generator):
            for row, row_pieces, t in zip(rows, pieces, token.tolist()):
                row_pieces.append(row.add(t))
            if stops and all(row.stopped for row in rows):
                break
        return [Completion("".join(row_pieces) + row.finish(), "stop" if row.stopped else "length",
                           prompt_tokens=idx.size(1), completion_tokens=row.tokens)
                for row, row_pieces in zip(rows, pieces)]

    def generate(self, prompt: str, max_new_tokens: int = 200, sampling: Sampling | None = None,
                 stop: str | list[str] | None = None, num_samples: int = 1, seed: int = 0) -> list[str]:
        """The texts of :meth:`completions`."""
        return [c.text for c in self.completions(prompt, max_new_tokens, sampling, stop, num_samples, seed)]

    def stop_tokens(self, stop: str) -> torch.Tensor:
        """bool (V,): the tokens whose text contains ``stop`` (with BPE a token may hold more than it)."""
        needle = stop.encode("utf-8")
        flags = [needle in piece for piece in self.tokenizer.token_bytes]
        flags += [False] * (self.model.config.vocab_size - len(flags))
        return torch.tensor(flags, device=self.device)

    def complete(self, prompts: list[str], max_new_tokens: int = 128, beams: int = 1, length_penalty: float = 1.0,
                 stop: str = "\n", batch_size: int = 32) -> list[str]:
        """The best completion of each prompt by beam search (``beams=1``: greedy), cut at ``stop``.

        Prompts of the same token length are decoded together; a prompt longer than the context
        keeps its last block_size - 1 tokens.
        """
        _check_max_new_tokens(max_new_tokens)
        stop_tokens = self.stop_tokens(stop)
        encoded = [self.tokenizer.encode(p)[-(self.model.config.block_size - 1):] for p in prompts]
        if not all(encoded):
            raise UserError("a prompt is empty; give at least one character")
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(encoded):
            by_length.setdefault(len(ids), []).append(i)
        results: list[str] = [""] * len(prompts)
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                chosen = group[start:start + batch_size]
                idx = torch.tensor([encoded[i] for i in chosen], device=self.device)  # (B, T)
                for i, ids in zip(chosen, beam_search(self.model, idx, max_new_tokens, beams, length_penalty,
                                                      stop_tokens)):
                    text = self.tokenizer.decode(ids)
                    results[i] = text[:text.index(stop)] if stop in text else text
        return results


def _check_max_new_tokens(n: int) -> None:
    if n <= 0:
        raise UserError(f"max_new_tokens must be positive, got {n}")


def generate(run: str, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             stop: str | list[str] | None = None, num_samples: int = 1, seed: int = 0, checkpoint: str = "best",
             device: str = "auto", dtype: str = "auto", compile: bool = False) -> list[str]:
    """Continue ``prompt`` with the GPT in run directory ``run``; returns ``num_samples`` texts."""
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    generator = Generator.from_run(run, checkpoint, device, dtype, compile)
    return generator.generate(prompt, max_new_tokens, sampling, stop, num_samples, seed)


def generate_command(config) -> None:
    """``aigc gpt generate``: print the samples (or stream one)."""
    generator = Generator.from_run(config.run, config.checkpoint, config.device, config.dtype, config.compile)
    sampling = Sampling(config.temperature, config.top_k, config.top_p, config.repetition_penalty)
    if config.stream:
        sys.stdout.write(config.prompt)
        for piece in generator.stream(config.prompt, config.max_new_tokens, sampling, config.stop, config.seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    if config.beams:
        completion = generator.complete([config.prompt], config.max_new_tokens, config.beams, config.length_penalty,
                                        config.stop or "\n")[0]
        print(config.prompt + completion)
        return
    samples = generator.generate(config.prompt, config.max_new_tokens, sampling, config.stop,
                                 config.num_samples, config.seed)
    for i, sample in enumerate(samples):
        if config.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(config.prompt + sample)
