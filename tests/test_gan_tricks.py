"""The tricks against collapse of issue 17: DiffAugment, minibatch standard deviation, R1, TTUR,
PacGAN packing, self-conditioning on clusters, and the Stacked MNIST data they are judged on."""

import json
import math

import pytest
import torch

from aigc.data.images import ImageData, load_images, stack_digits
from aigc.errors import UserError
from aigc.gan import augment as augment_module
from aigc.gan.augment import ADA_INTERVAL, AdaptiveProbability, DiffAugment, cutout, translate
from aigc.gan.clusters import cluster_of_noise, cluster_prior, kmeans, kmeans_within_classes
from aigc.gan.config import GanTrainConfig, parse_augment
from aigc.gan.loading import load_generator
from aigc.gan.losses import gradient_penalty, r1_penalty
from aigc.gan.models import GanModelConfig, MinibatchStd, build_discriminator, packed
from aigc.gan.train import (GanTrainer, _cluster_count, _model_config, ema_decay, guide_stage_count, learning_rates,
                            sampling_temperature, train, uses_autocast)
from aigc.logging import read_metrics

from conftest import assert_one_line_error


def test_translate_shifts_whole_pixels_and_lets_zeros_in():
    images = torch.arange(2 * 16, dtype=torch.float).view(2, 1, 4, 4) + 1
    moved = translate(images, torch.tensor([[1, 0], [0, -2]]))
    assert torch.equal(moved[0, 0, 1:], images[0, 0, :3]) and moved[0, 0, 0].eq(0).all()  # down by one
    assert torch.equal(moved[1, 0, :, :2], images[1, 0, :, 2:]) and moved[1, 0, :, 2:].eq(0).all()  # left by two
    assert torch.equal(translate(images, torch.zeros(2, 2, dtype=torch.long)), images)


def test_cutout_zeroes_one_square_clipped_at_the_edges():
    ones = torch.ones(2, 3, 8, 8)
    cut = cutout(ones, torch.tensor([[4, 4], [0, 7]]), size=4)
    assert cut[0].eq(0).sum() == 3 * 16 and cut[0, :, 2:6, 2:6].eq(0).all()  # the whole square, every channel
    assert cut[1].eq(0).sum() == 3 * 2 * 3 and cut[1, :, :2, 5:].eq(0).all()  # a corner: rows 0-1, columns 5-7


def test_diffaugment_is_differentiable_and_drawn_from_the_given_generator():
    augment = DiffAugment(parse_augment("translation,cutout"), image_size=28)
    draw = lambda: augment.draw(5, torch.Generator().manual_seed(3), torch.device("cpu"))  # noqa: E731
    params = draw()
    assert params.shape == (5, 4) and torch.equal(params, draw())
    assert params[:, :2].abs().max() <= 4  # 1/8 of 28, rounded
    images = torch.randn(5, 1, 28, 28, requires_grad=True)
    augment.apply(images, params).sum().backward()
    assert images.grad.abs().sum() > 0 and not DiffAugment((), 28)


def test_each_image_is_augmented_with_the_given_probability_and_the_others_are_left_alone():
    augment = DiffAugment(parse_augment("translation,cutout"), image_size=28)
    draw = lambda p: augment.draw(4000, torch.Generator().manual_seed(5), torch.device("cpu"), p)  # noqa: E731
    spared = lambda params: (params[:, :2] == 0).all(1) & (params[:, 2:] == -28).all(1)  # noqa: E731
    assert torch.equal(draw(1.0), augment.draw(4000, torch.Generator().manual_seed(5), torch.device("cpu")))
    assert not spared(draw(1.0)).any() and spared(draw(0.0)).all()
    share = 1 - spared(draw(0.3)).float().mean().item()
    assert share == pytest.approx(0.3, abs=0.03)  # 4000 draws: the standard error is 0.007
    images = torch.randn(4000, 1, 28, 28)
    params = draw(0.3)
    changed = (augment.apply(images, params) != images).flatten(1).any(1)
    assert torch.equal(changed, ~spared(params))


