"""The dtype choice by capability: bf16 autocast only where PyTorch's kernels compute bf16 natively."""

import os
import subprocess
import sys

import pytest
import torch

from aigc.devices import bf16_supported


def test_bf16_is_off_when_pytorch_is_held_to_avx2_kernels():
    """ATEN_CPU_CAPABILITY=avx2 makes any x86 CPU compute as an AVX2-only one (bf16 in software,
    ~1 GFLOP/s a product): the defaults must then train in fp32, whatever the CPU's own flags."""
    probe = "import torch; from aigc.devices import bf16_supported; print(bf16_supported(torch.device('cpu')))"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX512"), reason="needs AVX-512 kernels")
def test_bf16_follows_the_cpu_flags_under_avx512_kernels():
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert bf16_supported(torch.device("cpu")) == native
