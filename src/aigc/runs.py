"""Run directories: atomic saves, safe loads, and the guard against mixing two runs.

A run directory holds ``config.json`` (everything needed to rebuild the model, with a
``kind`` such as ``"gan"`` or ``"gpt"``), ``checkpoints/`` and ``checkpoint.json``,
``metrics.jsonl``, ``tb/``, ``samples/`` and plots.

A checkpoint is one folder, ``checkpoints/step-NNNNNN/``, holding every file of that step:
the weights (``model.safetensors``, and per kind ``adapter.safetensors`` or
``discriminator.safetensors``), with the step in their metadata, and ``state.pt``
(optimizers, RNG and data position for ``--resume``). It is written under a temporary name
and renamed into place when complete; then ``checkpoint.json`` (``{"last": ..., "best":
...}``) is replaced in one ``os.replace``. Whenever a run is killed, the pointer names a
complete checkpoint, and all of a checkpoint's files belong to the same step. Folders the
pointer no longer names (and a killed save's leftovers) are removed at the next save.

Single files (config.json, plots, samples) are written to a temporary name in the same
folder and moved into place, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from aigc.errors import UserError
from aigc.outputs import output_dir

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"  # the loss curves of every run kind
POINTER_FILE = "checkpoint.json"
SAMPLES_DIR = "samples"  # samples/step_NNNNNN.png: what a trainer drew at a step, which the trackers show
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_CHOICES = ("best", "last")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# The modes open() and mkdir() would give (mkstemp's and mkdtemp's are private: 0600, 0700).
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` with a temporary path beside ``path``, then move it into place.

    A failure to write (a full disk, a read-only folder) is a UserError naming the file; the
    file that was there before is left as it was."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
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


def load_state(path: str | Path) -> dict:
    """A ``state.pt`` loaded as plain tensors and containers only (``weights_only``): a file
    that needs anything else (pickled code) is refused, never executed."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot resume: missing {path}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc).upper():  # a real pickle that needs more than tensors and containers
            raise UserError(f"{path} is not a plain tensor state (it holds other Python objects); "
                            "it was not loaded") from None
        raise UserError(f"corrupt resume state {path}: not a state file") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"corrupt resume state {path}: {first_line}") from None


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, dict], state: dict | None,
                    best: bool | None = None) -> Path:
    """Write one checkpoint of ``run_dir`` as a unit and point ``checkpoint.json`` at it.

    ``weights`` maps file names (``model.safetensors``, ...) to tensors; ``state`` goes into
    ``state.pt`` (None: an inference-only run, e.g. an import). ``best``: True if this is the
    best checkpoint so far, False to keep the current best, None when the run has no notion
    of best (then best is last). Returns the checkpoint folder."""
    from safetensors.torch import save_file

    import torch

    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    final = unique_dir(root / f"step-{step:06d}")  # a step saved twice keeps the first intact
    metadata = {"step": str(step)}
    try:
        root.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    except OSError as exc:
        raise UserError(f"cannot save a checkpoint in {root}: {exc.strerror or exc}") from None
    try:
        for name, tensors in weights.items():
            tensors = {key: t.detach().contiguous() for key, t in tensors.items()}
            save_file(tensors, str(tmp / name), metadata=metadata)
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        _sync_folder(tmp)
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot save the checkpoint of step {step} in {root}: {exc.strerror or exc}; "
                        "the previous checkpoint is kept") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = read_pointer(run_dir)
    keep_best = best is False and previous is not None and (root / previous["best"]).is_dir()
    pointer = {"step": step, "last": final.name, "best": previous["best"] if keep_best else final.name}
    save_json(run_dir / POINTER_FILE, pointer)
    _remove_stale(run_dir, pointer)
    return final


def _sync_folder(folder: Path) -> None:
    """fsync every file in ``folder``: a power cut after the rename must not find them empty."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(folder, DIR_MODE)


def _remove_stale(run_dir: Path, pointer: dict) -> None:
    """Remove checkpoints the pointer no longer names, leftovers of killed saves, and the
    resume state of a best checkpoint that is no longer the last (only the last resumes)."""
    root = run_dir / CHECKPOINTS_DIR
    for child in root.iterdir():
        if child.name not in (pointer["last"], pointer["best"]):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    if pointer["best"] != pointer["last"]:
        (root / pointer["best"] / STATE_FILE).unlink(missing_ok=True)
    for leftover in run_dir.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def read_pointer(run_dir: str | Path) -> dict | None:
    """``checkpoint.json`` of a run ({"step", "last", "best"}), None if it has no checkpoint yet."""
    path = Path(run_dir) / POINTER_FILE
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"corrupt {path}: {exc}") from None
    names_ok = isinstance(pointer, dict) and all(isinstance(pointer.get(k), str) and "/" not in pointer[k]
                                                  and not pointer[k].startswith(".") for k in ("last", "best"))
    if not names_ok:
        raise UserError(f"corrupt {path}: it does not name a last and a best checkpoint")
    return pointer


def checkpoint_dir(run_dir: str | Path, which: str = "last") -> Path:
    """The folder of a run's ``last`` or ``best`` checkpoint (a run without best tracking: its last)."""
    run_dir = Path(run_dir)
    pointer = read_pointer(run_dir)
    if pointer is None:
        raise UserError(f"{run_dir} has no checkpoint (no {POINTER_FILE}); was its training stopped "
                        "before the first save?")
    folder = run_dir / CHECKPOINTS_DIR / pointer[which]
    if not folder.is_dir():
        raise UserError(f"{run_dir}: the {which} checkpoint {folder} is missing")
    return folder


@contextmanager
def restoring_state(checkpoint: str | Path) -> Iterator[dict]:
    """The saved state of a checkpoint folder to restore a run from: an entry missing or of the
    wrong shape while it is put back means a damaged file, reported as one clear line."""
    path = Path(checkpoint) / STATE_FILE
    saved = load_state(path)
    try:
        yield saved
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"corrupt resume state {path}: {exc}") from None


def prepare_run_dir(out: str | Path, resume: bool) -> Path:
    """Check that ``out`` may take a new run, or holds a run when resuming; writes nothing
    (:func:`create_run_dir` makes the folder once everything the run needs has been checked).

    A new run never goes into a folder that already has files in it: that would mix two
    runs or overwrite a good checkpoint.
    """
    out = Path(out)
    if resume:
        pointer = read_pointer(out) if out.is_dir() else None
        if not (out / CONFIG_FILE).is_file() or pointer is None:
            raise UserError(f"cannot resume: {out} is not a run directory with a saved checkpoint")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; pass --resume to continue it, or choose another --out")
    return output_dir(out, "--out")  # its nearest existing folder must take it


def create_run_dir(out: Path) -> Path:
    """Make the folder of a new run (checked by :func:`prepare_run_dir`)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {out}: {exc.strerror or exc}") from None
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
