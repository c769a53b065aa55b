"""Guided sampling for image GANs (``aigc.gan.guide``): the guided generator draws importance
resampling's exact distribution on a tiny discrete problem; the guide learns a density ratio and
keeps its held-out minimum; ``aigc gan guide`` then ``--guided K`` on sample and eval, and the
one-line refusals."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from aigc import runs
from aigc.cli import main
from aigc.gan import evaluate, guide
from aigc.gan.clusters import cluster_of_noise
from aigc.gan.config import GanEvalConfig, GanTrainConfig
from aigc.gan.loading import load_gan
from aigc.gan.models import GanModelConfig
from aigc.gan.train import train
from conftest import assert_one_line_error
from test_gan_eval import TINY_RECIPE
from test_textgan_guided import Q, S, assert_matches, exact_sir, frequencies

pytestmark = pytest.mark.usefixtures("one_thread")

# Four 14x14 grey images, one per outcome, at grey levels a PNG stores exactly.
LEVELS = torch.tensor([-1.0, -1 + 2 * 85 / 255, -1 + 2 * 170 / 255, 1.0])
TOY = GanModelConfig(model="mlp", z_dim=2, image_size=14, channels=1)


class FourImages(nn.Module):
    """A generator q over four outcomes with probabilities Q: outcome i where z[:, 0] falls in
    the i-th interval of N(0, 1) of mass Q[i]; the image is grey at LEVELS[i]."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device
        normal = torch.distributions.Normal(0.0, 1.0)
        self.register_buffer("edges", normal.icdf(Q.cumsum(0)[:-1].float()))

    def forward(self, z, labels=None):
        outcome = torch.bucketize(z[:, 0].contiguous(), self.edges)
        return LEVELS[outcome].view(-1, 1, 1, 1).expand(-1, 1, 14, 14) + 0 * self.anchor


class LevelScores(nn.Module):
    """A guide whose logit for each of the four images is ``scores`` (S unless told)."""

    def __init__(self, scores: torch.Tensor = S):
        super().__init__()
        self.scores = scores.float()

    def forward(self, images):
        outcome = (images.mean((1, 2, 3))[:, None] - LEVELS).abs().argmin(1)
        return self.scores[outcome]


def outcomes_of(images: torch.Tensor) -> torch.Tensor:
    return (images.mean((1, 2, 3))[:, None] - LEVELS).abs().argmin(1)


@pytest.mark.parametrize("k", [2, 3])
def test_the_guided_generator_draws_importance_resamplings_exact_distribution(k):
    generator = guide.GuidedGenerator(FourImages(), LevelScores(), TOY, k, temperature=1.0, seed=0)
    rows = 60_000
    z = torch.randn(rows, 2, generator=torch.Generator().manual_seed(1))
    kept = outcomes_of(generator(z))
    assert_matches(frequencies(kept), exact_sir(k), rows)
    plain = outcomes_of(FourImages()(z))
    assert_matches(frequencies(plain), Q, rows)  # K = 1: q itself


