"""Shared test helpers.

Tests that read ../shared/data skip when it is absent, except in CI, which sets
AIGC_REQUIRE_SHARED_DATA=1 so a missing folder fails instead of passing silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    """Under pytest-xdist (pyproject.toml: one worker per core, at most 4) each worker, and
    the processes it starts, take their share of the cores: an OpenMP thread that has to share its
    core with another busy process ran up to 40x slower (docs/benchmarks-gan-quality.md). Set before any
    test module imports torch."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 0))
    if workers:
        cores = len(os.sched_getaffinity(0))
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Caches (encoded corpora, trained evaluators) go to a temporary folder, never the user's ~/.cache/aigc."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        patch.delenv("AIGC_CACHE_DIR", raising=False)
        yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"shared data folder not found at {SHARED_DATA}"
        if os.environ.get("AIGC_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two busy-waiting threads can run 40x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_cli(capsys):
    """Run ``aigc`` in-process: returns (exit status, stdout, stderr)."""
    from aigc.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what earlier steps of the test printed
        try:
            status = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            status = exc.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    """The promised bad-input behaviour: exit 2, one line on stderr, no traceback."""
    lines = [line for line in err.strip().splitlines() if line]
    assert status == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def checkpoint_file(run: Path, name: str = "model.safetensors", which: str = "last") -> Path:
    """A file of a run's last (or best) checkpoint."""
    from aigc.runs import checkpoint_dir

    return checkpoint_dir(run, which) / name
