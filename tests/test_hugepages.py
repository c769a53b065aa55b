"""Weights moved into a mapping advised for transparent huge pages keep their values and ties."""

from __future__ import annotations

import mmap
import sys

import pytest
import torch

from aigc.gpt.model import GPT, GPTConfig
from aigc.hugepages import move_to_huge_pages


def vma_flags(address: int) -> list[str]:
    """The kernel's VmFlags of the mapping holding ``address`` in this process (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "VmFlags:":
            return fields[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
                    reason="transparent huge pages are a Linux feature")
def test_weights_move_into_an_advised_mapping_with_their_values_and_ties():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    idx = torch.randint(0, 97, (2, 9))
    expected = model(idx)[0]

    moved = move_to_huge_pages(model)

    assert moved >= sum(t.numel() * t.element_size() for t in model.weights().values())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
        assert "hg" in vma_flags(tensor.data_ptr()), name  # MADV_HUGEPAGE
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(model(idx)[0], expected, rtol=0, atol=0)
    model(idx, idx)[1].backward()  # still parameters that train
    assert model.transformer.wte.weight.grad is not None
