"""``aigc gan eval``: the JSON it writes, batching, and one-line errors on bad input."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigc.cli import main
from aigc.gan import evaluate
from aigc.gan.config import GanEvalConfig, GanTrainConfig
from aigc.gan.train import train
from aigc.metrics.evaluator import EvaluatorRecipe

TINY_RECIPE = EvaluatorRecipe(epochs=1, width=4, features=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fast_evaluation(monkeypatch, tmp_path_factory):
    """A tiny evaluator in a private cache, and a quick judge."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setattr(evaluate, "DEFAULT_RECIPE", TINY_RECIPE)
    monkeypatch.setattr(evaluate, "JUDGE_STEPS", 20)  # it must run, not judge well: 33 ms a step on one AVX2 thread


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "run"
    train(GanTrainConfig(model="mlp", conditional=True, steps=3, batch_size=16, out=str(out), device="cpu",
                         log_every=3, sample_every=3, save_every=3))
    return out


def test_eval_writes_every_metric_with_its_real_floor(run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    result = evaluate.evaluate_run(GanEvalConfig(run=str(run), n=300, json=str(out), device="cpu"))
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["n_samples"] == 300 and saved["n_compared"] == 300
    assert saved["evaluator"]["key"].startswith("lenet-") and saved["evaluator"]["trained_on"] == "mnist5k"
    keys = {"fid", "kid", "kid_std", "c2st_accuracy", "c2st_low", "c2st_high", "precision", "recall", "density",
            "coverage", "classes_covered", "kl", "class_histogram", "label_accuracy", "intra_fid",
            "intra_fid_per_class"}
    assert set(saved["model"]) == keys and set(saved["real_floor"]) == keys
    model, floor = saved["model"], saved["real_floor"]
    # Three training steps make noise: worse than real digits on every count.
    assert model["fid"] > 5 * floor["fid"]
    assert model["kid"] > 0.01 > abs(floor["kid"]) and model["kid_std"] >= 0
    assert model["coverage"] < floor["coverage"] <= 1 and 0 <= model["density"]
    assert model["intra_fid"] > 5 * floor["intra_fid"] > 0  # the run is conditional: one FID per digit
    assert len(model["intra_fid_per_class"]) == len(floor["intra_fid_per_class"]) == 10
    assert model["c2st_accuracy"] > 0.9 and floor["c2st_low"] < 0.6
    assert model["recall"] < floor["recall"]
    assert sum(model["class_histogram"]) == pytest.approx(1.0)
    assert 0 <= model["label_accuracy"] <= 1
    assert Image.open(tmp_path / "judge.png").size[0] > 2 * Image.open(tmp_path / "judge.png").size[1]
    table = capsys.readouterr().out
    assert "real floor" in table and "KID" in table and "coverage (k=5)" in table and "intra-class FID" in table


def test_eval_is_deterministic_and_its_batch_size_changes_no_image(run, tmp_path):
    config = GanEvalConfig(run=str(run), n=200, json=str(tmp_path / "a.json"), device="cpu")
    first = evaluate.evaluate_run(config)
    config.json, config.batch_size = str(tmp_path / "b.json"), 48  # 200 = 4 x 48 + 8
    assert evaluate.evaluate_run(config)["model"] == first["model"]


def test_large_n_is_generated_in_batches_at_the_temperature_asked(run, tmp_path, monkeypatch):
    batches, temperatures = [], []
    draw_noise, images_from_noise = evaluate.draw_noise, evaluate.images_from_noise

    def noise_spy(model_cfg, n, seed, temperature):
        temperatures.append(temperature)
        return draw_noise(model_cfg, n, seed, temperature)

    def batch_spy(generator, z, labels, batch_size):
        batches.append(len(z))
        return images_from_noise(generator, z, labels, batch_size)

    monkeypatch.setattr(evaluate, "draw_noise", noise_spy)
    monkeypatch.setattr(evaluate, "images_from_noise", batch_spy)
    result = evaluate.evaluate_run(GanEvalConfig(run=str(run), n=300, batch_size=128, temperature=1.3,
                                                 json=str(tmp_path / "e.json"), device="cpu"))
    assert batches == [128, 128, 44]
    assert temperatures == [1.3]
    assert result["n_samples"] == 300 and result["temperature"] == 1.3


def test_cli_runs_and_writes_json(tmp_path, capsys):
    """An unconditional run, at the smallest --n: the metrics that cannot be computed are null."""
    run = tmp_path / "unconditional"
    train(GanTrainConfig(model="mlp", conditional=False, steps=3, batch_size=16, out=str(run), device="cpu",
                         log_every=3, sample_every=3, save_every=3))
    out = tmp_path / "cli.json"
    assert main(["gan", "eval", "--run", str(run), "--n", "4", "--json", str(out), "--device", "cpu"]) == 0
    saved = json.loads(out.read_text())
    assert saved["n_samples"] == 4 and saved["conditional"] is False
    for metrics in saved["model"], saved["real_floor"]:
        assert metrics["intra_fid"] is None and metrics["intra_fid_per_class"] is None  # no classes asked for
        assert metrics["density"] is None and metrics["coverage"] is None  # k = 5 needs 6 points
    table = capsys.readouterr().out
    assert "intra-class FID" not in table and "n/a" in table


def _write_idx(folder: Path, size: int) -> Path:
    folder.mkdir()
    pixels = np.zeros((20, size, size), dtype=np.uint8)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", 0x803, 20, size, size) + pixels.tobytes()))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">II", 0x801, 20) + bytes(range(10)) * 2))
    return folder


def _write_rgb_folder(folder: Path) -> Path:
    for digit in range(2):
        (folder / str(digit)).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (28, 28), (255, 0, 0)).save(folder / str(digit) / f"{i}.png")
    return folder


def _expect_one_line_error(argv: list[str], capsys, fragment: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("aigc: error:") and err.count("\n") == 1 and fragment in err, err


def test_reference_of_another_size_is_refused(run, tmp_path, capsys):
    ref = _write_idx(tmp_path / "small", 14)
    _expect_one_line_error(["gan", "eval", "--run", str(run), "--ref", str(ref)], capsys, "14x14")


def test_reference_with_other_channels_is_refused(run, tmp_path, capsys):
    ref = _write_rgb_folder(tmp_path / "rgb")
    _expect_one_line_error(["gan", "eval", "--run", str(run), "--ref", str(ref)], capsys, "3-channel")


def test_missing_reference_is_refused(run, tmp_path, capsys):
    _expect_one_line_error(["gan", "eval", "--run", str(run), "--ref", str(tmp_path / "nope")], capsys, "--ref")


def test_run_of_another_kind_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "gpt"}))
    _expect_one_line_error(["gan", "eval", "--run", str(tmp_path)], capsys, "not a 'gan' run")


def test_missing_run_and_bad_n_are_refused(tmp_path, capsys):
    _expect_one_line_error(["gan", "eval", "--run", str(tmp_path / "none")], capsys, "not found")
    _expect_one_line_error(["gan", "eval", "--run", str(tmp_path), "--n", "0"], capsys, "--n")
    _expect_one_line_error(["gan", "eval"], capsys, "--run")


def test_missing_json_folder_is_refused(run, tmp_path, capsys):
    _expect_one_line_error(["gan", "eval", "--run", str(run), "--json", str(tmp_path / "no" / "e.json")],
                           capsys, "does not exist")
