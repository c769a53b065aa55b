"""The text-GAN recipe: SeqGAN (Yu et al. 2017) with a GPT generator.

Read top to bottom: data and vocabulary, generator (fresh or from ``--base``), discriminator,
then one loop over steps in three phases:

1. ``mle``: maximum-likelihood pretraining of the generator (``--max-iters`` steps; none with ``--base``);
2. ``d-pretrain``: the discriminator learns real vs generated (``--d-pretrain-steps``);
3. ``adversarial``: ``--adv-rounds`` rounds of policy-gradient steps with Monte-Carlo rollout
   rewards, optional interleaved MLE steps, and discriminator steps on fresh negatives.

``--reward constant`` (the control) gives every sequence the same verdict and has no
discriminator, so phases 2 and 3's discriminator steps are skipped. The position in the run
is one step counter; ``state.pt`` holds it with the optimizers, the data sampler's and
torch's RNG states, so ``--resume`` continues the same trajectory. What is saved last is
what gets reported: there is no best-of-run checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import torch

from aigc.config import resumed
from aigc.devices import resolve_device
from aigc.errors import TrainingDiverged, UserError
from aigc.gpt.checkpoints import load_into, model_config_of, save_model
from aigc.gpt.checkpoints import load_run as load_gpt_run
from aigc.gpt.model import GPT, GPTConfig
from aigc.logging import MetricsLog, Progress, RunningMeans, plot_metrics, read_metrics
from aigc.runs import (CONFIG_FILE, METRICS_FILE, STATE_FILE, WEIGHTS_FILE, load_weights, prepare_run_dir,
                       read_run_config, restoring_state, save_json, save_state, save_weights)
from aigc.textgan import generator as gen
from aigc.textgan.config import CONSTANT_REWARD, TextGanTrainConfig
from aigc.textgan.data import Codec, ids_tensor, is_ids, read_lines
from aigc.textgan.discriminators import build_discriminator, discriminator_loss
from aigc.textgan.oracle import Oracle
from aigc.textgan.rollout import policy_gradient_loss, rollout_rewards

KIND = "textgan"
DISC_FILE = "discriminator.safetensors"
ORACLE_EVAL_SAMPLES = 1000
# Settings a resumed run takes from the command line; all others come from the saved run.
RESUME_OVERRIDABLE = {"adv_rounds", "log_every", "eval_every", "save_every", "device", "out", "resume"}


def train(config: TextGanTrainConfig) -> Path:
    """Train as ``config`` says; returns the run directory."""
    run_dir = prepare_run_dir(config.out, config.resume)
    if config.resume:
        config = resumed_config(config, read_run_config(run_dir, KIND).get("train") or {})
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    oracle = Oracle.load(config.oracle) if config.oracle else None
    base = load_base(config.base) if config.base else None
    codec, sequences = load_sequences(config, oracle, base)
    train_seqs, val_seqs = split(sequences, config.val_fraction, config.seed)
    model = base[0] if base else GPT(GPTConfig(
        vocab_size=codec.model_vocab, block_size=sequences.size(1), n_layer=config.n_layer,
        n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout))
    model, model_config = model.to(device), model.config
    disc = None if config.reward == "constant" else build_discriminator(config.disc, codec.model_vocab,
                                                                         sequences.size(1)).to(device)
    save_json(run_dir / CONFIG_FILE, {"kind": KIND, "model": dataclasses.asdict(model_config),
                                      "train": dataclasses.asdict(config)})
    codec.save(run_dir)

    trainer = Trainer(config, model, disc, codec, train_seqs.to(device), val_seqs.to(device), oracle, run_dir)
    if config.resume:
        trainer.restore()
    trainer.run()
    plot_metrics(read_metrics(run_dir / METRICS_FILE), ["mle_loss", "val_nll", "nll_oracle", "reward"],
                 run_dir / "loss.png", title="text GAN")
    return run_dir


def load_sequences(config: TextGanTrainConfig, oracle: Oracle | None,
                   base: tuple[GPT, Codec] | None) -> tuple[Codec, torch.Tensor]:
    """The vocabulary and the training sequences (N, L), checked against the oracle and the base."""
    if config.data == "oracle":
        generator = torch.Generator().manual_seed(config.seed + 1_000_003)
        codec, tokens = Codec("ids", oracle.vocab_size), oracle.sample(config.oracle_samples, config.oracle_length,
                                                                       generator)
    else:
        lines = read_lines(config.data)
        if base is not None and base[1].kind == "tokenizer":
            codec, tokens = base[1], base[1].encode(lines, base[0].config.block_size)
        elif is_ids(lines):
            codec = Codec("ids", _id_range(config, oracle, base))
            tokens = ids_tensor(lines, codec.size, config.data)
        else:
            if base is not None and base[1].kind != "words":
                raise UserError(f"{config.data} holds words but the base run {config.base} was trained on token ids")
            codec = base[1] if base else Codec.from_sentences(lines)
            length = base[0].config.block_size if base else max(map(len, lines)) + 1  # room for <eos>
            tokens = codec.encode(lines, length)
    if oracle is not None and codec.size != oracle.vocab_size:
        raise UserError(f"the oracle has {oracle.vocab_size} tokens but the data's vocabulary has {codec.size}")
    if base is not None and tokens.size(1) != base[0].config.block_size:
        raise UserError(f"{config.data} has sequences of {tokens.size(1)} tokens but the base generator "
                        f"{config.base} makes sequences of {base[0].config.block_size} (its context)")
    return codec, tokens


def _id_range(config: TextGanTrainConfig, oracle: Oracle | None, base: tuple[GPT, Codec] | None) -> int:
    if base is not None:
        if base[1].kind != "ids":
            raise UserError(f"{config.data} holds token ids but the base run {config.base} was trained on words")
        return base[1].size
    if oracle is not None:
        return oracle.vocab_size
    if config.vocab_size is None:
        raise UserError(f"{config.data} holds token ids: give --vocab-size (or --oracle) to say their range")
    return config.vocab_size


def split(sequences: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random (train, validation) split of the sequences."""
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(sequences) * val_fraction)
    if len(sequences) - n_val < 1:
        raise UserError("no training sequences left after the validation split")
    return sequences[order[n_val:]], sequences[order[:n_val]]