def nested_sir(base: torch.Tensor, scores: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
    """The distribution of importance resampling stage after stage: each stage keeps one of its k candidates,
    drawn from the stage below, with weights exp(its scores); by enumerating every group of every stage."""
    for stage_scores, k in zip(scores, counts):
        out = torch.zeros(4, dtype=torch.float64)
        for group in itertools.product(range(4), repeat=k):
            weights = stage_scores[list(group)].exp()
            for position, outcome in enumerate(group):
                out[outcome] += math.prod(base[i].item() for i in group) * weights[position] / weights.sum()
        base = out
    return base


def test_stacked_guides_draw_nested_importance_resamplings_exact_distribution():
    second = torch.tensor([1.0, 0.5, -0.5, -2.0], dtype=torch.float64)  # undoes much of the first stage's pull
    stages = [guide.GuideStage(LevelScores(), 2), guide.GuideStage(LevelScores(second), 3)]
    sampler = guide.stacked(FourImages(), stages, TOY, temperature=1.0, seed=0)
    assert sampler.passes_per_image == 6
    rows = 60_000
    kept = outcomes_of(sampler(torch.randn(rows, 2, generator=torch.Generator().manual_seed(1))))
    expected = nested_sir(Q, [S, second], [2, 3])
    assert_matches(frequencies(kept), expected, rows)
    assert (expected - nested_sir(Q, [S], [2])).abs().max() > 0.05  # the second stage moved it measurably
    assert guide.stacked(FourImages(), [], TOY, temperature=1.0, seed=0).__class__ is FourImages  # no stage: q


class NoiseImages(nn.Module):
    """A generator whose every image differs: grey at tanh of the noise's first coordinate."""

    def forward(self, z, labels=None):
        return torch.tanh(z[:, :1]).view(-1, 1, 1, 1).expand(-1, 1, 14, 14)


def test_guided_images_do_not_depend_on_how_the_rows_are_split_into_calls():
    stages = [guide.GuideStage(LevelScores(), 4), guide.GuideStage(LevelScores(), 3)]
    z = torch.randn(40, 2, generator=torch.Generator().manual_seed(2))
    whole = guide.stacked(NoiseImages(), stages, TOY, temperature=1.3, seed=5)(z)
    split = guide.stacked(NoiseImages(), stages, TOY, temperature=1.3, seed=5)
    assert torch.equal(torch.cat([split(z[:3]), split(z[3:17]), split(z[17:])]), whole)
    other_seed = guide.stacked(NoiseImages(), stages, TOY, temperature=1.3, seed=6)(z)
    assert not torch.equal(other_seed, whole)
    negative_seed = guide.stacked(NoiseImages(), stages, TOY, temperature=1.3, seed=-10**12)(z)  # the server's any
    assert negative_seed.shape == whole.shape


class ClusterImages(nn.Module):
    """A self-conditioned generator's stand-in: the image is grey at LEVELS[cluster], the cluster read from z."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cluster_prior", torch.full((4,), 0.25))

    def forward(self, z, labels=None):
        return LEVELS[cluster_of_noise(z, self.cluster_prior)].view(-1, 1, 1, 1).expand(-1, 1, 14, 14)


def test_a_self_conditioned_generators_candidates_keep_the_rows_cluster():
    clustered = GanModelConfig(model="mlp", z_dim=2, image_size=14, channels=1, clusters=4)
    # The guide strongly prefers cluster 3; resampling must still leave every row its own cluster.
    generator = guide.GuidedGenerator(ClusterImages(), LevelScores(), clustered, 8, temperature=1.0, seed=0)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(outcomes_of(generator(z)), outcomes_of(ClusterImages()(z)))


def test_one_candidate_is_the_runs_own_generator(tmp_path):
    run = _tiny_run(tmp_path / "run", guide=False)
    loaded = load_gan(run)
    assert guide.guided(loaded, 1, ema=True, temperature=1.0, seed=0) is loaded.generator  # no guide needed


class BrightOrDark(nn.Module):
    """A generator of noisy 14x14 images that are bright (mean +0.5) or dark (mean -0.5), half and half."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, z, labels=None):
        mean = torch.where(z[:, :1] > 0, 0.5, -0.5)[:, :, None, None]
        texture = z[:, 1:2, None, None] * 0.05
        return (mean + texture).expand(-1, 1, 14, 14) + 0 * self.anchor


def test_the_guide_learns_the_density_ratio_and_keeps_its_held_out_minimum():
    real = (0.5 + 0.05 * torch.randn(400, 1, 1, 1, generator=torch.Generator().manual_seed(2))).expand(-1, 1, 14, 14)
    recipe = guide.GuideRecipe(samples_per_real=2, steps=120, eval_every=20)
    classifier, info = guide.fit_guide(BrightOrDark(), TOY, real.contiguous(), None, 1.0, recipe, seed=0)
    losses = [entry["held_out_loss"] for entry in info["history"]]
    assert [entry["step"] for entry in info["history"]] == list(range(20, 121, 20))
    assert info["held_out_loss"] == min(losses) and info["best_step"] == 20 * (losses.index(min(losses)) + 1)
    assert info["held_out_loss"] < 0.6 < 0.6931  # well below a constant guess
    assert info["generated_images"] == 800 and info["real_images"] == 400
    # Real images are all bright, the generator's half: the ratio p/q is 2 for bright, 0 for dark.
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3))
    plain_bright = (BrightOrDark()(z).mean((1, 2, 3)) > 0).float().mean().item()
    guided = guide.GuidedGenerator(BrightOrDark(), classifier, TOY, 8, temperature=1.0, seed=0)
    guided_bright = (guided(z).mean((1, 2, 3)) > 0).float().mean().item()
    assert 0.45 < plain_bright < 0.55 and guided_bright > 0.95


