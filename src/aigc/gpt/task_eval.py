"""Task metrics of a fine-tuned GPT run, for ``aigc gpt eval --metrics bleu,rouge,...``.

The run decodes (completion: greedy or beam search, cut at the end of the line) or predicts
labels (classify) once for the evaluation examples; each metric in :data:`TASK_METRICS` then
scores those outputs. The hypotheses (or predicted labels) are written one a line beside the
JSON results, so a reader can look at what was scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from aigc.devices import resolve_device
from aigc.errors import UserError
from aigc.gpt.config import GptEvalConfig
from aigc.gpt.loading import Finetuned, load_finetuned
from aigc.gpt.generation import Generator
from aigc.gpt.tasks import classify_batch, encode_examples, read_jsonl, read_pairs
from aigc.metrics import text as text_metrics
from aigc.runs import atomic_write


@dataclass
class TaskOutputs:
    outputs: list[str]  # generated completions, or predicted labels
    references: list[str]  # reference completions, or true labels
    kind: str = "completion"
    examples: list[dict] = field(default_factory=list)


def _completion_only(name: str, score: Callable[[TaskOutputs], dict]) -> Callable[[TaskOutputs], dict]:
    def metric(out: TaskOutputs) -> dict:
        if out.kind != "completion":
            raise UserError(f"metric {name} scores generated text; this run classifies (use accuracy)")
        return score(out)
    return metric


def _accuracy(out: TaskOutputs) -> dict:
    if out.kind != "classify":
        raise UserError("metric accuracy scores labels; this run completes text (use bleu, chrf, rouge)")
    return text_metrics.accuracy_f1(out.outputs, out.references)


TASK_METRICS: dict[str, Callable[[TaskOutputs], dict]] = {
    "bleu": _completion_only("bleu", lambda o: text_metrics.bleu(o.outputs, [o.references])),
    "chrf": _completion_only("chrf", lambda o: text_metrics.chrf(o.outputs, [o.references])),
    "rouge": _completion_only("rouge", lambda o: text_metrics.rouge(o.outputs, [o.references])),
    "distinct": _completion_only("distinct", lambda o: text_metrics.distinct(o.outputs)),
    "accuracy": _accuracy,
}


def evaluate_task(config: GptEvalConfig, names: list[str]) -> dict:
    """Decode or classify the evaluation examples once, then compute each metric in ``names``."""
    finetuned = load_finetuned(config.run, config.checkpoint, resolve_device(config.device))
    examples = _eval_examples(config, finetuned)
    if finetuned.task.kind == "completion":
        outputs = TaskOutputs(complete(finetuned, [e["prompt"] for e in examples], config.max_new_tokens,
                                       config.beams, config.length_penalty, config.batch_size),
                              [e["completion"] for e in examples])
    else:
        outputs = TaskOutputs(classify(finetuned, examples, config.batch_size), [e["label"] for e in examples],
                              kind="classify")
    results: dict = {"examples": len(examples)}
    for name in names:
        results.update(TASK_METRICS[name](outputs))
    if config.json:
        hypotheses = hypotheses_path(config.json)
        atomic_write(hypotheses, lambda tmp: tmp.write_text("".join(o.replace("\n", " ") + "\n"
                                                                    for o in outputs.outputs)))
        results["hypotheses"] = str(hypotheses)
    return results


def complete(finetuned: Finetuned, prompts: list[str], max_new_tokens: int = 128, beams: int = 1,
             length_penalty: float = 1.0, batch_size: int = 32) -> list[str]:
    """The model's completion of each prompt, rendered through the run's template."""
    generator = Generator(finetuned.model.gpt, finetuned.tokenizer)
    return generator.complete([finetuned.task.render(p) for p in prompts], max_new_tokens, beams, length_penalty,
                              batch_size=batch_size)


@torch.no_grad()
def classify(finetuned: Finetuned, examples: list[dict], batch_size: int = 32) -> list[str]:
    """The predicted label of each example; a label the head never saw is a UserError."""
    model, task = finetuned.model, finetuned.task
    device = next(model.parameters()).device
    encoded = encode_examples(examples, task, finetuned.tokenizer, model.gpt.config.block_size)
    predictions: list[str] = []
    for start in range(0, len(encoded), batch_size):
        x, lengths, _ = classify_batch(encoded[start:start + batch_size])
        predictions += [task.labels[i] for i in model.classify(x.to(device), lengths).argmax(dim=-1).tolist()]
    return predictions


def _eval_examples(config: GptEvalConfig, finetuned: Finetuned) -> list[dict]:
    """--data (JSONL) or --source/--target, else the validation data the run was trained with."""
    kind = finetuned.task.kind
    if config.source:
        if kind != "completion":
            raise UserError("--source/--target are for completion runs; give --data FILE.jsonl")
        return read_pairs(config.source, config.target)
    if config.data:
        return read_jsonl(config.data, kind)
    train = finetuned.run_config.get("train") or {}
    if train.get("val_data"):
        return read_jsonl(train["val_data"], kind)
    if train.get("val_source"):
        return read_pairs(train["val_source"], train["val_target"])
    raise UserError(f"{config.run} records no separate validation data; pass --data FILE.jsonl "
                    "or --source F --target F")


def hypotheses_path(json_path: str | Path) -> Path:
    """Where task metrics put the generated hypotheses (or predicted labels): FILE.hyp.txt beside --json."""
    return Path(json_path).with_suffix(".hyp.txt")
