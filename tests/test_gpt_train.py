"""The GPT training recipe: loss goes down, exact resume, run files, and bad input."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from aigc.errors import UserError
from aigc.gpt.config import GptTrainConfig
from aigc.gpt.train import train
from aigc.logging import read_metrics

from conftest import checkpoint_file

TEXT = "".join(f"{name} has {n} apples and {n + 1} pears.\n" for n in range(60) for name in ("Ann", "Bob", "Cy"))


@pytest.fixture(autouse=True)
def token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def tiny(corpus, out, **overrides) -> GptTrainConfig:
    settings = dict(data=str(corpus), out=str(out), n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=8,
                    lr=3e-3, min_lr=3e-4, warmup_iters=5, max_iters=40, eval_interval=20, eval_iters=4,
                    log_every=1, amp=False, device="cpu")
    return GptTrainConfig(**{**settings, **overrides})


def val_losses(run) -> list[float]:
    return [m["val_loss"] for m in read_metrics(run / "metrics.jsonl") if "val_loss" in m]


def test_loss_goes_down_and_run_files_are_written(corpus, tmp_path):
    run = train(tiny(corpus, tmp_path / "run", max_iters=120, eval_interval=40))
    losses = val_losses(run)
    assert losses[-1] < 0.5 * math.log(len(set(TEXT)))  # well below a uniform guess
    assert losses[-1] < losses[0]
    for name in ("config.json", "tokenizer.json", "checkpoint.json", "loss.png"):
        assert (run / name).is_file(), name
    for name in ("model.safetensors", "state.pt"):
        assert checkpoint_file(run, name).is_file(), name
    assert checkpoint_file(run, "model.safetensors", "best").is_file()
    assert any((run / "tb").iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "gpt" and config["model"]["n_layer"] == 1 and config["tokenizer"] == "char"
    assert config["model"]["activation"] == "gelu"  # new models: the exact GELU, faster on CPU than GPT-2's tanh form


def test_resume_continues_the_same_trajectory(corpus, tmp_path):
    full = train(tiny(corpus, tmp_path / "full", max_iters=16, eval_interval=8, dropout=0.1))
    half = tiny(corpus, tmp_path / "half", max_iters=8, lr_decay_iters=16, eval_interval=8, dropout=0.1)
    train(half)
    resumed = train(replace(half, max_iters=16, resume=True))
    expected = read_metrics(full / "metrics.jsonl")
    got = read_metrics(resumed / "metrics.jsonl")
    assert [m.get("loss") for m in got] == [m.get("loss") for m in expected]
    assert val_losses(resumed) == val_losses(full)
    assert len([m for m in got if "loss" in m]) == 16


def test_resume_refuses_a_different_model(corpus, tmp_path):
    config = tiny(corpus, tmp_path / "run", max_iters=4, eval_interval=4)
    train(config)
    with pytest.raises(UserError, match="cannot resume with --n-embd 64: the run was trained with 32"):
        train(replace(config, n_embd=64, resume=True))


def test_time_budget_stops_the_run(corpus, tmp_path):
    run = train(tiny(corpus, tmp_path / "run", max_iters=None, time_budget=2.0, eval_interval=1000))
    metrics = read_metrics(run / "metrics.jsonl")
    assert metrics[-1]["val_loss"] > 0 and 2.0 <= metrics[-2]["elapsed"] < 10


def test_bpe_on_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(TEXT.encode() + b"\xff\xfe\x80 binary tail " * 20)
    run = train(tiny(path, tmp_path / "run", tokenizer="bpe", vocab_size=300, max_iters=4, eval_interval=4))
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == 300


def test_folder_of_text_files_and_val_data(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT[:3000])
    (folder / "b.txt").write_text(TEXT[3000:])
    (folder / "ignored.md").write_text("not text data ~~~ ###")
    val = tmp_path / "val.txt"
    val.write_text(TEXT[:500])
    run = train(tiny(folder, tmp_path / "run", val_data=str(val), max_iters=4, eval_interval=4))
    assert "~" not in json.loads((run / "tokenizer.json").read_text())["model"]["vocab"]


def test_init_from_fine_tunes_a_run(corpus, tmp_path):
    base = train(tiny(corpus, tmp_path / "base", max_iters=60, eval_interval=60))
    tuned = train(tiny(corpus, tmp_path / "tuned", init_from=str(base), n_embd=64, max_iters=2, eval_interval=2,
                       warmup_iters=0, lr=1e-5, min_lr=1e-5))
    assert json.loads((tuned / "config.json").read_text())["model"]["n_embd"] == 32  # taken from the base run
    assert abs(val_losses(tuned)[-1] - val_losses(base)[-1]) < 0.01  # starts where the base run ended
    assert val_losses(tuned)[-1] < 0.6 * math.log(len(set(TEXT)))  # far from an untrained model


def _cli_train(run_cli, data, out, *extra):
    return run_cli("gpt", "train", "--data", data, "--out", out, "--n-layer", "1", "--n-embd", "16",
                   "--n-head", "2", "--block-size", "8", "--max-iters", "2", "--eval-iters", "1", *extra)


@pytest.mark.parametrize("content, message", [
    (None, "data not found"),
    (b"", "is empty"),
    (b"tiny", "fewer than one block"),
    (b"abc\xffdef" * 100, "not UTF-8"),
])
def test_bad_data_is_one_line_and_exit_2(run_cli, tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    status, _, err = _cli_train(run_cli, path, tmp_path / "run")
    assert status == 2
    assert message in err and err.count("\n") == 1 and err.startswith("aigc: error:")


@pytest.mark.parametrize("flag, value", [("--block-size", "0"), ("--n-head", "3"), ("--max-iters", "0")])
def test_bad_flags_exit_2(run_cli, corpus, tmp_path, flag, value):
    status, _, err = _cli_train(run_cli, corpus, tmp_path / "run", flag, value)
    assert status == 2 and err.startswith("aigc: error:") and err.count("\n") == 1
