"""Where commands write: one check for every output path a user names (no torch import).

A command that writes a file (``gan sample --out``, ``gan eval --json``, ``gpt eval --json``)
or a folder (``gpt export-hf --out``) calls :func:`output_file` or :func:`output_dir` before
any expensive work, so a bad location is one clear line, not a traceback after minutes of
work, and so no command ever writes over a file that belongs to a run directory (its weights,
its config.json, ...) unless that file is the command's own documented output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from aigc.errors import UserError

RUN_CONFIG = "config.json"  # a folder holding one with a "kind" key is a run directory (aigc.runs)


def owning_run(path: str | Path) -> Path | None:
    """The run directory that ``path`` lies in (``path`` itself or its nearest ancestor folder
    holding a config.json with a ``kind``), or None."""
    for folder in [Path(path), *Path(path).parents]:
        config = folder / RUN_CONFIG
        try:
            if config.is_file() and "kind" in json.loads(config.read_text(encoding="utf-8")):
                return folder
        except (OSError, ValueError, TypeError):  # unreadable or not a JSON object: not a run we know
            continue
    return None


def _absolute(path: Path) -> Path:
    """``path`` made absolute with its links resolved, without requiring that it exists."""
    return Path(os.path.realpath(path))


def _check_writable_folder(folder: Path, what: str) -> None:
    if not folder.exists():
        raise UserError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{what}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write in {folder} (permission denied or read-only)")


def output_file(path: str | Path, flag: str, allowed: Iterable[str | Path] = ()) -> Path:
    """Check that ``path`` (given as ``flag``, e.g. ``"--out"``) can be written as a file, and return it.

    Refused: an existing folder, a parent folder that is missing, is a file or cannot be written in,
    and an existing file inside a run directory (it belongs to the run), unless it is one of
    ``allowed`` (the command's own default output, such as ``RUN/eval.json``, that it rewrites).
    """
    path = Path(path).expanduser()
    what = f"{flag} {path}"
    if path.is_dir():
        raise UserError(f"{what} is a folder; name a file")
    if not path.name or path.name in (".", ".."):
        raise UserError(f"{what}: name a file")
    _check_writable_folder(path.parent, what)
    if path.exists() or path.is_symlink():
        target = _absolute(path)
        run = owning_run(target.parent)
        if run is not None and target not in {_absolute(Path(p).expanduser()) for p in allowed}:
            raise UserError(f"{what} would overwrite {target.relative_to(run)}, a file of the run in {run}; "
                            "choose another name")
    return path


def output_dir(path: str | Path, flag: str) -> Path:
    """Check that ``path`` can be created as a new folder (or is an empty one), and return it.

    Refused: an existing file, a folder that is not empty (a run directory above all), and a path
    whose nearest existing ancestor is a file or cannot be written in."""
    path = Path(path).expanduser()
    what = f"{flag} {path}"
    if path.is_dir():
        if any(path.iterdir()):
            kind = "is a run directory" if owning_run(path) == path else "already exists and is not empty"
            raise UserError(f"{what} {kind}; choose a new folder")
        _check_writable_folder(path, what)
        return path
    if path.exists() or path.is_symlink():
        raise UserError(f"{what} is a file, not a folder")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    _check_writable_folder(ancestor, what)
    return path


def cache_folder(path: Path, where: str) -> Path:
    """Create the cache folder ``path`` (chosen by ``where``, e.g. ``$XDG_CACHE_HOME``) and return it;
    a location that cannot be a folder is a UserError naming the setting to change."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use the cache folder {path} (from {where}): {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in the cache folder {path} (from {where}); set {where} to another folder")
    return path
