"""The fine-tuning recipe: a pretrained GPT run, labelled examples, one of four methods.

Read top to bottom: examples and task, the base model with the method applied (and a head for
classify), AdamW on the trainable parameters only, then the same loop as pretraining (warm-up
+ cosine, clipping, bf16 autocast) with the task's loss, validation loss at intervals, and
``state.pt`` for --resume.

A fine-tuned run (``kind`` "gpt-finetune") records its base run, method and task in
``config.json`` and copies the base's ``tokenizer.json``. With ``--method full`` it saves the
whole GPT (``model.safetensors``, ``best.safetensors``); otherwise only what the method added
(``adapter.safetensors``, ``adapter-best.safetensors``: a few per cent of the model), applied
to the base weights at load time. A classification head always goes into the adapter file.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from aigc.config import resumed
from aigc.data.tokenizers import TOKENIZER_FILE, Tokenizer
from aigc.devices import autocast, resolve_device
from aigc.errors import TrainingDiverged, UserError
from aigc.gpt.checkpoints import (BEST_FILE, FINETUNE_KIND as KIND, KIND as GPT_KIND, load_into, model_config_of,
                                  save_model, weights_path)
from aigc.gpt.config import GptFinetuneConfig
from aigc.gpt.model import GPT, GPTConfig
from aigc.gpt.peft_methods import MethodSettings, Tuned, apply_method, count_parameters, extra_tensors
from aigc.gpt.tasks import (ClassificationHead, Encoded, ExampleBatches, Task, TaskModel, encode_examples,
                            read_jsonl, read_pairs)
from aigc.gpt.train import Schedule
from aigc.logging import MetricsLog, Progress, plot_metrics, read_metrics
from aigc.runs import (CONFIG_FILE, METRICS_FILE, STATE_FILE, WEIGHTS_FILE, load_weights, prepare_run_dir,
                       read_run_config, restoring_state, save_json, save_state, save_weights, unique_dir)


ADAPTER_FILE = "adapter.safetensors"
ADAPTER_BEST_FILE = "adapter-best.safetensors"
DEFAULT_MAX_ITERS = 1000
VAL_FRACTION = 0.05
# Settings that define what a run is: a resumed run keeps them, and asking for other values is an error.
RUN_DEFINING = ("base", "task", "data", "source", "target", "val_data", "val_source", "val_target", "template",
                "method", "rank", "alpha", "adapter_size", "checkpoint", "dropout", "batch_size", "grad_accum",
                "seed")


def finetune(config: GptFinetuneConfig) -> Path:
    """Fine-tune a GPT run as ``config`` says; returns the run directory."""
    out = Path(config.out) if config.out else unique_dir(Path("runs") / time.strftime("finetune-%Y%m%d-%H%M%S"))
    run_dir = prepare_run_dir(out, config.resume)
    if config.resume:
        config = _resumed_config(config, read_run_config(run_dir, KIND).get("train") or {})
    config = _with_defaults(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    base = Path(config.base)
    model_config = model_config_of(read_run_config(base, GPT_KIND), base)
    if config.dropout is not None:
        model_config.dropout = config.dropout
    tokenizer = Tokenizer.load(base / TOKENIZER_FILE)
    train_examples, val_examples = _examples(config)
    task = Task(config.task, config.template,
                sorted({e["label"] for e in train_examples}) if config.task == "classify" else [])
    train_set = encode_examples(train_examples, task, tokenizer, model_config.block_size)
    val_set = encode_examples(val_examples, task, tokenizer, model_config.block_size)[:config.eval_examples]

    settings = MethodSettings(config.method, config.rank, config.alpha, config.adapter_size, config.max_iters or 0)
    model, tuned = build_model(model_config, task, settings, weights_path(base, config.checkpoint))
    model.to(device)
    _write_run_config(run_dir, config, model_config, task, settings, tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
         {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}],
        lr=config.lr, betas=(config.beta1, config.beta2))
    batches = ExampleBatches(train_set, config.batch_size, config.seed)
    state = {"step": 0, "elapsed": 0.0, "best_val_loss": math.inf}
    if config.resume:
        state = _restore(run_dir, model, tuned, optimizer, batches)

    n_trainable, n_total = count_parameters(model)
    print(f"gpt finetune: {config.method} on {config.task}, {len(train_set):,} training and {len(val_set):,} "
          f"validation examples; trainable parameters {n_trainable:,} of {n_total:,} "
          f"({100 * n_trainable / n_total:.2f}%); run {run_dir}", flush=True)
    log = MetricsLog(run_dir, resume_step=state["step"] if config.resume else None)
    schedule = Schedule(config, config.max_iters)
    progress = Progress(config.max_iters or int(config.time_budget), "gpt finetune",
                        initial=state["step"] if config.max_iters else int(state["elapsed"]))
    try:
        _loop(config, model, tuned, optimizer, batches, val_set, state, schedule, run_dir, log, progress, device)
    finally:
        progress.close()
        log.close()
    plot_metrics(read_metrics(run_dir / METRICS_FILE), ["loss", "val_loss"], run_dir / "loss.png",
                 title=f"fine-tuning loss ({config.method})")
    return run_dir


def _with_defaults(config: GptFinetuneConfig) -> GptFinetuneConfig:
    lr = config.lr or (3e-4 if config.method == "full" else 1e-3)
    max_iters = config.max_iters or (None if config.time_budget else DEFAULT_MAX_ITERS)
    return replace(config, lr=lr, min_lr=config.min_lr or lr / 10, max_iters=max_iters)


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


def build_model(model_config: GPTConfig, task: Task, settings: MethodSettings,
                base_weights: Path) -> tuple[TaskModel, Tuned]:
    """The base GPT with its weights, the method applied, and a head for classify."""
    gpt = GPT(model_config)
    load_into(gpt, base_weights)
    tuned = apply_method(gpt, settings)
    head = ClassificationHead(model_config.n_embd, len(task.labels)) if task.kind == "classify" else None
    return TaskModel(gpt, head), tuned


def _write_run_config(run_dir: Path, config: GptFinetuneConfig, model_config: GPTConfig, task: Task,
                      settings: MethodSettings, tokenizer: Tokenizer) -> None:
    base = Path(config.base)
    save_json(run_dir / CONFIG_FILE, {
        "kind": KIND, "model": asdict(model_config), "tokenizer": tokenizer.kind, "task": task.to_dict(),
        "method": settings.to_dict(), "base": {"run": str(base.resolve()), "checkpoint": config.checkpoint},
        "train": asdict(config)})
    shutil.copyfile(base / TOKENIZER_FILE, run_dir / TOKENIZER_FILE)


def _loop(config, model: TaskModel, tuned: Tuned, optimizer, batches: ExampleBatches, val_set: list[Encoded],
          state: dict, schedule: Schedule, run_dir: Path, log: MetricsLog, progress: Progress,
          device: torch.device) -> None:
    step, elapsed = state["step"], state["elapsed"]
    started = time.perf_counter() - elapsed
    losses: list[float] = []
    while not schedule.done(step, elapsed, config.max_iters):
        lr = schedule.lr(step, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = _train_step(config, model, tuned, optimizer, batches, step + 1, device)
        step += 1
        elapsed = time.perf_counter() - started
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {step}; the last good checkpoint is in {run_dir}")
        losses.append(loss)
        if step % config.log_every == 0:
            extra = {"ranks": tuned.ranks()} if config.method == "adalora" else {}
            log.log(step, loss=sum(losses) / len(losses), lr=lr, elapsed=round(elapsed, 3), **extra)
            losses.clear()
        finished = schedule.done(step, elapsed, config.max_iters)
        if step % config.eval_interval == 0 or finished:
            val_loss = validation_loss(model, val_set, config.batch_size, config.amp, device)
            state.update(step=step, elapsed=elapsed)
            _checkpoint(run_dir, config, model, tuned, optimizer, batches, state, val_loss)
            elapsed = time.perf_counter() - started
            log.log(step, val_loss=val_loss)
            progress.write(f"step {step}: val loss {val_loss:.4f}")
        progress.update(step if config.max_iters else min(int(elapsed), progress.total), loss=loss, lr=lr)


def _train_step(config, model: TaskModel, tuned: Tuned, optimizer, batches: ExampleBatches, step: int,
                device: torch.device) -> float:
    """One optimizer step over grad_accum micro-batches; returns the mean task loss."""
    total = 0.0
    for _ in range(config.grad_accum):
        with autocast(device, config.amp):
            loss = model.loss(batches.next(), device)
        ((loss + tuned.penalty()) / config.grad_accum).backward()
        total += loss.item()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
    optimizer.step()
    tuned.after_step(step)  # AdaLoRA reads the gradients: before they are cleared
    optimizer.zero_grad(set_to_none=True)
    return total / config.grad_accum


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


def _checkpoint(run_dir: Path, config, model: TaskModel, tuned: Tuned, optimizer, batches: ExampleBatches,
                state: dict, val_loss: float) -> None:
    names = [(WEIGHTS_FILE, ADAPTER_FILE)]
    if val_loss < state["best_val_loss"]:
        state["best_val_loss"] = val_loss
        names.append((BEST_FILE, ADAPTER_BEST_FILE))
    for weights_name, adapter_name in names:
        if config.method == "full":
            save_model(run_dir / weights_name, model.gpt, state["step"])
        extra = extra_tensors(model, skip_frozen_base=config.method != "full")
        if extra:
            save_weights(run_dir / adapter_name, extra, metadata={"step": str(state["step"])})
    save_state(run_dir / STATE_FILE, {
        **state,
        "optimizer": optimizer.state_dict(),
        "batches": batches.state_dict(),
        "allocator": tuned.allocator_state(),
        "torch_rng": torch.get_rng_state(),  # dropout
    })


def _restore(run_dir: Path, model: TaskModel, tuned: Tuned, optimizer, batches: ExampleBatches) -> dict:
    with restoring_state(run_dir) as saved:
        load_task_weights(run_dir, model, tuned.settings.name, "last")
        optimizer.load_state_dict(saved["optimizer"])
        batches.load_state_dict(saved["batches"])
        tuned.load_allocator_state(saved["allocator"])
        torch.set_rng_state(saved["torch_rng"])
        return {"step": int(saved["step"]), "elapsed": float(saved["elapsed"]),
                "best_val_loss": float(saved["best_val_loss"])}


def _resumed_config(given: GptFinetuneConfig, saved: dict) -> GptFinetuneConfig:
    """The saved run's settings, overridden by flags given now; changing what defines the run is an error."""
    return resumed(given, saved, lambda name: name not in RUN_DEFINING)


