"""Text data for language models: read a corpus, encode it once into a cached token memmap,
split it, and draw (input, target) windows.

The default corpus ships with every Python install: the English text of the Python
language reference in the standard library's ``pydoc_data.topics`` (about 465 KB).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from aigc.data.files import read_bytes
from aigc.data.tokenizers import Tokenizer, token_array
from aigc.errors import UserError
from aigc.training.samplers import RandomBatches

DEFAULT_CORPUS = "pydoc_data.topics (the Python language reference, bundled with Python)"
VAL_FRACTION = 0.1


def default_corpus() -> bytes:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def read_text(path: str | Path | None) -> bytes:
    """The bytes of a text file, of every ``.txt`` file under a folder (sorted, concatenated),
    or of the default corpus when ``path`` is None."""
    if path is None:
        return default_corpus()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"no .txt files in data folder {path}")
        data = b"".join(_read_file(p) for p in files)
    elif path.is_file():
        data = _read_file(path)
    else:
        raise UserError(f"data not found: {path}")
    if not data:
        raise UserError(f"data {path} is empty")
    return data


def _read_file(path: Path) -> bytes:
    return read_bytes(path)  # gzip is decompressed; a damaged file is a UserError


def cache_dir() -> Path:
    """Where encoded corpora are cached: $AIGC_CACHE_DIR, else $XDG_CACHE_HOME/aigc, else ~/.cache/aigc."""
    if os.environ.get("AIGC_CACHE_DIR"):
        return Path(os.environ["AIGC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aigc"


def _cache_setting() -> str:
    return "$AIGC_CACHE_DIR" if os.environ.get("AIGC_CACHE_DIR") else \
        "$XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "the home folder's .cache"


def encode_cached(data: bytes, tokenizer: Tokenizer, source: str = "the data") -> np.ndarray:
    """``data`` encoded by ``tokenizer`` as a read-only memmap of token ids.

    Cached under a key that hashes both the data and the tokenizer, so a change to either
    encodes again.
    """
    key = hashlib.sha256(data).hexdigest()[:16] + "-" + hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]
    dtype = token_array([], tokenizer.vocab_size).dtype
    path = cache_dir() / "tokens" / f"{key}.{dtype.name}"
    if not path.is_file():
        from aigc.runs import atomic_write

        from aigc.outputs import cache_folder

        cache_folder(path.parent, _cache_setting())
        ids = token_array(tokenizer.encode_bytes(data, source), tokenizer.vocab_size)
        atomic_write(path, lambda tmp: ids.tofile(tmp))
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def split(tokens: np.ndarray, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) for training, the rest for validation."""
    cut = int(len(tokens) * (1 - val_fraction))
    return tokens[:cut], tokens[cut:]


def check_length(tokens: np.ndarray, block_size: int, what: str) -> None:
    if len(tokens) < block_size + 1:
        raise UserError(f"{what} has {len(tokens)} tokens, fewer than one block ({block_size} + 1); "
                        "give more data or a smaller --block-size")


def windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and next-token targets y, both (B, T), for windows starting at ``starts`` (B,)."""
    chunk = torch.from_numpy(tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


def fixed_windows(tokens: np.ndarray, block_size: int, batch_size: int, batches: int,
                  seed: int = 1234) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same ``batches`` random batches every time (for comparable validation losses)."""
    sampler = RandomBatches(len(tokens) - block_size, batch_size, seed)  # starts that leave room for the target
    return [windows(tokens, sampler.next().numpy(), block_size) for _ in range(batches)]


def tiling_windows(tokens: np.ndarray, block_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive windows that predict every token after the first exactly once.

    Returns (x, y) int64 arrays of length <= block_size; the last window may be shorter.
    """
    out = []
    for start in range(0, len(tokens) - 1, block_size):
        end = min(start + block_size, len(tokens) - 1)
        x = np.asarray(tokens[start:end], dtype=np.int64)
        y = np.asarray(tokens[start + 1:end + 1], dtype=np.int64)
        out.append((x, y))
    return out
