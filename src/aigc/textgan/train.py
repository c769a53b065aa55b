"""The text-GAN recipe: SeqGAN (Yu et al. 2017) with a GPT generator.

Read top to bottom: data and vocabulary, generator (fresh or from ``--base``), discriminator,
then one loop over steps in three phases:

1. ``mle``: maximum-likelihood pretraining of the generator (``--max-iters`` steps; none with ``--base``);
2. ``d-pretrain``: the discriminator learns real vs generated (``--d-pretrain-steps``);
3. ``adversarial``: ``--adv-rounds`` rounds of policy-gradient steps with Monte-Carlo rollout
   rewards, optional interleaved MLE steps, and discriminator steps on fresh negatives.

``--reward constant`` (the control) gives every sequence the same verdict and has no
discriminator, so phases 2 and 3's discriminator steps are skipped. The position in the run
is one step counter, driven by the shared loop (``aigc.training.loop``); each checkpoint's
``state.pt`` holds it with the optimizers, the data sampler's and torch's RNG states, so
``--resume`` continues the same trajectory. What is saved last is
what gets reported: there is no best-of-run checkpoint.

Under torchrun, the generator and discriminator train in DistributedDataParallel. Every rank
draws the same global batch of generated sequences (the ranks' torch RNGs stay equal) and
keeps its own slice, so the Monte-Carlo rollouts -- the costly part -- are split across the
ranks; real sequences come from each rank's slice of the sampler's global batch. Evaluation
runs on every rank alike; rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import statistics
from pathlib import Path

import torch

from aigc import __version__
from aigc.errors import UserError
from aigc.gpt.loading import load_into
from aigc.gpt.model import GPT, GPTConfig
from aigc.logging import plot_metrics, read_metrics
from aigc.loading import run_kind
from aigc.runs import (CONFIG_FILE, METRICS_FILE, PLOT_FILE, WEIGHTS_FILE, create_run_dir, load_weights,
                       read_run_config, save_json)
from aigc.textgan import generator as gen
from aigc.textgan.config import CONSTANT_REWARD, TextGanTrainConfig
from aigc.textgan.data import Codec, ids_tensor, is_ids, read_lines
from aigc.textgan.discriminators import build_discriminator, discriminator_loss
from aigc.textgan.loading import DISC_FILE, TEXTGAN_KIND, load_base
from aigc.textgan.oracle import Oracle
from aigc.textgan.rollout import policy_gradient_loss, rollout_rewards
from aigc.training import distributed, loop
from aigc.training.samplers import RandomBatches

ORACLE_EVAL_SAMPLES = 1000
BEST_MLE_FILE = "mle-best.safetensors"  # --early-stop's best generator so far, while the MLE phase runs
BEST_D_FILE = "disc-best.safetensors"  # and its best discriminator so far, while the d-pretrain phase runs
SPLIT_FIELDS = ("seed", "val_fraction", "oracle_samples", "oracle_length")  # with data: what decides the split
MLE_KEYS, D_KEYS = ("best_val_nll", "best_step"), ("best_d_val_loss", "best_d_step")  # in state.pt's "trainer"
# Settings a resumed run takes from the command line; all others come from the saved run.
RESUME_OVERRIDABLE = {"adv_rounds", "time_budget", "log_every", "eval_every", "save_every", "device", "out",
                      "resume", "tracker"}


def train(config: TextGanTrainConfig) -> Path:
    """Train as ``config`` says; returns the run directory."""
    distributed.setup(config)
    config, run_dir = loop.open_run(config, TEXTGAN_KIND, "textgan", lambda name: name in RESUME_OVERRIDABLE)
    device = distributed.device(config)
    torch.manual_seed(config.seed)

    oracle = Oracle.load(config.oracle) if config.oracle else None
    check_held_out_split(config)
    base = load_base(config.base) if config.base else None
    codec, sequences = load_sequences(config, oracle, base)
    if config.resume:
        _check_saved_vocabulary(run_dir, codec)
    train_seqs, val_seqs = split(sequences, config.val_fraction, config.seed)
    model = base[0] if base else GPT(GPTConfig(
        vocab_size=codec.model_vocab, block_size=sequences.size(1), n_layer=config.n_layer,
        n_head=config.n_head, n_embd=config.n_embd, dropout=config.dropout))
    model, model_config = model.to(device), model.config
    disc = None if config.reward == "constant" else build_discriminator(
        config.disc, codec.model_vocab, sequences.size(1), generator=model, bos=codec.bos).to(device)
    trainer = TextGanTrainer(config, model, disc, codec, train_seqs.to(device), val_seqs.to(device), oracle)
    plan = loop.Plan(trainer.total, config.time_budget, config.log_every, config.eval_every, config.save_every,
                     steps_flag="--adv-rounds", boundaries=trainer.boundaries,
                     trackers=config.trackers())
    start = loop.restore(trainer, run_dir, plan) if config.resume else loop.Start()
    if distributed.is_main():
        create_run_dir(run_dir)
        save_json(run_dir / CONFIG_FILE, {"kind": TEXTGAN_KIND, "aigc_version": __version__,
                                          "model": dataclasses.asdict(model_config),
                                          "train": dataclasses.asdict(config)})
        if not config.resume:
            codec.save(run_dir)
        print(f"textgan: generator {model.num_params() / 1e6:.2f}M parameters, {len(train_seqs)} training "
              f"sequences of {train_seqs.size(1)} tokens, phases "
              + ", ".join(f"{name} {n}" for name, n in trainer.phases) + f"; run {run_dir}", flush=True)
    loop.run(trainer, plan, run_dir, start)
    if distributed.is_main():
        plot_metrics(read_metrics(run_dir / METRICS_FILE), ["mle_loss", "val_nll", "nll_oracle", "reward"],
                     run_dir / PLOT_FILE, title="text GAN")
    distributed.teardown()
    return run_dir


def _check_saved_vocabulary(run_dir: Path, codec: Codec) -> None:
    """A resumed run must read its data in the vocabulary it was trained with."""
    saved = Codec.load(run_dir)
    if (saved.kind, saved.size, saved.words) != (codec.kind, codec.size, codec.words):
        raise UserError(f"the vocabulary saved in {run_dir} ({saved.kind}, {saved.size} tokens) does not match "
                        f"the one of --data {codec.kind}, {codec.size} tokens); the run's vocab file is damaged "
                        "or the data changed")


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
            if config.vocab_size is not None:
                raise UserError(f"{config.data} holds words, not token ids (a line has a token that is not a "
                                "decimal id), so --vocab-size does not apply; drop it or fix the ids")
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


def discriminator_sequences(config: TextGanTrainConfig, train_seqs: torch.Tensor,
                            val_seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's (real, held-out check) sequences, as --d-real says."""
    if config.d_real == "train":
        return train_seqs, val_seqs
    if len(val_seqs) < 2:
        raise UserError(f"--d-real held-out splits the validation sequences in two, but there are "
                        f"{len(val_seqs)}; raise --val-fraction")
    half = len(val_seqs) // 2
    return val_seqs[:half], val_seqs[half:]


