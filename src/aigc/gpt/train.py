"""The GPT pretraining recipe: next-token maximum likelihood with AdamW.

Read top to bottom: data and tokenizer, model, optimizer, then one loop of steps with
warm-up + cosine learning rates, gradient clipping and bf16 autocast; validation loss at
intervals with the last and best checkpoints; ``state.pt`` holds everything --resume needs
to continue the same trajectory (optimizer, step, RNG and data-sampler states).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from aigc.config import resumed
from aigc.data import text
from aigc.data.tokenizers import TOKENIZER_FILE, Tokenizer, train_tokenizer
from aigc.devices import autocast, resolve_device
from aigc.errors import TrainingDiverged, UserError
from aigc.gpt.checkpoints import (BEST_FILE, KIND, load_into, model_config_of, save_model, weights_path,
                                  write_run_config)
from aigc.gpt.config import GptTrainConfig
from aigc.gpt.model import GPT, GPTConfig
from aigc.logging import MetricsLog, Progress, plot_metrics, read_metrics
from aigc.runs import (METRICS_FILE, STATE_FILE, WEIGHTS_FILE, prepare_run_dir, read_run_config, restoring_state,
                       save_state, unique_dir)

DEFAULT_MAX_ITERS = 2000
# Settings that define what a run is: a resumed run keeps them, and asking for other values is an error.
RUN_DEFINING = ("data", "val_data", "tokenizer", "vocab_size", "init_from", "n_layer", "n_head", "n_embd",
                "block_size", "dropout", "batch_size", "grad_accum", "seed")


def train(config: GptTrainConfig) -> Path:
    """Train a GPT as ``config`` says; returns the run directory."""
    out = Path(config.out) if config.out else unique_dir(Path("runs") / time.strftime("gpt-%Y%m%d-%H%M%S"))
    run_dir = prepare_run_dir(out, config.resume)
    if config.resume:
        config = resumed_config(config, read_run_config(run_dir, KIND).get("train") or {})
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    data = text.read_text(config.data)
    tokenizer, model_config, init_weights = _tokenizer_and_model_config(config, data, run_dir)
    train_tokens, val_tokens = _token_splits(config, data, tokenizer, model_config.block_size)
    write_run_config(run_dir, model_config, tokenizer, asdict(config))

    model = GPT(model_config).to(device)
    if init_weights is not None:
        load_into(model, init_weights)
    optimizer = torch.optim.AdamW(model.optimizer_groups(config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), fused=device.type in ("cpu", "cuda"))
    sampler = text.RandomWindows(train_tokens, model_config.block_size, config.batch_size, seed=config.seed)
    state = {"step": 0, "elapsed": 0.0, "best_val_loss": math.inf}
    if config.resume:
        state = _restore(run_dir, model, optimizer, sampler)
    val_batches = text.fixed_windows(val_tokens, model_config.block_size, config.batch_size, config.eval_iters)
    forward = torch.compile(model) if config.compile else model

    log = MetricsLog(run_dir, resume_step=state["step"] if config.resume else None)
    max_iters = config.max_iters or (None if config.time_budget else DEFAULT_MAX_ITERS)
    schedule = Schedule(config, max_iters)
    progress = Progress(max_iters or int(config.time_budget), "gpt train",
                        initial=state["step"] if max_iters else int(state["elapsed"]))
    print(f"gpt: {model.num_params() / 1e6:.2f}M parameters, {tokenizer.kind} tokenizer with "
          f"{tokenizer.vocab_size} tokens, {len(train_tokens):,} training tokens; run {run_dir}", flush=True)
    try:
        _loop(config, model, forward, optimizer, sampler, val_batches, state, schedule, max_iters,
              run_dir, log, progress, device)
    finally:
        progress.close()
        log.close()
    plot_metrics(read_metrics(run_dir / METRICS_FILE), ["loss", "val_loss"], run_dir / "loss.png", title="GPT loss")
    return run_dir


class Schedule:
    """Linear warm-up, then cosine decay from lr to min_lr (Loshchilov & Hutter 2017) over
    lr_decay_iters steps or, with a time budget, over the budget."""

    def __init__(self, config: GptTrainConfig, max_iters: int | None):
        self.config = config
        self.decay_iters = config.lr_decay_iters or max_iters

    def progress(self, step: int, elapsed: float) -> float:
        """How far through the run we are, in [0, 1]: the furthest of steps and time."""
        fractions = []
        if self.decay_iters:
            warmup = self.config.warmup_iters
            fractions.append((step - warmup) / max(1, self.decay_iters - warmup))
        if self.config.time_budget:
            fractions.append(elapsed / self.config.time_budget)
        return min(1.0, max(0.0, *fractions))

    def lr(self, step: int, elapsed: float) -> float:
        c = self.config
        if step < c.warmup_iters:
            return c.lr * (step + 1) / (c.warmup_iters + 1)
        return c.min_lr + 0.5 * (1 + math.cos(math.pi * self.progress(step, elapsed))) * (c.lr - c.min_lr)

    def done(self, step: int, elapsed: float, max_iters: int | None) -> bool:
        if max_iters is not None and step >= max_iters:
            return True
        return self.config.time_budget is not None and elapsed >= self.config.time_budget


def _loop(config, model, forward, optimizer, sampler, val_batches, state, schedule, max_iters,
          run_dir, log, progress, device) -> None:
    step, elapsed = state["step"], state["elapsed"]
    started = time.perf_counter() - elapsed
    losses: list[float] = []
    while not schedule.done(step, elapsed, max_iters):
        lr = schedule.lr(step, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = train_step(config, model, forward, optimizer, sampler, device)
        step += 1
        elapsed = time.perf_counter() - started
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {step}; the last good checkpoint is in {run_dir}")
        losses.append(loss)
        if step % config.log_every == 0:
            log.log(step, loss=sum(losses) / len(losses), lr=lr, elapsed=round(elapsed, 3))
            losses.clear()
        finished = schedule.done(step, elapsed, max_iters)
        if step % config.eval_interval == 0 or finished:
            eval_started = time.perf_counter()
            val_loss = evaluate(model, val_batches, config.amp, device)
            state.update(step=step, elapsed=elapsed)
            _checkpoint(run_dir, model, optimizer, sampler, state, val_loss)
            elapsed = time.perf_counter() - started  # evaluations and checkpoints count against the budget too
            log.log(step, val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 50.0)),
                    eval_seconds=round(time.perf_counter() - eval_started, 3))
            progress.write(f"step {step}: val loss {val_loss:.4f}")
        progress.update(step if max_iters else min(int(elapsed), progress.total), loss=loss, lr=lr)


def train_step(config: GptTrainConfig, model: GPT, forward, optimizer: torch.optim.Optimizer,
               sampler: text.RandomWindows, device: torch.device) -> float:
    """One optimizer step over grad_accum micro-batches; returns the mean loss."""
    total = 0.0
    for _ in range(config.grad_accum):
        x, y = (t.to(device, non_blocking=True) for t in sampler.next())  # (B, T) each
        with autocast(device, config.amp):
            _, loss = forward(x, y)
        (loss / config.grad_accum).backward()
        total += loss.item()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / config.grad_accum


@torch.no_grad()
def evaluate(model: GPT, batches: list, amp: bool, device: torch.device) -> float:
    """Mean cross-entropy over fixed validation batches."""
    model.eval()
    losses = []
    for x, y in batches:
        with autocast(device, amp):
            losses.append(model(x.to(device), y.to(device))[1].item())
    model.train()
    return sum(losses) / len(losses)


def _checkpoint(run_dir: Path, model: GPT, optimizer, sampler, state: dict, val_loss: float) -> None:
    if val_loss < state["best_val_loss"]:
        state["best_val_loss"] = val_loss
        save_model(run_dir / BEST_FILE, model, state["step"])
    save_model(run_dir / WEIGHTS_FILE, model, state["step"])
    save_state(run_dir / STATE_FILE, {
        **state,
        "optimizer": optimizer.state_dict(),
        "sampler": sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),  # dropout
    })


def _restore(run_dir: Path, model: GPT, optimizer, sampler) -> dict:
    with restoring_state(run_dir) as saved:
        load_into(model, run_dir / WEIGHTS_FILE)
        optimizer.load_state_dict(saved["optimizer"])
        sampler.load_state_dict(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        return {"step": int(saved["step"]), "elapsed": float(saved["elapsed"]),
                "best_val_loss": float(saved["best_val_loss"])}


def resumed_config(given: GptTrainConfig, saved: dict) -> GptTrainConfig:
    """The saved run's settings, overridden by flags given now; changing what defines the run
    (model shape, data, tokenizer, seed) is an error."""
    return resumed(given, saved, lambda name: name not in RUN_DEFINING)


def _tokenizer_and_model_config(config: GptTrainConfig, data: bytes,
                                run_dir: Path) -> tuple[Tokenizer, GPTConfig, Path | None]:
    """The tokenizer (saved into the run), the model config, and the weights to start from if any."""
    if config.resume:
        run_config = read_run_config(run_dir, KIND)
        return Tokenizer.load(run_dir / TOKENIZER_FILE), model_config_of(run_config, run_dir), None
    if config.init_from:
        init = Path(config.init_from)
        model_config = model_config_of(read_run_config(init, KIND), init)
        model_config.dropout = config.dropout
        tokenizer = Tokenizer.load(init / TOKENIZER_FILE)
        weights = weights_path(init, "best")
    else:
        source = config.data or text.DEFAULT_CORPUS
        tokenizer = train_tokenizer(config.tokenizer, data, config.vocab_size, source)
        model_config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=config.block_size,
                                 n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                 dropout=config.dropout)
        weights = None
    tokenizer.save(run_dir / TOKENIZER_FILE)
    return tokenizer, model_config, weights


def _token_splits(config: GptTrainConfig, data: bytes, tokenizer: Tokenizer,
                  block_size: int) -> tuple[np.ndarray, np.ndarray]:
    source = config.data or text.DEFAULT_CORPUS
    tokens = text.encode_cached(data, tokenizer, source)
    if config.val_data:
        train_tokens = tokens
        val_tokens = text.encode_cached(text.read_text(config.val_data), tokenizer, config.val_data)
    else:
        train_tokens, val_tokens = text.split(tokens)
    text.check_length(train_tokens, block_size, f"the training data ({source})")
    text.check_length(val_tokens, block_size, f"the validation data ({config.val_data or 'last 10% of the data'})")
    return train_tokens, val_tokens
