"""Progress reporting, metrics.jsonl, TensorBoard and loss plots for training recipes."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Iterable

from aigc.runs import METRICS_FILE


class MetricsLog:
    """Appends ``{"step": ..., **values}`` lines to metrics.jsonl and scalars to TensorBoard.

    On resume, lines logged after the resumed checkpoint are dropped first, and so is a
    ``partial`` line (a run's last, incomplete averaging window) at the checkpoint itself:
    the window goes on in the resumed run, so the file reads like one uninterrupted run.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _kept_on_resume(json.loads(line), resume_step)]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = None if resume_step is None else resume_step + 1
                self._writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def log(self, step: int, **values: float) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _kept_on_resume(entry: dict, resume_step: int) -> bool:
    step = entry.get("step", 0)
    return step < resume_step or (step == resume_step and not entry.get("partial"))


class RunningMeans:
    """Sums of logged values since the last metrics line; resumable with the run."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.count = {}, 0

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.count = dict(state["sums"]), state["count"]


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Progress:
    """A tqdm bar on a terminal; plain periodic log lines otherwise (readable CI logs)."""

    def __init__(self, total: int, desc: str, initial: int = 0, every_seconds: float = 10.0):
        self.total, self.desc, self.every_seconds = total, desc, every_seconds
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
        self._step = initial
        self._last_print = time.monotonic()

    def update(self, step: int, **postfix: float) -> None:
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
        if self._bar is not None:
            self._bar.update(step - self._step)
            if postfix:
                self._bar.set_postfix(shown, refresh=False)
        elif time.monotonic() - self._last_print >= self.every_seconds or step == self.total:
            items = " ".join(f"{k}={v}" for k, v in shown.items())
            print(f"{self.desc} {step}/{self.total} {items}", file=sys.stderr, flush=True)
            self._last_print = time.monotonic()
        self._step = step

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def plot_metrics(metrics: list[dict], keys: Iterable[str], out: Path, title: str = "") -> None:
    """One line per key against step, saved as a PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aigc.runs import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in keys:
        points = [(m["step"], m[key]) for m in metrics if key in m and m[key] is not None]
        if points:
            ax.plot(*zip(*points), label=key, linewidth=1)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