def _tiny_run(out: Path, guide: bool = True, **overrides) -> Path:
    train(GanTrainConfig(model="mlp", conditional=True, steps=3, batch_size=16, out=str(out), device="cpu",
                         log_every=3, sample_every=3, save_every=3, guide=guide, **overrides))
    return out


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory) -> Path:
    run = _tiny_run(tmp_path_factory.mktemp("guided") / "run")
    assert main(["gan", "guide", "--run", str(run), "--steps", "20", "--samples-per-real", "1",
                 "--device", "cpu"]) == 0
    return run


def test_guide_then_guided_sample_and_eval(guided_run, tmp_path, capsys, monkeypatch):
    _, metadata = runs.load_weights(guided_run / guide.GUIDE_FILE)
    info = json.loads(metadata["guide"])
    assert info["checkpoint"] == runs.checkpoint_dir(guided_run).name and info["ema"] is True
    assert info["temperature"] == 1.0 and info["best_step"] == 20 and info["steps"] == 20
    assert info["held_out_loss"] < 0.6931  # three steps of training leave the samples easy to tell apart

    grid = tmp_path / "grid.png"
    assert main(["gan", "sample", "--run", str(guided_run), "--n", "8", "--guided", "4", "--out", str(grid),
                 "--device", "cpu"]) == 0
    assert grid.is_file()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(evaluate, "DEFAULT_RECIPE", TINY_RECIPE)
    monkeypatch.setattr(evaluate, "JUDGE_STEPS", 20)
    result = evaluate.evaluate_run(GanEvalConfig(run=str(guided_run), n=100, json=str(tmp_path / "e.json"),
                                                 device="cpu"))  # a run with a guide: guided by default
    assert result["guided"] == guide.DEFAULT_GUIDED == 16
    assert f"guided ({guide.DEFAULT_GUIDED} generator passes per image)" in capsys.readouterr().out


def test_guided_sampling_is_reproducible(guided_run, tmp_path):
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    for out in first, second:
        assert main(["gan", "sample", "--run", str(guided_run), "--n", "6", "--guided", "3", "--format", "npz",
                     "--out", str(out), "--device", "cpu"]) == 0
    import numpy as np

    assert np.array_equal(np.load(first)["images"], np.load(second)["images"])


def test_guided_sampling_refuses_a_missing_or_mismatched_guide(guided_run, tmp_path, capsys):
    plain = _tiny_run(tmp_path / "plain", guide=False)
    capsys.readouterr()  # training's own output
    out = str(tmp_path / "grid.png")
    status = main(["gan", "sample", "--run", str(plain), "--guided", "4", "--out", out, "--device", "cpu"])
    assert_one_line_error(status, capsys.readouterr().err, "has no guide", "aigc gan guide --run")
    status = main(["gan", "sample", "--run", str(guided_run), "--guided", "4", "--temperature", "1.2", "--out", out,
                   "--device", "cpu"])
    assert_one_line_error(status, capsys.readouterr().err, "fitted to another generator", "temperature 1.0")
    status = main(["gan", "sample", "--run", str(guided_run), "--guided", "4", "--no-ema", "--out", out,
                   "--device", "cpu"])
    assert_one_line_error(status, capsys.readouterr().err, "fitted to another generator", "ema True")
    status = main(["gan", "sample", "--run", str(guided_run), "--guided", "0", "--out", out, "--device", "cpu"])
    assert_one_line_error(status, capsys.readouterr().err, "--guided")
    (plain / guide.GUIDE_FILE).write_bytes(b"not safetensors")
    status = main(["gan", "sample", "--run", str(plain), "--guided", "2", "--out", out, "--device", "cpu"])
    assert_one_line_error(status, capsys.readouterr().err, "corrupt weights file")


