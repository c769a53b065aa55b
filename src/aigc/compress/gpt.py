"""Quantized GPTs: the weights file of a compressed GPT run, and the model it loads into.

int8 schemes quantize every matrix of the Transformer blocks and the token embedding, which
is also the LM head (tied, so stored once); positions, biases and LayerNorms stay float32.
bf16 stores every float tensor in bf16 and runs the model in bf16 (:func:`to_bf16`).
"""

from __future__ import annotations

import torch

from aigc.compress.quantize import (INT8_SCHEMES, Int8Embedding, PackedBf16Linear, can_pack_bf16, int8_linear,
                                    pack_bf16_linears, quantize_tensors, split_quantized, swap_linears)
from aigc.gpt.model import GPT

EMBEDDING = "transformer.wte.weight"


def int8_matrices(model: GPT) -> list[str]:
    """The names of the weights an int8 scheme quantizes: every block matrix and the embedding."""
    return [f"transformer.h.{path}.weight" for path, module in model.transformer.h.named_modules()
            if isinstance(module, torch.nn.Linear)] + [EMBEDDING]


def compressed_weights(model: GPT, scheme: str) -> dict[str, torch.Tensor]:
    """What a compressed run's model.safetensors holds for the float GPT ``model`` under ``scheme``."""
    weights = {name: t.float() for name, t in model.weights().items()}
    if scheme == "bf16":
        return {name: t.to(torch.bfloat16) for name, t in weights.items()}
    return quantize_tensors(weights, int8_matrices(model))


def load_compressed(model: GPT, tensors: dict[str, torch.Tensor], scheme: str, pack: bool = True) -> GPT:
    """Put a compressed weights file into the float GPT ``model`` built from the run's config,
    swapping in the int8 modules; returns the model (in bf16 for the bf16 scheme, packed for
    oneDNN where it can be unless ``pack`` is False).

    Raises KeyError/RuntimeError/ValueError when the tensors do not fit (the caller names the file).
    """
    if scheme == "bf16":
        model.to(torch.bfloat16).load_weights(tensors)
        return to_bf16(model, pack)
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}")
    floats, quantized = split_quantized(tensors)
    if set(quantized) != set(int8_matrices(model)):
        raise ValueError(f"the int8 matrices are not the ones a {scheme} GPT has")
    model.load_weights(floats)  # every float tensor, and the matrices as their dequantized values
    swap_linears(model.transformer.h, quantized, scheme, prefix="transformer.h.")
    q, scale = quantized[EMBEDDING]
    model.transformer.wte = Int8Embedding(q, scale)
    model.lm_head = int8_linear(scheme, q, scale, None)  # the tied head reads the same int8 rows
    return model


def to_bf16(model: GPT, pack: bool = True) -> GPT:
    """``model`` in bf16 for decoding; with ``pack``, on a CPU with native bf16, its matrices (the
    LM head too) are reordered for oneDNN, which makes it inference-only (and opaque to
    torch.compile). Call it on the model's final device."""
    model = model.to(torch.bfloat16)
    if pack and can_pack_bf16(model.device):
        pack_bf16_linears(model.transformer.h)
        model.lm_head = PackedBf16Linear(model.lm_head)  # a packed copy: the embedding keeps its own table
    return model