def test_ada_raises_p_while_d_is_sure_of_the_real_images_and_lowers_it_otherwise():
    ada = AdaptiveProbability(target=0.6, images_per_update=64)
    step = 64 * ADA_INTERVAL / augment_module.ADA_SPEED_IMAGES
    sure, unsure = torch.tensor([3.0, 1.0, 2.0, 0.5, 1.0]), torch.tensor([3.0, -1.0, 2.0, -0.5, 1.0])  # r = 1, 0.2
    for _ in range(ADA_INTERVAL - 1):
        ada.observe(sure)
    assert ada.probability == 0  # moves only at the end of an interval
    ada.observe(sure)
    assert ada.probability == pytest.approx(step)
    for _ in range(3 * ADA_INTERVAL):
        ada.observe(unsure)
    assert ada.probability == 0  # clamped at 0
    at_target = AdaptiveProbability(target=0.5, images_per_update=64, probability=0.5)
    for _ in range(ADA_INTERVAL):
        at_target.observe(torch.tensor([1.0, 1.0, 2.0, -1.0]))  # r = 0.5 exactly
    assert at_target.probability == 0.5
    ranks = AdaptiveProbability(target=0.6, images_per_update=64, probability=1.0)
    for _ in range(ADA_INTERVAL):  # sure here, but the group's mean r (as if other ranks were unsure) is below
        ranks.observe(sure, mean_over_ranks=lambda values: {"r": values["r"] - 0.5})
    assert ranks.probability == pytest.approx(1 - step)


def test_an_ada_run_logs_p_and_resumes_it_mid_interval_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(augment_module, "ADA_SPEED_IMAGES", 4 * 64 * 4)  # steps of 0.25 per interval of 4 updates
    settings = dict(width=8, log_every=1, sample_every=1000, save_every=1000, augment="translation,cutout",
                    ada_target=0.0, augment_p=0.5, self_condition=0)
    straight = train(GanTrainConfig(out=str(tmp_path / "straight"), steps=10, **settings))
    half = train(GanTrainConfig(out=str(tmp_path / "half"), steps=6, **settings))  # 2 updates into an interval
    train(GanTrainConfig(out=str(half), steps=10, resume=True, **settings))
    def curve(run):
        return [(m["step"], m["augment_p"], m["d_loss"]) for m in read_metrics(run / "metrics.jsonl")]
    assert curve(straight) == curve(half)
    probabilities = {p for _, p, _ in curve(straight)}
    assert probabilities - {0.5} and probabilities <= {0, 0.25, 0.5, 0.75, 1}


def test_minibatch_std_appends_each_groups_spread():
    layer = MinibatchStd(group=2)
    same = torch.ones(4, 3, 2, 2)
    assert layer(same).shape == (4, 4, 2, 2) and layer(same)[:, 3].max() < 1e-3  # no spread
    x = torch.zeros(4, 1, 1, 1)
    x[2] = 2.0  # groups are samples {0, 2} and {1, 3} (sample i is in group i % 2)
    spread = layer(x)[:, 1].flatten()
    assert torch.allclose(spread, torch.tensor([1.0, 0.0, 1.0, 0.0]), atol=1e-3)
    assert layer(torch.randn(5, 2, 3, 3)).shape == (5, 3, 3, 3)  # 5 is prime: groups of one


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_discriminators_with_minibatch_std(model):
    cfg = GanModelConfig(model=model, num_classes=10, width=16, minibatch_std=True, disc_norm="none")
    assert build_discriminator(cfg)(torch.randn(6, 1, 28, 28), torch.arange(6)).shape == (6,)


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
    weight = torch.tensor([3.0, 4.0], requires_grad=True)
    real = torch.randn(7, 2, requires_grad=True)
    penalty = r1_penalty(real @ weight, real)
    assert penalty.item() == pytest.approx(25.0) and penalty.requires_grad


def test_packing_stacks_consecutive_samples_as_channels():
    images = torch.randn(6, 3, 4, 4)
    packs = packed(images, 3)
    assert packs.shape == (2, 9, 4, 4)
    assert torch.equal(packs[1], torch.cat([images[3], images[4], images[5]]))
    with pytest.raises(ValueError, match="does not split into packs of 4"):
        packed(images, 4)


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_a_packing_discriminator_judges_one_logit_per_pack(model):
    cfg = GanModelConfig(model=model, width=16, channels=3, pack=2)
    discriminator = build_discriminator(cfg).eval()
    images = torch.randn(8, 3, 28, 28)
    logits = discriminator(images)
    assert logits.shape == (4,)
    swapped = images.clone()
    swapped[[2, 3]] = images[[3, 2]]  # the order inside a pack matters, the other packs do not change
    assert torch.equal(discriminator(swapped)[[0, 2, 3]], logits[[0, 2, 3]])
    with pytest.raises(UserError, match="pack must be 1, or more for an unconditional model"):
        GanModelConfig(num_classes=10, pack=2)