def _npz_images(run: Path, out: Path, *flags: str):
    import numpy as np

    assert main(["gan", "sample", "--run", str(run), "--n", "6", "--format", "npz", "--out", str(out), "--device", "cpu",
                 *flags]) == 0
    return np.load(out)["images"]


def test_training_ends_by_fitting_the_guide_that_sampling_then_uses_by_default(tmp_path, capsys):
    import numpy as np

    run = _tiny_run(tmp_path / "run")
    _, metadata = runs.load_weights(run / guide.GUIDE_FILE)
    info = json.loads(metadata["guide"])
    assert info["steps"] == 3 and info["checkpoint"] == runs.checkpoint_dir(run).name  # no more steps than the GAN's
    assert "guide: held-out loss" in capsys.readouterr().out

    default = _npz_images(run, tmp_path / "default.npz")
    assert "guided: 16 generator passes per image" in capsys.readouterr().out
    assert np.array_equal(default, _npz_images(run, tmp_path / "k16.npz", "--guided", "16"))
    assert not np.array_equal(default, _npz_images(run, tmp_path / "plain.npz", "--guided", "1"))

    # A temperature the guide was not fitted to: plain samples, and a note that says why.
    capsys.readouterr()
    hotter = _npz_images(run, tmp_path / "hot.npz", "--temperature", "1.2")
    assert np.array_equal(hotter, _npz_images(run, tmp_path / "hot-plain.npz", "--temperature", "1.2", "--guided", "1"))
    note = capsys.readouterr().err
    assert "note: plain samples, not guided" in note and "temperature 1.0 (asked: 1.2)" in note


def test_a_run_samples_at_its_own_temperature_and_fits_its_guide_to_it(tmp_path, capsys, monkeypatch):
    import numpy as np

    run = tmp_path / "run"
    train(GanTrainConfig(model="mlp", conditional=True, steps=3, batch_size=16, out=str(run), device="cpu",
                         log_every=3, sample_every=3, save_every=3, temperature=1.3))
    assert runs.read_run_config(run, "gan")["train"]["temperature"] == 1.3
    _, metadata = runs.load_weights(run / guide.GUIDE_FILE)
    assert json.loads(metadata["guide"])["temperature"] == 1.3
    capsys.readouterr()

    default = _npz_images(run, tmp_path / "default.npz")  # guided: the guide fits the run's temperature
    assert "guided: 16 generator passes per image" in capsys.readouterr().out
    assert np.array_equal(default, _npz_images(run, tmp_path / "t1.3.npz", "--temperature", "1.3", "--guided", "16"))
    assert not np.array_equal(_npz_images(run, tmp_path / "plain.npz", "--guided", "1"),
                              _npz_images(run, tmp_path / "t1.npz", "--guided", "1", "--temperature", "1"))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(evaluate, "DEFAULT_RECIPE", TINY_RECIPE)
    monkeypatch.setattr(evaluate, "JUDGE_STEPS", 20)
    result = evaluate.evaluate_run(GanEvalConfig(run=str(run), n=100, json=str(tmp_path / "e.json"), device="cpu"))
    assert result["temperature"] == 1.3 and result["guided"] == guide.DEFAULT_GUIDED


def test_a_run_saved_before_the_temperature_setting_samples_at_1(guided_run):
    loaded = load_gan(guided_run)
    before = {**loaded.run_config, "train": {k: v for k, v in loaded.run_config["train"].items() if k != "temperature"}}
    assert dataclasses.replace(loaded, run_config=before).temperature() == 1.0
    assert dataclasses.replace(loaded, run_config=before).temperature(0.7) == 0.7


