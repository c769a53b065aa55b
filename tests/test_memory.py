"""aigc.memory: glibc's malloc keeps freed memory, so large tensors stop faulting in fresh pages."""

import json
import os
import platform
import subprocess
import sys

import pytest

import aigc.cli
from aigc.memory import OPT_OUT

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# The C2ST judge's forward pass over 256 images (guided sampling scores its candidates so), whose activations of
# up to 25 MB are freed after each pass: with glibc's defaults the next pass faults in fresh pages for them.
FAULTS_OF_JUDGE_PASSES = """
import json, resource, sys, torch
from aigc.memory import keep_freed_memory
from aigc.metrics.image import Judge
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
judge, images = Judge(1).eval(), torch.rand(256, 1, 28, 28)
with torch.no_grad():
    for _ in range(5):
        judge(images)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        judge(images)
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults_after_warm_up(side: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_JUDGE_PASSES, side], capture_output=True, text=True,
                          check=True, env={**os.environ, **env, "OMP_NUM_THREADS": "2"})
    return json.loads(done.stdout)


@glibc_only
def test_kept_memory_is_reused_without_page_faults():
    default, kept = faults_after_warm_up("default"), faults_after_warm_up("keep")
    assert kept["kept"] and not default["kept"]
    # 5,000-12,500 faults a pass with the defaults (measured 50,853-125,120 in 10), 150-320 kept
    assert default["faults"] > 30_000, default
    assert kept["faults"] < 10_000, kept


@glibc_only
def test_the_opt_out_keeps_glibc_defaults():
    opted_out = faults_after_warm_up("keep", **{OPT_OUT: "1"})
    assert not opted_out["kept"]
    assert opted_out["faults"] > 30_000, opted_out


def test_the_command_keeps_freed_memory_before_it_runs(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(aigc.cli, "keep_freed_memory", lambda: calls.append("kept"))
    status = aigc.cli.main(["gan", "sample", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")])
    assert status == 2 and calls == ["kept"]
    assert "missing" in capsys.readouterr().err
