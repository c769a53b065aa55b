"""The GPT pretraining recipe: next-token maximum likelihood with AdamW.

Read top to bottom: data and tokenizer, model, optimizer, then the shared loop
(``aigc.training.loop``) of steps with warm-up + cosine learning rates, gradient clipping and
bf16 autocast; validation loss at intervals with the last and best checkpoints; each
checkpoint's ``state.pt`` holds everything --resume needs to continue the same trajectory
(optimizer, step, RNG and data-sampler states). Under torchrun each rank trains on its own
slice of every global batch, the model in DistributedDataParallel; rank 0 writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from aigc.data import text
from aigc.data.tokenizers import TOKENIZER_FILE, Tokenizer, train_tokenizer
from aigc.devices import autocast
from aigc.gpt.config import GptTrainConfig
from aigc.gpt.loading import GPT_KIND, load_into, model_config_of, weights_path, write_run_config
from aigc.gpt.model import GPT, GPTConfig
from aigc.logging import plot_metrics, read_metrics
from aigc.runs import METRICS_FILE, PLOT_FILE, WEIGHTS_FILE, create_run_dir, read_run_config
from aigc.training import distributed, loop
from aigc.training.samplers import RandomBatches
from aigc.training.schedule import CosineSchedule, set_lr
from aigc.training.steps import accumulated_step

DEFAULT_MAX_ITERS = 2000
# Settings that define what a run is: a resumed run keeps them, and asking for other values is an error.
RUN_DEFINING = ("data", "val_data", "tokenizer", "vocab_size", "init_from", "n_layer", "n_head", "n_embd",
                "block_size", "dropout", "batch_size", "grad_accum", "seed")


def train(config: GptTrainConfig) -> Path:
    """Train a GPT as ``config`` says; returns the run directory."""
    distributed.setup(config, fsdp=True)
    config, run_dir = loop.open_run(config, GPT_KIND, "gpt", lambda name: name not in RUN_DEFINING)
    device = distributed.device(config)
    torch.manual_seed(config.seed)

    data = text.read_text(config.data)
    tokenizer, model_config, init_weights = _tokenizer_and_model_config(config, data, run_dir)
    train_tokens, val_tokens = _token_splits(config, data, tokenizer, model_config.block_size)
    model = GPT(model_config).to(device)
    if init_weights is not None:
        load_into(model, init_weights)
    trainer = GptTrainer(config, model, train_tokens, val_tokens, device)
    plan = loop.Plan(trainer.max_iters, config.time_budget, config.log_every, config.eval_interval,
                     save_every=config.eval_interval, steps_flag="--max-iters", trackers=config.trackers())
    start = loop.restore(trainer, run_dir, plan) if config.resume else loop.Start()
    if distributed.is_main():
        if not config.resume:
            create_run_dir(run_dir)
            tokenizer.save(run_dir / TOKENIZER_FILE)
        write_run_config(run_dir, model_config, tokenizer, asdict(config))
        print(f"gpt: {model.num_params() / 1e6:.2f}M parameters, {tokenizer.kind} tokenizer with "
              f"{tokenizer.vocab_size} tokens, {len(train_tokens):,} training tokens{_processes()}; run {run_dir}",
              flush=True)
    loop.run(trainer, plan, run_dir, start)
    if distributed.is_main():
        plot_metrics(read_metrics(run_dir / METRICS_FILE), ["loss", "val_loss"], run_dir / PLOT_FILE,
                     title="GPT loss")
    distributed.teardown()
    return run_dir


def _processes() -> str:
    return f", {described}" if (described := distributed.describe()) else ""


class GptTrainer:
    """A GPT, its optimizer and data, the pretraining step and the validation loss; driven by
    ``aigc.training.loop``."""

    name = "gpt train"

    def __init__(self, config: GptTrainConfig, model: GPT, train_tokens: np.ndarray, val_tokens: np.ndarray,
                 device: torch.device):
        self.config, self.model, self.device = config, model, device
        # What computes the training loss: compiled if asked, in DDP under torchrun; `model` stays
        # the plain module (the same parameters) for evaluating and saving. With --strategy fsdp,
        # `model` itself is sharded: its parameters become DTensors, each rank holding a slice.
        self.sharded = config.strategy == "fsdp"
        self.forward = distributed.wrap(torch.compile(model) if config.compile else model, config.strategy)
        self.optimizer = torch.optim.AdamW(model.optimizer_groups(config.weight_decay), lr=config.lr,
                                           betas=(config.beta1, config.beta2),
                                           fused=device.type in ("cpu", "cuda") and not self.sharded)
        self.tokens, block = train_tokens, model.config.block_size
        self.sampler = RandomBatches(len(train_tokens) - block, config.batch_size, seed=config.seed,
                                     rank=distributed.rank(), world_size=distributed.world_size())
        self.val_batches = text.fixed_windows(val_tokens, block, config.batch_size, config.eval_iters)
        self.max_iters = config.max_iters or (None if config.time_budget else DEFAULT_MAX_ITERS)
        self.schedule = CosineSchedule(config.lr, config.min_lr, config.warmup_iters,
                                       config.lr_decay_iters or self.max_iters, config.time_budget)
        self.throughput = ("tokens_per_s", config.batch_size * block * config.grad_accum * distributed.world_size())
        self.lr = config.lr
        self.best_val_loss, self.is_best = math.inf, False

    def train_step(self, step: int, elapsed: float) -> dict[str, float]:
        """One optimizer step over grad_accum micro-batches; returns the mean loss."""
        self.lr = self.schedule(step, elapsed)
        set_lr(self.optimizer, self.lr)
        loss = accumulated_step(self.optimizer, self.model.parameters(), self._micro_batch_loss,
                                self.config.grad_accum, self.config.grad_clip, module=self.forward)
        return {"loss": loss}

    def _micro_batch_loss(self) -> tuple[torch.Tensor, float]:
        starts = self.sampler.next().numpy()
        x, y = (t.to(self.device, non_blocking=True) for t in text.windows(self.tokens, starts,
                                                                            self.model.config.block_size))
        with autocast(self.device, self.config.amp):
            _, loss = self.forward(x, y)  # x, y: (B, T)
        return loss, loss.item()

    def status(self) -> dict:
        return {"lr": self.lr}

    def evaluate(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        val_loss = evaluate(self.model, self.val_batches, self.config.amp, self.device)
        self.is_best = val_loss < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, val_loss)
        return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)),
                "eval_seconds": round(time.perf_counter() - started, 3)}

    def best(self) -> bool:
        return self.is_best

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        if self.sharded:  # gathered whole on rank 0 (the others get {}): the same files as ever
            return {WEIGHTS_FILE: {k: v for k, v in distributed.full_model_state(self.model).items()
                                   if k != "lm_head.weight"}}
        return {WEIGHTS_FILE: self.model.weights()}

    def state_dict(self) -> dict:
        optimizer = (distributed.full_optimizer_state(self.model, self.optimizer) if self.sharded
                     else self.optimizer.state_dict())
        return {"optimizers": {"model": optimizer},
                "samplers": {"windows": self.sampler.state_dict()}, "rng": {},
                "trainer": {"best_val_loss": self.best_val_loss}}

    def load_state(self, folder: Path, state: dict) -> None:
        if self.sharded:
            distributed.load_full_state(self.model, self.optimizer, folder / WEIGHTS_FILE,
                                        state["optimizers"]["model"])
        else:
            load_into(self.model, folder / WEIGHTS_FILE)
            self.optimizer.load_state_dict(state["optimizers"]["model"])
        self.sampler.load_state_dict(state["samplers"]["windows"])
        self.best_val_loss = float(state["trainer"]["best_val_loss"])


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


def _tokenizer_and_model_config(config: GptTrainConfig, data: bytes,
                                run_dir: Path) -> tuple[Tokenizer, GPTConfig, Path | None]:
    """The tokenizer, the model config, and the weights to start from if any."""
    if config.resume:
        run_config = read_run_config(run_dir, GPT_KIND)
        return Tokenizer.load(run_dir / TOKENIZER_FILE), model_config_of(run_config, run_dir), None
    if config.init_from:
        init = Path(config.init_from)
        model_config = model_config_of(read_run_config(init, GPT_KIND), init)
        model_config.dropout = config.dropout
        return Tokenizer.load(init / TOKENIZER_FILE), model_config, weights_path(init, "best")
    source = config.data or text.DEFAULT_CORPUS
    tokenizer = train_tokenizer(config.tokenizer, data, config.vocab_size, source)
    model_config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=config.block_size,
                             n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                             dropout=config.dropout, activation=config.activation)
    return tokenizer, model_config, None


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