def check_held_out_split(config: TextGanTrainConfig) -> None:
    """--d-real held-out from a text-GAN --base: its validation split must be ours, or the
    "held-out" sequences may be ones the base generator trained on."""
    if config.d_real != "held-out" or not config.base or run_kind(Path(config.base)) != TEXTGAN_KIND:
        return
    base_train = read_run_config(Path(config.base), TEXTGAN_KIND)["train"]
    differing = [name for name in SPLIT_FIELDS if base_train.get(name) != getattr(config, name)]
    if base_train.get("data") != config.data and not _same_file(base_train.get("data"), config.data):
        differing.insert(0, "data")
    if differing:
        raise UserError(f"--d-real held-out: the base run {config.base} split its sequences with another "
                        f"{', '.join('--' + name.replace('_', '-') for name in differing)}, so its generator may "
                        "have trained on this run's held-out sequences; give the base's settings")


def _same_file(a: str | None, b: str | None) -> bool:
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False


@dataclasses.dataclass
class BestSoFar:
    """--early-stop within one phase: the weights of the lowest held-out loss so far, and its step."""

    loss: float = math.inf
    step: int = 0
    weights: dict[str, torch.Tensor] | None = None

    def offer(self, step: int, loss: float, weights: dict[str, torch.Tensor]) -> None:
        if loss < self.loss:
            self.loss, self.step = loss, step
            self.weights = {name: t.detach().clone() for name, t in weights.items()}

    def state_dict(self, loss_key: str, step_key: str) -> dict:
        return {loss_key: self.loss, step_key: self.step}

    def load_state(self, loss_key: str, step_key: str, state: dict, weights_file: Path) -> None:
        self.loss, self.step = state.get(loss_key, math.inf), state.get(step_key, 0)
        if weights_file.is_file():
            self.weights = load_weights(weights_file)[0]


