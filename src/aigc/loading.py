"""One way to load any run: ``load(run_dir)`` reads config.json's ``kind`` and returns the
ready object for that kind, built by the loader beside its family's model code:

==================  ======================================  ==============================
kind                returns                                 loader
==================  ======================================  ==============================
``gan``             :class:`aigc.gan.loading.GanRun`        ``aigc.gan.loading.load_gan``
``gpt``             :class:`aigc.gpt.loading.GptRun`        ``aigc.gpt.loading.load_gpt``
``gpt-finetune``    :class:`aigc.gpt.loading.Finetuned`     ``aigc.gpt.loading.load_finetuned``
``textgan``         :class:`aigc.textgan.loading.TextGanRun` ``aigc.textgan.loading.load_textgan``
==================  ======================================  ==============================

Every loader follows the same pipeline: read config.json -> build the modules -> apply
transforms (adapters; folded LoRA) -> load the checkpoint's weights, and turns a damaged
or mismatched run into one UserError line. The server, ``generate``, ``eval`` and
``compress`` all load through here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from aigc import runs
from aigc.errors import UserError

# kind -> "module:function"; imported only when a run of that kind is loaded.
LOADERS = {
    "gan": "aigc.gan.loading:load_gan",
    "gpt": "aigc.gpt.loading:load_gpt",
    "gpt-finetune": "aigc.gpt.loading:load_finetuned",
    "textgan": "aigc.textgan.loading:load_textgan",
}


def run_kind(run: str | Path) -> str:
    """The ``kind`` in a run directory's config.json (checked to be one aigc knows)."""
    return runs.read_run_config(run, tuple(LOADERS))["kind"]


def load(run: str | Path, device: str = "cpu", **options: Any) -> Any:
    """The ready object for the run in ``run`` (see the table above); ``options`` go to its
    loader (e.g. ``checkpoint="last"`` for GPT runs, ``ema=False`` for GAN runs)."""
    kind = run_kind(run)
    module_name, function_name = LOADERS[kind].split(":")
    loader = getattr(importlib.import_module(module_name), function_name)
    try:
        return loader(run, device=device, **options)
    except TypeError as exc:
        raise UserError(f"cannot load the {kind} run {run} with {sorted(options)}: {exc}") from None
