"""The optimizer step the language-model trainers share: gradient accumulation, clipping."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from aigc.training.distributed import gradient_sync


def accumulated_step(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor],
                     micro_batch_loss: Callable[[], tuple[torch.Tensor, float]], grad_accum: int,
                     grad_clip: float, before_zero_grad: Callable[[], None] | None = None,
                     module: torch.nn.Module | None = None) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean reported loss.

    ``micro_batch_loss()`` draws a micro-batch and returns (the loss to differentiate, the loss
    to report); ``before_zero_grad`` runs after the step while the gradients still exist
    (AdaLoRA reads them). ``module``, the DDP- or FSDP-wrapped model that computes the loss,
    averages the gradients over the ranks in the last micro-batch's backward only."""
    parameters = list(parameters)
    total = 0.0
    for micro_step in range(grad_accum):
        with gradient_sync(module, enabled=micro_step == grad_accum - 1):
            loss, reported = micro_batch_loss()
            (loss / grad_accum).backward()
        total += reported
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip, foreach=True)
    optimizer.step()
    if before_zero_grad is not None:
        before_zero_grad()
    optimizer.zero_grad(set_to_none=True)
    return total / grad_accum
