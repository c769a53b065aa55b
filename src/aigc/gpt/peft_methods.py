"""Which parameters a fine-tuning run trains: all of them, LoRA, AdaLoRA, or Houlsby adapters.

- ``full``: every weight of the GPT.
- ``lora`` (Hu et al. 2021): a trainable low-rank update ``B A`` (B zero at first) beside every
  linear layer of attention and MLP (``c_attn``, ``c_proj``, ``c_fc``), scaled by alpha / r.
- ``adalora`` (Zhang et al. 2023): the update as an SVD ``P diag(E) Q`` whose rank budget
  shrinks during training from 1.5 r to r on average, pruning the least important triplets.
  Both come from the ``peft`` library on our own modules (imported only when used: it is slow
  to import); ``peft``'s AdaLoRA wants ``update_and_allocate(step)`` after every optimizer step
  and adds an orthogonality penalty on P and Q, which we add to the loss ourselves since our
  model returns a tuple, not an object with ``.loss``.
- ``adapter`` (Houlsby et al. 2019): a bottleneck ``x + up(gelu(down(x)))`` after the attention
  and after the MLP of every block (``up`` zero at first), plus the LayerNorm gains, as in the
  paper. peft has no such method for custom modules, so it is written here.

In every method but ``full`` the GPT's own weights stay frozen, so only the new tensors need
saving (:func:`extra_tensors`), and a LoRA/AdaLoRA run can be folded into plain weights
(:meth:`Tuned.merged`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from aigc.errors import UserError
from aigc.gpt.config import FINETUNE_METHODS as METHODS
from aigc.gpt.model import GPT

LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]  # every linear layer in the blocks (attn.c_proj and mlp.c_proj)
ORTH_REG_WEIGHT = 0.5  # peft's AdaLoRA default


@dataclass
class MethodSettings:
    name: str = "full"
    rank: int = 8  # lora: r; adalora: the final average rank (starting from 1.5 r)
    alpha: float = 16.0  # lora/adalora: the update is scaled by alpha / r
    adapter_size: int = 64  # adapter: bottleneck width
    total_steps: int = 0  # adalora: the optimizer steps of the run, for its budget schedule

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Adapter(nn.Module):
    """Houlsby bottleneck: x + up(gelu(down(x))), the identity at initialisation."""

    def __init__(self, n_embd: int, size: int):
        super().__init__()
        self.down = nn.Linear(n_embd, size)
        self.up = nn.Linear(size, n_embd)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))  # (B, T, C) -> (B, T, size) -> (B, T, C)


class Adapted(nn.Module):
    """A sublayer (attention or MLP) followed by an adapter on its output, before the residual sum."""

    def __init__(self, module: nn.Module, adapter: Adapter):
        super().__init__()
        self.module, self.adapter = module, adapter

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.adapter(self.module(*args, **kwargs))


class Tuned:
    """A GPT prepared for one method: which parameters train, and the method's per-step hooks."""

    def __init__(self, gpt: GPT, settings: MethodSettings, tuner=None):
        self.gpt, self.settings, self.tuner = gpt, settings, tuner

    def penalty(self) -> torch.Tensor | float:
        """AdaLoRA's orthogonality regulariser (mean ||P P^T - I||_F over P and Q); 0 for other methods."""
        if self.settings.name != "adalora":
            return 0.0
        terms = []
        for name, p in self.gpt.named_parameters():
            if p.requires_grad and (".lora_A." in name or ".lora_B." in name):
                cov = p @ p.T if ".lora_A." in name else p.T @ p  # (r, r)
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.size(0), device=cov.device)))
        return ORTH_REG_WEIGHT * torch.stack(terms).mean()

    def after_step(self, step: int) -> None:
        """Called after each optimizer step, before the gradients are cleared (AdaLoRA's budget)."""
        if self.settings.name == "adalora":
            self.tuner.update_and_allocate(step)

    def ranks(self) -> int:
        """AdaLoRA: the singular values still alive (non-zero) across all layers."""
        return sum(int((p != 0).sum()) for name, p in self.gpt.named_parameters() if ".lora_E." in name)

    def allocator_state(self) -> dict:
        if self.settings.name != "adalora":
            return {}
        allocator = self.tuner.rankallocator
        return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
                "rank_pattern": self.tuner.peft_config["default"].rank_pattern}

    def load_allocator_state(self, state: dict) -> None:
        if self.settings.name == "adalora":
            allocator = self.tuner.rankallocator
            allocator.ipt, allocator.exp_avg_ipt = state["ipt"], state["exp_avg_ipt"]
            allocator.exp_avg_unc = state["exp_avg_unc"]
            self.tuner.peft_config["default"].rank_pattern = state["rank_pattern"]

    def merged(self) -> GPT:
        """The plain GPT with the low-rank updates folded into its weights (lora, adalora)."""
        if self.settings.name == "full":
            return self.gpt
        if self.tuner is None:
            raise UserError(f"--method {self.settings.name} cannot be merged: its adapters are non-linear; "
                            "only lora and adalora fold into the weights")
        return self.tuner.merge_and_unload()