def test_penalties_under_packing_take_each_packs_gradient_norm():
    weight = torch.tensor([3.0, 4.0, 0.0, 12.0])  # D(pack of two 2-pixel images) = pack . weight
    real = torch.randn(6, 2, requires_grad=True)
    logits = packed(real, 2) @ weight  # (3,)
    assert r1_penalty(logits, real).item() == pytest.approx(169.0)  # ||weight||^2, not a per-image mean
    fake = torch.randn(6, 2)
    score = lambda x, labels: packed(x, 2) @ weight  # noqa: E731
    assert gradient_penalty(score, real.detach(), fake).item() == pytest.approx((13.0 - 1) ** 2)


def test_a_packed_run_trains_and_samples(tmp_path):
    out = train(GanTrainConfig(out=str(tmp_path / "run"), data="stacked-mnist5k", steps=2, width=8, log_every=1,
                               batch_size=16, pack=4, r1_gamma=1.0, r1_every=1))
    generator, model_cfg, config = load_generator(out)
    assert model_cfg.pack == 4 and config["model"]["pack"] == 4
    assert generator(torch.randn(3, model_cfg.z_dim)).shape == (3, 3, 28, 28)


def test_kmeans_finds_separated_blobs_and_numbers_them_by_size():
    noise = torch.Generator().manual_seed(0)
    centres, sizes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), (20, 50, 30)
    points = torch.cat([centre + 0.5 * torch.randn(size, 2, generator=noise) for centre, size in zip(centres, sizes)])
    assert kmeans(points, 3, seed=0).tolist() == [2] * 20 + [0] * 50 + [1] * 30


def test_kmeans_of_many_points_fits_a_sample_and_assigns_the_rest_to_their_nearest_centroid(monkeypatch):
    monkeypatch.setattr("aigc.gan.clusters.KMEANS_FIT_POINTS", 40)
    noise = torch.Generator().manual_seed(0)
    centres, sizes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), (200, 500, 300)
    points = torch.cat([centre + 0.5 * torch.randn(size, 2, generator=noise) for centre, size in zip(centres, sizes)])
    assert kmeans(points, 3, seed=0).tolist() == [2] * 200 + [0] * 500 + [1] * 300


def test_the_cluster_of_a_noise_vector_comes_at_its_clusters_share_and_from_z_alone():
    prior = torch.tensor([0.5, 0.3, 0.15, 0.05])
    z = torch.randn(200_000, 8, generator=torch.Generator().manual_seed(0))
    clusters = cluster_of_noise(z, prior)
    shares = torch.bincount(clusters, minlength=4) / len(z)
    assert torch.allclose(shares, prior, atol=0.005)  # a share's standard deviation here is at most 0.0011
    assert torch.equal(cluster_of_noise(z[:10].clone(), prior), clusters[:10])


def test_a_self_conditioned_run_trains_on_clusters_and_samples_like_an_unconditional_one(tmp_path):
    data = load_images("mnist5k")
    cfg = GanTrainConfig(out=str(tmp_path / "run"), steps=2, width=8, log_every=1, self_condition=7, seed=3)
    clusters = kmeans(data.images, 7, seed=3)
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    assert torch.equal(trainer.labels, clusters)  # what D is told about each real image
    generator, model_cfg, _ = load_generator(train(cfg))
    assert model_cfg.clusters == 7 and not model_cfg.conditional
    assert torch.equal(generator.cluster_prior, cluster_prior(clusters, 7))
    z = torch.randn(5, model_cfg.z_dim)
    with torch.no_grad():
        assert torch.equal(generator(z), generator(z, cluster_of_noise(z, generator.cluster_prior)))