# ---------------------------------------------------------------- loading fine-tuned runs

@dataclass
class Finetuned:
    model: TaskModel
    tuned: Tuned
    tokenizer: Tokenizer
    task: Task
    run_config: dict


def load_task_weights(run: Path, model: TaskModel, method: str, checkpoint: str) -> None:
    """Put a run's saved weights into ``model``: the GPT's (full) and the method's and head's tensors."""
    best = checkpoint == "best" and ((run / BEST_FILE).is_file() or (run / ADAPTER_BEST_FILE).is_file())
    if method == "full":
        load_into(model.gpt, run / (BEST_FILE if best else WEIGHTS_FILE))
    expected = extra_tensors(model, skip_frozen_base=method != "full")
    if not expected:
        return
    path = run / (ADAPTER_BEST_FILE if best else ADAPTER_FILE)
    tensors, _ = load_weights(path)
    missing, unexpected = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
    if missing or unexpected:
        raise UserError(f"{path} does not fit this model: missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise UserError(f"{path} does not fit the base model: {name} is {tuple(tensor.shape)} in the file "
                            f"but {tuple(expected[name].shape)} here (was the adapter trained on another base?)")
    model.load_state_dict(tensors, strict=False)


def load_finetuned(run: str | Path, checkpoint: str = "best", device: torch.device | str = "cpu",
                   base: str | Path | None = None) -> Finetuned:
    """A fine-tuned run ready to use: its model (eval mode, on ``device``), tokenizer and task.

    Also accepts a merged run (a plain "gpt" run with a task). ``base`` replaces the base run
    recorded in the run (a run moved to another machine); it must have the same shape.
    """
    run = Path(run)
    run_config = _read_task_run_config(run)
    task = Task.from_dict(run_config["task"])
    model_config = model_config_of(run_config, run)
    method = run_config.get("method", {"name": "full"})
    settings = MethodSettings(**method)
    if settings.name == "full":
        start = weights_path(run, checkpoint)
    else:
        base = Path(base or run_config["base"]["run"])
        base_model = model_config_of(read_run_config(base, GPT_KIND), base)
        if asdict(base_model) | {"dropout": 0} != asdict(model_config) | {"dropout": 0}:
            raise UserError(f"{run} was fine-tuned on a base of another shape than {base}: "
                            f"{_shape(model_config)} vs {_shape(base_model)}")
        start = weights_path(base, run_config["base"].get("checkpoint", "best"))
    model, tuned = build_model(model_config, task, settings, start)
    load_task_weights(run, model, settings.name, checkpoint)
    tokenizer = Tokenizer.load(run / TOKENIZER_FILE)
    return Finetuned(model.to(device).eval(), tuned, tokenizer, task, run_config)


def _shape(config: GPTConfig) -> str:
    return (f"vocab {config.vocab_size}, block {config.block_size}, {config.n_layer} layers, {config.n_head} heads, "
            f"width {config.n_embd}")


def _read_task_run_config(run: Path) -> dict:
    try:
        run_config = read_run_config(run, KIND)
    except UserError:
        run_config = read_run_config(run, GPT_KIND)  # a merged run: a plain GPT that knows its task
    if "task" not in run_config:
        raise UserError(f"{run} is a GPT run without a task; fine-tune it first with `aigc gpt finetune`")
    return run_config
