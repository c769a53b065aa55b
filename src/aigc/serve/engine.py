"""The batching engine: continuous batching of GPT completions. It knows nothing of HTTP.

One engine serves one model, from one thread of its own. Each step of its loop:

1. admits waiting sequences while rows are free: a prompt is prefilled alone in its own
   :class:`~aigc.gpt.model.KVCache` (the computation of generating it alone) and copied into a
   row of the batch cache (:class:`~aigc.gpt.model.BatchKVCache`);
2. picks every running row's next token from that row's logits, with the row's own sampling
   settings and its own random generator (seeded per sequence, so a seed gives the same text
   whatever else shares the batch);
3. reports each token, and frees at once the rows that finished (a stop string, max tokens)
   or were cancelled (a client that went away);
4. feeds the new tokens of all remaining rows through the model in one forward pass.

So a request that arrives while others decode joins at the next step, and one that ends
leaves without waiting for the others. Past the context the window slides as in
:mod:`aigc.gpt.generation`: a full row is rebuilt from its last three quarters.

Callers hand in :class:`Sequence` objects and receive :class:`Event` objects through each
sequence's ``on_event`` callback, called on the engine's thread.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from aigc.data.tokenizers import Tokenizer
from aigc.errors import UserError
from aigc.gpt.generation import StopText
from aigc.gpt.model import GPT, MATVEC_ROWS
from aigc.gpt.sampling import Sampling, next_token

# Why a sequence ended: as OpenAI reports it, plus "abort" when the server cut it at shutdown.
STOP, LENGTH, ABORT = "stop", "length", "abort"


class QueueFull(Exception):
    """More sequences are waiting than the engine's ``max_queue``."""


class EngineClosed(Exception):
    """The engine is shutting down and takes no new sequences."""


@dataclass
class TokenLogprob:
    """One generated token with its log-probability under the model (temperature 1) and the
    ``k`` likeliest alternatives."""

    token: str
    logprob: float
    top: dict[str, float]


@dataclass
class Event:
    """What a step produced for one sequence: newly released text (possibly empty while a stop
    string might be starting), the new token's log-probabilities if asked for, and on the last
    event why it finished."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)  # compared by identity: two identical requests are two sequences
class Sequence:
    """One continuation to generate, as a client asked for it."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    on_event: Callable[[Event], None]
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    logprobs: int | None = None  # top-k alternatives per token; None: no log-probabilities
    cancelled: bool = False  # set by cancel(); the engine frees the row at its next step


class _Row:
    """The engine's state for one running sequence."""

    def __init__(self, sequence: Sequence, token_bytes: list[bytes], device: torch.device):
        self.sequence = sequence
        prompt = len(sequence.prompt_ids)
        self.tokens = torch.zeros(1, prompt + sequence.max_tokens, dtype=torch.long, device=device)  # (1, N)
        self.tokens[0, :prompt] = torch.tensor(sequence.prompt_ids, device=device)
        self.length = prompt  # tokens so far, prompt included
        self.text = StopText(token_bytes, sequence.stop)
        self.generator = torch.Generator(device=device).manual_seed(sequence.seed)
        self.logits: torch.Tensor | None = None  # (1, V): predict the next token

    @property
    def generated(self) -> int:
        return self.length - len(self.sequence.prompt_ids)


