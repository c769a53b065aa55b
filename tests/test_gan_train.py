import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aigc import runs
from aigc.data.images import load_images
from aigc.errors import TrainingDiverged
from aigc.gan.config import GanTrainConfig
from aigc.gan.loading import load_generator
from aigc.gan.models import GanModelConfig
from aigc.gan.generation import generate_images, scale_noise
from aigc.gan.train import GanTrainer, _model_config, train
from aigc.training import loop

from conftest import assert_one_line_error, checkpoint_file

# No guide: its fit after training is tested in test_gan_guide.py, and here it would only add time.
FAST = dict(width=16, log_every=5, sample_every=1000, save_every=1000, guide=False)


def small_train(out: Path, steps: int, **overrides) -> Path:
    settings = {**FAST, **overrides}
    return train(GanTrainConfig(out=str(out), steps=steps, **settings))


def test_training_moves_samples_towards_the_data(tmp_path):
    data = load_images("mnist5k")
    data_mean = data.images.mean(0)
    cfg = GanTrainConfig(out=str(tmp_path / "run"), steps=150, width=32, ema_decay=0.0, **{
        k: v for k, v in FAST.items() if k != "width"})
    model_cfg = _model_config(cfg, data)
    before = GanTrainer(cfg, model_cfg, data, torch.device("cpu")).generator.eval()
    with torch.no_grad():
        initial_gap = (before(torch.randn(500, 100)).mean(0) - data_mean).norm()
    train(cfg)
    generator, model_cfg, _ = load_generator(cfg.out, ema=False)
    final_gap = (generate_images(generator, model_cfg, 500, None, seed=1).mean(0) - data_mean).norm()
    assert final_gap < 0.5 * initial_gap, (initial_gap, final_gap)


def test_run_directory_contents(tmp_path):
    out = small_train(tmp_path / "run", 10, conditional=True, sample_every=5)
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "gan" and config["model"]["num_classes"] == 10
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000005.png", "step_000010.png"]
    assert (out / "loss.png").is_file() and (out / "tb").is_dir()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [5, 10]
    assert {"d_loss", "g_loss", "d_real", "d_fake", "images_per_s"} <= set(lines[0])
    _, metadata = runs.load_weights(checkpoint_file(out))
    assert metadata["step"] == "10"


@pytest.mark.parametrize("loss, extra", [("bce", {"conditional": True}), ("wgan-gp", {}),
                                         ("hinge", {"spectral_norm": True, "model": "mlp"}),
                                         ("bce", {"augment": "translation,cutout", "r1_gamma": 1.0, "r1_every": 2,
                                                  "minibatch_std": True, "lr_d": 4e-4, "pack": 2}),
                                         ("bce", {"self_condition": 5}),
                                         ("bce", {"self_condition": 2, "conditional": True})])
