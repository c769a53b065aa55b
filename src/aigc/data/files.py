"""Reading a data file whole, gzip or not: one place where unreadable or damaged files become
one clear error (no torch import)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from aigc.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """The bytes of ``path``, decompressed when they are gzip (told by the magic number, whatever the
    name). A file that cannot be read, or a damaged or truncated gzip stream, is a UserError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a damaged body is zlib's
        raise UserError(f"cannot read {path}: damaged or truncated gzip data ({exc})") from None
