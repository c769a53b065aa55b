"""Discriminator-guided sampling (``aigc.textgan.guided``): the samplers draw what their
densities say, on tiny discrete problems where everything can be enumerated; the residual
mode and the MLE phase's early stop of ``aigc textgan train``; ``aigc textgan sample``."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal

import pytest
import torch

from aigc.textgan import generator as gen
from aigc.textgan import guided
from aigc.textgan.discriminators import build_discriminator
from aigc.textgan.loading import load_discriminator, load_textgan
from aigc.textgan.train import TextGanTrainer
from conftest import assert_one_line_error
from test_textgan import SMALL, oracle_args, tiny_gpt

# A proposal q over four outcomes and the discriminator's logits s for each.
Q = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
S = torch.tensor([-1.0, 0.0, 0.5, 1.5], dtype=torch.float64)
TARGET = Q * S.exp() / (Q * S.exp()).sum()  # the residual energy model q exp(s) / Z


def exact_sir(k: int) -> torch.Tensor:
    """The distribution of importance resampling from k candidates, by enumerating every group."""
    out = torch.zeros(4, dtype=torch.float64)
    for group in itertools.product(range(4), repeat=k):
        p_group = math.prod(Q[i].item() for i in group)
        weights = S[list(group)].exp()
        for position, outcome in enumerate(group):
            out[outcome] += p_group * weights[position] / weights.sum()
    return out


def draw_q(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.multinomial(Q, n, replacement=True, generator=generator)


def frequencies(outcomes: torch.Tensor) -> torch.Tensor:
    return torch.bincount(outcomes, minlength=4).double() / len(outcomes)


def assert_matches(observed: torch.Tensor, expected: torch.Tensor, n: int) -> None:
    """Every frequency within 5 binomial standard errors of its probability."""
    tolerance = 5 * (expected * (1 - expected) / n).sqrt()
    assert ((observed - expected).abs() <= tolerance).all(), (observed, expected)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_importance_resampling_draws_its_exact_distribution(k):
    g = torch.Generator().manual_seed(0)
    groups = 100_000
    candidates = draw_q(groups * k, g).view(groups, k)
    kept = candidates[torch.arange(groups), guided.importance_resample(S[candidates], g)]
    assert_matches(frequencies(kept), exact_sir(k), groups)
    # and it moves from q towards the target as k grows
    assert (exact_sir(k) - TARGET).abs().sum() < (Q - TARGET).abs().sum()


def test_importance_resampling_approaches_the_target_for_large_k():
    g = torch.Generator().manual_seed(1)
    groups, k = 20_000, 256
    candidates = draw_q(groups * k, g).view(groups, k)
    kept = candidates[torch.arange(groups), guided.importance_resample(S[candidates], g)]
    assert (frequencies(kept) - TARGET).abs().max() < 0.01  # the finite-k bias plus sampling noise


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sir_log_prob_is_the_exact_density(k):
    g = torch.Generator().manual_seed(2)
    pool = S[draw_q(50_000, g)]
    outcomes = torch.arange(4)
    estimate = guided.sir_log_prob(Q.log(), S[outcomes], pool, k, subsets=20_000, generator=g).exp()
    assert torch.allclose(estimate, exact_sir(k), atol=3e-3), (estimate, exact_sir(k))
    if k == 1:
        assert torch.equal(guided.sir_log_prob(Q.log(), S, pool, 1), Q.log())


def test_log_partition_and_the_energy_model_density():
    g = torch.Generator().manual_seed(3)
    log_z = guided.LogPartition.estimate(S[draw_q(100_000, g)])
    true = math.log((Q * S.exp()).sum().item())
    assert log_z.low < true < log_z.high
    assert log_z.high - log_z.low < 0.02
    density = guided.ebm_log_prob(Q.log(), S, log_z).exp()
    assert torch.allclose(density, TARGET, atol=5e-3)


def test_rejection_acceptance_rate_matches_its_calibration_and_output_density():
    g = torch.Generator().manual_seed(4)
    for rate in (0.2, 0.5, 0.9):
        threshold = guided.calibrate_threshold(S[draw_q(100_000, g)], rate)
        fresh = draw_q(200_000, g)
        keep = guided.rejection_keep(S[fresh], threshold, g)
        assert keep.double().mean().item() == pytest.approx(rate, abs=5 * math.sqrt(rate * (1 - rate) / 200_000))
        density = guided.rejection_log_prob(Q.log(), S, threshold, rate).exp()
        assert density.sum().item() == pytest.approx(1.0, abs=0.01)
        assert_matches(frequencies(fresh[keep]), density / density.sum(), int(keep.sum()))
    exact = guided.calibrate_threshold(S, 1e-3)  # below the largest weight's share: exact rejection sampling
    assert exact >= S.max().item()
    with pytest.raises(ValueError, match="acceptance rate"):
        guided.calibrate_threshold(S, 0.0)


def test_sequence_log_probs_sum_to_one_over_what_the_sampler_can_write():
    """With an absorbing end token every sequence the sampler can produce has its probability,
    tokens after the end counting nothing: the probabilities of all of them sum to 1."""
    vocab, length, eos = 3, 3, 2
    model = tiny_gpt(vocab, length)
    writable = [seq for seq in itertools.product(range(vocab), repeat=length)
                if all(seq[i + 1] == eos for i in range(length - 1) if seq[i] == eos)]
    log_q = guided.sequence_log_probs(model, torch.tensor(writable), bos=vocab, temperature=0.7, eos=eos)
    assert log_q.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    no_eos = guided.sequence_log_probs(model, torch.tensor(list(itertools.product(range(vocab), repeat=length))),
                                       bos=vocab)
    assert no_eos.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_guided_k1_is_plain_sampling_and_k_groups_keep_one_candidate_each():
    model = tiny_gpt(5, 6)
    disc = build_discriminator("cnn", 6, 6)
    plain = gen.sample(model, 7, 5, 0.9, generator=torch.Generator().manual_seed(5))
    k1 = guided.guided_sample(model, disc, 7, 1, 5, 0.9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(plain, k1.tokens) and k1.cost == 1
    drawn = guided.guided_sample(model, disc, 7, 4, 5, 0.9, generator=torch.Generator().manual_seed(5))
    candidates = gen.sample(model, 28, 5, 0.9, generator=torch.Generator().manual_seed(5)).view(7, 4, 6)
    assert drawn.tokens.shape == (7, 6) and drawn.generated == 28 and drawn.cost == 4
    assert all(any(torch.equal(row, c) for c in group) for row, group in zip(drawn.tokens, candidates))


# --- the recipe: --early-stop and --mode residual -----------------------------------------

OVERFIT = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--batch-size", "16", "--lr", "1e-2",
           "--dropout", "0", "--val-fraction", "0.25", "--max-iters", "120", "--eval-every", "8",
           "--log-every", "40", "--save-every", "50", "--device", "cpu", "--tracker", "none"]


def evaluations(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "val_nll" in row]


def test_early_stop_ends_the_mle_phase_at_the_validation_minimum(tmp_path, run_cli):
    data = ["--data", "oracle", "--oracle", oracle_args(tmp_path)[3], "--oracle-samples", "48",
            "--oracle-length", "6"]
    run = tmp_path / "run"
    status, _, err = run_cli("textgan", "train", *data, *OVERFIT, "--early-stop", "--mode", "residual",
                             "--d-pretrain-steps", "4", "--out", run)
    assert status == 0, err
    rows = evaluations(run)
    during_mle = [row for row in rows if row["step"] <= 120]
    best = min(during_mle, key=lambda row: row["val_nll"])
    assert best["step"] < 120, "the tiny model should overfit its 36 sequences"
    assert during_mle[-1]["early_stop_step"] == best["step"]
    assert during_mle[-1]["early_stop_val_nll"] == best["val_nll"]
    # the generator the run ends with (the discriminator trained after it) is the best one
    assert rows[-1]["step"] == 124 and rows[-1]["val_nll"] == pytest.approx(best["val_nll"], abs=1e-6)
    assert "d_val_accuracy" in rows[-1]
    load_discriminator(load_textgan(run))  # residual runs keep their discriminator


# A residual run whose discriminator memorises the 36 training sequences within its 64 steps.
D_OVERFIT = ["--max-iters", "16", "--mode", "residual", "--d-pretrain-steps", "64", "--d-lr", "1e-2"]


def test_early_stop_ends_the_d_pretrain_phase_at_its_held_out_minimum(tmp_path, run_cli, monkeypatch):
    data = ["--data", "oracle", "--oracle", oracle_args(tmp_path)[3], "--oracle-samples", "48",
            "--oracle-length", "6"]
    offered, keep_best_discriminator = {}, TextGanTrainer.keep_best_discriminator

    def recording(self, step, d_val_loss):  # the discriminator as each evaluation saw it
        offered[step] = {name: t.clone() for name, t in self.disc.state_dict().items()}
        return keep_best_discriminator(self, step, d_val_loss)

    monkeypatch.setattr(TextGanTrainer, "keep_best_discriminator", recording)
    run = tmp_path / "run"
    status, _, err = run_cli("textgan", "train", *data, *OVERFIT, *D_OVERFIT, "--early-stop", "--out", run)
    assert status == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    held_out = [row for row in rows if "d_val_loss" in row]
    assert [row["step"] for row in held_out] == list(range(24, 81, 8)) and sorted(offered) == list(range(24, 81, 8))
    best = min(held_out, key=lambda row: row["d_val_loss"])
    assert best["step"] < 80, "the discriminator should memorise its 36 sequences"
    assert held_out[-1]["early_stop_d_step"] == best["step"]
    assert held_out[-1]["early_stop_d_val_loss"] == best["d_val_loss"]
    saved = load_discriminator(load_textgan(run)).state_dict()
    assert all(torch.equal(saved[name], offered[best["step"]][name]) for name in saved)


@pytest.mark.parametrize("phase, step_method, stop_at, extra", [
    ("mle", "mle_step", 70, ["--adv-rounds", "0", "--d-pretrain-steps", "0"]),
    ("d-pretrain", "d_step", 50, D_OVERFIT),
    ("d-pretrain", "d_step", 50, [*D_OVERFIT, "--disc", "likelihood", "--d-real", "held-out"]),
])
def test_early_stop_resumes_with_its_best_so_far(tmp_path, run_cli, monkeypatch, phase, step_method, stop_at, extra):
    data = ["--data", "oracle", "--oracle", oracle_args(tmp_path)[3], "--oracle-samples", "48",
            "--oracle-length", "6"]
    one = ["--early-stop", *extra]
    status, _, err = run_cli("textgan", "train", *data, *OVERFIT, *one, "--out", tmp_path / "full")
    assert status == 0, err
    # Ctrl-C during step 70 of the phase (after a best so far was kept): the run saves and stops there
    step, calls = getattr(TextGanTrainer, step_method), []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, *args)

    monkeypatch.setattr(TextGanTrainer, step_method, interrupted)
    status, _, err = run_cli("textgan", "train", *data, *OVERFIT, *one, "--out", tmp_path / "split")
    assert status == 130, err
    monkeypatch.undo()
    stopped = json.loads((tmp_path / "split" / "checkpoint.json").read_text())["step"]
    assert stopped == stop_at + (16 if phase == "d-pretrain" else 0)
    status, _, err = run_cli("textgan", "train", "--resume", "--out", tmp_path / "split")
    assert status == 0, err
    full, split = (load_textgan(tmp_path / name) for name in ("full", "split"))
    assert all(torch.equal(full.model.state_dict()[name], split.model.state_dict()[name])
               for name in full.model.state_dict())
    if phase == "d-pretrain":
        full_d, split_d = (load_discriminator(run).state_dict() for run in (full, split))
        assert all(torch.equal(full_d[name], split_d[name]) for name in full_d)


def test_likelihood_discriminator_reads_the_generators_per_token_statistics(monkeypatch):
    import aigc.textgan.discriminators as discriminators

    vocab, length = 7, 5
    model = tiny_gpt(vocab, length)
    disc = build_discriminator("likelihood", vocab + 1, length, generator=model, bos=vocab)
    tokens = torch.randint(vocab, (3, length), generator=torch.Generator().manual_seed(1))
    chosen, entropy, largest, gap = disc.features(tokens).unbind(dim=2)  # each (3, L)
    assert torch.allclose(chosen, gen.token_log_probs(model.eval(), tokens, vocab))
    probs = model(gen.with_bos(tokens, vocab))[0][..., :vocab].softmax(dim=-1)  # bos excluded, (3, L, V)
    assert torch.allclose(entropy, -(probs * probs.log()).sum(dim=-1), atol=1e-5)
    assert torch.allclose(largest, probs.amax(dim=-1).log(), atol=1e-5)
    assert torch.allclose(gap, chosen - largest)
    assert set(disc.state_dict()) == {f"per_token.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert torch.equal(disc(tokens), torch.zeros(3)), "it starts at 'can't tell'"
    monkeypatch.setattr(discriminators, "FEATURE_BLOCK", 2 * length * (vocab + 1))  # two rows at a time
    assert torch.allclose(disc.features(tokens), torch.stack([chosen, entropy, largest, gap], dim=2))


def test_held_out_discriminator_learns_only_from_sequences_the_generator_never_saw(tmp_path, run_cli, monkeypatch):
    import aigc.textgan.train as textgan_train

    trainers, reals, d_loss = [], [], textgan_train.discriminator_loss

    def recording(disc, real, fake):  # every real sequence a discriminator loss reads: training or checking
        reals.append((disc.training, real.clone()))
        return d_loss(disc, real, fake)

    d_step = TextGanTrainer.d_step

    def remembering(self):
        trainers.append(self)
        return d_step(self)

    monkeypatch.setattr(textgan_train, "discriminator_loss", recording)
    monkeypatch.setattr(TextGanTrainer, "d_step", remembering)
    data = ["--data", "oracle", "--oracle", oracle_args(tmp_path)[3], "--oracle-samples", "48",
            "--oracle-length", "6"]
    status, _, err = run_cli("textgan", "train", *data, *OVERFIT, "--max-iters", "4", "--mode", "residual",
                             "--disc", "likelihood", "--d-real", "held-out", "--d-pretrain-steps", "16",
                             "--out", tmp_path / "run")
    assert status == 0, err
    trainer = trainers[0]
    rows = lambda t: {tuple(row) for row in t.tolist()}  # noqa: E731
    val = trainer.val_seqs
    learned_from = rows(torch.cat([real for training, real in reals if training]))
    checked_on = rows(torch.cat([real for training, real in reals if not training]))
    assert learned_from <= rows(val[:len(val) // 2]) and checked_on == rows(val[len(val) // 2:])
    assert not (learned_from | checked_on) & rows(trainer.train_seqs)


def test_held_out_from_a_base_needs_the_bases_split(tmp_path, residual_run, run_cli):
    status, _, err = run_cli("textgan", "train", *oracle_args(tmp_path), *SMALL, "--base", residual_run,
                             "--mode", "residual", "--d-real", "held-out", "--seed", "1", "--out", tmp_path / "r")
    assert_one_line_error(status, err, "split its sequences with another --seed")
    assert not (tmp_path / "r").exists()


def test_residual_mode_skips_adversarial_rounds(tmp_path, run_cli):
    status, _, err = run_cli("textgan", "train", *oracle_args(tmp_path), *SMALL, "--mode", "residual",
                             "--adv-rounds", "5", "--out", tmp_path / "run")
    assert status == 0, err
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"d_accuracy"' in text and '"pg_loss"' not in text


@pytest.mark.parametrize("args, message", [
    (["--mode", "residual", "--reward", "constant"], "--mode residual trains a discriminator"),
    (["--early-stop", "--val-fraction", "0"], "--early-stop needs validation sequences"),
    (["--disc", "likelihood"], "--disc likelihood reads the frozen generator's probabilities"),
    (["--d-real", "held-out"], "--d-real held-out needs --mode residual"),
    (["--mode", "residual", "--d-real", "held-out", "--val-fraction", "0"], "needs validation sequences"),
    (["--mode", "residual", "--d-real", "held-out", "--val-fraction", "0.02"], "splits the validation sequences"),
])
def test_bad_training_flags_are_one_line(tmp_path, run_cli, args, message):
    status, _, err = run_cli("textgan", "train", *oracle_args(tmp_path), *SMALL, *args, "--out", tmp_path / "r")
    assert_one_line_error(status, err, message)
    assert not (tmp_path / "r").exists()


# --- aigc textgan sample --------------------------------------------------------------------

@pytest.fixture(scope="module")
def residual_run(tmp_path_factory):
    from aigc.cli import main

    folder = tmp_path_factory.mktemp("residual")
    torch.set_num_threads(1)
    assert main([str(a) for a in ["textgan", "train", *oracle_args(folder), *SMALL, "--mode", "residual",
                                  "--tracker", "none", "--out", folder / "run"]]) == 0
    return folder / "run"


@pytest.mark.parametrize("how", [[], ["--guided", "8"], ["--accept-rate", "0.3", "--calibration", "200"]])
def test_sample_writes_sequences_and_their_cost(residual_run, tmp_path, run_cli, how):
    out = tmp_path / "samples.txt"
    status, stdout, err = run_cli("textgan", "sample", "--run", residual_run, "--n", "5", *how, "--out", out)
    assert status == 0, err
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and all(len(line.split()) == 6 for line in lines)
    assert "per sequence kept" in err and stdout == ""
    if how[:1] == ["--guided"]:
        assert "40 generated, 8.00 per sequence kept" in err


@pytest.mark.parametrize("args, message", [
    (["--guided", "4", "--accept-rate", "0.5"], "--guided and --accept-rate are two samplers"),
    (["--accept-rate", "0"], "--accept-rate"),
    (["--guided", "0"], "--guided"),
    (["--n", "5000000", "--guided", "4"], "at most 10000000"),
])
def test_bad_sample_flags_are_one_line(residual_run, run_cli, args, message):
    status, _, err = run_cli("textgan", "sample", "--run", residual_run, *args)
    assert_one_line_error(status, err, message)


def test_guided_sampling_needs_a_discriminator(tmp_path, run_cli):
    status, _, err = run_cli("textgan", "train", *oracle_args(tmp_path), *SMALL, "--reward", "constant",
                             "--adv-rounds", "1", "--out", tmp_path / "control")
    assert status == 0, err
    status, _, err = run_cli("textgan", "sample", "--run", tmp_path / "control", "--guided", "4")
    assert_one_line_error(status, err, "has no discriminator")
    status, _, err = run_cli("textgan", "sample", "--run", tmp_path / "control", "--n", "2")
    assert status == 0, err