class TextGanTrainer:
    """The generator, discriminator, optimizers and data of one run, and the step of each
    phase; driven by ``aigc.training.loop``."""

    name = "textgan train"
    throughput = None

    def __init__(self, config: TextGanTrainConfig, model: GPT, disc: torch.nn.Module | None, codec: Codec,
                 train_seqs: torch.Tensor, val_seqs: torch.Tensor, oracle: Oracle | None):
        self.config, self.model, self.disc, self.codec = config, model, disc, codec
        self.train_seqs, self.val_seqs, self.oracle = train_seqs, val_seqs, oracle
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.sampler = RandomBatches(len(train_seqs), config.batch_size, config.seed, self.rank, self.world_size)
        # The discriminator's real sequences and its held-out check: by default the generator's
        # training and validation sequences; with --d-real held-out, two halves of the validation
        # split, so that it never learns what the generator memorised.
        self.d_real, self.d_check = discriminator_sequences(config, train_seqs, val_seqs)
        self.d_sampler = (self.sampler if config.d_real == "train" else
                          RandomBatches(len(self.d_real), config.batch_size, config.seed, self.rank, self.world_size))
        # What the updates call: in DDP under torchrun; sampling, rollouts, evaluation and
        # checkpoints use the plain modules (the same parameters).
        self.train_model = distributed.wrap(model)
        self.train_disc = distributed.wrap(disc) if disc is not None else None
        self.g_opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
        self.d_opt = torch.optim.Adam(disc.parameters(), lr=config.d_lr) if disc is not None else None
        mle = 0 if config.base else config.max_iters
        d_pretrain = 0 if disc is None else config.d_pretrain_steps
        adversarial = config.adv_rounds if config.mode == "reinforce" else 0
        self.phases = [("mle", mle), ("d-pretrain", d_pretrain), ("adversarial", adversarial)]
        self.total = mle + d_pretrain + adversarial
        self.mle_end, self.d_pretrain_end = mle, mle + d_pretrain
        # --early-stop: the generator of the lowest validation NLL so far in the MLE phase, and the
        # discriminator of the lowest held-out loss so far in the d-pretrain phase
        self.best_mle, self.best_disc = BestSoFar(), BestSoFar()
        # A phase's last step always logs, evaluates and saves.
        self.boundaries = frozenset(end for end in itertools.accumulate(n for _, n in self.phases) if end > 0)
        self.last_phase = self.phase(0) if self.total else "mle"

    def phase(self, step: int) -> str:
        """The phase that step number ``step`` (0-based) belongs to."""
        for name, length in self.phases:
            if step < length:
                return name
            step -= length
        raise IndexError(step)

    def train_step(self, step: int, elapsed: float) -> dict[str, float]:
        self.last_phase = self.phase(step)
        return {"mle": self.mle_step, "d-pretrain": self.d_step, "adversarial": self.adversarial_round}[
            self.last_phase]()

    def status(self) -> dict:
        return {"phase": self.last_phase}

    def batch(self) -> torch.Tensor:
        return self.train_seqs[self.sampler.next().to(self.train_seqs.device)]  # (B, L)

    def mle_step(self, lr: float | None = None) -> dict[str, float]:
        self.model.train()
        loss = gen.mle_loss(self.train_model, self.batch(), self.codec.bos)
        self._generator_update(loss, lr or self.config.lr)
        return {"mle_loss": loss.item()}

    def generated(self) -> torch.Tensor:
        """This rank's slice of a global batch of generated sequences (B, L)."""
        n = self.config.batch_size * self.world_size
        fake = gen.sample(self.model, n, self.codec.bos, batch_size=n, eos=self.codec.eos)
        return fake[self.rank * self.config.batch_size:(self.rank + 1) * self.config.batch_size]

    def d_step(self) -> dict[str, float]:
        fake = self.generated()
        self.disc.train()
        real = self.d_real[self.d_sampler.next().to(self.d_real.device)]  # (B, L)
        loss, accuracy = discriminator_loss(self.train_disc, real, fake)
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
        fake = self.generated()  # (B, L)
        if self.disc is None:
            rewards = torch.full(fake.shape, CONSTANT_REWARD, device=fake.device)
        else:
            rewards = rollout_rewards(self.model, fake, self.codec.bos, self.verdict, c.rollouts,
                                      eos=self.codec.eos)  # (B, L)
        self.model.eval()  # the policy that sampled: no dropout
        loss = policy_gradient_loss(self.train_model, fake, rewards, self.codec.bos, c.baseline)
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

    def evaluate(self, step: int) -> dict[str, float]:
        """Validation NLL of the generator and, with an oracle, NLL-oracle of its samples (drawn
        with a generator of their own: evaluating leaves the training trajectory alone). None
        while only the discriminator trains, but at the end of that phase."""
        if self.last_phase == "d-pretrain":
            out = self.held_out_discrimination()
            if self.config.early_stop and out:
                out.update(self.keep_best_discriminator(step, out["d_val_loss"]))
            if step not in self.boundaries:
                return out
        else:
            out = {}
        if len(self.val_seqs):
            out["val_nll"] = gen.nll(self.model, self.val_seqs, self.codec.bos)
            if self.config.early_stop and self.last_phase == "mle":
                out.update(self.keep_best(step, out["val_nll"]))
        if self.oracle is not None:
            generator = torch.Generator(self.val_seqs.device).manual_seed(self.config.seed)
            samples = gen.sample(self.model, ORACLE_EVAL_SAMPLES, self.codec.bos, generator=generator,
                                 eos=self.codec.eos)
            out["nll_oracle"] = self.oracle.nll(samples.cpu())
        return out

    def keep_best(self, step: int, val_nll: float) -> dict[str, float]:
        """--early-stop: remember the generator if its validation NLL is the lowest so far; at the
        end of the MLE phase, go back to the best one (what follows starts from it)."""
        self.best_mle.offer(step, val_nll, self.model.weights())
        if step != self.mle_end:
            return {}
        self.model.load_weights(self.best_mle.weights)
        return {"early_stop_step": self.best_mle.step, "early_stop_val_nll": self.best_mle.loss}

    def keep_best_discriminator(self, step: int, d_val_loss: float) -> dict[str, float]:
        """--early-stop: the same for the discriminator in the d-pretrain phase, on its held-out
        loss (a discriminator that memorises the training sequences gets worse there while its
        training loss still falls)."""
        self.best_disc.offer(step, d_val_loss, self.disc.state_dict())
        if step != self.d_pretrain_end:
            return {}
        self.disc.load_state_dict(self.best_disc.weights)
        return {"early_stop_d_step": self.best_disc.step, "early_stop_d_val_loss": self.best_disc.loss}

    @torch.no_grad()
    def held_out_discrimination(self) -> dict[str, float]:
        """The discriminator's loss and accuracy on the held-out real sequences against as many
        fresh generated ones (drawn with a generator of their own): whether it learned real
        text or memorised the training sequences."""
        if not len(self.d_check):
            return {}
        generator = torch.Generator(self.d_check.device).manual_seed(self.config.seed + 1)
        fake = gen.sample(self.model, len(self.d_check), self.codec.bos, generator=generator, eos=self.codec.eos)
        self.disc.eval()
        loss, accuracy = discriminator_loss(self.disc, self.d_check, fake)
        return {"d_val_loss": loss.item(), "d_val_accuracy": accuracy}

    def best(self) -> None:
        return None  # what is saved last is what gets reported (--early-stop picks within a phase)

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        weights = {WEIGHTS_FILE: self.model.weights()}
        if self.disc is not None:
            weights[DISC_FILE] = self.disc.state_dict()
        if self.best_mle.weights is not None and self.last_phase == "mle":  # resuming mid-phase needs it
            weights[BEST_MLE_FILE] = self.best_mle.weights
        if self.best_disc.weights is not None and self.last_phase == "d-pretrain":
            weights[BEST_D_FILE] = self.best_disc.weights
        return weights

    def state_dict(self) -> dict:
        optimizers = {"generator": self.g_opt.state_dict()}
        if self.d_opt is not None:
            optimizers["discriminator"] = self.d_opt.state_dict()
        samplers = {"sequences": self.sampler.state_dict()}
        if self.d_sampler is not self.sampler:
            samplers["held_out"] = self.d_sampler.state_dict()
        return {"optimizers": optimizers, "samplers": samplers, "rng": {},
                "trainer": {**self.best_mle.state_dict(*MLE_KEYS), **self.best_disc.state_dict(*D_KEYS)}}

    def load_state(self, folder: Path, state: dict) -> None:
        load_into(self.model, folder / WEIGHTS_FILE)
        if self.disc is not None:
            self.disc.load_state_dict(load_weights(folder / DISC_FILE)[0])
            self.d_opt.load_state_dict(state["optimizers"]["discriminator"])
        self.g_opt.load_state_dict(state["optimizers"]["generator"])
        self.best_mle.load_state(*MLE_KEYS, state["trainer"], folder / BEST_MLE_FILE)
        self.best_disc.load_state(*D_KEYS, state["trainer"], folder / BEST_D_FILE)
        self.sampler.load_state_dict(state["samplers"]["sequences"])
        if self.d_sampler is not self.sampler:
            self.d_sampler.load_state_dict(state["samplers"]["held_out"])
