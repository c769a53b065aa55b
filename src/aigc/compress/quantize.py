"""Weight quantization for inference: int8 matrices with one scale per output row, and bf16.

A quantized weights file is plain safetensors (no pickle): each quantized matrix ``name`` is
stored as int8 ``name`` (out, in) beside its float32 scales ``name + SCALE_SUFFIX`` (out,), with
``w ~= q * scale[:, None]`` (symmetric, per output channel: the usual int8 weight scheme, which
keeps each row's own range). Everything else (biases, LayerNorms, positions) stays float32.

Two ways to run int8 weights, chosen by the scheme a run was compressed with:

- ``int8`` (weight-only): activations stay float; the product reads the int8 weights
  directly through PyTorch's ``_weight_int8pack_mm`` kernel (the one torchao's int8
  weight-only layout used on CPU). Decoding is bound by reading weights, so a quarter of the
  bytes is most of the gain. Its fast CPU path takes bf16 activations, used where the CPU
  has native bf16.
- ``int8-dynamic``: activations are quantized to int8 on the fly too, and the product runs
  in int8 through ``torch.ao.nn.quantized.dynamic.Linear`` (fbgemm / oneDNN), the fast int8
  kernels on CPUs without bf16.

bf16 models decode through :class:`PackedBf16Linear` on CPUs with native bf16: oneDNN's
product on weights reordered once into its blocked layout (what inductor's freezing does),
measured about twice as fast as ``F.linear`` on plain bf16 weights for one token at a time.

torchao's ``quantize_`` (Int8WeightOnlyConfig / Int8DynamicActivationInt8WeightConfig) was
measured on the same model first and is slower on these CPUs (docs/benchmarks-compress.md),
so it is not used here; the benchmark keeps measuring it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from aigc.devices import bf16_supported
from aigc.gpt.model import few_rows, matvec

SCHEMES = ("int8", "int8-dynamic", "bf16")
INT8_SCHEMES = ("int8", "int8-dynamic")
SCALE_SUFFIX = ".scale"


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 (out, in) and float32 scales (out,) with weight ~= q * scale[:, None]."""
    scale = weight.detach().float().abs().amax(dim=1).clamp(min=1e-12) / 127  # a row's largest |w| maps to 127
    q = torch.round(weight.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 (out, in) and scales (out,) -> float32 (out, in)."""
    return q.float() * scale[:, None]


def quantize_tensors(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """A weights dict with the matrices ``names`` as int8 plus scales; the rest as they are."""
    out = dict(tensors)
    for name in names:
        out[name], out[name + SCALE_SUFFIX] = quantize_rows(tensors[name])
    return out


def split_quantized(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """A quantized weights dict -> (float tensors with every int8 matrix dequantized, the int8
    matrices themselves {name: (q, scale)}). Raises ValueError on an int8 matrix without scales."""
    quantized = {}
    for name, tensor in tensors.items():
        if tensor.dtype != torch.int8:
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is None or tensor.dim() != 2 or scale.shape != (tensor.size(0),):
            raise ValueError(f"the int8 tensor {name} has no matching {name + SCALE_SUFFIX}")
        quantized[name] = (tensor, scale.float())
    floats = {name: t for name, t in tensors.items()
              if t.dtype != torch.int8 and not (name.endswith(SCALE_SUFFIX) and name[:-len(SCALE_SUFFIX)] in quantized)}
    floats.update({name: dequantize_rows(q, s) for name, (q, s) in quantized.items()})
    return floats, quantized


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + bias`` reading the int8 weights q (out, in) directly (on the CPU:
    the loaders refuse int8 runs on other devices)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = q.size(1), q.size(0)
        # A fresh copy: tensors read from a safetensors file may sit at unaligned addresses,
        # which the kernel's vector loads crash on.
        self.register_buffer("q", q.clone(memory_format=torch.contiguous_format))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        # The kernel's bf16 path is the fast one (and it needs in % 8 == 0: other widths crash it).
        self.compute_dtype = (torch.bfloat16 if bf16_supported(q.device) and self.in_features % 8 == 0
                              else torch.float32)
        self.register_buffer("scale", scale.float())  # (out,): what compiled decoding multiplies by
        self.register_buffer("kernel_scale", scale.to(self.compute_dtype))  # the kernel wants its own dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if few_rows(x):  # compiled decoding: int8 read and converted inside one reduction
            return matvec(x, self.q, self.bias, self.scale)
        flat = x.reshape(-1, self.in_features).to(self.compute_dtype).contiguous()  # (N, in)
        y = torch._weight_int8pack_mm(flat, self.q, self.kernel_scale).to(x.dtype)  # (N, out)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)


class Int8Embedding(nn.Module):
    """An embedding table held as int8 rows and their scales (the GPT's table is also its LM
    head, so both read the same int8 matrix)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("q", q.contiguous())
        self.register_buffer("row_scale", scale.float())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.q).float() * self.row_scale[idx].unsqueeze(-1)  # (..., C)


