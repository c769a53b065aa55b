"""Helpers shared by the benchmarks: machine description, matmul peak, timing, JSON output."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterator

import torch

OUT_DIR = Path(__file__).resolve().parent / "out"


# Environment variables that hold PyTorch, oneDNN and MKL below what the CPU can run (set, they make
# an AVX-512 CPU compute as an AVX2-only one does: see docs/benchmarks.md)
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")  # which kernels the CPU can run


def machine() -> dict:
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": cpu, "cpu_flags": {flag: flag in flags for flag in FLAGS_THAT_MATTER}, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ},
            "python": platform.python_version(), "platform": platform.platform()}


def machine_line(described: dict) -> str:
    """One header line: the CPU, its flags that matter, PyTorch's kernel level and any ISA limits."""
    flags = ", ".join(flag for flag, present in described["cpu_flags"].items() if present)
    limits = f"; limited by {described['isa_limits']}" if described["isa_limits"] else ""
    return (f"{described['cpu']} ({flags}; torch kernels {described['torch_cpu_capability']}{limits}), "
            f"{described['cores']} cores, {described['torch_threads']} threads, torch {described['torch']}")


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an n x n x n matrix product: the machine's practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def time_windows(step: Callable[[], object], steps_per_window: int) -> float:
    """Seconds per step over one window."""
    start = time.perf_counter()
    for _ in range(steps_per_window):
        step()
    return (time.perf_counter() - start) / steps_per_window


def interleaved_windows(steps: dict[str, Callable[[], object]], windows: int, steps_per_window: int,
                        warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each named step in each of ``windows`` windows, after ``warmup`` calls of each. The
    windows alternate between the steps, so that every step sees the same machine noise."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    seconds = {name: [] for name in steps}
    for _ in range(windows):
        for name, step in steps.items():
            seconds[name].append(time_windows(step, steps_per_window))
    return seconds


def write_json(name: str, payload: dict) -> Path:
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def each_in_workers(measure: Callable, items: list, jobs: int) -> Iterator[tuple[object, object]]:
    """Yield (item, measure(item)) as each finishes, ``jobs`` at a time in worker processes
    (in order, in this process, when ``jobs`` is 1). Independent runs on a 2-core machine: two
    one-thread workers halve the wall time where one process with two threads mostly busy-waits."""
    if jobs == 1:
        for item in items:
            yield item, measure(item)
        return
    # spawn, not fork: a forked child inherits torch's OpenMP state from the parent
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(measure, item): item for item in items}
        for done in as_completed(pending):
            yield pending[done], done.result()