def apply_method(gpt: GPT, settings: MethodSettings) -> Tuned:
    """Prepare ``gpt`` (changed in place) for fine-tuning with ``settings.name``."""
    if settings.name not in METHODS:
        raise UserError(f"unknown --method {settings.name!r}; choose from {', '.join(METHODS)}")
    if settings.name == "full":
        gpt.requires_grad_(True)
        return Tuned(gpt, settings)
    if settings.name == "adapter":
        return Tuned(_add_adapters(gpt, settings.adapter_size), settings)
    return Tuned(gpt, settings, _peft_tuner(gpt, settings))


def _add_adapters(gpt: GPT, size: int) -> GPT:
    gpt.requires_grad_(False)
    n_embd = gpt.config.n_embd
    for block in gpt.transformer.h:
        block.attn = Adapted(block.attn, Adapter(n_embd, size))
        block.mlp = Adapted(block.mlp, Adapter(n_embd, size))
    for module in gpt.modules():
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)
    return gpt


def _peft_tuner(gpt: GPT, settings: MethodSettings):
    """peft's LoraModel or AdaLoraModel wrapped around ``gpt``: it injects its layers into gpt in place."""
    from peft import AdaLoraConfig, LoraConfig
    from peft.tuners.adalora import AdaLoraModel
    from peft.tuners.lora import LoraModel

    if settings.name == "lora":
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=LORA_TARGETS)
        return LoraModel(gpt, config, "default")
    steps = settings.total_steps
    if steps < 10:
        raise UserError(f"--method adalora needs --max-iters of at least 10 for its rank schedule, got {steps}")
    # Budget schedule: full budget for the first 10% of steps, cubic decay to the target, fixed
    # for the last 20%; importance re-estimated every 1% of the run.
    config = AdaLoraConfig(init_r=max(2, settings.rank * 3 // 2), target_r=settings.rank, lora_alpha=settings.alpha,
                           target_modules=LORA_TARGETS, total_step=steps, tinit=steps // 10,
                           tfinal=steps // 5, deltaT=max(1, steps // 100))
    return AdaLoraModel(gpt, config, "default")


def extra_tensors(module: nn.Module, skip_frozen_base: bool) -> dict[str, torch.Tensor]:
    """The tensors a run must save beside (or instead of) the base weights: every trainable
    parameter and AdaLoRA's fixed ``ranknum``; with ``skip_frozen_base`` false (full fine-tuning)
    only those outside the GPT (the classification head)."""
    return {name: p.detach() for name, p in module.named_parameters()
            if (p.requires_grad or ".ranknum." in name) and (skip_frozen_base or not name.startswith("gpt."))}


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters (a tied weight counted once)."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
