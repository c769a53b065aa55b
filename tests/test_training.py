"""The contract every trainer shares: one state vocabulary, resume that writes nothing until it
has checked everything, checkpoints that are one unit, kill -9 and Ctrl-C, a full disk."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aigc import runs
from aigc.errors import TrainingDiverged, UserError
from aigc.loading import load
from aigc.training import loop
from aigc.training.samplers import EpochBatches, RandomBatches

from conftest import assert_one_line_error, checkpoint_file

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"{name} has {n} apples and {n + 1} pears.\n" for n in range(40) for name in ("Ann", "Bob", "Cy"))
TEXT += "the cat, dog, fox and owl sat on the mat => yes.\n" * 10  # every character of the sentences below
GAN = ["gan", "train", "--model", "mlp", "--width", "16", "--log-every", "2", "--sample-every", "1000"]
GPT = ["gpt", "train", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
       "--batch-size", "4", "--eval-iters", "2", "--log-every", "2", "--no-amp"]
TEXTGAN = ["textgan", "train", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "8",
           "--max-iters", "4", "--d-pretrain-steps", "2", "--adv-rounds", "2", "--rollouts", "2",
           "--eval-every", "4", "--save-every", "4", "--log-every", "2"]


@pytest.fixture(autouse=True)
def token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def sentences(tmp_path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("".join(f"the {w} sat on the mat .\n" for w in ("cat", "dog", "fox", "owl") * 10))
    return path


def snapshot(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def make_runs(run_cli, tmp_path, corpus, sentences) -> dict[str, Path]:
    """One small run of each trainer, each with a checkpoint."""
    made = {"gan": tmp_path / "gan", "gpt": tmp_path / "gpt", "finetune": tmp_path / "ft",
            "textgan": tmp_path / "textgan"}
    commands = {
        "gan": [*GAN, "--steps", 4, "--save-every", 2],
        "gpt": [*GPT, "--data", corpus, "--max-iters", 4, "--eval-interval", 2],
        "finetune": ["gpt", "finetune", "--base", made["gpt"], "--source", sentences, "--target", sentences,
                     "--method", "lora", "--rank", 2, "--batch-size", 4, "--max-iters", 4, "--eval-interval", 2,
                     "--eval-examples", 4, "--no-amp"],
        "textgan": [*TEXTGAN, "--data", sentences],
    }
    for name, args in commands.items():
        status, _, err = run_cli(*args, "--out", made[name], "--device", "cpu")
        assert status == 0, err
    return made


@pytest.fixture
def every_run(run_cli, tmp_path, corpus, sentences, one_thread):
    return make_runs(run_cli, tmp_path, corpus, sentences)


def resume_args(name: str, run: Path, corpus: Path, sentences: Path) -> list:
    more = {"gan": [*GAN, "--steps", 8], "gpt": [*GPT, "--data", corpus, "--max-iters", 8],
            "finetune": ["gpt", "finetune", "--max-iters", 8], "textgan": [*TEXTGAN, "--data", sentences,
                                                                           "--adv-rounds", 4]}[name]
    return [*more, "--out", run, "--resume", "--device", "cpu"]


def test_every_run_kind_has_the_same_contract(every_run):
    keys = set()
    for name, run in every_run.items():
        config = json.loads((run / "config.json").read_text())
        assert config["aigc_version"] and config["kind"], name
        assert (run / "loss.png").is_file(), name
        state = runs.load_state(checkpoint_file(run, "state.pt"))
        keys.add(tuple(sorted(state)))
        assert set(state["rng"]) >= {"torch"}, name
        loaded = load(run)  # one loader for every kind
        assert loaded is not None, name
    assert keys == {("elapsed", "log_window", "optimizers", "rng", "samplers", "step", "trainer")}


@pytest.mark.parametrize("damage", ["state", "weights", "pointer"])
def test_a_failed_resume_changes_nothing(every_run, run_cli, corpus, sentences, damage):
    for name, run in every_run.items():
        folder = runs.checkpoint_dir(run)
        target = {"state": folder / "state.pt", "pointer": run / "checkpoint.json",
                  "weights": next(folder.glob("*.safetensors"))}[damage]
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
        before = snapshot(run)
        status, _, err = run_cli(*resume_args(name, run, corpus, sentences))
        assert_one_line_error(status, err)
        assert snapshot(run) == before, name


def test_resume_refuses_changed_model_flags_and_a_finished_run(every_run, run_cli):
    run = every_run["gan"]
    before = snapshot(run)
    assert_one_line_error(*run_cli(*GAN, "--model", "dcgan", "--steps", 8, "--out", run, "--resume")[::2],
                          "cannot resume with --model dcgan")
    # Set back to its default on the command line, a flag still counts as given.
    assert_one_line_error(*run_cli(*GAN[:-6], "--width", "16", "--z-dim", "100", "--seed", "1", "--steps", 8,
                                   "--out", run, "--resume")[::2], "cannot resume with --seed 1")
    assert_one_line_error(*run_cli(*GAN, "--steps", 4, "--out", run, "--resume")[::2], "already at step 4")
    assert snapshot(run) == before


def test_a_flag_given_at_its_default_on_resume_is_taken(run_cli, tmp_path, corpus, one_thread):
    run = tmp_path / "run"
    assert run_cli(*GPT, "--data", corpus, "--max-iters", 2, "--eval-interval", 2, "--lr", "2e-3", "--out", run)[0] == 0
    status, _, err = run_cli(*GPT, "--data", corpus, "--max-iters", 4, "--lr", "1e-3", "--out", run, "--resume")
    assert status == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 1e-3


def test_time_budget_on_every_trainer(run_cli, tmp_path, sentences, one_thread):
    for args in ([*GAN, "--steps", 100_000], [*TEXTGAN, "--data", sentences, "--max-iters", 100_000]):
        run = tmp_path / args[0]
        started = time.perf_counter()
        status, _, err = run_cli(*args, "--time-budget", "2s", "--out", run)
        assert status == 0, err
        assert time.perf_counter() - started < 30
        assert 0 < runs.read_pointer(run)["step"] < 100_000


def test_a_damaged_textgan_vocabulary_is_refused(every_run, run_cli, corpus, sentences):
    run = every_run["textgan"]
    vocab = json.loads((run / "vocab.json").read_text())
    (run / "vocab.json").write_text(json.dumps({**vocab, "words": vocab["words"][::-1]}))
    before = snapshot(run)
    assert_one_line_error(*run_cli(*resume_args("textgan", run, corpus, sentences))[::2], "vocab.json")
    assert snapshot(run) == before


# ---------------------------------------------------------------- checkpoints as a unit

def test_a_checkpoint_is_one_folder_and_stale_ones_go(tmp_path):
    weights = {"model.safetensors": {"w": torch.ones(3)}}
    runs.save_checkpoint(tmp_path, 1, weights, {"step": 1}, best=True)
    (tmp_path / "checkpoints" / ".step-000002.x.tmp").mkdir()  # what a kill during a save leaves
    (tmp_path / ".config.json.x.tmp").write_text("half")
    runs.save_checkpoint(tmp_path, 2, weights, {"step": 2}, best=False)
    pointer = runs.read_pointer(tmp_path)
    assert (pointer["last"], pointer["best"]) == ("step-000002", "step-000001")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert not (tmp_path / "checkpoints" / "step-000001" / "state.pt").exists()  # only the last resumes
    assert not list(tmp_path.glob(".*.tmp"))
    runs.save_checkpoint(tmp_path, 3, weights, {"step": 3}, best=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000003"]


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    class Broken:
        def weights(self):
            return {"model.safetensors": {"w": torch.tensor([1.0, float("nan")])}}

    with pytest.raises(TrainingDiverged, match="not saved"):
        loop.save(Broken(), tmp_path, 5, 0.0, loop.RunningMeans())
    assert runs.read_pointer(tmp_path) is None


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(run_cli, tmp_path, one_thread):
    run = tmp_path / "disk" / "run"
    run.parent.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(run.parent)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        assert run_cli(*GAN, "--steps", 2, "--save-every", 2, "--out", run)[0] == 0
        before = snapshot(run)
        filler = run.parent / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk to the last block
            for size in (65536, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass
        status, _, err = run_cli(*GAN, "--steps", 4, "--save-every", 2, "--out", run, "--resume")
        assert_one_line_error(status, err, "No space left on device")
        filler.unlink()
        assert runs.read_pointer(run)["step"] == 2
        assert {k: v for k, v in snapshot(run).items() if k.startswith("checkpoints")} == \
            {k: v for k, v in before.items() if k.startswith("checkpoints")}
        assert not [p for p in run.rglob("*.tmp")]
    finally:
        subprocess.run(["umount", str(run.parent)], check=True)


# ---------------------------------------------------------------- kill -9 and Ctrl-C

def aigc_process(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "aigc", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "checkpoint.json").is_file():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gan", "gpt"])
def test_kill_9_at_random_moments_always_leaves_a_run_that_resumes(tmp_path, corpus, kind):
    run = tmp_path / "run"
    args = {"gan": [*GAN, "--save-every", 1], "gpt": [*GPT, "--data", corpus, "--eval-interval", 1]}[kind]
    steps = {"gan": "--steps", "gpt": "--max-iters"}[kind]
    rng = random.Random(0)
    for attempt in range(4):
        process = aigc_process(*args, steps, 100_000, "--out", run, *(["--resume"] if attempt else []))
        wait_for_checkpoint(run, process)
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        folder = runs.checkpoint_dir(run)
        state = runs.load_state(folder / "state.pt")
        _, metadata = runs.load_weights(folder / "model.safetensors")
        assert metadata["step"] == str(state["step"])  # weights and state of one step, always
        assert load(run) is not None
    step = runs.read_pointer(run)["step"]
    finish = aigc_process(*args, steps, step + 3, "--out", run, "--resume")
    _, err = finish.communicate(timeout=120)
    assert finish.returncode == 0, err
    assert runs.read_pointer(run)["step"] == step + 3
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    process = aigc_process(*GAN, "--steps", 100_000, "--save-every", 100_000, "--out", run)
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("aigc: interrupted at step")
    step = runs.read_pointer(run)["step"]
    last_logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert step == last_logged and step > 0  # saved where it stopped, not at an earlier interval
    finish = aigc_process(*GAN, "--steps", step + 2, "--save-every", 100_000, "--out", run, "--resume")
    _, err = finish.communicate(timeout=120)
    assert finish.returncode == 0, err


# ---------------------------------------------------------------- samplers

@pytest.mark.parametrize("sampler", [RandomBatches, EpochBatches])
def test_ranks_draw_disjoint_slices_of_one_global_batch(sampler):
    whole = sampler(100, 8, seed=3, world_size=1)
    single = [whole.next() for _ in range(20)]
    ranks = [sampler(100, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    halves = [[s.next() for _ in range(20)] for s in ranks]
    for step in range(20):
        together = torch.cat([halves[0][step], halves[1][step]])
        if sampler is EpochBatches:
            assert len(set(together.tolist())) == 8  # an epoch's permutation: no index twice
        assert together.shape == (8,)
    restored = sampler(100, 8, seed=3)
    restored.load_state_dict(whole.state_dict())
    assert torch.equal(restored.next(), whole.next())
    assert all(batch.shape == (8,) for batch in single)


def test_resume_of_a_config_made_in_python_keeps_defaults_semantics(tmp_path, corpus, one_thread):
    from dataclasses import replace

    from aigc.gpt.config import GptTrainConfig
    from aigc.gpt.train import train

    config = GptTrainConfig(data=str(corpus), out=str(tmp_path / "r"), n_layer=1, n_head=2, n_embd=16,
                            block_size=16, batch_size=4, max_iters=2, eval_interval=2, eval_iters=2, amp=False)
    train(config)
    with pytest.raises(UserError, match="already at step 2"):
        train(replace(config, resume=True))


def test_a_refused_new_run_leaves_nothing_behind(run_cli, tmp_path, corpus, one_thread):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    run = tmp_path / "run"
    assert_one_line_error(*run_cli(*GPT, "--data", short, "--max-iters", 2, "--out", run)[::2], "short")
    assert not run.exists()  # so the same --out takes the retry
    assert run_cli(*GPT, "--data", corpus, "--max-iters", 2, "--eval-interval", 2, "--out", run)[0] == 0


def test_a_fine_tune_resumes_from_another_folder(every_run, run_cli, sentences, monkeypatch):
    run = every_run["gpt"].parent / "ft2"
    monkeypatch.chdir(every_run["gpt"].parent)
    status, _, err = run_cli("gpt", "finetune", "--base", "gpt", "--source", sentences, "--target", sentences,
                             "--method", "lora", "--rank", 2, "--batch-size", 4, "--max-iters", 2,
                             "--eval-interval", 2, "--eval-examples", 4, "--no-amp", "--out", run)
    assert status == 0, err
    monkeypatch.chdir(sentences.parent.parent)
    status, _, err = run_cli("gpt", "finetune", "--max-iters", 4, "--out", run, "--resume")
    assert status == 0, err


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_with_code_is_refused_in_one_line_and_never_run(every_run, run_cli, corpus, sentences,
                                                                  tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = every_run["gan"]
    torch.save({"step": _Payload()}, checkpoint_file(run, "state.pt"))
    status, _, err = run_cli(*resume_args("gan", run, corpus, sentences))
    assert_one_line_error(status, err, "not a plain tensor state", "was not loaded")
    assert not (tmp_path / "pwned").exists()