def test_a_guide_of_two_stages_is_fitted_saved_and_sampled_through_both(tmp_path, capsys):
    import numpy as np

    run = _tiny_run(tmp_path / "run", guide=False)
    assert main(["gan", "guide", "--run", str(run), "--steps", "5", "--stages", "2", "--stage-candidates", "3",
                 "--device", "cpu"]) == 0  # 5 steps: 356 samples a stage, the second's each the pick of 16
    printed = capsys.readouterr().out
    assert "guide stage 1: held-out loss" in printed and "guide stage 2: held-out loss" in printed
    tensors, metadata = runs.load_weights(run / guide.GUIDE_FILE)
    info = json.loads(metadata["guide"])
    assert info["stage_candidates"] == [guide.DEFAULT_GUIDED, 3] and len(info["later_stages"]) == 1
    assert info["seed"] == 0 and info["later_stages"][0]["seed"] == guide.STAGE_SEED_STEP  # samples of its own
    assert sum(name.startswith("stage2.") for name in tensors) * 2 == len(tensors)  # two guides of one shape

    both = _npz_images(run, tmp_path / "default.npz")
    assert f"guided: {guide.DEFAULT_GUIDED * 3} generator passes per image" in capsys.readouterr().out
    first_only = _npz_images(run, tmp_path / "k4.npz", "--guided", "4")
    captured = capsys.readouterr()
    assert "guided: 4 generator passes per image" in captured.out
    assert "note: the first stage of the guide only" in captured.err and "--guided 16" in captured.err
    assert not np.array_equal(both, first_only)

    from aigc.serve.models import ServedGan

    served = ServedGan("digits", load_gan(run))  # the server samples through both stages too
    assert [stage.candidates for stage in served.guide_stages] == [guide.DEFAULT_GUIDED, 3]
    assert len(served.png_images(2, 7, seed=0)) == 2

    # Training on refits the guide to its new checkpoint, with one stage, and says how to fit two again.
    assert main(["gan", "train", "--out", str(run), "--resume", "--steps", "4", "--guide", "--device", "cpu"]) == 0
    assert f"`aigc gan guide --run {run} --stages 2`" in capsys.readouterr().out
    assert guide.guide_stages(run) == 1 and guide.guide_stages(tmp_path) == 0


def test_training_fits_and_saves_the_guide_stages_it_is_given(tmp_path, capsys):
    run = _tiny_run(tmp_path / "run", guide_stages=2)
    assert guide.guide_stages(run) == 2
    assert runs.read_run_config(run, "gan")["train"]["guide_stages"] == 2  # saved resolved, as a resume reads it
    both = _npz_images(run, tmp_path / "both.npz")
    assert f"guided: {guide.DEFAULT_GUIDED * guide.DEFAULT_STAGE_CANDIDATES} generator passes per image" in (
        capsys.readouterr().out)
    assert (_npz_images(run, tmp_path / "asked.npz", "--guide-stages", "2") == both).all()  # the default: every stage
    _npz_images(run, tmp_path / "first.npz", "--guide-stages", "1")
    assert f"guided: {guide.DEFAULT_GUIDED} generator passes per image" in capsys.readouterr().out
    for flags, fragments in [(["--guide-stages", "3"], ["--guide-stages 3", "has 2 stages"]),
                             (["--guided", "8", "--guide-stages", "2"], ["needs --guided 16", "not 8"]),
                             (["--guided", "1", "--guide-stages", "1"], ["--guide-stages 1", "plain"])]:
        status = main(["gan", "sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "x.png"),
                       "--device", "cpu", *flags])
        assert_one_line_error(status, capsys.readouterr().err, *fragments)
    assert not (tmp_path / "x.png").exists()


def test_no_guide_trains_without_one_and_samples_plain(tmp_path, capsys):
    run = _tiny_run(tmp_path / "run", guide=False)
    assert not (run / guide.GUIDE_FILE).exists()
    _npz_images(run, tmp_path / "plain.npz")
    assert "guided" not in capsys.readouterr().out


