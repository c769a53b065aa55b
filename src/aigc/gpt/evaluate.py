"""Evaluating a GPT run on text: ``aigc gpt eval``.

Metrics are named functions in :data:`METRICS`, each taking an :class:`EvalInput` and returning
named numbers; a new metric is one function and one entry there (and its name in
``aigc.gpt.config.EVAL_METRICS``). Task metrics of fine-tuned runs (BLEU, ROUGE, accuracy...)
live in :mod:`aigc.gpt.task_eval`, registered the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from aigc.data import text
from aigc.data.tokenizers import Tokenizer
from aigc.config import checked
from aigc.devices import resolve_device
from aigc.errors import UserError
from aigc.gpt.loading import load_gpt
from aigc.gpt.config import TASK_METRICS, GptEvalConfig
from aigc.gpt.model import GPT
from aigc.gpt.task_eval import evaluate_task, hypotheses_path
from aigc.outputs import output_file
from aigc.runs import atomic_write


@dataclass
class EvalInput:
    model: GPT
    tokenizer: Tokenizer
    tokens: np.ndarray  # the evaluation text as token ids
    batch_size: int


@torch.no_grad()
def perplexity(inputs: EvalInput) -> dict[str, float]:
    """Mean next-token loss (nats), perplexity, and bits per byte, over every token after the first.

    Bits per byte (total bits / bytes of the predicted tokens) does not depend on the
    tokenizer, so char and BPE models compare on it.
    """
    model, block = inputs.model.eval(), inputs.model.config.block_size
    device = model.device
    windows = text.tiling_windows(inputs.tokens, block)
    token_bytes = np.array([len(b) for b in inputs.tokenizer.token_bytes] +
                           [0] * (model.config.vocab_size - inputs.tokenizer.vocab_size))
    nll, count, n_bytes = 0.0, 0, 0
    for i in range(0, len(windows), inputs.batch_size):
        batch = windows[i:i + inputs.batch_size]
        for length in sorted({len(x) for x, _ in batch}):  # only the last window may be shorter
            x = torch.from_numpy(np.stack([x for x, _ in batch if len(x) == length])).to(device)  # (B, T)
            y = torch.from_numpy(np.stack([y for _, y in batch if len(y) == length])).to(device)  # (B, T)
            logits, _ = model(x)  # (B, T, V)
            nll += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
            count += y.numel()
            n_bytes += int(token_bytes[y.cpu().numpy()].sum())
    loss = nll / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": nll / math.log(2) / max(n_bytes, 1), "tokens": count, "bytes": n_bytes}


METRICS: dict[str, Callable[[EvalInput], dict[str, float]]] = {
    "perplexity": perplexity,
}


def evaluate_command(config: GptEvalConfig) -> dict[str, float]:
    """``aigc gpt eval``: print the metrics (and write them as JSON with --json); return them."""
    checked(config)
    task = any(name in TASK_METRICS for name in config.metric_names())
    if config.json:  # checked before any work, and never over a file of a run
        output_file(config.json, "--json")
        if task:
            output_file(hypotheses_path(config.json), "--json (its .hyp.txt beside it)")
    if task:
        results = evaluate_task(config, config.metric_names())  # fine-tuned runs: decode or classify, then score
    else:
        results = _language_model_metrics(config)
    for name, value in results.items():
        print(f"{name:>14}  {value:.4f}" if isinstance(value, float) else f"{name:>14}  {value}")
    if config.json:
        atomic_write(Path(config.json), lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
    return results


def _language_model_metrics(config: GptEvalConfig) -> dict[str, float]:
    loaded = load_gpt(config.run, config.checkpoint, resolve_device(config.device))
    model, tokenizer, run_config = loaded.model, loaded.tokenizer, loaded.run_config
    tokens = _eval_tokens(config, tokenizer, run_config, model.config.block_size)
    inputs = EvalInput(model, tokenizer, tokens, config.batch_size)
    results: dict[str, float] = {}
    for name in config.metric_names():
        results.update(METRICS[name](inputs))
    return results


def _eval_tokens(config: GptEvalConfig, tokenizer: Tokenizer, run_config: dict, block_size: int) -> np.ndarray:
    """The tokens of --data, or else of the validation split the run was trained with."""
    if config.data is not None:
        tokens = text.encode_cached(text.read_text(config.data), tokenizer, config.data)
        what = config.data
    elif run_config["kind"] != "gpt":
        raise UserError(f"{config.run} is a fine-tuned run; pass --data FILE, a text file to measure perplexity on")
    else:
        train = run_config.get("train") or {}
        if "data" not in train:
            raise UserError(f"{config.run} records no training data (imported?); pass --data FILE")
        if train.get("val_data"):
            tokens = text.encode_cached(text.read_text(train["val_data"]), tokenizer, train["val_data"])
        else:
            tokens = text.split(text.encode_cached(text.read_text(train["data"]), tokenizer))[1]
        what = "the run's validation data"
    if len(tokens) < 2:
        raise UserError(f"{what} has fewer than two tokens; nothing to evaluate")
    return tokens
