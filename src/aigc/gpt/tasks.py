"""Downstream tasks for a pretrained GPT: data, prompt template, losses and the classification head.

- ``completion``: examples ``{"prompt": ..., "completion": ...}`` (a JSONL file, or a pair of
  aligned text files, one example a line: translation, summarization). Each is rendered as
  ``template.format(prompt=...)`` followed by the completion and the end marker ``"\\n"``;
  the loss counts the completion tokens (and the end marker) only, never the prompt's.
- ``classify``: examples ``{"text": ..., "label": ...}``; a linear head on the hidden state of
  the text's last token (Radford et al. 2018 put it on an end token: with causal attention the
  last token is the only one that has seen the whole text), trained with cross-entropy.

Shapes: B batch, T time, C channels, K classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.data.files import read_bytes
from aigc.data.tokenizers import Tokenizer
from aigc.errors import UserError
from aigc.gpt.config import FINETUNE_TEMPLATE as DEFAULT_TEMPLATE
from aigc.gpt.model import GPT

END = "\n"  # ends every completion; generation stops there
IGNORE = -100  # target id that carries no loss (F.cross_entropy's default ignore_index)
FIELDS = {"completion": ("prompt", "completion"), "classify": ("text", "label")}


@dataclass
class Task:
    """What the fine-tuned model does; saved in the run's config.json."""

    kind: str
    template: str = DEFAULT_TEMPLATE
    labels: list[str] = field(default_factory=list)  # classify: the head's classes, in order

    def render(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "template": self.template, "labels": self.labels}

    @classmethod
    def from_dict(cls, values: dict) -> "Task":
        return cls(values["kind"], values.get("template", DEFAULT_TEMPLATE), list(values.get("labels", [])))


# ---------------------------------------------------------------- reading examples

def _open_text(path: Path) -> list[str]:
    """The lines of a text file (gzip or not), without line ends."""
    if not path.is_file():
        raise UserError(f"data not found: {path}")
    try:
        return read_bytes(path).decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read {path}: not UTF-8 text (bad byte at offset {exc.start})") from None


def read_jsonl(path: str | Path, kind: str) -> list[dict]:
    """The examples of a JSONL file for task ``kind``; a bad line is a UserError naming it."""
    path = Path(path)
    wanted = FIELDS[kind]
    examples = []
    for number, line in enumerate(_open_text(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object with {' and '.join(wanted)}")
        missing = [name for name in wanted if name not in record]
        if missing:
            raise UserError(f"{path}:{number}: missing field {', '.join(repr(m) for m in missing)}")
        examples.append({name: str(record[name]) for name in wanted})
    if not examples:
        raise UserError(f"{path} holds no examples")
    return examples


def read_pairs(source: str | Path, target: str | Path) -> list[dict]:
    """Completion examples from two aligned text files: line i of ``source`` is the prompt of line i of ``target``."""
    prompts, completions = _open_text(Path(source)), _open_text(Path(target))
    if len(prompts) != len(completions):
        raise UserError(f"{source} has {len(prompts)} lines but {target} has {len(completions)}; "
                        "source and target files must be aligned line by line")
    if not prompts:
        raise UserError(f"{source} holds no examples")
    return [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]


# ---------------------------------------------------------------- encoding and batches

@dataclass
class Encoded:
    ids: list[int]
    start: int  # completion: the first completion token (loss from here on); classify: 0
    label: int = -1  # classify: the class index


def encode_completion(tokenizer: Tokenizer, task: Task, prompt: str, completion: str, block_size: int) -> Encoded:
    """Prompt and completion tokens; too long an example loses tokens from the prompt's start."""
    prompt_ids = tokenizer.encode(task.render(prompt))
    completion_ids = tokenizer.encode(completion + END)
    ids = (prompt_ids + completion_ids)[-(block_size + 1):]  # x and y of at most block_size each
    return Encoded(ids, max(1, len(ids) - len(completion_ids)))


def encode_text(tokenizer: Tokenizer, text: str, block_size: int, label: int = -1) -> Encoded:
    """A classification text (its last block_size tokens: the last one carries the decision)."""
    ids = tokenizer.encode(text)[-block_size:]
    if not ids:
        raise UserError("an example has an empty text; give every example at least one character")
    return Encoded(ids, 0, label)


def encode_examples(examples: list[dict], task: Task, tokenizer: Tokenizer, block_size: int) -> list[Encoded]:
    if task.kind == "completion":
        return [encode_completion(tokenizer, task, e["prompt"], e["completion"], block_size) for e in examples]
    index = {label: i for i, label in enumerate(task.labels)}
    unseen = sorted({e["label"] for e in examples} - index.keys())
    if unseen:
        raise UserError(f"label(s) {', '.join(repr(u) for u in unseen[:5])} never seen in training; "
                        f"the head knows {', '.join(repr(label) for label in task.labels)}")
    return [encode_text(tokenizer, e["text"], block_size, index[e["label"]]) for e in examples]


def completion_batch(batch: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and targets y, both (B, T), right-padded; y is IGNORE on the prompt and the padding.

    Token ``ids[t]`` is predicted from x[t - 1], so the targets at positions < start - 1 are
    prompt tokens and carry no loss.
    """
    T = max(len(e.ids) for e in batch) - 1
    x = torch.zeros(len(batch), T, dtype=torch.long)
    y = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    for row, e in enumerate(batch):
        ids = torch.tensor(e.ids)
        x[row, :len(ids) - 1] = ids[:-1]
        y[row, e.start - 1:len(ids) - 1] = ids[e.start:]
    return x, y


def classify_batch(batch: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens x (B, T) right-padded, lengths (B,) and labels (B,)."""
    T = max(len(e.ids) for e in batch)
    x = torch.zeros(len(batch), T, dtype=torch.long)
    for row, e in enumerate(batch):
        x[row, :len(e.ids)] = torch.tensor(e.ids)
    return x, torch.tensor([len(e.ids) for e in batch]), torch.tensor([e.label for e in batch])


# ---------------------------------------------------------------- model side

class TaskModel(nn.Module):
    """The GPT and, for classify, its head: one module, so parameter names read ``gpt.*`` and ``head.*``."""

    def __init__(self, gpt: GPT, head: "ClassificationHead | None" = None):
        super().__init__()
        self.gpt, self.head = gpt, head

    def forward(self, batch: list[Encoded], device: torch.device) -> torch.Tensor:
        """The loss, as ``forward``: DistributedDataParallel averages the gradients of what its
        forward computes."""
        return self.loss(batch, device)

    def loss(self, batch: list[Encoded], device: torch.device) -> torch.Tensor:
        """Mean cross-entropy of a batch: over completion tokens, or over the class decisions."""
        if self.head is None:
            x, y = completion_batch(batch)
            logits, _ = self.gpt(x.to(device))  # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), ignore_index=IGNORE)
        x, lengths, labels = classify_batch(batch)
        return F.cross_entropy(self.classify(x.to(device), lengths).float(), labels.to(device))

    def classify(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T) right-padded, lengths (B,) -> class logits (B, K). Right padding is harmless:
        causal attention keeps it out of the real tokens' states."""
        return self.head(self.gpt.hidden_states(x), lengths)


class ClassificationHead(nn.Module):
    """A linear layer from the last real token's hidden state to K class logits."""

    def __init__(self, n_embd: int, n_classes: int):
        super().__init__()
        self.proj = nn.Linear(n_embd, n_classes)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        last = hidden[torch.arange(hidden.size(0), device=hidden.device), lengths.to(hidden.device) - 1]  # (B, C)
        return self.proj(last)  # (B, K)
