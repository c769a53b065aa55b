"""A GPT as an ONNX graph with its KV cache as inputs and outputs, checked in ONNX Runtime.

The graph (``torch.onnx.export``, the dynamo exporter) takes

- ``input_ids`` int64 (B, T): the new tokens,
- ``past_keys``, ``past_values`` float32 (n_layer, B, nh, P, hs): the cache of the P tokens
  before them (P = 0 for a prompt),

and returns ``logits`` (B, T, V) and ``present_keys``, ``present_values`` (n_layer, B, nh,
P + T, hs) to feed back with the next token. B, T and P are dynamic (P + T <= block_size).
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import torch
from torch import nn

from aigc.gpt.model import GPT

INPUTS = ["input_ids", "past_keys", "past_values"]
OUTPUTS = ["logits", "present_keys", "present_values"]


class ConcatCache:
    """The model's cache protocol over given past keys and values, growing by concatenation
    (traceable, unlike the preallocated KVCache): what the exported graph computes."""

    def __init__(self, past_keys: torch.Tensor, past_values: torch.Tensor):
        self.past = past_keys.size(3)
        self.keys, self.values = list(past_keys.unbind(0)), list(past_values.unbind(0))

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        return torch.arange(T, device=device) + self.past

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)  # (B, nh, P + T, hs)
        self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def attention_mask(self, T: int, total: int, device: torch.device) -> torch.Tensor:
        """(T, total) bool: new token i sees the past and the new tokens up to itself."""
        return torch.ones(T, total, dtype=torch.bool, device=device).tril(diagonal=total - T)

    def advance(self, T: int) -> None:
        pass


class CachedLogits(nn.Module):
    """(input_ids, past_keys, past_values) -> (logits, present_keys, present_values)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, past_keys, past_values):
        cache = ConcatCache(past_keys, past_values)
        logits = self.model.lm_head(self.model.hidden_states(input_ids, cache))  # (B, T, V)
        return logits, torch.stack(cache.keys), torch.stack(cache.values)


def empty_past(model: GPT, batch: int, length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero past keys and values (n_layer, B, nh, length, hs)."""
    c = model.config
    shape = (c.n_layer, batch, c.n_head, length, c.head_dim)
    return torch.zeros(shape), torch.zeros(shape)


# ONNX files are protobufs, limited to 2 GB: larger models keep their weights in PATH.data beside.
EXTERNAL_DATA_BYTES = 1_800_000_000


def export(model: GPT, path: Path, opset: int = 18) -> None:
    """Write ``model`` (float32) as an ONNX graph with its KV cache (see the module docstring)."""
    external = sum(p.numel() * 4 for p in model.parameters()) > EXTERNAL_DATA_BYTES
    block = model.config.block_size
    batch, new, past = torch.export.Dim("batch", min=1), torch.export.Dim("new_tokens", min=1, max=block), \
        torch.export.Dim("past_tokens", min=0, max=block - 1)
    # Example inputs of sizes the exporter does not mistake for constants (not 0 or 1).
    example = (torch.zeros(2, 3, dtype=torch.long), *empty_past(model, 2, 4))
    cache_dims = {1: batch, 3: past}
    # The exporter logs a warning per torchvision operator it cannot find (torchvision is not used).
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        torch.onnx.export(CachedLogits(model.float().eval()), example, str(path), input_names=INPUTS,
                          output_names=OUTPUTS, opset_version=opset, dynamo=True, verbose=False,
                          external_data=external,
                          dynamic_shapes={"input_ids": {0: batch, 1: new}, "past_keys": cache_dims,
                                          "past_values": cache_dims})


@contextmanager
def _quiet(logger_name: str | None):
    """Raise a logger (None: the root logger) to ERROR for the block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of the graph's MatMul weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(None):  # ORT advises pre-processing on the root logger; it does not apply here
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


@torch.no_grad()
def max_logit_difference(model: GPT, path: Path, prompt: torch.Tensor, new_tokens: int = 4) -> float:
    """Largest |ONNX Runtime logits - PyTorch logits| over a prompt (B, T) and ``new_tokens``
    greedy steps fed back through the graph's cache outputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    keys, values = (t.numpy() for t in empty_past(model, prompt.size(0)))
    history, idx, worst = prompt, prompt, 0.0
    for _ in range(new_tokens + 1):
        logits, keys, values = session.run(OUTPUTS, {"input_ids": idx.numpy(), "past_keys": keys,
                                                     "past_values": values})
        reference = model(history)[0][:, -idx.size(1):]  # (B, T, V): the whole history, no cache
        worst = max(worst, (torch.from_numpy(logits) - reference).abs().max().item())
        idx = torch.from_numpy(logits[:, -1]).argmax(dim=-1, keepdim=True)  # (B, 1)
        history = torch.cat([history, idx], dim=1)
    return worst