def test_resume_continues_the_same_trajectory_bit_for_bit(tmp_path, loss, extra):
    straight = small_train(tmp_path / "straight", 12, loss=loss, **extra)
    half = small_train(tmp_path / "resumed", 6, loss=loss, **extra)
    train(GanTrainConfig(out=str(half), steps=12, resume=True, **FAST))
    a, _ = runs.load_weights(checkpoint_file(straight))
    b, _ = runs.load_weights(checkpoint_file(half))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    def losses(run):
        return [(m["step"], m["d_loss"], m["g_loss"]) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert [step for step, *_ in losses(half)] == [5, 10, 12]  # no line twice after the resume
    assert losses(straight) == losses(half)


def test_ema_generator_normalises_with_statistics_of_its_own_activations(tmp_path):
    """The EMA generator's batch norm must describe the averaged weights' activations, not the
    live generator's (whose running statistics follow the live weights)."""
    out = small_train(tmp_path / "run", 30, conditional=True, ema_decay=0.999)
    ema, model_cfg, _ = load_generator(out, ema=True)
    live, _, _ = load_generator(out, ema=False)
    z = torch.randn(8192, model_cfg.z_dim, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(8192) % model_cfg.num_classes
    with torch.no_grad():
        before_norm = ema.net[0](ema.conditioned(z, labels))  # (N, 2w, 7, 7)
    mean = before_norm.mean((0, 2, 3))
    spread = before_norm.transpose(0, 1).flatten(1).std(1)
    norm = ema.net[1]
    assert ((norm.running_mean - mean).abs() < 5 * spread / 2048 ** 0.5).all()
    assert torch.allclose(norm.running_var, spread ** 2, rtol=0.1)
    assert not torch.allclose(norm.running_mean, live.net[1].running_mean)


def test_epochs_count_discriminator_batches(tmp_path):
    out = small_train(tmp_path / "run", None, epochs=1, batch_size=500, loss="wgan-gp", model="mlp", log_every=1)
    _, metadata = runs.load_weights(checkpoint_file(out))
    assert metadata["step"] == "2"  # 10 batches per epoch / 5 critic updates per step


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = load_images("mnist5k")
    cfg = GanTrainConfig(out=str(tmp_path), steps=100, model="mlp", width=16, amp=False, save_every=1)
    trainer = GanTrainer(cfg, _model_config(cfg, data), data, torch.device("cpu"), tmp_path)
    plan = loop.Plan(cfg.steps, None, log_every=1, eval_every=None, save_every=1)
    original_step = trainer.train_step

    def poisoned_step(step, elapsed):
        if step == 1:  # the second step starts from weights that are all NaN
            with torch.no_grad():
                for p in trainer.generator.parameters():
                    p.fill_(float("nan"))
        return original_step(step, elapsed)

    trainer.train_step = poisoned_step
    with pytest.raises(TrainingDiverged, match="diverged at step 2"):
        loop.run(trainer, plan, tmp_path, loop.Start())
    assert runs.read_pointer(tmp_path)["step"] == 1
    tensors, _ = runs.load_weights(checkpoint_file(tmp_path))
    assert all(torch.isfinite(t).all() for t in tensors.values())


# --- sampling ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    return small_train(tmp_path_factory.mktemp("cond") / "run", 4, conditional=True)


def test_sample_png_and_npz(run_cli, conditional_run, tmp_path):
    status, out, _ = run_cli("gan", "sample", "--run", conditional_run, "--n", 20, "--out", tmp_path / "g.png")
    assert status == 0 and "wrote 20" in out
    from PIL import Image
    assert Image.open(tmp_path / "g.png").size == (2 + 2 * 30, 2 + 10 * 30)  # one row per class
    status, _, _ = run_cli("gan", "sample", "--run", conditional_run, "--n", 6, "--label", 7,
                           "--format", "npz", "--out", tmp_path / "s.npz")
    arrays = np.load(tmp_path / "s.npz")
    assert status == 0 and arrays["images"].shape == (6, 28, 28, 1) and arrays["images"].dtype == np.uint8
    assert arrays["labels"].tolist() == [7] * 6


def test_sampling_is_seeded(conditional_run):
    generator, model_cfg, _ = load_generator(conditional_run)
    labels = torch.arange(4)
    first = generate_images(generator, model_cfg, 4, labels, seed=3)
    assert torch.equal(first, generate_images(generator, model_cfg, 4, labels, seed=3))
    assert not torch.equal(first, generate_images(generator, model_cfg, 4, labels, seed=4))


def test_noise_temperature_scales_the_noise_but_not_the_coordinate_that_names_the_cluster():
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    plain, self_conditioned = GanModelConfig(z_dim=5), GanModelConfig(z_dim=5, clusters=4)
    assert scale_noise(z, plain, 1.0) is z
    assert torch.equal(scale_noise(z, plain, 2.0), 2 * z)
    hotter = scale_noise(z, self_conditioned, 2.0)
    assert torch.equal(hotter[:, 0], z[:, 0]) and torch.equal(hotter[:, 1:], 2 * z[:, 1:])


def test_sampling_at_a_temperature(run_cli, conditional_run, tmp_path):
    generator, model_cfg, _ = load_generator(conditional_run)
    labels = torch.arange(4)
    plain = generate_images(generator, model_cfg, 4, labels, seed=3)
    assert torch.equal(generate_images(generator, model_cfg, 4, labels, seed=3, temperature=1.0), plain)
    assert not torch.equal(generate_images(generator, model_cfg, 4, labels, seed=3, temperature=1.5), plain)
    status, out, _ = run_cli("gan", "sample", "--run", conditional_run, "--n", 4, "--temperature", 1.2,
                             "--out", tmp_path / "warm.png")
    assert status == 0 and "wrote 4" in out


# --- bad input ---------------------------------------------------------------------------

def test_missing_data(run_cli, tmp_path):
    assert_one_line_error(*run_cli("gan", "train", "--data", tmp_path / "nope", "--out", tmp_path / "r")[::2],
                          "no such file")


def test_bad_idx_magic_and_truncation(run_cli, tmp_path):
    from test_images import write_idx_folder
    write_idx_folder(tmp_path, np.zeros((3, 28, 28)), np.array([0, 1, 2]))
    raw = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    import gzip
    body = gzip.decompress(raw)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(body[:-10]))
    assert_one_line_error(*run_cli("gan", "train", "--data", tmp_path, "--out", tmp_path / "r")[::2], "truncated")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + body[4:]))
    assert_one_line_error(*run_cli("gan", "train", "--data", tmp_path, "--out", tmp_path / "r")[::2], "magic")
    assert not (tmp_path / "r").exists()


