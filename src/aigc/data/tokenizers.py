"""Tokenizers: ``char`` (one token per character of the data) and byte-level ``bpe``.

Both are Hugging Face ``tokenizers`` objects underneath, saved as one ``tokenizer.json``
that ``transformers.PreTrainedTokenizerFast`` loads as it is:

- ``char``: a WordLevel model over the data's characters, with a pre-tokenizer that
  isolates every character and a decoder that fuses them back.
- ``bpe``: GPT-2's byte-level BPE (Sennrich et al. 2016; Radford et al. 2019) trained on the
  data. Its vocabulary always holds the 256 single-byte tokens, so *any* byte sequence,
  valid UTF-8 or not, encodes and decodes back exactly (:meth:`Tokenizer.encode_bytes`,
  :meth:`Tokenizer.decode_bytes`).
"""

from __future__ import annotations

import codecs
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from aigc.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
_INVALID_BYTES = re.compile("[\udc80-\udcff]+")  # bytes that are not UTF-8, after surrogateescape


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as text, or a UserError naming ``source`` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{source} is not UTF-8 text (bad byte at offset {exc.start}); "
                        "the char tokenizer needs text, use --tokenizer bpe for arbitrary bytes") from None


class Tokenizer:
    """Text <-> token ids, wrapping a Hugging Face ``tokenizers.Tokenizer``."""

    def __init__(self, backend: HFTokenizer):
        self.backend = backend
        model_type = json.loads(backend.to_str())["model"]["type"]
        self.kind = {"WordLevel": "char", "BPE": "bpe"}.get(model_type)
        if self.kind is None:
            raise UserError(f"unsupported tokenizer model {model_type!r} (aigc handles char and byte-level BPE)")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The bytes each token id stands for (used to decode exactly and to count bytes)."""
        vocab = self.backend.get_vocab()
        if self.kind == "char":
            return _ordered({i: s.encode("utf-8") for s, i in vocab.items()}, self.vocab_size)
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        special = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        table = {}
        for piece, i in vocab.items():
            if piece in special or any(c not in byte_of for c in piece):
                table[i] = piece.encode("utf-8")
            else:
                table[i] = bytes(byte_of[c] for c in piece)
        return _ordered(table, self.vocab_size)

    @cached_property
    def _char_ids(self) -> dict[str, int]:
        return self.backend.get_vocab()

    def encode(self, text: str) -> list[int]:
        if self.kind == "char":
            unknown = sorted(set(text) - self._char_ids.keys())
            if unknown:
                shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
                raise UserError(f"the text has {len(unknown)} character(s) missing from this run's char vocabulary: "
                                f"{shown}; remove them, or train with data that contains them or with --tokenizer bpe")
            ids = self._char_ids
            return [ids[c] for c in text]
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_bytes(self, data: bytes, source: str = "the data") -> list[int]:
        """Any bytes -> ids. With bpe, bytes that are not UTF-8 become their single-byte tokens."""
        if self.kind == "char":
            return self.encode(decode_utf8(data, source))
        text = data.decode("utf-8", errors="surrogateescape")  # bad byte b -> lone surrogate U+DC00+b
        byte_ids = [self._char_ids[c] for c in bytes_to_unicode().values()]
        ids: list[int] = []
        start = 0
        for match in _INVALID_BYTES.finditer(text):
            ids += self.encode(text[start:match.start()])
            ids += [byte_ids[ord(c) - 0xDC00] for c in match.group()]
            start = match.end()
        return ids + self.encode(text[start:])

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self.token_bytes
        return b"".join(table[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; byte sequences that are not UTF-8 show as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decode(self, ids: Iterable[int]) -> Iterator[str]:
        """Decode ids one at a time, yielding text as soon as whole characters are complete."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i in ids:
            text = decoder.decode(self.token_bytes[i])
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def save(self, path: str | Path) -> None:
        from aigc.runs import atomic_write

        atomic_write(path, lambda tmp: tmp.write_text(self.backend.to_str()))

    def to_str(self) -> str:
        return self.backend.to_str()

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"missing tokenizer file: {path}")
        try:
            backend = HFTokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as exc:  # OSError, UnicodeDecodeError, or the plain Exception of the Rust parser
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"corrupt tokenizer file {path}: {reason}") from None
        return cls(backend)


def _ordered(table: dict[int, bytes], size: int) -> list[bytes]:
    return [table.get(i, b"") for i in range(size)]


def train_char(text: str) -> Tokenizer:
    """One token per distinct character of ``text``, in code-point order."""
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()
    return Tokenizer(backend)


def train_bpe(data: bytes, vocab_size: int) -> Tokenizer:
    """Byte-level BPE with ``vocab_size`` tokens (at least the 256 bytes) learned from ``data``."""
    if vocab_size < 256:
        raise UserError(f"--vocab-size must be at least 256 for byte-level BPE, got {vocab_size}")
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = data.decode("utf-8", errors="surrogateescape")
    backend.train_from_iterator(_text_chunks(text), trainer=trainer)
    return Tokenizer(backend)


def _text_chunks(text: str, size: int = 1 << 16) -> Iterator[str]:
    """The valid-UTF-8 runs of ``text`` in pieces of about ``size`` characters, cut after newlines."""
    for run in _INVALID_BYTES.split(text):
        start = 0
        while start < len(run):
            end = run.find("\n", start + size)
            end = len(run) if end < 0 else end + 1
            yield run[start:end]
            start = end


# How each --tokenizer kind is trained: (data, vocab_size, source) -> tokenizer. char takes its
# vocabulary from the data and ignores vocab_size.
TRAINERS: dict[str, Callable[[bytes, int, str], Tokenizer]] = {
    "char": lambda data, vocab_size, source: train_char(decode_utf8(data, source)),
    "bpe": lambda data, vocab_size, source: train_bpe(data, vocab_size),
}


def train_tokenizer(kind: str, data: bytes, vocab_size: int, source: str = "the data") -> Tokenizer:
    if kind not in TRAINERS:
        raise UserError(f"unknown tokenizer {kind!r}; choose from {', '.join(TRAINERS)}")
    return TRAINERS[kind](data, vocab_size, source)


def token_array(ids: list[int], vocab_size: int) -> np.ndarray:
    """Ids as the smallest unsigned dtype that holds the vocabulary (uint16 for up to 65536 tokens)."""
    return np.asarray(ids, dtype=np.uint16 if vocab_size <= 1 << 16 else np.uint32)
