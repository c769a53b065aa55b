"""GAN inversion for image repair (issue #15): the degradation operators, recovery of an image the
generator itself made, paste-back, batch = single, Deep Generative Prior, the CLI and its bad input."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from aigc.gan.models import GanModelConfig, build_generator
from aigc.gan.restore import (Downsample, InversionSettings, Mask, Noise, box_mask, denoise, inpaint, invert,
                              mean_of_starts, random_mask, super_resolve)
from conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = InversionSettings(steps=150, restarts=8, lr=0.05)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, on [-1, 1] (peak-to-peak 2): (N,)."""
    return 10 * torch.log10(4 / (a - b).square().flatten(1).mean(1))


def tiny_generator(num_classes: int = 0, seed: int = 0):
    """An MLP generator with PyTorch's default initialisation: untrained, but its images vary with z
    (and the class) as a trained one's do, so what inversion finds can be checked."""
    torch.manual_seed(seed)
    cfg = GanModelConfig(model="mlp", z_dim=8, width=64, num_classes=num_classes)
    return build_generator(cfg).eval(), cfg


def own_images(generator, cfg, n: int, seed: int = 1):
    """Images the generator itself makes from known codes (and classes): (n, 1, 28, 28)."""
    noise = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cfg.z_dim, generator=noise)
    labels = torch.randint(0, cfg.num_classes, (n,), generator=noise) if cfg.conditional else None
    with torch.no_grad():
        return generator(z, labels), labels


# ------------------------------------------------------------------------------ operators


def test_box_and_random_masks_are_exact():
    known = box_mask(6, x=1, y=2, width=3, height=2)  # columns 1-3, rows 2-3 missing
    assert known.shape == (1, 1, 6, 6) and (~known).sum() == 6
    assert not known[0, 0, 2:4, 1:4].any() and known[0, 0, :2].all() and known[0, 0, :, 4:].all()
    masks = random_mask(5, 28, 0.75, seed=3)
    assert masks.shape == (5, 1, 28, 28)
    assert ((~masks).flatten(1).sum(1) == 588).all()  # exactly 75% of 784 in every image
    assert not torch.equal(masks[0], masks[1])  # each image its own pixels
    assert torch.equal(masks, random_mask(5, 28, 0.75, seed=3)) and not torch.equal(masks, random_mask(5, 28, 0.75, 4))


def test_mask_measures_and_pastes_exactly():
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([[[[1.0, -1.0], [0.25, 0.0]]]])
    mask = Mask(torch.tensor([[[[True, False], [True, False]]]]))
    assert torch.equal(mask.measure(y), torch.tensor([[[[1.0, 0.0], [0.25, 0.0]]]]))
    assert mask.error(x, y).item() == pytest.approx(((0.5 - 1) ** 2 + (0.5 - 0.25) ** 2) / 2)  # known pixels only
    assert torch.equal(mask.project(x, y), torch.tensor([[[[1.0, 0.5], [0.25, 0.5]]]]))


def test_downsample_is_the_block_mean_and_its_projection_is_exact():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    low = Downsample(2).measure(x)
    assert torch.equal(low, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))  # means of the 2x2 blocks
    guess = torch.randn(3, 1, 28, 28)
    target = torch.rand(3, 1, 7, 7) * 2 - 1
    projected = Downsample(4).project(guess, target)
    torch.testing.assert_close(Downsample(4).measure(projected), target, rtol=0, atol=1e-6)
    shift = (projected - guess).unfold(2, 4, 4).unfold(3, 4, 4)  # (3, 1, 7, 7, 4, 4): one constant per block
    torch.testing.assert_close(shift, shift[..., :1, :1].expand_as(shift))
    assert Downsample(4).error(projected, target).max() < 1e-12


def test_soft_one_hot_labels_draw_what_class_numbers_draw():
    generator, _ = tiny_generator(num_classes=10)
    z, labels = torch.randn(4, 8), torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        torch.testing.assert_close(generator(z, torch.nn.functional.one_hot(labels, 10).float()), generator(z, labels))


# ------------------------------------------------------------------------------ inversion


