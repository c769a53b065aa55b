"""Run directories: atomic saves, safe loads, and the guard against mixing two runs.

A run directory holds ``config.json`` (everything needed to rebuild the model, with a
``kind`` such as ``"gan"`` or ``"gpt"``), ``model.safetensors`` (weights, with the step in
its metadata), ``state.pt`` (optimizer, step, RNG and data position for ``--resume``),
``metrics.jsonl``, ``tb/``, ``samples/`` and plots. Every file is written to a temporary
name in the same folder and moved into place with ``os.replace``, so a crash never leaves a
half-written file behind and never destroys the previous good one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from aigc.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"


def _file_mode() -> int:
    """The mode ``open()`` would give a new file (mkstemp's is 0600, private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` with a temporary path beside ``path``, then move it into place."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def save_weights(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: str | Path) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of a safetensors file; a corrupt file is a UserError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing weights file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"corrupt weights file {path}: {exc}") from None


def save_state(path: str | Path, state: dict) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot resume: missing {path}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"corrupt resume state {path}: {exc}") from None


@contextmanager
def restoring_state(run_dir: str | Path) -> Iterator[dict]:
    """The saved state of ``run_dir`` to restore a run from: an entry missing or of the wrong
    shape while it is put back means a damaged file, reported as one clear line."""
    path = Path(run_dir) / STATE_FILE
    saved = load_state(path)
    try:
        yield saved
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"corrupt resume state {path}: {exc}") from None


def prepare_run_dir(out: str | Path, resume: bool) -> Path:
    """Create ``out`` for a new run, or check it holds a run when resuming.

    A new run never goes into a folder that already has files in it: that would mix two
    runs or overwrite a good checkpoint.
    """
    out = Path(out)
    if resume:
        if not (out / CONFIG_FILE).is_file() or not (out / STATE_FILE).is_file():
            raise UserError(f"cannot resume: {out} is not a run directory with a saved state")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_run_config(run: str | Path, kind: str | tuple[str, ...]) -> dict:
    """The ``config.json`` of a run directory, checked to be of ``kind`` (or one of several)."""
    run = Path(run)
    path = run / CONFIG_FILE
    if not run.is_dir():
        raise UserError(f"run directory not found: {run}")
    if not path.is_file():
        raise UserError(f"{run} is not a run directory (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"corrupt {path}: {exc}") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise UserError(f"{path} does not describe an aigc run")
    kinds = (kind,) if isinstance(kind, str) else kind
    if config["kind"] not in kinds:
        raise UserError(f"{run} holds a {config['kind']!r} run, not a {' or '.join(map(repr, kinds))} run")
    return config


def unique_dir(base: str | Path) -> Path:
    """``base`` if it does not exist yet, else ``base-2``, ``base-3``, ..."""
    base = Path(base)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