def test_empty_image_folder(run_cli, tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    assert_one_line_error(*run_cli("gan", "train", "--data", tmp_path / "data", "--out", tmp_path / "r")[::2],
                          "no PNG/JPEG")


def test_label_out_of_range_and_on_unconditional(run_cli, conditional_run, tmp_path):
    assert_one_line_error(*run_cli("gan", "sample", "--run", conditional_run, "--label", 12,
                                   "--out", tmp_path / "x.png")[::2], "--label 12")
    plain = small_train(tmp_path / "plain", 2)
    assert_one_line_error(*run_cli("gan", "sample", "--run", plain, "--label", 3,
                                   "--out", tmp_path / "x.png")[::2], "conditional")


def test_run_that_is_not_a_run(run_cli, tmp_path):
    assert_one_line_error(*run_cli("gan", "sample", "--run", tmp_path, "--out", tmp_path / "x.png")[::2],
                          "not a run directory")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "gpt"}))
    assert_one_line_error(*run_cli("gan", "sample", "--run", tmp_path, "--out", tmp_path / "x.png")[::2],
                          "'gpt' run")


def test_corrupt_weights(run_cli, tmp_path):
    run = small_train(tmp_path / "run", 2)
    weights = checkpoint_file(run)
    weights.write_bytes(weights.read_bytes()[:200])
    assert_one_line_error(*run_cli("gan", "sample", "--run", run, "--out", tmp_path / "x.png")[::2], "corrupt")
    assert_one_line_error(*run_cli("gan", "train", "--out", run, "--steps", 4, "--resume")[::2], "corrupt")
    assert weights.stat().st_size == 200  # the failed resume wrote nothing


def test_existing_out_is_refused_without_resume(run_cli, tmp_path):
    run = small_train(tmp_path / "run", 2)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert_one_line_error(*run_cli("gan", "train", "--out", run, "--steps", 4)[::2], "--resume")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_bad_flag_values(run_cli, tmp_path):
    assert_one_line_error(*run_cli("gan", "train", "--loss", "l2")[::2], "invalid choice")
    assert_one_line_error(*run_cli("gan", "train", "--steps", "ten")[::2], "--steps")
    assert_one_line_error(*run_cli("gan", "train", "--steps", 0)[::2], "--steps must be positive")
    assert_one_line_error(*run_cli("gan", "train", "--steps", 5, "--epochs", 1)[::2], "not both")
    assert_one_line_error(*run_cli("gan", "sample", "--out", tmp_path / "x.png")[::2], "--run")


def test_config_file_sets_options_and_flags_win(run_cli, tmp_path):
    (tmp_path / "c.toml").write_text('model = "mlp"\nsteps = 3\nwidth = 8\nlog-every = 1\n')
    status, _, err = run_cli("gan", "train", "--config", tmp_path / "c.toml", "--steps", 2, "--out", tmp_path / "r")
    assert status == 0, err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["train"]["model"] == "mlp" and config["train"]["steps"] == 2
    (tmp_path / "bad.toml").write_text('colour = "red"\n')
    assert_one_line_error(*run_cli("gan", "train", "--config", tmp_path / "bad.toml")[::2], "unknown option 'colour'")
