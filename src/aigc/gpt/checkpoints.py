"""A GPT run directory on disk: ``config.json`` (kind "gpt", the model config, the training
config), ``tokenizer.json``, ``model.safetensors`` (the last step) and ``best.safetensors``
(the lowest validation loss)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch

from aigc.data.tokenizers import TOKENIZER_FILE, Tokenizer
from aigc.errors import UserError
from aigc.gpt.model import GPT, GPTConfig
from aigc.runs import CONFIG_FILE, WEIGHTS_FILE, load_weights, read_run_config, save_json, save_weights

KIND = "gpt"
FINETUNE_KIND = "gpt-finetune"
BEST_FILE = "best.safetensors"


def write_run_config(run_dir: Path, model_config: GPTConfig, tokenizer: Tokenizer, train: dict | None) -> None:
    save_json(run_dir / CONFIG_FILE, {"kind": KIND, "model": asdict(model_config),
                                      "tokenizer": tokenizer.kind, "train": train})


def model_config_of(run_config: dict, run: Path) -> GPTConfig:
    try:
        values = run_config["model"]
        return GPTConfig(**{f.name: values[f.name] for f in fields(GPTConfig)})
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{run / CONFIG_FILE} has no valid GPT model config ({exc})") from None


def weights_path(run: Path, checkpoint: str) -> Path:
    """``best.safetensors`` for checkpoint "best" when the run has one, else ``model.safetensors``."""
    best = run / BEST_FILE
    return best if checkpoint == "best" and best.is_file() else run / WEIGHTS_FILE


def save_model(path: Path, model: GPT, step: int) -> None:
    save_weights(path, model.weights(), metadata={"step": str(step)})


def load_into(model: GPT, path: Path) -> int:
    """Load weights saved by :func:`save_model` into ``model``; returns their step."""
    tensors, metadata = load_weights(path)
    try:
        model.load_weights(tensors)
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{path} does not fit this model: {str(exc).splitlines()[0]}") from None
    return int(metadata.get("step", 0))


def load_run(run: str | Path, checkpoint: str = "best", device: torch.device | str = "cpu",
             plain: bool = False) -> tuple[GPT, Tokenizer, dict]:
    """The model (in eval mode, on ``device``), tokenizer and config.json of a GPT run.

    A completion run of ``aigc gpt finetune`` loads too, as its base with the fine-tuned weights:
    LoRA/AdaLoRA folded in, adapters kept (``plain``: refuse them, for callers that need GPT-2's
    exact layout).
    """
    run = Path(run)
    run_config = read_run_config(run, (KIND, FINETUNE_KIND))
    if run_config["kind"] == FINETUNE_KIND:
        return _load_finetuned_lm(run, checkpoint, device, plain)
    model = GPT(model_config_of(run_config, run))
    load_into(model, weights_path(run, checkpoint))
    tokenizer = Tokenizer.load(run / TOKENIZER_FILE)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{run / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size}")
    return model.to(device).eval(), tokenizer, run_config


def _load_finetuned_lm(run: Path, checkpoint: str, device: torch.device | str,
                       plain: bool) -> tuple[GPT, Tokenizer, dict]:
    from aigc.gpt.finetune import load_finetuned  # it imports this module

    finetuned = load_finetuned(run, checkpoint)
    if finetuned.task.kind != "completion":
        raise UserError(f"{run} is a {finetuned.task.kind} run: its output is a label, not text; "
                        "score it with `aigc gpt eval --metrics accuracy`")
    method = finetuned.tuned.settings.name
    if method == "adapter" and plain:
        raise UserError(f"{run} was fine-tuned with adapters, which have no place in a GPT-2 layout; "
                        "fine-tune with --method full, lora or adalora to export it")
    gpt = finetuned.model.gpt if method == "adapter" else finetuned.tuned.merged()
    return gpt.to(device).eval(), finetuned.tokenizer, finetuned.run_config
