"""Shared by the GPT benchmarks: the machine's measured matmul peaks and memory bandwidth
(its description is ``_common.machine``)."""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 2.0) -> float:
    """Best GFLOP/s of an n x n matmul in ``dtype`` over about ``seconds``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def memory_bandwidth(seconds: float = 2.0) -> float:
    """Best GB/s of reading a 256 MB buffer (a sum), the bound of weight-streaming decode."""
    x = torch.ones(64 * 1024 * 1024, dtype=torch.float32)
    x.sum()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best