class Engine:
    """Decodes the sequences of one GPT together, up to ``max_batch`` at a time."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch: int = 16, max_queue: int = 64):
        """``max_queue``: sequences that may wait for a row beyond the ``max_batch`` running. A model
        whose decoding is compiled (``load_gpt(..., compile=True)``) is compiled here for every
        batch shape, before the engine takes sequences."""
        if max_batch < 1 or max_queue < 0:
            raise UserError(f"need max_batch >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = model.device
        self.block_size = model.config.block_size
        # Each token's bytes; ids past the tokenizer's (a vocabulary padded for speed) decode to nothing.
        self.token_bytes = tokenizer.token_bytes + [b""] * (model.config.vocab_size - tokenizer.vocab_size)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._rows: list[_Row] = []  # _rows[b] runs in row b of the batch cache
        self._cache = model.new_batch_cache(max_batch)
        self._wake = threading.Condition()
        self._closing = False
        self._cut = False
        if model.decoding_compiled:
            self._compile_steps()
        self._thread = threading.Thread(target=self._loop, name="aigc-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ what callers use

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def encode(self, prompt: str) -> list[int]:
        """A prompt's token ids; an empty prompt, unknown characters or more tokens than the
        context are a UserError."""
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty; give at least one character")
        if len(ids) > self.block_size:
            raise UserError(f"the prompt has {len(ids)} tokens but this model's context is {self.block_size}; "
                            "shorten it (generation itself may run past the context: the window slides)")
        return ids

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue ``sequences`` (all or none); they start at the engine's next step."""
        for sequence in sequences:
            if not 1 <= len(sequence.prompt_ids) <= self.block_size:
                raise UserError(f"a prompt must have 1 to {self.block_size} tokens, got {len(sequence.prompt_ids)}")
            if sequence.max_tokens < 1:
                raise UserError(f"max_tokens must be positive, got {sequence.max_tokens}")
        with self._wake:
            if self._closing:
                raise EngineClosed("the server is shutting down")
            free = self.max_batch + self.max_queue - len(self._rows) - len(self._waiting)
            if len(sequences) > free:  # rows, then the queue behind them, are full
                raise QueueFull(f"the queue is full ({len(self._rows)} running, {len(self._waiting)} waiting, "
                                f"at most {self.max_batch} + {self.max_queue})")
            self._waiting.extend(sequences)
            self._wake.notify()

    def cancel(self, sequence: Sequence) -> None:
        """Drop ``sequence``: a waiting one is never started, a running one frees its row at the
        next step. No further event is sent for it."""
        sequence.cancelled = True
        with self._wake:
            if sequence in self._waiting:
                self._waiting.remove(sequence)

    def close(self, grace: float = 0.0) -> None:
        """Take no new sequences; let running and waiting ones finish for up to ``grace``
        seconds, then end the rest with finish reason "abort", and stop the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=grace)
        with self._wake:
            self._cut = True
            self._wake.notify()
        self._thread.join()

    @torch.inference_mode()
    def _compile_steps(self) -> None:
        """Run the compiled decoding step (:meth:`GPT.compile_decoding`) once on every batch shape
        the engine will feed it, through the engine's own cache, so that no request waits for a
        compile: torch.compile specializes one row, and a few rows against more
        (:data:`~aigc.gpt.model.MATVEC_ROWS`). The rows are freed again; what they wrote stays
        behind the mask."""
        for rows in sorted({1, min(2, self.max_batch), min(MATVEC_ROWS + 1, self.max_batch)}):
            for _ in range(rows):
                prompt = self.model.new_cache(1)
                self.model(torch.zeros(1, 1, dtype=torch.long, device=self.device), cache=prompt)
                self._cache.add(prompt)
            self.model.decode(torch.zeros(rows, 1, dtype=torch.long, device=self.device), self._cache)
            while self._cache.rows:
                self._cache.remove(self._cache.rows - 1)

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._rows or self._closing):
                    self._wake.wait()
                if self._cut or (self._closing and not (self._waiting or self._rows)):
                    break
            self._step()
        for row in self._rows:
            if not row.sequence.cancelled:
                row.sequence.on_event(self._last_event(row, row.text.finish(), [], ABORT))
        for sequence in self._waiting:
            if not sequence.cancelled:
                sequence.on_event(Event("", [], ABORT, len(sequence.prompt_ids), 0))
        self._rows.clear()
        self._waiting.clear()

    @torch.inference_mode()
    def _step(self) -> None:
        self._admit()
        events: list[tuple[Sequence, Event]] = []
        for b in reversed(range(len(self._rows))):  # backwards: removing row b moves only a later row
            row = self._rows[b]
            event = None if row.sequence.cancelled else self._pick_next(row)
            if event is None or event.finish_reason is not None:
                self._remove(b)  # freed before the client hears that it finished
            if event is not None:
                events.append((row.sequence, event))
        for sequence, event in reversed(events):
            sequence.on_event(event)
        if self._rows:
            self._feed()

    def _admit(self) -> None:
        while len(self._rows) < self.max_batch:
            with self._wake:
                if not self._waiting:
                    return
                sequence = self._waiting.popleft()
            row = _Row(sequence, self.token_bytes, self.device)
            cache = self.model.new_cache(1)
            row.logits = self.model(row.tokens[:, :row.length], cache=cache)[0][:, -1]  # (1, V)
            self._cache.add(cache)
            self._rows.append(row)

    def _pick_next(self, row: _Row) -> Event:
        """Sample the row's next token; the event reporting it says whether the sequence finished."""
        sequence = row.sequence
        token = next_token(row.logits, row.tokens[:, :row.length], sequence.sampling, row.generator)  # (1,)
        row.tokens[0, row.length] = token[0]
        row.length += 1
        logprobs = [] if sequence.logprobs is None else [self._logprob(row.logits[0], int(token), sequence.logprobs)]
        text = row.text.add(int(token))
        if row.text.stopped:
            return self._last_event(row, text, logprobs, STOP)
        if row.generated == sequence.max_tokens:
            return self._last_event(row, text + row.text.finish(), logprobs, LENGTH)
        return Event(text, logprobs)

    def _last_event(self, row: _Row, text: str, logprobs: list[TokenLogprob], finish_reason: str) -> Event:
        return Event(text, logprobs, finish_reason, len(row.sequence.prompt_ids), row.text.tokens)

    def _logprob(self, logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
        logp = logits.float().log_softmax(dim=-1)  # (V,)
        top = logp.topk(min(k, logp.numel())) if k > 0 else None
        alternatives = {} if top is None else {
            self._token_text(int(i)): float(v) for v, i in zip(top.values, top.indices)}
        return TokenLogprob(self._token_text(token), float(logp[token]), alternatives)

    def _token_text(self, token: int) -> str:
        return self.token_bytes[token].decode("utf-8", errors="replace")

    def _remove(self, b: int) -> None:
        self._cache.remove(b)
        last = self._rows.pop()
        if b < len(self._rows):
            self._rows[b] = last  # the cache moved the last row into row b too

    def _feed(self) -> None:
        """One forward pass: each row's newest token, each after its own tokens."""
        keep = max(1, self.block_size - self.block_size // 4)
        for b, (row, length) in enumerate(zip(self._rows, self._cache.lengths)):
            if length == self.block_size:
                # Full: slide the window. Rebuild the row from its last `keep` tokens but the
                # newest, which the batched pass below appends as for every other row.
                cache = self.model.new_cache(1)
                self.model(row.tokens[:, row.length - keep:row.length - 1], cache=cache)
                self._cache.replace(b, cache)
        newest = torch.stack([row.tokens[0, row.length - 1] for row in self._rows])[:, None]  # (rows, 1)
        logits = self.model.decode(newest, self._cache)[:, -1]  # (rows, V)
        for b, row in enumerate(self._rows):
            row.logits = logits[b:b + 1]

