"""Experiment trackers: where a run's metrics go besides metrics.jsonl (``--tracker``).

- ``tensorboard``: scalars and sample grids under ``RUN/tb/`` (``tensorboard --logdir RUN/tb``).
- ``wandb``: Weights & Biases, the optional extra ``pip install "aigc[wandb]"``. It logs the
  same scalars as metrics.jsonl, the run's config.json and the sample grids as images. It
  runs **offline** unless ``WANDB_MODE`` says otherwise, so a training command never waits on
  a login or the network: its files go to ``RUN/wandb/`` (or ``$WANDB_DIR``) and
  ``wandb sync RUN/wandb/offline-run-*`` uploads them later; with ``WANDB_MODE=online`` (after
  ``wandb login``) it streams as it trains. The project is ``$WANDB_PROJECT`` or ``aigc``; the
  W&B run id is kept in ``RUN/wandb.json``, so a resumed run logs to the same W&B run.

metrics.jsonl is always written: it is the run's own record, which the trackers mirror.
Torch-free at import (the flag's parser is used by ``aigc --help``); the tracker libraries
are imported only when a run opens them.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

from aigc.errors import UserError

TRACKERS = ("tensorboard", "wandb")
NONE = "none"
WANDB_ID_FILE = "wandb.json"
WANDB_INSTALL = 'pip install "aigc[wandb]" (or pip install wandb)'


def parse_trackers(text: str) -> str:
    """``--tracker`` text -> its normal form: a comma list of known trackers, or ``none``.
    Raises ValueError for an unknown name (argparse turns it into a one-line usage error)."""
    names = [name.strip().lower() for name in str(text).split(",") if name.strip()]
    if not names:
        raise ValueError("give a tracker: " + ", ".join(TRACKERS + (NONE,)))
    unknown = [name for name in names if name not in TRACKERS + (NONE,)]
    if unknown:
        raise ValueError(f"unknown tracker {unknown[0]!r}: choose from {', '.join(TRACKERS + (NONE,))} "
                         "(a comma list for several)")
    if NONE in names and len(names) > 1:
        raise ValueError("'none' cannot be combined with other trackers")
    return ",".join(dict.fromkeys(names))  # duplicates dropped, order kept


def tracker_names(text: str) -> tuple[str, ...]:
    """The trackers that ``--tracker`` (or a config made in Python) names; () for ``none``."""
    try:
        normal = parse_trackers(text)
    except ValueError as exc:
        raise UserError(f"--tracker {text}: {exc}") from None
    return () if normal == NONE else tuple(normal.split(","))


def check_available(names: tuple[str, ...]) -> None:
    """Refuse, before a run writes anything, a tracker whose library is not installed."""
    if "wandb" in names:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError(f"--tracker wandb needs the wandb package, which is not installed: {WANDB_INSTALL}") \
                from None


def numeric(values: dict) -> dict[str, float]:
    """The finite numbers of a metrics line: what a tracker plots (flags such as ``partial`` and
    text such as a phase name stay in metrics.jsonl only)."""
    return {name: value for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class TensorBoard:
    """Scalars and images for TensorBoard under ``RUN/tb/``; a resume purges the steps logged
    after its checkpoint. Without the tensorboard package it does nothing (it is a dependency)."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._writer = None
            return
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

    def image(self, step: int, name: str, path: Path) -> None:
        if self._writer is not None:
            import numpy as np
            from PIL import Image

            with Image.open(path) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            self._writer.add_image(name, pixels, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class WandB:
    """One Weights & Biases run per aigc run (offline unless ``WANDB_MODE`` says otherwise)."""

    def __init__(self, run_dir: Path, resume_step: int | None, config: dict):
        import wandb

        from aigc.runs import save_json

        run_dir = Path(run_dir)
        id_file = run_dir / WANDB_ID_FILE
        saved = json.loads(id_file.read_text()) if resume_step is not None and id_file.exists() else {}
        run_id = saved.get("id") or secrets.token_hex(4)  # W&B's own ids are 8 of [0-9a-z] too
        try:
            self._run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "aigc", name=run_dir.name, id=run_id, resume="allow",
                dir=os.environ.get("WANDB_DIR") or str(run_dir), config=config,
                mode=os.environ.get("WANDB_MODE") or "offline",
                settings=wandb.Settings(console="off", save_code=False, silent=True))
        except wandb.errors.Error as exc:  # e.g. WANDB_MODE=online without a login
            raise UserError(f"--tracker wandb: {exc}") from None
        save_json(id_file, {"id": run_id, "project": self._run.project})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._run.log(values, step=step)

    def image(self, step: int, name: str, path: Path) -> None:
        import wandb

        self._run.log({name: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self._run.finish()


def open_trackers(names: tuple[str, ...], run_dir: Path, resume_step: int | None, config: dict) -> list:
    """The trackers ``names`` for ``run_dir``; ``resume_step`` is the checkpoint a resume starts
    from (None for a new run); ``config`` is what W&B records as the run's config."""
    opened = []
    try:
        for name in names:
            opened.append(TensorBoard(run_dir, resume_step) if name == "tensorboard"
                          else WandB(run_dir, resume_step, config))
    except BaseException:
        for tracker in opened:
            tracker.close()
        raise
    return opened