@pytest.mark.parametrize("num_classes", [0, 10], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("task", ["box", "random75", "upscale4", "denoise"])
def test_an_image_the_generator_made_is_recovered(num_classes, task):
    generator, cfg = tiny_generator(num_classes)
    truth, labels = own_images(generator, cfg, 4)
    if task == "box":
        found = inpaint(generator, cfg, truth, box_mask(28, 7, 7, 14, 14), FAST)
    elif task == "random75":
        found = inpaint(generator, cfg, truth, random_mask(4, 28, 0.75, seed=0), FAST)
    elif task == "upscale4":
        found = super_resolve(generator, cfg, Downsample(4).measure(truth), 4, FAST)
    else:
        noisy = truth + 0.3 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
        found = denoise(generator, cfg, noisy, FAST)
    assert found.images.shape == truth.shape and found.z.shape == (4, 8)
    assert psnr(found.images, truth).min() > 30  # dB; another code's image is ~15-20 dB off
    if num_classes:
        assert torch.equal(found.labels, labels)


def test_a_random_code_is_far_from_the_truth():
    """The control for the test above: 30 dB is not what any image of this generator scores."""
    generator, cfg = tiny_generator()
    truth, _ = own_images(generator, cfg, 8, seed=1)
    other, _ = own_images(generator, cfg, 8, seed=2)
    assert psnr(other, truth).max() < 25


def test_a_given_label_is_kept():
    generator, cfg = tiny_generator(num_classes=10)
    truth, _ = own_images(generator, cfg, 3)
    found = inpaint(generator, cfg, truth, box_mask(28, 7, 7, 14, 14), InversionSettings(steps=5, restarts=2), label=7)
    assert found.labels.tolist() == [7, 7, 7]
    with pytest.raises(ValueError):
        inpaint(*tiny_generator(), truth, box_mask(28, 0, 0, 4, 4), label=1)


def test_known_pixels_come_back_bit_for_bit_unless_told_not_to():
    generator, cfg = tiny_generator()
    damaged = torch.rand(3, 1, 28, 28) * 2 - 1  # not an image of G: the generator cannot match it exactly
    known = random_mask(3, 28, 0.5, seed=0)
    settings = InversionSettings(steps=20, restarts=2)
    pasted = inpaint(generator, cfg, damaged, known, settings)
    assert torch.equal(pasted.images[known], damaged[known])
    assert not torch.equal(pasted.images[~known], damaged[~known])  # the missing ones are the generator's
    raw = inpaint(generator, cfg, damaged, known, settings, paste=False)
    assert torch.equal(raw.images, raw.generated.clamp(-1, 1)) and not torch.equal(raw.images[known], damaged[known])
    low = Downsample(2).measure(damaged)
    upscaled = super_resolve(generator, cfg, low, 2, settings).images
    torch.testing.assert_close(Downsample(2).measure(upscaled), low.clamp(-1, 1), rtol=0, atol=0.02)


def test_a_batch_gives_what_each_image_alone_gives():
    generator, cfg = tiny_generator(num_classes=10)
    truth, _ = own_images(generator, cfg, 3)
    known = random_mask(3, 28, 0.5, seed=1)
    settings = InversionSettings(steps=30, restarts=4, seed=5)
    batch = inpaint(generator, cfg, truth, known, settings)
    for i in range(3):
        alone = inpaint(generator, cfg, truth[i:i + 1], known[i:i + 1], settings)
        torch.testing.assert_close(alone.images, batch.images[i:i + 1], rtol=0, atol=1e-4)
        assert torch.equal(alone.labels, batch.labels[i:i + 1])


def test_more_restarts_never_fit_worse_and_the_best_start_is_kept():
    generator, cfg = tiny_generator()
    truth, _ = own_images(generator, cfg, 4)
    mask = Mask(box_mask(28, 4, 4, 20, 20))
    one = invert(generator, cfg, mask, mask.measure(truth), InversionSettings(steps=40, restarts=1))
    many = invert(generator, cfg, mask, mask.measure(truth), InversionSettings(steps=40, restarts=6))
    assert (many.error <= one.error + 1e-7).all()  # the first start of six is the single start
    torch.testing.assert_close(many.error, mask.error(many.generated, mask.measure(truth)))


def test_averaging_keeps_the_best_starts_in_order_and_outputs_their_mean():
    generator, cfg = tiny_generator(num_classes=10)
    truth, _ = own_images(generator, cfg, 3)
    known = random_mask(3, 28, 0.75, seed=2)
    mask, seen = Mask(known), Mask(known).measure(truth)
    settings = InversionSettings(steps=20, restarts=6, average=3, seed=4)
    kept = invert(generator, cfg, mask, seen, settings)  # 3 images x 3 kept starts, best first
    best = invert(generator, cfg, mask, seen, InversionSettings(steps=20, restarts=6, seed=4))
    assert kept.generated.shape[0] == 9 and (kept.error.view(3, 3).diff(dim=1) >= 0).all()
    torch.testing.assert_close(kept.error[::3], best.error)  # the first kept start is the best one
    averaged = inpaint(generator, cfg, truth, known, settings)
    mean = kept.generated.view(3, 3, 1, 28, 28).mean(1)
    torch.testing.assert_close(averaged.generated, mean)
    torch.testing.assert_close(averaged.error, mask.error(mean, seen))
    assert torch.equal(averaged.labels, best.labels) and torch.equal(averaged.z, best.z)  # the best start's
    assert torch.equal(averaged.images[known.expand_as(truth)], truth[known.expand_as(truth)])  # pasted back
    assert mean_of_starts(best, mask, seen) is best  # one start: nothing to average
    with pytest.raises(ValueError, match="average"):
        invert(generator, cfg, mask, seen, InversionSettings(steps=1, restarts=2, average=3))


def test_averaging_with_deep_generative_prior_tunes_each_kept_start_and_batches_agree():
    generator, cfg = tiny_generator()
    damaged = torch.rand(2, 1, 28, 28) * 2 - 1
    settings = InversionSettings(steps=10, restarts=4, average=2, finetune_steps=5, finetune_lr=1e-3)
    batch = denoise(generator, cfg, damaged, settings)
    assert batch.images.shape == damaged.shape and batch.z.shape == (2, cfg.z_dim)
    for i in range(2):
        alone = denoise(generator, cfg, damaged[i:i + 1], settings)
        torch.testing.assert_close(alone.images, batch.images[i:i + 1], rtol=0, atol=1e-4)


def test_deep_generative_prior_fits_what_the_code_alone_cannot():
    generator, cfg = tiny_generator()
    damaged = torch.rand(2, 1, 28, 28) * 2 - 1  # out of G's range
    plain = InversionSettings(steps=30, restarts=2)
    tuned = InversionSettings(steps=30, restarts=2, finetune_steps=30, finetune_lr=1e-3)
    before = denoise(generator, cfg, damaged, plain)
    after = denoise(generator, cfg, damaged, tuned)
    assert (after.error < 0.8 * before.error).all()
    weights = {k: v.clone() for k, v in generator.state_dict().items()}
    denoise(generator, cfg, damaged, tuned)
    assert all(torch.equal(v, generator.state_dict()[k]) for k, v in weights.items())  # G itself untouched
    assert Noise().project(damaged, damaged + 1) is damaged  # nothing known to paste


# ------------------------------------------------------------------------------ the command


def _write_idx(folder, n=64):
    rng = np.random.default_rng(0)
    folder.mkdir()
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    (folder / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + bytes(i % 10 for i in range(n)))


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    from aigc.cli import main

    root = tmp_path_factory.mktemp("restore")
    _write_idx(root / "idx")
    assert main(["gan", "train", "--model", "mlp", "--data", str(root / "idx"), "--steps", "2", "--width", "16",
                 "--z-dim", "4", "--batch-size", "16", "--no-amp", "--device", "cpu", "--out", str(root / "run")]) == 0
    return root / "run"


def _png(path, size=28, seed=0, mode="L"):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size) if mode == "L" else (size, size, 3),
                                                  dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _pixels(path):
    return np.asarray(Image.open(path))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


