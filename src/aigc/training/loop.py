"""The loop under every trainer: budgets, intervals, metrics, checkpoints, resume, Ctrl-C.

A trainer is any object with these methods (no base class; each recipe writes its own):

- ``name``: a short description for the progress bar;
- ``train_step(step, elapsed) -> dict[str, float]``: one optimizer step (``step`` is its
  0-based number, ``elapsed`` the seconds trained so far, for schedules); returns the
  losses to average into the next metrics line;
- ``status() -> dict``: what is true now rather than averaged (learning rate, epoch, phase),
  logged with each metrics line;
- ``evaluate(step) -> dict[str, float]``: validation metrics, or samples written; {} when
  there is nothing to evaluate at this step;
- ``weights() -> {file name: {tensor name: tensor}}`` and ``best() -> bool | None`` (True
  when the last evaluation was the best so far; None when the run has no notion of best);
- ``state_dict() -> {"optimizers": {}, "samplers": {}, "rng": {}, "trainer": {}}`` and
  ``load_state(checkpoint_folder, state)`` for resume;
- ``throughput``: (name, items per step), e.g. ("images_per_s", 64), or None.

Every checkpoint's ``state.pt`` has the same keys for every run kind: ``step``,
``elapsed``, ``log_window``, ``rng`` (``torch`` plus the trainer's named generators),
``optimizers``, ``samplers`` and ``trainer`` (anything else the trainer keeps).

Under torchrun every rank runs this loop in step with the others: each step's losses are
averaged over the ranks, the ranks stop together, and only rank 0 logs and writes
(``training.distributed``); every rank restores from the same checkpoint.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from aigc import runs, trackers
from aigc.config import checked, resumed
from aigc.errors import TrainingDiverged, UserError
from aigc.logging import MetricsLog, Progress, RunningMeans
from aigc.training import distributed


@dataclass(frozen=True)
class Plan:
    """When a run stops, and when it logs, evaluates and saves on the way."""

    max_steps: int | None
    time_budget: float | None  # seconds
    log_every: int
    eval_every: int | None  # None: only at the end (and at boundaries)
    save_every: int
    steps_flag: str = "--steps"  # the flag that asks for more steps, for the resume message
    boundaries: frozenset[int] = field(default_factory=frozenset)  # steps that always log, evaluate and save
    trackers: tuple[str, ...] = ("tensorboard",)  # where metrics go besides metrics.jsonl (aigc.trackers)

    def done(self, step: int, elapsed: float) -> bool:
        if self.max_steps is not None and step >= self.max_steps:
            return True
        return self.time_budget is not None and elapsed >= self.time_budget


@dataclass
class Start:
    """Where a run starts: step 0, or where its last checkpoint left it."""

    step: int = 0
    elapsed: float = 0.0
    window: RunningMeans = field(default_factory=RunningMeans)  # losses since the last metrics line
    resumed: bool = False


def open_run(config, kind: str, name: str, may_change: Callable[[str], bool]) -> tuple[Any, Path]:
    """The run directory of a training command (``--out``, default runs/<name>-<date>-<time>),
    checked to take a new run or to hold one to resume, and the config to train with: on
    resume the saved settings, overridden by those given now where ``may_change`` allows.
    ``--resume-if-exists`` resumes when ``--out`` has a checkpoint and starts the run when not.
    Under torchrun, rank 0 names the run directory for all. A config made in Python is checked
    as the command line's are."""
    checked(config)
    out = Path(config.out) if config.out else distributed.from_main(
        runs.unique_dir(Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S")))
    if config.resume_if_exists and not config.resume and runs.read_pointer(out) is not None:
        config = replace(config, resume=True)
    run_dir = runs.prepare_run_dir(out, config.resume)
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    if config.resume:
        run_config = runs.read_run_config(run_dir, kind)
        if run_config.get("compression"):
            raise UserError(f"{run_dir} was written by aigc compress, for inference: it has no training state to "
                            f"resume; resume the run it came from ({run_config['compression'].get('source')})")
        config = resumed(config, run_config.get("train") or {}, may_change)
    trackers.check_available(config.trackers())  # a missing tracker library is refused before any write
    return config, run_dir


def restore(trainer, run_dir: Path, plan: Plan) -> Start:
    """Load the last checkpoint of ``run_dir`` into ``trainer``, writing nothing: a damaged
    checkpoint, or a run already at its end, is a UserError before any file is touched."""
    folder = runs.checkpoint_dir(run_dir, "last")
    with runs.restoring_state(folder) as saved:
        trainer.load_state(folder, saved)
        torch.set_rng_state(saved["rng"]["torch"])
        window = RunningMeans()
        window.load_state_dict(saved["log_window"])
        start = Start(int(saved["step"]), float(saved["elapsed"]), window, resumed=True)
    if plan.done(start.step, start.elapsed):
        raise UserError(f"{run_dir} is already at step {start.step} ({start.elapsed:.0f} s), the end of the run "
                        f"it was asked for; ask for more {plan.steps_flag} (or a longer --time-budget) to continue it")
    return start


def run(trainer, plan: Plan, run_dir: Path, start: Start) -> None:
    """Train from ``start`` until ``plan`` says stop. A NaN or infinite loss stops the run
    (the last good checkpoint is kept); Ctrl-C saves a checkpoint after the current step and
    raises KeyboardInterrupt."""
    step, window = start.step, start.window
    started = time.perf_counter() - start.elapsed
    main = distributed.is_main()  # only rank 0 logs and writes
    log = MetricsLog(run_dir, resume_step=step if start.resumed else None, trackers=plan.trackers,
                     config=_run_config(run_dir)) if main else None
    progress = Progress(plan.max_steps or int(plan.time_budget), trainer.name,
                        initial=step if plan.max_steps else int(start.elapsed)) if main else None
    window_started, window_steps = time.perf_counter(), 0
    try:
        finished = plan.done(step, start.elapsed)
        with _interrupt_after_step() as interrupted:
            while not finished:  # decided once per step, so the last step always evaluates and saves
                # Rank 0's clock for every rank, so that time-based schedules agree.
                values = trainer.train_step(step, distributed.from_main(time.perf_counter() - started))
                step += 1
                window_steps += 1
                values = distributed.mean_over_ranks(values)  # the same values, and finite check, on every rank
                _check_finite(values, step, run_dir)
                window.add(values)
                elapsed = time.perf_counter() - started
                stopping = interrupted()  # read once: a Ctrl-C after this is seen at the next step
                finished = distributed.any_rank(plan.done(step, elapsed) or stopping)
                boundary = step in plan.boundaries
                aligned = step % plan.log_every == 0 or boundary
                if aligned or finished:
                    seconds = time.perf_counter() - window_started
                    line = {**window.means(), **trainer.status(), "elapsed": round(elapsed, 3),
                            **_throughput(trainer, window_steps, seconds)}
                    if main:
                        log.log(step, **line, **({} if aligned else {"partial": True}))
                    window_started, window_steps = time.perf_counter(), 0
                    if aligned:  # a partial window goes on in a resumed run
                        window.reset()
                if (plan.eval_every and step % plan.eval_every == 0) or boundary or finished:
                    results = trainer.evaluate(step)  # on every rank: none waits long for rank 0
                    if results and main:
                        log.log(step, **results)
                        progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
                    if main:
                        _log_samples(log, run_dir, step)
                if step % plan.save_every == 0 or boundary or finished:
                    save(trainer, run_dir, step, time.perf_counter() - started, window)
                if main:
                    progress.update(step if plan.max_steps else min(int(elapsed), progress.total), **values)
                if stopping:
                    raise KeyboardInterrupt(f"interrupted at step {step}; a resumable checkpoint is in {run_dir}")
    finally:
        if main:
            progress.close()
            log.close()


def save(trainer, run_dir: Path, step: int, elapsed: float, window: RunningMeans) -> None:
    """One checkpoint: the trainer's weights (refused if any is not finite) and its state.
    Every rank gathers them (sharded weights need all ranks); rank 0 writes them."""
    weights = trainer.weights()
    bad = [f"{file}:{name}" for file, tensors in weights.items() for name, t in tensors.items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingDiverged(f"the weights became NaN or infinite by step {step} ({bad[0]}); not saved; "
                               f"the last good checkpoint is in {run_dir}; try a lower learning rate")
    own = trainer.state_dict()
    state = {"step": step, "elapsed": elapsed, "log_window": window.state_dict(),
             "rng": {"torch": torch.get_rng_state(), **own["rng"]},
             "optimizers": own["optimizers"], "samplers": own["samplers"], "trainer": own["trainer"]}
    if distributed.is_main():
        runs.save_checkpoint(run_dir, step, weights, state, best=trainer.best())


def _run_config(run_dir: Path) -> dict:
    """The run's config.json (written before the loop starts), which a tracker records."""
    path = run_dir / runs.CONFIG_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _log_samples(log: MetricsLog, run_dir: Path, step: int) -> None:
    """Send the sample grids the trainer drew at ``step`` (samples/step_NNNNNN*.png) to the trackers."""
    for path in sorted((run_dir / runs.SAMPLES_DIR).glob(f"step_{step:06d}*.png")):
        log.image(step, "samples", path)


def _check_finite(values: dict[str, float], step: int, run_dir: Path) -> None:
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if bad:
        shown = ", ".join(f"{name}={value}" for name, value in bad.items())
        raise TrainingDiverged(f"training diverged at step {step} ({shown}); the last good checkpoint is in "
                               f"{run_dir}; try a lower learning rate")


def _throughput(trainer, steps: int, seconds: float) -> dict[str, float]:
    if trainer.throughput is None or seconds <= 0:
        return {}
    name, per_step = trainer.throughput
    return {name: round(steps * per_step / seconds, 2)}


@contextmanager
def _interrupt_after_step() -> Iterator:
    """While training, the first Ctrl-C asks the loop to stop after the current step (and
    save); a second one interrupts at once. Outside the main thread, Ctrl-C is left alone."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return

    def request_stop(signum, frame):
        flag.set()
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C acts at once

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
