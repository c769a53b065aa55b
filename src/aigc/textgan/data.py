"""Training sequences for the text GAN: token ids or words, as a fixed-length id matrix.

Two kinds of data, one ``Codec`` for each (saved into the run as ``vocab.json``):

- ``ids``: one sequence a line of integer token ids in ``[0, vocab_size)``, all of the same
  length (the SeqGAN oracle's format). The generator's extra token ``bos`` = vocab_size.
- ``words``: one sentence a line, split on spaces (the COCO captions are already tokenized).
  The vocabulary is the training file's words plus ``<eos>`` (ends a sentence and pads it to
  the fixed length, as Texygen does), ``<unk>`` (for words of other files it has never seen)
  and the start token ``bos``.
- ``tokenizer``: lines of text in the tokens of a pretrained GPT run (``--base GPT_RUN``); the
  newline token ends and pads a line, and the start token is one id past the GPT's vocabulary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aigc.data.tokenizers import TOKENIZER_FILE, Tokenizer
from aigc.errors import UserError

VOCAB_FILE = "vocab.json"
EOS, UNK = "<eos>", "<unk>"


@dataclass
class Codec:
    kind: str  # "ids", "words" or "tokenizer"
    size: int  # tokens the data may contain (ids: the id range; words: words + <eos> + <unk>; the GPT's vocabulary)
    words: list[str] | None = None
    tokenizer: Tokenizer | None = field(default=None, repr=False)

    @property
    def bos(self) -> int:
        """The generator's start token, never part of a sequence."""
        return self.size

    @property
    def model_vocab(self) -> int:
        return self.size + 1

    @property
    def eos(self) -> int | None:
        if self.tokenizer is not None:
            newline = self.tokenizer.encode("\n")
            return newline[0] if len(newline) == 1 else None
        return self.words.index(EOS) if self.words else None

    @classmethod
    def from_sentences(cls, sentences: list[list[str]]) -> "Codec":
        words = sorted({w for s in sentences for w in s})
        return cls("words", len(words) + 2, [*words, EOS, UNK])

    def encode(self, sentences: list[list[str]], length: int) -> torch.Tensor:
        """Sentences -> (N, length) ids, each ended and padded by <eos> (or the newline token);
        unknown words -> <unk>."""
        if self.tokenizer is not None:
            rows = [self.tokenizer.encode(" ".join(sentence)) for sentence in sentences]
        else:
            index = {w: i for i, w in enumerate(self.words)}
            rows = [[index.get(w, index[UNK]) for w in sentence] for sentence in sentences]
        out = torch.full((len(sentences), length), self.eos, dtype=torch.long)
        for i, row in enumerate(rows):
            if len(row) >= length:
                raise UserError(f"a sentence of {len(row)} tokens does not fit the generator's context of "
                                f"{length} tokens (with its end token)")
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def decode(self, tokens: torch.Tensor) -> list[list[str]]:
        """(N, L) ids -> sentences: words up to the first <eos> (ids: the ids as strings)."""
        if self.kind == "ids":
            return [[str(t) for t in row] for row in tokens.tolist()]
        if self.tokenizer is not None:
            rows = [row[:row.index(self.eos)] if self.eos in row else row for row in tokens.tolist()]
            return [self.tokenizer.decode(row).split() for row in rows]
        sentences = []
        for row in tokens.tolist():
            words = [self.words[t] for t in row]
            sentences.append(words[:words.index(EOS)] if EOS in words else words)
        return sentences

    def save(self, run_dir: Path) -> None:
        from aigc.runs import save_json

        save_json(run_dir / VOCAB_FILE, {"kind": self.kind, "size": self.size, "words": self.words})
        if self.tokenizer is not None:
            self.tokenizer.save(run_dir / TOKENIZER_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> "Codec":
        path = run_dir / VOCAB_FILE
        try:
            saved = json.loads(path.read_text())
            kind, size, words = saved["kind"], saved["size"], saved["words"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"missing or corrupt {path}: {exc}") from None
        problem = _vocabulary_problem(kind, size, words)
        if problem:
            raise UserError(f"corrupt {path}: {problem}")
        tokenizer = Tokenizer.load(run_dir / TOKENIZER_FILE) if kind == "tokenizer" else None
        return cls(kind, size, words, tokenizer)


def _vocabulary_problem(kind: object, size: object, words: object) -> str | None:
    """What is wrong with a saved vocabulary, or None."""
    if kind not in ("ids", "words", "tokenizer"):
        return f"unknown vocabulary kind {kind!r}"
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return f"the size must be a positive integer, not {size!r}"
    if kind != "words":
        return None if words is None else "only a word vocabulary lists words"
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words) or len(set(words)) != len(words):
        return "the words must be a list of distinct strings"
    if len(words) != size or words[-2:] != [EOS, UNK]:
        return f"a word vocabulary of size {size} lists {size} words ending in {EOS}, {UNK}"
    return None


def read_lines(path: str | Path) -> list[list[str]]:
    """The non-empty lines of a text file, split on whitespace."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data not found: {path}")
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"data {path} is empty")
    return lines


def is_ids(lines: list[list[str]]) -> bool:
    """Whether every token is a decimal integer in ASCII digits (``str.isdigit`` also takes '²' or '٣',
    which are not ids)."""
    return all(_DECIMAL.fullmatch(token) for line in lines for token in line)


_DECIMAL = re.compile(r"-?[0-9]+")


def ids_tensor(lines: list[list[str]], vocab_size: int, source: str) -> torch.Tensor:
    """Lines of integer ids -> (N, L); different lengths or ids outside the vocabulary are a UserError."""
    length = len(lines[0])
    for number, line in enumerate(lines, 1):
        if len(line) != length:
            raise UserError(f"{source} line {number} has {len(line)} tokens, line 1 has {length}; "
                            "token-id data needs sequences of one length")
    for number, line in enumerate(lines, 1):  # in Python ints first: an id past int64 is just out of range
        bad = next((t for t in line if not _DECIMAL.fullmatch(t) or not 0 <= int(t) < vocab_size), None)
        if bad is not None and not _DECIMAL.fullmatch(bad):
            raise UserError(f"{source} line {number} has {bad[:30]!r}, not a token id (a decimal integer)")
        if bad is not None:
            raise UserError(f"{source} line {number} has token id {bad[:30]} outside the vocabulary [0, {vocab_size})")
    return torch.from_numpy(np.array(lines, dtype=np.int64))