class Batches:
    """Random batches of sequences from a generator of its own (resumable)."""

    def __init__(self, sequences: torch.Tensor, batch_size: int, seed: int):
        self.sequences, self.batch_size = sequences, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        rows = torch.randint(len(self.sequences), (self.batch_size,), generator=self.generator)
        return self.sequences[rows.to(self.sequences.device)]  # (B, L)


class Trainer:
    """The models, optimizers and step counter of one run, and the step of each phase."""

    def __init__(self, config: TextGanTrainConfig, model: GPT, disc: torch.nn.Module | None, codec: Codec,
                 train_seqs: torch.Tensor, val_seqs: torch.Tensor, oracle: Oracle | None, run_dir: Path):
        self.config, self.model, self.disc, self.codec = config, model, disc, codec
        self.val_seqs, self.oracle, self.run_dir = val_seqs, oracle, run_dir
        self.batches = Batches(train_seqs, config.batch_size, config.seed)
        self.g_opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        self.d_opt = torch.optim.Adam(disc.parameters(), lr=config.d_lr) if disc is not None else None
        mle = 0 if config.base else config.max_iters
        d_pretrain = 0 if disc is None else config.d_pretrain_steps
        self.phases = [("mle", mle), ("d-pretrain", d_pretrain), ("adversarial", config.adv_rounds)]
        self.total = mle + d_pretrain + config.adv_rounds
        self.step = 0
        self.means = RunningMeans()

    def phase(self, step: int) -> str:
        """The phase that step number ``step`` (0-based) belongs to."""
        for name, length in self.phases:
            if step < length:
                return name
            step -= length
        raise IndexError(step)

    def run(self) -> None:
        log = MetricsLog(self.run_dir, resume_step=self.step if self.config.resume else None)
        progress = Progress(self.total, "textgan train", initial=self.step)
        print(f"textgan: generator {self.model.num_params() / 1e6:.2f}M parameters, {len(self.batches.sequences)} "
              f"training sequences of {self.batches.sequences.size(1)} tokens, phases "
              + ", ".join(f"{name} {n}" for name, n in self.phases) + f"; run {self.run_dir}", flush=True)
        try:
            while self.step < self.total:
                phase = self.phase(self.step)
                step = {"mle": self.mle_step, "d-pretrain": self.d_step, "adversarial": self.adversarial_round}[phase]
                metrics = step()
                self.step += 1
                self._check_finite(metrics)
                self.means.add(metrics)
                end_of_phase = self.step == self.total or self.phase(self.step) != phase
                if self.step % self.config.log_every == 0 or end_of_phase:
                    log.log(self.step, phase=phase, **self.means.means())
                    self.means.reset()
                if (self.step % self.config.eval_every == 0 and phase != "d-pretrain") or end_of_phase:
                    evaluation = self.evaluate()
                    log.log(self.step, **evaluation)
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in evaluation.items())
                    progress.write(f"step {self.step} ({phase}): {shown}")
                if self.step % self.config.save_every == 0 or end_of_phase:
                    self.checkpoint()
                progress.update(self.step, **metrics)
        finally:
            progress.close()
            log.close()

    def mle_step(self, lr: float | None = None) -> dict[str, float]:
        self.model.train()
        loss = gen.mle_loss(self.model, self.batches.next(), self.codec.bos)
        self._generator_update(loss, lr or self.config.lr)
        return {"mle_loss": loss.item()}

    def d_step(self) -> dict[str, float]:
        fake = gen.sample(self.model, self.config.batch_size, self.codec.bos, batch_size=self.config.batch_size,
                          eos=self.codec.eos)
        self.disc.train()
        loss, accuracy = discriminator_loss(self.disc, self.batches.next(), fake)
        self.d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.d_opt.step()
        return {"d_loss": loss.item(), "d_accuracy": accuracy}

    def adversarial_round(self) -> dict[str, float]:
        steps = [self.policy_gradient_step() for _ in range(self.config.g_steps)]
        steps += [self.mle_step(self.config.g_lr) for _ in range(self.config.mle_steps)]
        steps += [self.d_step() for _ in range(self.config.d_steps if self.disc is not None else 0)]
        names = dict.fromkeys(name for step in steps for name in step)  # each step reports some of them
        return {name: statistics.fmean(step[name] for step in steps if name in step) for name in names}

    def policy_gradient_step(self) -> dict[str, float]:
        c = self.config
        fake = gen.sample(self.model, c.batch_size, self.codec.bos, batch_size=c.batch_size,
                          eos=self.codec.eos)  # (B, L)
        if self.disc is None:
            rewards = torch.full(fake.shape, CONSTANT_REWARD, device=fake.device)
        else:
            rewards = rollout_rewards(self.model, fake, self.codec.bos, self.verdict, c.rollouts,
                                      eos=self.codec.eos)  # (B, L)
        self.model.eval()  # the policy that sampled: no dropout
        loss = policy_gradient_loss(self.model, fake, rewards, self.codec.bos, c.baseline)
        self._generator_update(loss, c.g_lr)
        return {"pg_loss": loss.item(), "reward": rewards.mean().item(), "final_reward": rewards[:, -1].mean().item()}

    @torch.no_grad()
    def verdict(self, sequences: torch.Tensor) -> torch.Tensor:
        """The discriminator's probability that each sequence (B, L) is real -> (B,)."""
        self.disc.eval()
        return torch.sigmoid(self.disc(sequences))

    def _generator_update(self, loss: torch.Tensor, lr: float) -> None:
        for group in self.g_opt.param_groups:
            group["lr"] = lr
        self.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.g_opt.step()

    def evaluate(self) -> dict[str, float]:
        """Validation NLL of the generator and, with an oracle, NLL-oracle of its samples (drawn
        with a generator of their own: evaluating leaves the training trajectory alone)."""
        out = {}
        if len(self.val_seqs):
            out["val_nll"] = gen.nll(self.model, self.val_seqs, self.codec.bos)
        if self.oracle is not None:
            generator = torch.Generator(self.val_seqs.device).manual_seed(self.config.seed)
            samples = gen.sample(self.model, ORACLE_EVAL_SAMPLES, self.codec.bos, generator=generator,
                                 eos=self.codec.eos)
            out["nll_oracle"] = self.oracle.nll(samples.cpu())
        return out

    def _check_finite(self, metrics: dict[str, float]) -> None:
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise TrainingDiverged(f"{', '.join(bad)} became {list(bad.values())[0]} at step {self.step}; "
                                   f"the last good checkpoint is in {self.run_dir}")

    def checkpoint(self) -> None:
        save_model(self.run_dir / WEIGHTS_FILE, self.model, self.step)
        if self.disc is not None:
            save_weights(self.run_dir / DISC_FILE, self.disc.state_dict(), metadata={"step": str(self.step)})
        save_state(self.run_dir / STATE_FILE, {
            "step": self.step,
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict() if self.d_opt is not None else {},
            "batches": self.batches.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "means": self.means.state_dict(),
        })

    def restore(self) -> None:
        with restoring_state(self.run_dir) as saved:
            load_into(self.model, self.run_dir / WEIGHTS_FILE)
            if self.disc is not None:
                self.disc.load_state_dict(load_weights(self.run_dir / DISC_FILE)[0])
                self.d_opt.load_state_dict(saved["d_opt"])
            self.g_opt.load_state_dict(saved["g_opt"])
            self.batches.generator.set_state(saved["batches"])
            torch.set_rng_state(saved["torch_rng"])
            self.means.load_state_dict(saved["means"])
            self.step = int(saved["step"])


