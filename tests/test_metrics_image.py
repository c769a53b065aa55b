"""Image metrics on cases with a known answer, and the evaluator's cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from aigc.data.images import load_images
from aigc.metrics import evaluator as ev
from aigc.metrics.image import (c2st, density_coverage, frechet_distance, intra_class_fid, kernel_distance,
                                label_accuracy, mode_coverage, precision_recall, wilson_interval)

TINY_RECIPE = ev.EvaluatorRecipe(epochs=1, width=4, features=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_images("mnist5k")


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID written out with scipy's matrix square root (the formula of Heusel et al.)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_fid_matches_the_formula_is_zero_on_itself_and_grows_with_a_shift():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 8, generator=generator)
    b = torch.randn(2000, 8, generator=generator) @ torch.diag(torch.linspace(0.5, 2, 8)) + 0.3
    assert frechet_distance(a, b) == pytest.approx(_reference_fid(a.numpy().astype(np.float64),
                                                                  b.numpy().astype(np.float64)), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    # a pure shift by s in every one of 8 dimensions adds exactly 8 s^2
    assert shifts == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0], rel=1e-6)


def _reference_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y/d + 1)^3, written out (Binkowski et al. 2018)."""
    n, d = a.shape
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    off_diagonal = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(off_diagonal - 2 * k_ab.mean())


def test_kid_matches_the_formula_when_the_subset_is_the_whole_set():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 5, generator=generator), torch.randn(40, 5, generator=generator) * 1.5 + 0.2
    mean, std = kernel_distance(a, b, subsets=5, subset_size=40)  # every draw is the whole set, reordered
    assert mean == pytest.approx(_reference_kid(a.double().numpy(), b.double().numpy()), rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-9)
    assert kernel_distance(a, b, subset_size=1000)[0] == pytest.approx(mean)  # the size is cut to the sets'


def test_kid_is_near_zero_for_one_distribution_grows_with_a_shift_and_is_seeded():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, 8, generator=generator), torch.randn(1000, 8, generator=generator)
    same, same_std = kernel_distance(a, b, subsets=50, subset_size=500)
    assert abs(same) < 0.02 and same_std < 0.02
    shifted = [kernel_distance(a, b + s, subsets=50, subset_size=500)[0] for s in (0.2, 0.5)]
    assert 0.05 < shifted[0] < shifted[1]
    state = torch.random.get_rng_state()
    assert kernel_distance(a, b, subsets=50, subset_size=500) == (same, same_std)  # seed=0 both times
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is left alone
    assert kernel_distance(a, b, subsets=50, subset_size=500, seed=1)[0] != same


def test_density_and_coverage_on_points_counted_by_hand():
    # Real points on a line; with k = 2 their balls reach the 2nd nearest other real point:
    # 0: radius 2 [-2, 2], 1: 1 [0, 2], 2: 1 [1, 3], 3: 2 [1, 5], 10: 7 [3, 17], 12: 9 [3, 21].
    real = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [10, 0], [12, 0]])
    # 1.5 lies in the balls of 0, 1, 2, 3; 2.5 in those of 2, 3; -5 and 25 in none.
    fake = torch.tensor([[1.5, 0], [2.5, 0], [-5, 0], [25, 0]])
    density, coverage = density_coverage(real, fake, k=2)
    assert density == pytest.approx((4 + 2) / (2 * 4))  # ball hits / (k M)
    assert coverage == pytest.approx(4 / 6)  # the balls of 0, 1, 2, 3 hold a fake point
    with pytest.raises(ValueError, match="more than 5 real points"):
        density_coverage(real[:5], fake)


def test_density_and_coverage_agree_with_a_brute_force_count_in_chunks():
    generator = torch.Generator().manual_seed(2)
    real, fake = torch.randn(30, 3, generator=generator), torch.randn(20, 3, generator=generator) + 0.5
    k = 5
    distances = torch.cdist(real.double(), real.double())
    radii = [sorted(row.tolist())[k] for row in distances]  # sorted()[0] is the point itself
    balls = [[bool(torch.dist(x.double(), y.double()) <= r) for y in fake] for x, r in zip(real, radii)]
    hits = sum(sum(row) for row in balls)
    covered = sum(any(row) for row in balls)
    density, coverage = density_coverage(real, fake, k=k, chunk=7)
    assert density == pytest.approx(hits / (k * len(fake)))
    assert coverage == pytest.approx(covered / len(real))


