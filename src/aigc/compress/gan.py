"""Compressed GAN generators: the weights file of a compressed GAN run and the generator it loads into.

bf16 keeps every tensor in bf16 and runs the generator in bf16 (noise in, float32 images out).
int8-dynamic quantizes the MLP generator's Linear layers (torch.ao dynamic Linear). DCGAN
generators are transposed convolutions, which dynamic quantization does not cover; static
int8 with calibration (PT2E, ONNX Runtime) is not offered (docs/benchmarks-compress.md).
"""

from __future__ import annotations

import torch
from torch import nn

from aigc.compress.quantize import quantize_tensors, split_quantized, swap_linears

GAN_SCHEMES = {"mlp": ("bf16", "int8-dynamic"), "dcgan": ("bf16",)}
PREFIX = "generator."


class Bf16Generator(nn.Module):
    """A generator run in bf16: float32 noise in, float32 images out."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator.to(torch.bfloat16)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z.to(torch.bfloat16), labels).float()


def compressed_generator_weights(generator: nn.Module, scheme: str) -> dict[str, torch.Tensor]:
    """What a compressed GAN run's model.safetensors holds: the generator's tensors, prefixed."""
    weights = {PREFIX + name: t.detach() for name, t in generator.state_dict().items()}
    if scheme == "bf16":
        return {name: t.to(torch.bfloat16) if t.is_floating_point() else t for name, t in weights.items()}
    linears = [f"{PREFIX}{path}.weight" for path, m in generator.named_modules() if isinstance(m, nn.Linear)]
    return quantize_tensors(weights, linears)


def load_compressed_generator(generator: nn.Module, tensors: dict[str, torch.Tensor], scheme: str) -> nn.Module:
    """Put a compressed weights file into the float ``generator`` built from the run's config.
    Raises RuntimeError/ValueError when the tensors do not fit (the caller names the file)."""
    floats, quantized = split_quantized(tensors)
    own = {name[len(PREFIX):]: t.float() if t.is_floating_point() else t for name, t in floats.items()}
    generator.load_state_dict(own)
    if scheme == "bf16":
        return Bf16Generator(generator)
    if not quantized:
        raise ValueError(f"no int8 tensors in a {scheme} file")
    swap_linears(generator, quantized, scheme, prefix=PREFIX)
    return generator
