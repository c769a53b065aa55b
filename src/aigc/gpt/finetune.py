"""The fine-tuning recipe: a pretrained GPT run, labelled examples, one of four methods.

Read top to bottom: examples and task, the base model with the method applied (and a head for
classify), AdamW on the trainable parameters only, then the shared loop
(``aigc.training.loop``) with warm-up + cosine learning rates, clipping and bf16 autocast,
the task's loss, validation loss at intervals, and best and last checkpoints. Under
torchrun the task model trains in DistributedDataParallel (its trainable parameters only),
each rank on its own slice of every global batch; rank 0 writes.

A fine-tuned run (``kind`` "gpt-finetune") records its base run, method and task in
``config.json`` and copies the base's ``tokenizer.json``. With ``--method full`` its
checkpoints hold the whole GPT; otherwise only what the method added
(``adapter.safetensors``: a few per cent of the model), applied to the base weights at load
time (``aigc.gpt.loading``). A classification head always goes into the adapter file.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from aigc.data.tokenizers import TOKENIZER_FILE, Tokenizer
from aigc.devices import autocast
from aigc.errors import UserError
from aigc.gpt.config import GptFinetuneConfig
from aigc.gpt.loading import (FINETUNE_KIND, GPT_KIND, build_task_model, load_task_weights, model_config_of,
                              task_weights, weights_path, write_run_config)
from aigc.gpt.model import GPTConfig
from aigc.gpt.peft_methods import MethodSettings, Tuned, count_parameters
from aigc.gpt.tasks import Encoded, Task, TaskModel, encode_examples, read_jsonl, read_pairs
from aigc.logging import plot_metrics, read_metrics
from aigc.runs import METRICS_FILE, PLOT_FILE, create_run_dir, read_run_config
from aigc.training import distributed, loop
from aigc.training.samplers import EpochBatches
from aigc.training.schedule import CosineSchedule, set_lr
from aigc.training.steps import accumulated_step

DEFAULT_MAX_ITERS = 1000
VAL_FRACTION = 0.05
# Settings that define what a run is: a resumed run keeps them, and asking for other values is an error.
RUN_DEFINING = ("base", "task", "data", "source", "target", "val_data", "val_source", "val_target", "template",
                "method", "rank", "alpha", "adapter_size", "checkpoint", "dropout", "batch_size", "grad_accum",
                "seed")


def finetune(config: GptFinetuneConfig) -> Path:
    """Fine-tune a GPT run as ``config`` says; returns the run directory."""
    distributed.setup(config)
    config, run_dir = loop.open_run(config, FINETUNE_KIND, "finetune", lambda name: name not in RUN_DEFINING)
    config = _with_defaults(config)
    device = distributed.device(config)
    torch.manual_seed(config.seed)

    base = Path(config.base)
    model_config = model_config_of(read_run_config(base, GPT_KIND), base)
    if config.dropout is not None:
        model_config.dropout = config.dropout
    train_examples, val_examples = _examples(config)
    task = Task(config.task, config.template,
                sorted({e["label"] for e in train_examples}) if config.task == "classify" else [])
    tokenizer = Tokenizer.load(base / TOKENIZER_FILE)
    train_set = encode_examples(train_examples, task, tokenizer, model_config.block_size)
    val_set = encode_examples(val_examples, task, tokenizer, model_config.block_size)[:config.eval_examples]

    settings = MethodSettings(config.method, config.rank, config.alpha, config.adapter_size, config.max_iters or 0)
    model, tuned = build_task_model(model_config, task, settings, weights_path(base, config.checkpoint))
    trainer = FinetuneTrainer(config, model.to(device), tuned, train_set, val_set, device)
    plan = loop.Plan(config.max_iters, config.time_budget, config.log_every, config.eval_interval,
                     save_every=config.eval_interval, steps_flag="--max-iters", trackers=config.trackers())
    start = loop.restore(trainer, run_dir, plan) if config.resume else loop.Start()
    if distributed.is_main():
        create_run_dir(run_dir)
        _write_run_config(run_dir, config, model_config, task, settings, tokenizer)
        n_trainable, n_total = count_parameters(model)
        print(f"gpt finetune: {config.method} on {config.task}, {len(train_set):,} training and {len(val_set):,} "
              f"validation examples; trainable parameters {n_trainable:,} of {n_total:,} "
              f"({100 * n_trainable / n_total:.2f}%); run {run_dir}", flush=True)
    loop.run(trainer, plan, run_dir, start)
    if distributed.is_main():
        plot_metrics(read_metrics(run_dir / METRICS_FILE), ["loss", "val_loss"], run_dir / PLOT_FILE,
                     title=f"fine-tuning loss ({config.method})")
    distributed.teardown()
    return run_dir


def _with_defaults(config: GptFinetuneConfig) -> GptFinetuneConfig:
    lr = config.lr or (3e-4 if config.method == "full" else 1e-3)
    max_iters = config.max_iters or (None if config.time_budget else DEFAULT_MAX_ITERS)
    # The base as an absolute path, so that the run resumes and loads from any folder.
    return replace(config, lr=lr, min_lr=config.min_lr or lr / 10, max_iters=max_iters,
                   base=str(Path(config.base).resolve()))


def _examples(config: GptFinetuneConfig) -> tuple[list[dict], list[dict]]:
    """Training and validation examples; without validation data, the last 5% of the training ones."""
    examples = read_jsonl(config.data, config.task) if config.data else read_pairs(config.source, config.target)
    if config.val_data:
        return examples, read_jsonl(config.val_data, config.task)
    if config.val_source:
        return examples, read_pairs(config.val_source, config.val_target)
    if len(examples) < 2:
        raise UserError("need at least two examples to hold one out for validation, or give --val-data")
    cut = len(examples) - max(1, min(config.eval_examples, int(len(examples) * VAL_FRACTION)))
    return examples[:cut], examples[cut:]


def _write_run_config(run_dir: Path, config: GptFinetuneConfig, model_config: GPTConfig, task: Task,
                      settings: MethodSettings, tokenizer: Tokenizer) -> None:
    base = Path(config.base)
    write_run_config(run_dir, model_config, tokenizer, asdict(config), kind=FINETUNE_KIND, task=task.to_dict(),
                     method=settings.to_dict(), base={"run": str(base.resolve()), "checkpoint": config.checkpoint})
    if not (run_dir / TOKENIZER_FILE).is_file():
        shutil.copyfile(base / TOKENIZER_FILE, run_dir / TOKENIZER_FILE)


class FinetuneTrainer:
    """The task model, its method, optimizer and examples, the fine-tuning step and the
    validation loss; driven by ``aigc.training.loop``."""

    name = "gpt finetune"

    def __init__(self, config: GptFinetuneConfig, model: TaskModel, tuned: Tuned, train_set: list[Encoded],
                 val_set: list[Encoded], device: torch.device):
        self.config, self.model, self.tuned, self.device = config, model, tuned, device
        self.train_set, self.val_set = train_set, val_set
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.train_model = distributed.wrap(model)  # in DDP under torchrun; `model` for evaluating and saving
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in self.trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
             {"params": [p for p in self.trainable if p.dim() < 2], "weight_decay": 0.0}],
            lr=config.lr, betas=(config.beta1, config.beta2))
        world = distributed.world_size()
        self.sampler = EpochBatches(len(train_set), min(config.batch_size, max(1, len(train_set) // world)),
                                    config.seed, distributed.rank(), world)
        self.schedule = CosineSchedule(config.lr, config.min_lr, config.warmup_iters,
                                       config.lr_decay_iters or config.max_iters, config.time_budget)
        self.throughput = ("examples_per_s", self.sampler.batch_size * config.grad_accum * world)
        self.lr = config.lr
        self.best_val_loss, self.is_best = math.inf, False

    def train_step(self, step: int, elapsed: float) -> dict[str, float]:
        self.lr = self.schedule(step, elapsed)
        set_lr(self.optimizer, self.lr)
        loss = accumulated_step(self.optimizer, self.trainable, self._micro_batch_loss, self.config.grad_accum,
                                self.config.grad_clip, before_zero_grad=lambda: self.tuned.after_step(step + 1),
                                module=self.train_model)
        return {"loss": loss}

    def _micro_batch_loss(self) -> tuple[torch.Tensor, float]:
        batch = [self.train_set[i] for i in self.sampler.next().tolist()]
        with autocast(self.device, self.config.amp):
            loss = self.train_model(batch, self.device)
        return loss + self.tuned.penalty(), loss.item()

    def status(self) -> dict:
        return {"lr": self.lr, **({"ranks": self.tuned.ranks()} if self.config.method == "adalora" else {})}

    def evaluate(self, step: int) -> dict[str, float]:
        val_loss = validation_loss(self.model, self.val_set, self.config.batch_size, self.config.amp, self.device)
        self.is_best = val_loss < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, val_loss)
        return {"val_loss": val_loss}

    def best(self) -> bool:
        return self.is_best

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return task_weights(self.model, self.config.method)

    def state_dict(self) -> dict:
        return {"optimizers": {"model": self.optimizer.state_dict()},
                "samplers": {"examples": self.sampler.state_dict()}, "rng": {},
                "trainer": {"best_val_loss": self.best_val_loss, "allocator": self.tuned.allocator_state()}}

    def load_state(self, folder: Path, state: dict) -> None:
        load_task_weights(folder, self.model, self.config.method)
        self.optimizer.load_state_dict(state["optimizers"]["model"])
        self.sampler.load_state_dict(state["samplers"]["examples"])
        self.tuned.load_allocator_state(state["trainer"]["allocator"])
        self.best_val_loss = float(state["trainer"]["best_val_loss"])


@torch.no_grad()
def validation_loss(model: TaskModel, examples: list[Encoded], batch_size: int, amp: bool,
                    device: torch.device) -> float:
    """Mean task loss over the validation examples (each batch weighted by its size)."""
    model.eval()
    total = 0.0
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        with autocast(device, amp):
            total += model.loss(batch, device).item() * len(batch)
    model.train()
    return total / len(examples)