def test_density_and_coverage_on_same_shifted_and_far_sets():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(2000, 8, generator=generator), torch.randn(2000, 8, generator=generator)
    # A set against itself: each point lies in its own ball and, on average, in k others.
    assert density_coverage(a, a) == pytest.approx((1 + 1 / 5, 1.0))
    density, coverage = density_coverage(a, b)
    assert density == pytest.approx(1.0, abs=0.05)
    assert coverage == pytest.approx(1 - 0.5 ** 5, abs=0.02)  # the expected coverage for M = N (Naeem et al.)
    assert density_coverage(a, b + 100.0) == (0.0, 0.0)


def test_intra_class_fid_is_small_when_classes_match_and_large_when_swapped():
    generator = torch.Generator().manual_seed(4)
    centres = torch.tensor([[0.0, 0, 0, 0], [3, 0, 0, 0], [0, 3, 0, 0]])  # three classes in 4-D
    labels = torch.arange(3).repeat(300)  # (900,)
    real = centres[labels] + torch.randn(900, 4, generator=generator)
    fake = centres[labels] + torch.randn(900, 4, generator=generator)
    matched = intra_class_fid(real, labels, fake, labels, 3)
    assert len(matched) == 3 and max(matched) < 0.2
    # Samples asked for class c that show class c+1: plain FID cannot see it, intra-class FID can.
    swapped = intra_class_fid(real, labels, fake, (labels + 1) % 3, 3)
    assert frechet_distance(real, fake) < 0.2 and min(swapped) > 8  # centres 3 or 3 sqrt(2) apart: 9, 9, 18
    with pytest.raises(ValueError, match="class 2"):
        intra_class_fid(real, labels, fake[labels < 2], labels[labels < 2], 3)


def test_precision_recall_on_hand_built_point_clouds():
    line = torch.stack([torch.arange(10.0), torch.zeros(10)], 1)  # 10 points 1 apart on a line
    far = line + torch.tensor([100.0, 0.0])
    assert precision_recall(line, line) == (1.0, 1.0)
    assert precision_recall(line, far) == (0.0, 0.0)
    # Samples that cover only one of two real clusters: all realistic, half the data missed.
    assert precision_recall(torch.cat([line, far]), line) == (1.0, 0.5)
    # Samples with half of them off the data: half unrealistic, and the data still covered.
    assert precision_recall(line, torch.cat([line, far])) == (0.5, 1.0)


def test_precision_recall_use_the_kth_neighbour():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # 3rd neighbour of each point: 3, 2, 2, 3 away
    fake = torch.tensor([[5.5], [6.5], [10.0], [11.0]])  # 5.5 is 2.5 from 3, inside its radius of 3
    assert precision_recall(real, fake, k=3)[0] == 0.25
    assert precision_recall(real, fake, k=1)[0] == 0.0  # all radii are 1
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(real, fake[:3], k=3)


def test_mode_coverage_on_a_set_missing_two_classes():
    reference = torch.arange(10).repeat(100)  # uniform over 10 classes
    samples = torch.arange(8).repeat(100)  # classes 8 and 9 never drawn
    coverage = mode_coverage(samples, reference, 10)
    assert coverage.classes_covered == 8
    assert coverage.histogram[8] == coverage.histogram[9] == 0.0
    assert coverage.kl == pytest.approx(np.log(10 / 8))  # sum over 8 classes of 1/8 log((1/8)/(1/10))
    assert mode_coverage(reference, reference, 10).kl == pytest.approx(0.0)
    # A class under 1% of the samples does not count as covered.
    rare = torch.cat([torch.arange(9).repeat(200), torch.tensor([9] * 10)])
    assert mode_coverage(rare, reference, 10).classes_covered == 9


def test_label_accuracy_on_relabelled_real_data(digits):
    labels = digits.labels
    assert label_accuracy(labels, labels) == 1.0
    relabelled = labels.clone()
    relabelled[:1000] = (relabelled[:1000] + 1) % 10  # 1,000 of 5,000 asked for the wrong digit
    assert label_accuracy(labels, relabelled) == pytest.approx(0.8)


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(100, 100)[1] == pytest.approx(1.0)
    assert wilson_interval(100, 100)[0] == pytest.approx(0.963, abs=1e-3)