def test_the_cluster_within_each_class_is_the_one_that_class_alone_would_give():
    priors = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    z = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0))
    within = cluster_of_noise(z, priors)
    assert within.shape == (1000, 2)
    for label, prior in enumerate(priors):
        assert torch.equal(within[:, label], cluster_of_noise(z, prior))
    assert (within[:, 0] != 2).all()  # an empty cluster never comes


def test_kmeans_within_classes_splits_each_class_on_its_own():
    noise = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = torch.cat([centre + 0.5 * torch.randn(25, 2, generator=noise) for centre in centres])
    classes = torch.tensor([0] * 50 + [1] * 50)  # class 0 holds the first two blobs, class 1 the last two
    labels = kmeans_within_classes(points, classes, 2, 2, seed=0)
    assert torch.equal(labels // 2, classes)
    for blob in labels.view(4, 25):  # one cluster per blob
        assert (blob == blob[0]).all()
    assert len(labels.unique()) == 4
    assert torch.equal(cluster_prior(labels, 2, 2), torch.full((2, 2), 0.5))


def test_a_conditional_run_self_conditioned_within_classes_draws_the_requested_class(tmp_path):
    data = load_images("mnist5k")
    cfg = GanTrainConfig(out=str(tmp_path / "run"), steps=2, width=8, log_every=1, conditional=True,
                         self_condition=3, seed=3)
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    assert torch.equal(trainer.labels, kmeans_within_classes(data.images, data.labels, 10, 3, seed=3))
    generator, model_cfg, _ = load_generator(train(cfg))
    assert model_cfg.conditional and model_cfg.clusters == 3 and model_cfg.label_count == 30
    assert torch.equal(generator.cluster_prior, cluster_prior(trainer.labels, 3, 10))
    z, classes = torch.randn(6, model_cfg.z_dim), torch.tensor([0, 1, 2, 7, 8, 9])
    inside = generator.internal_labels(z, classes)
    assert torch.equal(inside // 3, classes)  # the cluster is one of the requested class's own
    with torch.no_grad():  # class weights (restore's relaxed label): a one-hot row is its class number
        one_hot = torch.nn.functional.one_hot(classes, 10).float()
        assert torch.allclose(generator(z, one_hot), generator(z, classes))


def _digits(per_class: int, classes: int = 10) -> ImageData:
    return ImageData(torch.zeros(per_class * classes, 1, 28, 28), torch.arange(classes).repeat(per_class),
                     [str(c) for c in range(classes)], "test")


@pytest.mark.parametrize("overrides, per_class, clusters", [
    ({}, 500, 100),  # mnist5k's size: the measured default
    ({"conditional": True}, 500, 10),  # 10 within each of 10 classes
    ({}, 30, 6),  # 300 images: 50 each on average
    ({"conditional": True}, 120, 2),
    ({"conditional": True}, 99, 0),  # a class of 99 would split into one cluster: off
    ({"model": "mlp"}, 500, 0),  # the textbook MLP GAN stays textbook
    ({"pack": 2}, 500, 0),  # a pack has no single cluster
    ({"self_condition": 7}, 500, 7),
    ({"self_condition": 0}, 500, 0),
])
def test_self_conditioning_defaults_to_100_clusters_in_all_where_the_data_has_room(overrides, per_class, clusters):
    assert _cluster_count(GanTrainConfig(out="unused", **overrides), _digits(per_class)) == clusters


def test_trainer_applies_lr_d_and_drops_batch_norm_under_r1():
    data = load_images("mnist5k")
    cfg = GanTrainConfig(out="unused", width=8, lr=1e-4, lr_d=4e-4, r1_gamma=1.0)
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    assert trainer.opt_g.param_groups[0]["lr"] == 1e-4 and trainer.opt_d.param_groups[0]["lr"] == 4e-4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trainer.discriminator.modules())


@pytest.mark.parametrize("overrides, rates", [
    ({}, (1.6e-3, 1.6e-3)),  # the self-conditioned DCGAN (the default model)
    ({"conditional": True}, (1.6e-3, 1.6e-3)),  # split into clusters within each class
    ({"self_condition": 0}, (2e-4, 2e-4)),  # DCGAN without clusters: the DCGAN paper's rate
    ({"model": "mlp"}, (2e-4, 2e-4)),  # the textbook MLP GAN stays textbook
    ({"model": "mlp", "self_condition": 10}, (2e-4, 2e-4)),  # measured on the DCGAN only
    ({"lr": 1e-4}, (1e-4, 1e-4)),
    ({"lr_d": 4e-4}, (1.6e-3, 4e-4)),
])
def test_default_learning_rates_are_eight_times_higher_for_a_self_conditioned_dcgan(overrides, rates):
    cfg = GanTrainConfig(out="unused", **overrides)
    assert learning_rates(cfg, _model_config(cfg, _digits(500))) == rates


@pytest.mark.parametrize("overrides, temperature", [
    ({}, 1.2),  # the self-conditioned DCGAN (the default model)
    ({"conditional": True}, 1.1),  # hotter samples cost label accuracy
    ({"self_condition": 0}, 1.0),  # measured on self-conditioned DCGANs only
    ({"model": "mlp"}, 1.0),
    ({"temperature": 0.8}, 0.8),
    ({"conditional": True, "temperature": 1.3}, 1.3),
])
def test_a_self_conditioned_dcgan_samples_at_a_temperature_above_1_by_default(overrides, temperature):
    cfg = GanTrainConfig(out="unused", **overrides)
    assert sampling_temperature(cfg, _model_config(cfg, _digits(500))) == temperature


@pytest.mark.parametrize("overrides, stages", [
    ({"conditional": True}, 2),  # the conditional self-conditioned DCGAN stacks two guides
    ({}, 1),  # measured with labels only
    ({"conditional": True, "self_condition": 0}, 1),
    ({"conditional": True, "model": "mlp"}, 1),
    ({"conditional": True, "guide_stages": 1}, 1),
    ({"guide_stages": 3}, 3),
])
def test_a_conditional_self_conditioned_dcgan_fits_a_guide_of_two_stages_by_default(overrides, stages):
    cfg = GanTrainConfig(out="unused", **overrides)
    assert guide_stage_count(cfg, _model_config(cfg, _digits(500))) == stages


@pytest.mark.parametrize("overrides, decay", [
    ({}, 0.99),  # the self-conditioned DCGAN, at its faster rate
    ({"conditional": True}, 0.99),
    ({"self_condition": 0}, 0.999),
    ({"model": "mlp"}, 0.999),
    ({"ema_decay": 0.9}, 0.9),
    ({"ema_decay": 0.0}, 0.0),  # no EMA generator
])
def test_a_self_conditioned_dcgan_averages_its_generator_over_fewer_steps(overrides, decay):
    cfg = GanTrainConfig(out="unused", width=8, **overrides)
    digits = load_images("mnist5k")
    data = ImageData(digits.images[::4], digits.labels[::4], digits.class_names, digits.source)  # 25 clusters, 2 a class
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    assert ema_decay(cfg, trainer.model_cfg) == trainer.ema_decay == decay
    assert (trainer.ema is None) == (decay == 0.0)


@pytest.mark.parametrize("model, amp, autocast", [
    ("mlp", None, False),  # its small products run faster in fp32
    ("dcgan", None, True),
    ("mlp", True, True),  # --amp and --no-amp win
    ("dcgan", False, False),
])
def test_only_the_convolutional_gans_autocast_by_default(model, amp, autocast):
    cfg = GanTrainConfig(out="unused", model=model, amp=amp, width=8, self_condition=0)
    data = load_images("mnist5k")
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    assert uses_autocast(cfg, trainer.model_cfg) == trainer.amp == autocast


@pytest.mark.parametrize("steps, budget, elapsed, progress", [
    (4, None, [0, 0, 0, 0], [0, 0.25, 0.5, 0.75]),  # over the 4 steps
    (None, 60.0, [0, 15, 30, 60], [0, 0.25, 0.5, 1.0]),  # over the seconds of --time-budget
    (100, 60.0, [0, 15, 30, 45], [0, 0.25, 0.5, 0.75]),  # whichever ends the run first
])
def test_cosine_schedule_decays_both_learning_rates_to_zero(steps, budget, elapsed, progress):
    data = load_images("mnist5k")
    cfg = GanTrainConfig(out="unused", model="mlp", width=8, batch_size=8, lr=1e-4, lr_d=4e-4, steps=steps,
                         time_budget=budget, lr_schedule="cosine", guide=False)  # with a guide: its share less
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    rates = []
    for step, seconds in enumerate(elapsed):
        trainer.train_step(step, seconds)
        rates.append((trainer.opt_g.param_groups[0]["lr"], trainer.opt_d.param_groups[0]["lr"]))
    fractions = [(1 + math.cos(math.pi * p)) / 2 for p in progress]
    assert rates == [pytest.approx((1e-4 * f, 4e-4 * f), abs=1e-12) for f in fractions]


def test_the_constant_schedule_leaves_the_rates_alone():
    data = load_images("mnist5k")
    cfg = GanTrainConfig(out="unused", model="mlp", width=8, batch_size=8, lr=1e-4, steps=2)
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"))
    trainer.train_step(1, 1000.0)
    assert trainer.opt_g.param_groups[0]["lr"] == 1e-4 == trainer.opt_d.param_groups[0]["lr"]


def test_a_run_saved_before_minibatch_std_packing_and_clusters_existed_still_loads_and_resumes(tmp_path):
    out = train(GanTrainConfig(out=str(tmp_path / "run"), steps=2, width=8, log_every=1, self_condition=0))
    config = json.loads((out / "config.json").read_text())
    for later in ("minibatch_std", "pack", "clusters"):
        del config["model"][later]
    for later in ("minibatch_std", "pack", "self_condition"):
        del config["train"][later]
    (out / "config.json").write_text(json.dumps(config))
    _, model_cfg, _ = load_generator(out)
    assert (model_cfg.minibatch_std, model_cfg.pack, model_cfg.clusters) == (False, 1, 0)
    train(GanTrainConfig(out=str(out), steps=3, resume=True))  # not the 100 clusters of today's default
    assert load_generator(out)[1].clusters == 0


def test_stacked_digits_put_three_digits_in_the_colour_channels():
    digits = load_images("mnist5k")
    stacked = stack_digits(digits, count=200, seed=1)
    assert stacked.images.shape == (200, 3, 28, 28) and stacked.num_classes == 1000
    image, label = stacked.images[17], int(stacked.labels[17])
    for channel, digit in enumerate((label // 100, label // 10 % 10, label % 10)):
        matches = (digits.images[:, 0] == image[channel]).flatten(1).all(1)
        assert matches.any() and (digits.labels[matches] == digit).all()
    assert torch.equal(stack_digits(digits, count=200, seed=1).images, stacked.images)


@pytest.mark.parametrize("argv, fragment", [
    (["--augment", "flip"], "--augment 'flip': give none or a comma-separated subset of translation, cutout"),
    (["--augment", "cutout,cutout"], "--augment"),
    (["--lr-d", "0"], "--lr-d must be positive"),
    (["--ada-target", "0.6"], "--augment-p and --ada-target need an --augment policy (e.g. --augment translation)"),
    (["--augment", "translation", "--augment-p", "1.5"], "--augment-p must be in [0, 1], got 1.5"),
    (["--augment", "translation", "--ada-target", "1"], "--ada-target must be in (-1, 1)"),
    (["--r1-gamma", "-1"], "--r1-gamma must be non-negative"),
    (["--r1-every", "0"], "--r1-every must be positive"),
    (["--pack", "0"], "--pack must be positive"),
    (["--pack", "3"], "--batch-size (64) must be a multiple of --pack (3)"),
    (["--pack", "2", "--conditional"], "--pack needs an unconditional model"),
    (["--self-condition", "-1"], "--self-condition must be non-negative"),
    (["--self-condition", "501", "--conditional", "--steps", "1"],
     "--self-condition 501 --conditional: class 0 has only 500 training images"),
    (["--self-condition", "4", "--pack", "2"], "--pack needs a model without labels"),
    (["--self-condition", "5001", "--steps", "1"], "--self-condition 5001: more clusters than the 5000 training images"),
])
def test_bad_trick_flags_are_one_line(run_cli, tmp_path, argv, fragment):
    assert_one_line_error(*run_cli("gan", "train", "--out", tmp_path / "r", *argv)[::2], fragment)
    assert not (tmp_path / "r").exists()