QUICK = ["--steps", "5", "--restarts", "2", "--device", "cpu"]


def test_cli_inpaints_a_box_and_keeps_the_known_pixels(run_cli, gan_run, tmp_path):
    damaged = _png(tmp_path / "damaged.png")
    before = _digest(damaged)
    status, out, err = run_cli("gan", "restore", "--run", gan_run, "--image", damaged, "--box", "7,7,14,14",
                               "--out", tmp_path / "repaired.png", *QUICK)
    assert status == 0, err
    assert "pasted back" in out and _digest(damaged) == before
    repaired, given = _pixels(tmp_path / "repaired.png"), _pixels(damaged)
    known = box_mask(28, 7, 7, 14, 14)[0, 0].numpy()
    assert repaired.shape == (28, 28) and np.array_equal(repaired[known], given[known])
    assert not np.array_equal(repaired[~known], given[~known])
    assert _pixels(tmp_path / "repaired-compare.png").shape == (28, 2 * 28 + 2)  # input | repaired


@pytest.mark.parametrize("average", [1, 2])
def test_cli_batch_equals_single_images(run_cli, gan_run, tmp_path, average):
    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(3):
        _png(folder / f"d{i}.png", size=7, seed=i)
    quick = [*QUICK, "--average", str(average)]
    status, _, err = run_cli("gan", "restore", "--run", gan_run, "--images", folder, "--upscale", "4",
                             "--out", tmp_path / "big", *quick)
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "big").glob("*.png")) == ["d0.png", "d1.png", "d2.png"]
    assert _pixels(tmp_path / "big" / "compare" / "d1.png").shape == (28, 58)
    status, _, err = run_cli("gan", "restore", "--run", gan_run, "--image", folder / "d1.png", "--upscale", "4",
                             "--out", tmp_path / "one.png", *quick)
    assert status == 0, err
    single, batch = _pixels(tmp_path / "one.png").astype(int), _pixels(tmp_path / "big" / "d1.png").astype(int)
    assert np.abs(single - batch).max() <= 1  # uint8 rounding of float round-off at most


