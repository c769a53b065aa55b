"""Progress reporting, metrics.jsonl (mirrored to the trackers of ``aigc.trackers``) and loss plots
for training recipes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Iterable

from aigc.runs import METRICS_FILE
from aigc.trackers import numeric, open_trackers


class MetricsLog:
    """Appends ``{"step": ..., **values}`` lines to metrics.jsonl and the numbers to the
    trackers (``aigc.trackers``: TensorBoard by default, Weights & Biases, or none).

    On resume, lines logged after the resumed checkpoint are dropped first, and so is a
    ``partial`` line (a run's last, incomplete averaging window) at the checkpoint itself:
    the window goes on in the resumed run, so the file reads like one uninterrupted run.
    ``config`` is what a tracker records as the run's settings (W&B's run config).
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None, trackers: tuple[str, ...] = ("tensorboard",),
                 config: dict | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _kept_on_resume(json.loads(line), resume_step)]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._trackers = open_trackers(trackers, Path(run_dir), resume_step, config or {})
        self._file = open(self.path, "a")

    def log(self, step: int, **values: float) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        numbers = numeric(values)
        for tracker in self._trackers:
            tracker.scalars(step, numbers)

    def image(self, step: int, name: str, path: Path) -> None:
        """A picture the run drew at ``step`` (a sample grid), for the trackers that show images."""
        for tracker in self._trackers:
            tracker.image(step, name, path)

    def close(self) -> None:
        self._file.close()
        for tracker in self._trackers:
            tracker.close()


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
