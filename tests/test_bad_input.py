"""Bad input a user can cause: one line ``aigc: error: ...``, exit status 2, no file changed (issue #20).

The sweep over every flag is tests/test_bad_input_sweep.py; these are the classes one by one."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aigc.config import build_config, check_fields
from aigc.errors import UserError
from aigc.outputs import cache_folder, output_dir, output_file, owning_run
from conftest import assert_one_line_error


def _run_dir(path: Path, kind: str = "gan") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"kind": kind}))
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "samples").mkdir()
    (path / "samples" / "step_000001.png").write_bytes(b"png")
    return path


# ------------------------------------------------------------------ class 1: values flags accept

@pytest.mark.parametrize("argv, fragment", [
    (["gan", "train", "--seed", str(2**70)], "--seed"),
    (["gan", "train", "--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["gan", "train", "--beta1", "2"], "--beta1 and --beta2 must be in [0, 1)"),
    (["gan", "train", "--beta2", "nan"], "--beta2 must be a number"),
    (["gan", "train", "--lr", "inf"], "--lr must be finite"),
    (["gan", "train", "--gp-weight", "inf"], "--gp-weight must be finite"),
    (["gan", "train", "--model", "dcgan", "--image-size", "30"], "dcgan builds only 8, 14, 16, 28, 32"),
    (["gpt", "generate", "--run", "r", "--length-penalty", "nan"], "--length-penalty must be a number"),
    (["gpt", "generate", "--run", "r", "--repetition-penalty", "inf"], "--repetition-penalty must be finite"),
    (["gpt", "generate", "--run", "r", "--temperature", "nan"], "--temperature must be a number"),
    (["gpt", "generate", "--run", "r", "--num-samples", str(10**11)], "--num-samples must be at most"),
    (["textgan", "train", "--data", "d", "--out", "o", "--g-lr", "nan"], "--g-lr must be a number"),
    (["textgan", "train", "--data", "d", "--out", "o", "--d-lr", "1e999"], "--d-lr must be finite"),
    (["gpt", "eval", "--run", "r", "--metrics", ""], "--metrics names no metric"),
    (["gpt", "eval", "--run", "r", "--source", "s", "--target", "t"], "--source/--target are examples for task"),
    (["gan", "eval", "--run", "r", "--n", "3"], "precision/recall (k=3)"),
    (["gan", "sample", "--run", "r", "--n", str(10**11)], "--n must be in [1, 1000000]"),
])
def test_out_of_range_values_are_refused_before_any_work(run_cli, tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli(*argv)
    assert_one_line_error(status, err, fragment)
    assert not any(tmp_path.iterdir())  # nothing written, not even a run directory


def test_every_float_field_refuses_nan_and_inf_and_every_int_64_bits():
    from aigc.cli import COMMANDS

    import dataclasses
    for command in COMMANDS:
        for field in dataclasses.fields(command.config):
            if field.type in ("float", "float | None"):
                for bad in (math.nan, math.inf, -math.inf):
                    config = command.config(**{field.name: bad})
                    with pytest.raises(UserError, match=field.name.replace("_", "-")):
                        check_fields(config)
            if field.type in ("int", "int | None"):
                with pytest.raises(UserError, match=field.name.replace("_", "-")):
                    check_fields(command.config(**{field.name: 2**64}))


def test_an_allocation_failure_is_one_line_naming_the_sizes(run_cli, tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("abcdefgh " * 200)
    status, _, err = run_cli("gpt", "train", "--data", data, "--n-embd", 10**9, "--n-head", 1, "--device", "cpu",
                             "--out", tmp_path / "run")
    assert_one_line_error(status, err, "out of memory", "GiB", "--n-embd 1000000000")


def test_a_config_made_in_python_is_refused_as_its_flag_is(tmp_path):
    """The recipes check a config they are handed (the notebook's way in) as build_config checks flags."""
    from aigc.gan.config import GanEvalConfig, GanTrainConfig
    from aigc.gan.evaluate import evaluate_run
    from aigc.gan.train import train
    from aigc.gpt.config import GptEvalConfig
    from aigc.gpt.evaluate import evaluate_command

    cases = [(lambda: train(GanTrainConfig(steps=0, out=str(tmp_path / "a"))), "--steps must be positive"),
             (lambda: train(GanTrainConfig(lr=float("nan"), out=str(tmp_path / "b"))), "--lr must be a number"),
             (lambda: train(GanTrainConfig(tracker="mlflow", out=str(tmp_path / "c"))), "unknown tracker"),
             (lambda: evaluate_run(GanEvalConfig(run=str(tmp_path), n=2)), "--n must be in"),
             (lambda: evaluate_command(GptEvalConfig()), "--run")]
    for call, fragment in cases:
        with pytest.raises(UserError, match=re.escape(fragment)):
            call()
    assert not list(tmp_path.iterdir())


def test_help_still_imports_no_torch():
    code = "import sys; from aigc.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "print('torch' in sys.modules)"
    result = subprocess.run(["python", "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


# ------------------------------------------------------------------ class 2: TOML files

@pytest.mark.parametrize("text, fragment", [
    ("steps = true\n", "expected an integer, got bool"),
    ("lr = false\n", "expected a number, got bool"),
    ('out = 5\n', "expected a string, got int"),
    ("amp = 1\n", "expected a boolean"),
    ("batch_size = [64]\n", "expected an integer, got list"),
    ("lr = nan\n", "--lr must be a number"),
])
def test_toml_values_of_the_wrong_type_are_refused(tmp_path, text, fragment):
    from aigc.gan.config import GanTrainConfig
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[")):
        build_config(GanTrainConfig, {"config": str(tmp_path / "c.toml")})


def test_a_toml_file_that_is_not_utf8_is_one_line(run_cli, tmp_path):
    (tmp_path / "c.toml").write_bytes("# caf\xe9\n".encode("latin-1"))
    status, _, err = run_cli("gan", "train", "--config", tmp_path / "c.toml")
    assert_one_line_error(status, err, "not UTF-8")


# ------------------------------------------------------------------ class 3: damaged inputs

def test_a_damaged_gzip_file_is_one_line(run_cli, tmp_path):
    broken = gzip.compress(b"x" * 5000)[:40] + b"garbage" * 10
    idx = tmp_path / "idx"
    idx.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (idx / name).write_bytes(broken)
    status, _, err = run_cli("gan", "train", "--data", idx, "--out", tmp_path / "run")
    assert_one_line_error(status, err, "damaged or truncated gzip")
    (tmp_path / "s.txt.gz").write_bytes(broken)
    from aigc.gpt.tasks import read_pairs
    with pytest.raises(UserError, match="damaged or truncated gzip"):
        read_pairs(tmp_path / "s.txt.gz", tmp_path / "s.txt.gz")
    from aigc.data.text import read_text
    with pytest.raises(UserError, match="damaged or truncated gzip"):
        read_text(tmp_path / "s.txt.gz")
    (tmp_path / "ok.txt.gz").write_bytes(gzip.compress(b"hello\n"))
    assert read_text(tmp_path / "ok.txt.gz") == b"hello\n"


@pytest.mark.parametrize("token, fragment", [("\u00b2", "not a token id"), ("--5", "not a token id"),
                                             ("99999999999999999999999", "outside the vocabulary")])
def test_textgan_ids_that_are_not_decimal_ids(token, fragment):
    from aigc.textgan.data import ids_tensor, is_ids
    lines = [["1", "2"], ["3", token]]
    assert not is_ids(lines) or fragment == "outside the vocabulary"
    with pytest.raises(UserError, match=fragment):
        ids_tensor(lines, 10, "ids.txt")
    assert ids_tensor([["1", "2"], ["3", "4"]], 10, "ids.txt").tolist() == [[1, 2], [3, 4]]


def test_a_cache_home_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.delenv("AIGC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    from aigc.data.text import encode_cached
    from aigc.data.tokenizers import train_char
    with pytest.raises(UserError, match=r"cache folder .*XDG_CACHE_HOME"):
        encode_cached(b"abc", train_char("abc"))
    from aigc.metrics.evaluator import cache_dir
    with pytest.raises(UserError, match="XDG_CACHE_HOME"):
        cache_folder(cache_dir() / "evaluators", "$XDG_CACHE_HOME")


def test_model_configs_refuse_what_no_model_can_be_built_from():
    from aigc.gan.models import GanModelConfig
    from aigc.gpt.model import GPTConfig
    for bad in ({"model": "vae"}, {"z_dim": "abc"}, {"width": -8}, {"channels": 2}, {"disc_norm": "layer"},
                {"image_size": 30}, {"spectral_norm": "yes"}):
        with pytest.raises(UserError, match="model"):
            GanModelConfig(**bad)
    for bad in ({"n_head": 0}, {"n_embd": -8}, {"n_layer": "four"}, {"dropout": 1.5}, {"vocab_size": True}):
        with pytest.raises((UserError, ValueError)) as info:
            GPTConfig(**{"vocab_size": 10, **bad})
        assert isinstance(info.value, UserError)


# ------------------------------------------------------------------ class 5: output locations

def test_output_file_refuses_folders_missing_parents_and_files_under_files(tmp_path):
    (tmp_path / "f").write_text("x")
    for path, fragment in [(tmp_path, "is a folder"), (tmp_path / "no" / "x.png", "does not exist"),
                           (tmp_path / "f" / "x.png", "is a file, not a folder")]:
        with pytest.raises(UserError, match=fragment):
            output_file(path, "--out")
    assert output_file(tmp_path / "f", "--out") == tmp_path / "f"  # an ordinary file may be replaced
    assert output_file(tmp_path / "new.png", "--out") == tmp_path / "new.png"


def test_output_file_never_replaces_a_file_of_a_run(tmp_path):
    run = _run_dir(tmp_path / "run")
    for victim in (run / "model.safetensors", run / "config.json", run / "samples" / "step_000001.png"):
        with pytest.raises(UserError, match="a file of the run"):
            output_file(victim, "--out")
    assert owning_run(run / "samples") == run
    assert output_file(run / "new.png", "--out") == run / "new.png"  # a new file in a run is fine
    (run / "eval.json").write_text("{}")
    assert output_file(run / "eval.json", "--json", allowed=[run / "eval.json"]) == run / "eval.json"
    link = tmp_path / "link.png"
    link.symlink_to(run / "model.safetensors")
    with pytest.raises(UserError, match="a file of the run"):
        output_file(link, "--out")


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write in: chmod for a normal user; as root (which chmod does not stop), the
    immutable attribute, which stops root too. Skips where neither is possible."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root without chattr +i: no way to make a folder read-only here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_folder_is_refused_up_front(read_only_folder, run_cli):
    with pytest.raises(PermissionError):  # the folder really is read-only, for this user too
        (read_only_folder / "probe").write_text("x")
    with pytest.raises(UserError, match="cannot write in"):
        output_file(read_only_folder / "x.png", "--out")
    with pytest.raises(UserError, match="cannot write in"):
        output_dir(read_only_folder / "hf", "--out")
    with pytest.raises(UserError, match="cannot write in"):
        cache_folder(read_only_folder, "$XDG_CACHE_HOME")


def test_output_dir_refuses_files_full_folders_and_runs(tmp_path):
    run = _run_dir(tmp_path / "run")
    (tmp_path / "f").write_text("x")
    for path, fragment in [(run, "is a run directory"), (run / "samples", "not empty"), (tmp_path / "f", "is a file"),
                           (tmp_path / "f" / "hf", "is a file, not a folder")]:
        with pytest.raises(UserError, match=fragment):
            output_dir(path, "--out")
    assert output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    (tmp_path / "empty").mkdir()
    assert output_dir(tmp_path / "empty", "--out") == tmp_path / "empty"
