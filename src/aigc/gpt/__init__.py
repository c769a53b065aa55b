"""GPT language models: model, training recipe, generation, evaluation, GPT-2 interop.

``aigc.gpt.generate(run, prompt, ...)`` and ``aigc.gpt.Generator`` are imported lazily so
that importing the configs (and ``aigc --help``) does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Generator", "Sampling", "generate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aigc.gpt import generation

        return getattr(generation, name)
    raise AttributeError(f"module 'aigc.gpt' has no attribute {name!r}")