def test_a_time_budget_keeps_a_share_for_each_stage_of_the_guide():
    from aigc.gan.train import BUDGETED_LATER_SAMPLES_PER_REAL, GUIDE_SHARE, _guide_recipes, _training_budget

    budgeted = GanTrainConfig(time_budget=100.0, guide_stages=1)
    assert _training_budget(budgeted, TOY) == pytest.approx(100.0 * (1 - GUIDE_SHARE))
    # The guide gets what the GAN left of the budget, at least its share.
    assert _guide_recipes(budgeted, None, elapsed=86.0) == [guide.GuideRecipe(seconds=pytest.approx(100.0 * GUIDE_SHARE))]
    assert _guide_recipes(budgeted, 2000, elapsed=30.0) == [guide.GuideRecipe(steps=2000, seconds=pytest.approx(70.0))]
    assert _training_budget(GanTrainConfig(time_budget=100.0, guide=False, guide_stages=2), TOY) == 100.0
    # Two stages: a share each off the GAN's time, an equal part of what is left each, the later one drawing fewer.
    two = GanTrainConfig(time_budget=100.0, guide_stages=2)
    assert _training_budget(two, TOY) == pytest.approx(100.0 * (1 - 2 * GUIDE_SHARE))
    assert _guide_recipes(two, None, elapsed=60.0) == [
        guide.GuideRecipe(seconds=pytest.approx(20.0)),
        guide.GuideRecipe(samples_per_real=BUDGETED_LATER_SAMPLES_PER_REAL, seconds=pytest.approx(20.0))]
    assert [r.seconds for r in _guide_recipes(two, None, elapsed=99.0)] == [pytest.approx(100.0 * GUIDE_SHARE)] * 2
    # Without a budget every stage is `aigc gan guide`'s recipe, with no more steps than the GAN had.
    assert _guide_recipes(GanTrainConfig(steps=40, guide_stages=2), 40, elapsed=5.0) == [guide.GuideRecipe(steps=40)] * 2
    assert _guide_recipes(GanTrainConfig(steps=9000, guide_stages=1), 9000, elapsed=5.0)[0].steps == guide.GuideRecipe.steps


def test_the_start_line_says_who_has_the_rest_of_the_budget():
    from aigc.gan.train import _length_text
    from aigc.training.loop import Plan

    budget = Plan(None, 85.0, 10, 100, 100, steps_flag="--steps")
    assert _length_text(GanTrainConfig(time_budget=100.0), budget) == (
        "85 seconds (its guide's fit has the rest of the 100 s budget)")
    assert _length_text(GanTrainConfig(time_budget=100.0, guide=False), budget) == "85 seconds"
    assert _length_text(GanTrainConfig(steps=40), Plan(40, None, 10, 100, 100, steps_flag="--steps")) == "40 steps"


def test_the_guide_draws_at_most_its_cap_of_samples_with_the_classes_shares():
    real, labels = torch.zeros(40, 1, 14, 14), torch.arange(2).repeat_interleave(20)  # sorted by class
    recipe = guide.GuideRecipe(samples_per_real=4, max_generated=20, steps=1)
    drawn = []

    class Recording(BrightOrDark):
        def forward(self, z, labels=None):
            drawn.append(labels)
            return super().forward(z, labels)

    _, info = guide.fit_guide(Recording(), TOY, real, labels, 1.0, recipe, seed=0)
    assert info["generated_images"] == 20
    assert 4 <= (torch.cat(drawn) == 1).sum() <= 16  # a random subset of both classes, not the first 20 (all 0s)


def test_a_short_guide_draws_no_more_samples_than_its_steps_can_see():
    recipe = guide.GuideRecipe(steps=12, batch_size=64, held_out=0.1)  # 768 training samples seen at most
    assert recipe.generated_count(5000) == 854  # 768 / 0.9, rounded up: the held-out tenth on top
    assert guide.GuideRecipe().generated_count(5000) == 20_000  # 3,000 steps: 4 per image, as before
    assert guide.GuideRecipe().generated_count(100) == 400


def test_the_guides_time_limit_stops_it_at_its_best_so_far():
    real = torch.zeros(40, 1, 14, 14)
    recipe = guide.GuideRecipe(samples_per_real=1, steps=1000, eval_every=500, seconds=0.0)
    _, info = guide.fit_guide(BrightOrDark(), TOY, real, None, 1.0, recipe, seed=0)
    assert info["steps"] == 1 and info["best_step"] == 1 and [h["step"] for h in info["history"]] == [1]