def test_cli_mask_file_and_colour_input(run_cli, gan_run, tmp_path):
    damaged = _png(tmp_path / "rgb.png", mode="RGB")
    mask = np.zeros((28, 28), dtype=np.uint8)
    mask[10:20, 5:15] = 255  # white = missing
    Image.fromarray(mask).save(tmp_path / "mask.png")
    status, _, err = run_cli("gan", "restore", "--run", gan_run, "--image", damaged, "--mask", tmp_path / "mask.png",
                             "--out", tmp_path / "r.png", *QUICK)
    assert status == 0, err
    assert "warning" in err and "converted to grey" in err
    grey = np.asarray(Image.open(damaged).convert("L"))
    assert np.array_equal(_pixels(tmp_path / "r.png")[mask == 0], grey[mask == 0])


@pytest.fixture
def bad_world(tmp_path, gan_run):
    (tmp_path / "gpt_run").mkdir()
    (tmp_path / "gpt_run" / "config.json").write_text(json.dumps({"kind": "gpt"}))
    _png(tmp_path / "ok.png")
    _png(tmp_path / "big.png", size=32)
    _png(tmp_path / "big_rgb.png", size=32, mode="RGB")
    _png(tmp_path / "mask16.png", size=16)
    (tmp_path / "notes.png").write_text("not an image")
    return tmp_path


@pytest.mark.parametrize("flags, fragment", [
    (["--image", "big.png", "--box", "1,1,4,4"], "big.png is 32x32; this needs 28x28"),
    (["--image", "big_rgb.png", "--box", "1,1,4,4"], "big_rgb.png is 32x32"),  # the error alone, no warning
    (["--image", "ok.png", "--upscale", "4"], "ok.png is 28x28; this needs 7x7"),
    (["--image", "ok.png", "--mask", "mask16.png"], "is 16x16, the images 28x28"),
    (["--image", "ok.png", "--box", "20,20,10,4"], "reaches outside the 28x28 image"),
    (["--image", "ok.png", "--box", "1,2,3"], "four whole numbers"),
    (["--image", "ok.png", "--upscale", "3"], "--upscale 3 does not divide"),
    (["--image", "notes.png", "--denoise"], "cannot read image"),
    (["--image", "missing.png", "--denoise"], "no such file"),
    (["--image", "ok.png", "--denoise", "--box", "1,1,2,2"], "choose one repair"),
    (["--image", "ok.png"], "choose one repair"),
    (["--image", "ok.png", "--denoise", "--out", "ok.png"], "would overwrite the input"),
    (["--image", "ok.png", "--denoise", "--label", "3"], "--label needs a conditional model"),
    (["--image", "ok.png", "--denoise", "--run", "gpt_run"], "holds a 'gpt' run, not a 'gan' run"),
    (["--images", "ok.png", "--denoise"], "is a file, not a folder"),
    (["--image", "ok.png", "--denoise", "--average", "3"], "--average 3 needs at least as many --restarts"),
])
def test_cli_bad_input_is_one_line(run_cli, bad_world, gan_run, monkeypatch, flags, fragment):
    monkeypatch.chdir(bad_world)
    before = {p.name: _digest(p) for p in bad_world.iterdir() if p.is_file()}
    argv = ["gan", "restore", "--run", str(gan_run), "--out", "out.png", *QUICK, *flags]
    status, _, err = run_cli(*argv)
    assert_one_line_error(status, err, fragment)
    assert {p.name: _digest(p) for p in bad_world.iterdir() if p.is_file()} == before  # nothing written