def dynamic_int8_linear(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A ``torch.ao`` dynamic-quantized Linear holding exactly the int8 weights q (out, in)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    with warnings.catch_warnings():  # torch 2.13 marks its quantized tensors deprecated; they still run
        warnings.simplefilter("ignore", UserWarning)
        layer = DynamicLinear(q.size(1), q.size(0), bias_=bias is not None, dtype=torch.qint8)
        qweight = torch._make_per_channel_quantized_tensor(q.cpu(), scale.double().cpu(),
                                                           torch.zeros(q.size(0), dtype=torch.long), 0)
        layer.set_weight_bias(qweight, None if bias is None else bias.detach().float().cpu())
    return layer


def int8_linear(scheme: str, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """The module that runs int8 weights under ``scheme`` (see the module docstring)."""
    if scheme == "int8-dynamic":
        return dynamic_int8_linear(q, scale, bias)
    return Int8Linear(q, scale, bias)


def replace_linears(root: nn.Module, replacement) -> None:
    """Put ``replacement(path, linear)`` in place of every nn.Linear under ``root`` for which it
    returns a module (None keeps the layer)."""
    for path, module in list(root.named_modules()):
        if isinstance(module, nn.Linear):
            new = replacement(path, module)
            if new is not None:
                parent_path, _, child = path.rpartition(".")
                setattr(root.get_submodule(parent_path) if parent_path else root, child, new)


def swap_linears(root: nn.Module, quantized: dict, scheme: str, prefix: str = "") -> None:
    """Replace every nn.Linear of ``root`` whose weight ``prefix + path.weight`` is in
    ``quantized`` {name: (q, scale)} by the int8 module of ``scheme``."""
    def int8_of(path: str, linear: nn.Linear) -> nn.Module | None:
        found = quantized.get(f"{prefix}{path}.weight")
        return None if found is None else int8_linear(scheme, *found, linear.bias)

    replace_linears(root, int8_of)


class PackedBf16Linear(nn.Module):
    """A bf16 Linear whose weight oneDNN has reordered once into its own blocked layout, for
    fast products with few rows (decoding); the weight is then opaque (no state dict)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().to(torch.bfloat16)
        self.in_features, self.out_features = weight.size(1), weight.size(0)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")  # (N, out)
        return y.view(*x.shape[:-1], self.out_features)


def can_pack_bf16(device: torch.device) -> bool:
    """Whether :class:`PackedBf16Linear` runs here: a CPU with native bf16 and oneDNN."""
    return (device.type == "cpu" and bf16_supported(device) and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack_bf16_linears(root: nn.Module) -> None:
    """Replace every nn.Linear under ``root`` by its :class:`PackedBf16Linear`."""
    replace_linears(root, lambda path, linear: PackedBf16Linear(linear))