def resumed_config(given: TextGanTrainConfig, saved: dict) -> TextGanTrainConfig:
    """The saved run's settings; flags given now may change only RESUME_OVERRIDABLE ones."""
    return resumed(given, saved, lambda name: name in RESUME_OVERRIDABLE)


def load_base(run: str | Path) -> tuple[GPT, Codec]:
    """The generator to start from: a textgan run's, or a pretrained GPT run's grown by one
    embedding row for the start token (a copy of the newline token's: lines start after one)."""
    run = Path(run)
    if _run_kind(run) != "gpt":
        return load_run(run)
    gpt, tokenizer, _ = load_gpt_run(run, "best")
    codec = Codec("tokenizer", gpt.config.vocab_size, tokenizer=tokenizer)
    if codec.eos is None:
        raise UserError(f"the tokenizer of {run} has no single newline token to end lines with")
    model = GPT(dataclasses.replace(gpt.config, vocab_size=codec.model_vocab))
    weights = gpt.weights()
    wte = weights["transformer.wte.weight"]  # (V, C)
    weights["transformer.wte.weight"] = torch.cat([wte, wte[codec.eos:codec.eos + 1]])  # (V + 1, C)
    model.load_weights(weights)
    return model, codec


def _run_kind(run: Path) -> str | None:
    try:
        return json.loads((run / CONFIG_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None  # load_run says what is wrong


def load_run(run: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, Codec]:
    """The generator (eval mode, on ``device``) and vocabulary of a textgan run (its last checkpoint)."""
    run = Path(run)
    model = GPT(model_config_of(read_run_config(run, KIND), run))
    load_into(model, run / WEIGHTS_FILE)
    return model.to(device).eval(), Codec.load(run)
