"""--tracker: TensorBoard, Weights & Biases (offline, read back from its own run file) or none;
a missing wandb package is one line; the tracker may change on --resume."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from aigc.errors import UserError
from aigc.logging import read_metrics
from aigc.trackers import numeric, parse_trackers, tracker_names
from conftest import assert_one_line_error

SRC = Path(__file__).resolve().parents[1] / "src"
TINY_GAN = dict(model="mlp", conditional=True, width=16, batch_size=16, device="cpu", amp=False, log_every=2,
                sample_every=3, save_every=3)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """W&B offline, its files in a folder of this test: it never logs in or reaches the network."""
    pytest.importorskip("wandb")
    folder = tmp_path / "wandb-dir"
    folder.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_PROJECT", "aigc-tests")
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    return folder


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (``run-ID.wandb``): LevelDB-log framing (a 7-byte file
    header, 32 KiB blocks of records with a 7-byte header: crc, length, type full/first/middle/
    last) around protobuf ``Record`` messages. wandb 0.31 ships no reader of its own."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pieces = payload if kind in (1, 2) else pieces + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records


def read_wandb_run(folder: Path) -> dict:
    """The one offline run under ``folder``: its id, project, config and history by step."""
    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    run, history = None, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(row["_step"], {}).update(row)
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    return {"id": run.run_id, "project": run.project, "name": run.display_name, "config": config,
            "history": history, "folder": path.parent}


def metrics_by_step(run: Path, after: int = 0) -> dict[int, dict]:
    by_step: dict[int, dict] = {}
    for line in read_metrics(run / "metrics.jsonl"):
        if line["step"] > after:
            step = line.pop("step")
            by_step.setdefault(step, {}).update(numeric(line))
    return by_step


def assert_history_matches_metrics(wandb_run: dict, run: Path, after: int = 0) -> None:
    expected = metrics_by_step(run, after)
    with_scalars = [step for step, row in wandb_run["history"].items()
                    if step > after and any(not key.startswith(("_", "samples/")) for key in row)]
    assert sorted(with_scalars) == sorted(expected)
    for step, values in expected.items():
        logged = wandb_run["history"][step]
        assert {k: logged[k] for k in values} == pytest.approx(values, rel=1e-12), step


# ------------------------------------------------------------------ the flag


def test_tracker_names_are_checked_and_normalised():
    assert parse_trackers(" WandB , tensorboard,wandb") == "wandb,tensorboard"
    assert tracker_names("tensorboard,wandb") == ("tensorboard", "wandb")
    assert tracker_names("none") == ()
    for bad, fragment in [("tensorbored", "unknown tracker 'tensorbored'"), ("none,wandb", "'none' cannot"),
                          (",", "give a tracker")]:
        with pytest.raises(UserError, match=fragment):
            tracker_names(bad)


@pytest.mark.parametrize("command", [["gan", "train"], ["gpt", "train"], ["gpt", "finetune"], ["textgan", "train"]])
def test_every_trainer_refuses_an_unknown_tracker_in_one_line(run_cli, tmp_path, command):
    status, _, err = run_cli(*command, "--tracker", "mlflow", "--out", tmp_path / "run")
    assert_one_line_error(status, err, "--tracker", "unknown tracker 'mlflow'")
    assert not (tmp_path / "run").exists()


def test_every_trainer_lets_the_tracker_change_on_resume():
    from aigc.gan import train as gan_train
    from aigc.gpt import finetune
    from aigc.gpt import train as gpt_train
    from aigc.textgan import train as textgan_train

    assert "tracker" in gan_train.RESUME_OVERRIDABLE and "tracker" in textgan_train.RESUME_OVERRIDABLE
    assert "tracker" not in gpt_train.RUN_DEFINING and "tracker" not in finetune.RUN_DEFINING


# ------------------------------------------------------------------ W&B, offline


def test_wandb_records_the_metrics_config_and_sample_grids_of_a_gan_run(tmp_path, offline_wandb):
    from aigc.gan.config import GanTrainConfig
    from aigc.gan.train import train

    run = train(GanTrainConfig(**TINY_GAN, steps=6, out=str(tmp_path / "gan"), tracker="wandb,tensorboard"))
    logged = read_wandb_run(offline_wandb)
    assert logged["project"] == "aigc-tests" and logged["name"] == "gan"
    assert logged["id"] == json.loads((run / "wandb.json").read_text())["id"]
    saved = json.loads((run / "config.json").read_text())
    assert logged["config"]["kind"] == "gan" and logged["config"]["model"] == saved["model"]
    assert logged["config"]["train"]["steps"] == 6
    assert_history_matches_metrics(logged, run)
    sampled = sorted(step for step, row in logged["history"].items() if row.get("samples/_type") == "image-file")
    assert sampled == [3, 6]  # --sample-every 3, and the last step
    assert (logged["folder"] / "files" / logged["history"][6]["samples/path"]).is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("samples")] == [3, 6]
    assert [e.value for e in events.Scalars("g_loss")] == pytest.approx(
        [line["g_loss"] for line in read_metrics(run / "metrics.jsonl")])


def test_wandb_gets_the_validation_losses_of_a_gpt_run_beside_its_training_losses(tmp_path, offline_wandb):
    from aigc.gpt.config import GptTrainConfig
    from aigc.gpt.train import train

    data = tmp_path / "corpus.txt"
    data.write_text("to be or not to be, that is the question.\n" * 40)
    run = train(GptTrainConfig(data=str(data), out=str(tmp_path / "gpt"), n_layer=1, n_head=2, n_embd=16,
                               block_size=16, batch_size=4, max_iters=6, warmup_iters=2, eval_interval=3,
                               eval_iters=1, log_every=2, amp=False, device="cpu", tracker="wandb"))
    logged = read_wandb_run(offline_wandb)
    assert_history_matches_metrics(logged, run)
    assert "val_loss" in logged["history"][3] and "loss" in logged["history"][6]
    assert not (run / "tb").exists()  # wandb alone: no TensorBoard


def test_the_tracker_may_change_on_resume_and_wandb_gets_the_resumed_steps(tmp_path, offline_wandb):
    from aigc.gan.config import GanTrainConfig
    from aigc.gan.train import train

    out = str(tmp_path / "gan")
    run = train(GanTrainConfig(**TINY_GAN, steps=3, out=out, tracker="none"))
    assert not (run / "tb").exists() and not list(offline_wandb.iterdir())
    train(GanTrainConfig(**TINY_GAN, steps=6, out=out, resume=True, tracker="wandb"))
    logged = read_wandb_run(offline_wandb)
    assert min(logged["history"]) > 3  # the resumed steps only
    assert_history_matches_metrics(logged, run, after=3)
    assert json.loads((run / "config.json").read_text())["train"]["tracker"] == "wandb"


def test_a_missing_wandb_package_is_one_line_before_any_write(tmp_path):
    """``import wandb`` fails (as without the package) in a fresh process running ``aigc``."""
    script = (
        "import sys\n"
        "class NoWandb:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'wandb' or name.startswith('wandb.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'wandb'\", name=name)\n"
        "sys.meta_path.insert(0, NoWandb())\n"
        "from aigc.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", script, "gan", "train", "--model", "mlp", "--steps", "1",
                           "--tracker", "tensorboard,wandb", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert_one_line_error(done.returncode, done.stderr, "--tracker wandb needs the wandb package",
                          'pip install "aigc[wandb]"')
    assert not out.exists() or not any(out.iterdir())
