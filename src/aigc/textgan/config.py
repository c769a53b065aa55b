"""Config of ``aigc textgan train`` (no torch import: ``aigc --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from aigc.config import DEVICE_CHOICES, option, require
from aigc.training.options import RunOptions

DISCRIMINATORS = ("cnn", "transformer", "likelihood")
D_REAL = ("train", "held-out")
REWARDS = ("discriminator", "constant")
MODES = ("reinforce", "residual")
CONSTANT_REWARD = 0.5  # the control's verdict: "can't tell", for every sequence


@dataclass
class TextGanTrainConfig(RunOptions):
    data: str | None = option(None, "training sequences (required): a text file with one sentence a line (words "
                                    "split on spaces) or one sequence of token ids a line; 'oracle' draws "
                                    "--oracle-samples sequences from --oracle")
    oracle: str | None = option(None, "SeqGAN oracle parameters (oracle_params.npz): the token-id data's true "
                                      "source; NLL-oracle is then logged during training")
    oracle_samples: int = option(10_000, "sequences drawn from the oracle for --data oracle")
    oracle_length: int = option(20, "sequence length for --data oracle")
    vocab_size: int | None = option(None, "id range of token-id data without --oracle")
    base: str | None = option(None, "start from this run's generator instead of MLE pretraining: a textgan run "
                                    "(e.g. an MLE-only one) or a GPT run (`aigc gpt train`; --data is then text "
                                    "lines in its tokens, each a sequence ended by a newline)")
    mode: str = option("reinforce", "reinforce: SeqGAN's adversarial rounds (policy gradients with the "
                                     "discriminator's rewards); residual: the generator stays as MLE made it and "
                                     "only the discriminator trains, as an energy on top of it (Deng et al. 2020), "
                                     "for guided sampling (`aigc textgan sample --guided K`); it trains for "
                                     "--d-pretrain-steps and has no adversarial rounds", choices=MODES)
    n_layer: int = option(2, "generator: Transformer blocks")
    n_head: int = option(4, "generator: attention heads")
    n_embd: int = option(64, "generator: embedding width")
    dropout: float = option(0.1, "generator dropout during MLE")
    batch_size: int = option(64, "sequences per step (MLE, discriminator, policy gradient)")
    max_iters: int = option(2000, "MLE pretraining steps (ignored with --base)")
    lr: float = option(1e-3, "MLE learning rate (AdamW)")
    val_fraction: float = option(0.05, "share of the training sequences held out for validation NLL")
    early_stop: bool = option(False, "end the MLE phase with the generator of its lowest validation NLL, and the "
                                     "d-pretrain phase with the discriminator of its lowest held-out loss (both "
                                     "evaluated every --eval-every steps), rather than their last")
    disc: str = option("cnn", "discriminator: cnn (SeqGAN's), transformer, or likelihood (a ~200-parameter MLP on "
                              "the frozen generator's per-token log-probabilities and entropies; --mode residual "
                              "only)", choices=DISCRIMINATORS)
    d_real: str = option("train", "the discriminator's real sequences: train (the generator's own training "
                                  "sequences) or held-out (--mode residual: the first half of the validation "
                                  "split, which the generator never trained on; the second half is its held-out "
                                  "check). A discriminator that learns from the generator's training sequences "
                                  "learns what the generator memorised, which fresh text does not have",
                         choices=D_REAL)
    d_pretrain_steps: int = option(300, "discriminator steps on real vs generated before the adversarial rounds")
    d_lr: float = option(1e-3, "discriminator learning rate (Adam; SeqGAN's 1e-4 leaves it at chance after "
                               "a few hundred steps on the oracle: SeqGAN itself takes tens of thousands)")
    adv_rounds: int = option(50, "adversarial rounds: each is --g-steps policy-gradient steps, --mle-steps "
                                 "MLE steps and --d-steps discriminator steps")
    g_steps: int = option(1, "policy-gradient steps per round")
    g_lr: float = option(1e-4, "generator learning rate in the adversarial rounds")
    rollouts: int = option(16, "Monte-Carlo completions per prefix for the rewards")
    baseline: bool = option(False, "subtract the batch's mean reward at each time step (variance reduction; "
                                   "SeqGAN has none, and with it the constant-reward control learns nothing)")
    mle_steps: int = option(0, "MLE steps interleaved in each round (0: pure policy gradient)")
    d_steps: int = option(3, "discriminator steps per round, each on fresh generated negatives")
    reward: str = option("discriminator", "discriminator: SeqGAN; constant: the control that gives every "
                                          f"sequence the verdict {CONSTANT_REWARD} (no discriminator)", choices=REWARDS)
    log_every: int = option(50, "steps between metric lines")
    eval_every: int = option(500, "steps between validation NLL (and NLL-oracle) evaluations")
    save_every: int = option(250, "steps between checkpoints")

    def validate(self) -> None:
        require(self.data is not None or self.resume, "--data FILE|oracle is required")
        require(self.data != "oracle" or self.oracle is not None, "--data oracle needs --oracle oracle_params.npz")
        self.validate_run()
        require(self.rollouts >= 1, f"--rollouts must be at least 1, got {self.rollouts}")
        for name in ("oracle_samples", "oracle_length", "n_layer", "n_head", "n_embd", "batch_size", "log_every",
                     "eval_every", "save_every"):
            require(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("max_iters", "d_pretrain_steps", "adv_rounds", "g_steps", "mle_steps", "d_steps"):
            require(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must not be negative")
        require(self.vocab_size is None or self.vocab_size > 0, "--vocab-size must be positive")
        require(self.n_embd % self.n_head == 0,
                f"--n-embd ({self.n_embd}) must be a multiple of --n-head ({self.n_head})")
        require(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        require(0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        require(min(self.lr, self.d_lr, self.g_lr) > 0, "learning rates must be positive")
        require(not self.early_stop or self.val_fraction > 0, "--early-stop needs validation sequences: "
                                                              "a positive --val-fraction")
        require(self.mode != "residual" or self.reward == "discriminator",
                "--mode residual trains a discriminator; --reward constant has none")
        require(self.disc != "likelihood" or self.mode == "residual",
                "--disc likelihood reads the frozen generator's probabilities: it needs --mode residual")
        require(self.d_real != "held-out" or self.mode == "residual",
                "--d-real held-out needs --mode residual (the adversarial rounds train the generator on its "
                "discriminator's verdicts)")
        require(self.d_real != "held-out" or self.val_fraction > 0,
                "--d-real held-out needs validation sequences: a positive --val-fraction")


MAX_GUIDED_GENERATED = 10_000_000  # sequences `textgan sample` may draw in all (--n x --guided, or the rejection's)


@dataclass
class TextGanSampleConfig:
    run: str | None = option(None, "text-GAN run directory (required); --guided and --accept-rate need its "
                                   "discriminator, best one trained with --mode residual")
    n: int = option(10, "sequences to write", minimum=1)
    temperature: float = option(1.0, "sampling temperature of the generator's candidates", minimum=1e-3,
                                maximum=100)
    guided: int = option(1, "discriminator-guided: draw K candidates per sequence from the generator and keep "
                            "one, with probability proportional to exp(discriminator logit) (importance "
                            "resampling from the residual energy model); 1 is plain sampling", minimum=1,
                         maximum=100_000)
    accept_rate: float | None = option(None, "instead of --guided: discriminator rejection sampling, keeping each "
                                             "candidate with probability min(1, exp(logit - c)), c calibrated on "
                                             "--calibration samples so that this share is kept (cost 1/rate "
                                             "candidates per sequence)", minimum=1e-6, maximum=1)
    calibration: int = option(10_000, "generated sequences the rejection threshold is calibrated on", minimum=100,
                              maximum=MAX_GUIDED_GENERATED)
    out: str | None = option(None, "write the sequences here, one a line (default: standard output)")
    seed: int = option(0, "random seed")
    device: str = option("auto", "where to run", choices=DEVICE_CHOICES)

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        require(self.accept_rate is None or self.guided == 1, "--guided and --accept-rate are two samplers: "
                                                              "give one of them")
        require(self.n * self.guided <= MAX_GUIDED_GENERATED,
                f"--n x --guided would draw {self.n * self.guided} sequences; at most {MAX_GUIDED_GENERATED}")
        require(self.accept_rate is None or self.n / self.accept_rate <= MAX_GUIDED_GENERATED,
                f"--n / --accept-rate would draw about {self.n / (self.accept_rate or 1):.0f} sequences; "
                f"at most {MAX_GUIDED_GENERATED}")