def test_c2st_cannot_tell_two_halves_of_real_data_but_tells_real_from_noise(digits):
    images = digits.images[torch.randperm(len(digits), generator=torch.Generator().manual_seed(1))][:2000]
    same = c2st(images[:1000], images[1000:], steps=100)
    assert same.n_test == 1000
    assert abs(same.accuracy - 0.5) < 0.06 and same.low < 0.5 < same.high
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    different = c2st(images[:1000], noise, steps=100)
    assert different.accuracy > 0.98
    assert len(different.fake_indices) == len(different.fake_realness) == 500


def test_evaluator_is_deterministic_and_cached(digits, tmp_path, monkeypatch):
    images, labels = digits.images[:500], digits.labels[:500]
    first = ev.load_or_train_evaluator(images, labels, 10, TINY_RECIPE, cache=tmp_path)
    assert first.key == ev.evaluator_key(images, labels, TINY_RECIPE)
    assert list((tmp_path / "evaluators").iterdir()) == [tmp_path / "evaluators" / f"{first.key}.safetensors"]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached evaluator should have been used")

    monkeypatch.setattr(ev, "train_evaluator", no_training)
    second = ev.load_or_train_evaluator(images, labels, 10, TINY_RECIPE, cache=tmp_path)
    assert second.key == first.key
    features, logits = first.features_and_logits(images[:50])
    assert features.shape == (50, 16) and logits.shape == (50, 10)
    assert torch.equal(second.features_and_logits(images[:50])[0], features)
    monkeypatch.undo()
    retrained = ev.train_evaluator(images, labels, 10, TINY_RECIPE)
    assert torch.equal(retrained.features(images[:50]), features)  # same seed and recipe: same weights


def test_evaluator_key_depends_on_data_and_recipe(digits):
    images, labels = digits.images[::50], digits.labels[::50]  # 100 digits of every class
    key = ev.evaluator_key(images, labels, TINY_RECIPE)
    assert ev.evaluator_key(images, labels.roll(1), TINY_RECIPE) != key
    assert ev.evaluator_key(images.flip(0), labels, TINY_RECIPE) != key
    assert ev.evaluator_key(images, labels, ev.EvaluatorRecipe(epochs=2, width=4, features=16)) != key


def test_cache_location_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ev.cache_dir() == tmp_path / "aigc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ev.cache_dir() == Path.home() / ".cache" / "aigc"


def test_a_corrupt_cache_entry_is_retrained(digits, tmp_path):
    images, labels = digits.images[:200], digits.labels[:200]
    key = ev.evaluator_key(images, labels, TINY_RECIPE)
    (tmp_path / "evaluators").mkdir()
    (tmp_path / "evaluators" / f"{key}.safetensors").write_bytes(b"not weights")
    evaluator = ev.load_or_train_evaluator(images, labels, 10, TINY_RECIPE, cache=tmp_path)
    assert evaluator.key == key
    assert (tmp_path / "evaluators" / f"{key}.safetensors").stat().st_size > 1000


def test_evaluator_features_separate_real_test_digits(digits, tmp_path, shared_data):
    """A small evaluator trained on mnist5k already reads held-out real digits well, and its
    features put two real sets close and real vs blurred far (FID)."""
    test = load_images(str(shared_data / "mnist"))
    recipe = ev.EvaluatorRecipe(epochs=3, width=8, features=32)
    evaluator = ev.load_or_train_evaluator(digits.images, digits.labels, 10, recipe, cache=tmp_path)
    features, logits = evaluator.features_and_logits(test.images[:2000])
    assert (logits.argmax(1) == test.labels[:2000]).float().mean() > 0.85
    real_features, _ = evaluator.features_and_logits(digits.images[::2])  # mnist5k is sorted by class
    blurred = torch.nn.functional.avg_pool2d(test.images[:2000], 3, 1, 1)
    blurred_features, _ = evaluator.features_and_logits(blurred)
    assert frechet_distance(real_features, features) * 3 < frechet_distance(real_features, blurred_features)
