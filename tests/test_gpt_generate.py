"""Generation and evaluation of a trained GPT run, through the Python API and the CLI."""

from __future__ import annotations

import json
import math

import pytest

import aigc.gpt
from aigc.errors import UserError
from aigc.gpt.config import GptTrainConfig
from aigc.gpt.generation import Completion, Generator, Sampling, StopText
from aigc.gpt.train import train
from conftest import checkpoint_file

TEXT = "to be or not to be, that is the question.\n" * 150


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIGC_CACHE_DIR", str(root / "cache"))
        data = root / "corpus.txt"
        data.write_text(TEXT)
        yield train(GptTrainConfig(data=str(data), out=str(root / "run"), n_layer=1, n_head=2, n_embd=32,
                                   block_size=24, batch_size=16, lr=1e-2, warmup_iters=10, max_iters=250,
                                   eval_interval=250, eval_iters=2, amp=False, device="cpu"))


def test_python_api_learns_the_corpus(run):
    (sample,) = aigc.gpt.generate(str(run), "to be or", max_new_tokens=30, temperature=0)
    assert sample.startswith(" not to be")


def test_samples_differ_by_seed_and_repeat_with_the_same_seed(run):
    generator = Generator.from_run(str(run), device="cpu")
    hot = Sampling(temperature=2.0)
    a = generator.generate("to", 40, hot, num_samples=3, seed=1)
    assert len(a) == 3 and len(set(a)) > 1
    assert generator.generate("to", 40, hot, num_samples=3, seed=1) == a


def test_stop_string_ends_the_sample(run):
    generator = Generator.from_run(str(run), device="cpu")
    greedy = Sampling(temperature=0)
    assert generator.generate("to be or", 40, greedy, stop="that") == [" not to be, "]
    assert "".join(generator.stream("to be or", 40, greedy, stop="that")) == " not to be, "


def test_completions_say_why_they_ended_and_count_their_tokens(run):
    generator = Generator.from_run(str(run), device="cpu")
    greedy = Sampling(temperature=0)
    # char tokenizer: one token a character; the token that completes the stop string counts
    assert generator.completions("to be or", 40, greedy, stop="that") == [
        Completion(" not to be, ", "stop", prompt_tokens=8, completion_tokens=len(" not to be, that"))]
    assert generator.completions("to be or", 10, greedy) == [Completion(" not to be", "length", 8, 10)]


def test_rows_of_a_batch_end_on_their_own(run):
    generator = Generator.from_run(str(run), device="cpu")
    stops = ["q", "th"]
    completions = generator.completions("to", 20, Sampling(temperature=2.0), stop=stops, num_samples=4, seed=0)
    assert {c.finish_reason for c in completions} == {"stop", "length"}
    for c in completions:
        assert c.prompt_tokens == 2 and not any(stop in c.text for stop in stops)
        if c.finish_reason == "length":
            assert c.completion_tokens == len(c.text) == 20
        else:
            assert c.completion_tokens - len(c.text) in {len(stop) for stop in stops}


def test_several_stop_strings_cut_at_the_first_one_met(run):
    generator = Generator.from_run(str(run), device="cpu")
    greedy = Sampling(temperature=0)
    stops = ["question", "be,", "zzz"]
    assert generator.generate("to be or", 40, greedy, stop=stops) == [" not to "]
    assert "".join(generator.stream("to be or", 40, greedy, stop=stops)) == " not to "
    with pytest.raises(UserError, match="stop string is empty"):
        generator.generate("to be or", 5, greedy, stop=["that", ""])


class CountingList(list):
    """A list that counts its item lookups."""

    lookups = 0

    def __getitem__(self, index):
        self.lookups += 1
        return super().__getitem__(index)


def test_the_stop_check_reads_each_generated_token_once(run):
    """Decoding whole rows after every token would look tokens up quadratically often."""
    generator = Generator.from_run(str(run), device="cpu")
    table = generator.tokenizer.token_bytes = CountingList(generator.tokenizer.token_bytes)
    completions = generator.completions("to", 300, Sampling(temperature=1.0), stop=["never", "said"], num_samples=3)
    assert [c.finish_reason for c in completions] == ["length"] * 3
    assert table.lookups == 3 * 300


def test_stop_text_finds_stops_across_tokens_and_split_characters():
    table = [b"ab", b"c", b"\xe2\x82", b"\xac", b"d", b"e"]  # "\u20ac" (euro) is split over tokens 2 and 3
    text = StopText(table, ["c\u20acd", "xyz"])
    released = [text.add(token) for token in (0, 1, 2, 3)]
    assert released == ["", "a", "", "b"]  # all but the last len(longest stop) - 1 characters
    assert text.held == "c\u20ac"
    assert text.add(4) == "" and text.stopped and text.tokens == 5
    assert text.add(5) == "" and text.finish() == "" and text.tokens == 5
    plain = StopText(table, [])
    assert "".join(plain.add(token) for token in (0, 2, 3, 2)) + plain.finish() == "ab\u20ac\ufffd"


def test_stream_matches_generate(run):
    generator = Generator.from_run(str(run), device="cpu")
    greedy = Sampling(temperature=0)
    pieces = list(generator.stream("to", 60, greedy))
    assert len(pieces) > 1
    assert "".join(pieces) == generator.generate("to", 60, greedy)[0]


def test_prompt_longer_than_the_context(run):
    (sample,) = aigc.gpt.generate(str(run), TEXT[:200], max_new_tokens=50, temperature=0)
    assert len(sample) == 50  # char tokenizer: one character per token


def test_cli_generate_and_stream(run, run_cli):
    status, out, _ = run_cli("gpt", "generate", "--run", run, "--prompt", "to be or", "--temperature", "0",
                             "--max-new-tokens", "12", "--stream")
    assert status == 0 and out.startswith("to be or not")
    status, out, _ = run_cli("gpt", "generate", "--run", run, "--num-samples", "2", "--max-new-tokens", "5")
    assert status == 0 and out.count("--- sample") == 2


def test_cli_eval_reports_loss_perplexity_and_bits_per_byte(run, run_cli, tmp_path):
    results = tmp_path / "eval.json"
    status, out, _ = run_cli("gpt", "eval", "--run", run, "--json", results)
    assert status == 0 and "bits_per_byte" in out
    metrics = json.loads(results.read_text())
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    # ASCII and char-level: one byte per token, so bits per byte = loss / ln 2
    assert metrics["bytes"] == metrics["tokens"]
    assert metrics["bits_per_byte"] == pytest.approx(metrics["loss"] / math.log(2))
    assert metrics["loss"] < 1.0

    other = tmp_path / "other.txt"
    other.write_text("that is the question.\n" * 5)
    status, out, _ = run_cli("gpt", "eval", "--run", run, "--data", other)
    assert status == 0 and "perplexity" in out


@pytest.mark.parametrize("args, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be positive"),
    (["--prompt", "to be Zzz"], "'Z', 'z'"),
    (["--prompt", ""], "the prompt is empty"),
    (["--top-p", "1.5"], "--top-p must be in"),
])
def test_cli_generate_bad_input(run, run_cli, args, message):
    status, _, err = run_cli("gpt", "generate", "--run", run, *args)
    assert status == 2 and message in err and err.count("\n") == 1


def test_not_a_gpt_run(run_cli, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "gan"}))
    status, _, err = run_cli("gpt", "generate", "--run", tmp_path)
    assert status == 2 and "'gan' run, not a 'gpt' or 'gpt-finetune' run" in err
    status, _, err = run_cli("gpt", "eval", "--run", tmp_path / "missing")
    assert status == 2 and "run directory not found" in err


@pytest.mark.parametrize("name, message", [("best weights", "corrupt weights file"),
                                           ("tokenizer.json", "corrupt tokenizer file")])
def test_corrupt_run_files(run, run_cli, tmp_path, name, message):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    path = checkpoint_file(copy, which="best") if name == "best weights" else copy / name
    path.write_bytes(path.read_bytes()[:100])
    status, _, err = run_cli("gpt", "generate", "--run", copy, "--max-new-tokens", "3")
    assert status == 2 and message in err and err.count("\n") == 1


def test_corrupt_resume_state(run, run_cli, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    checkpoint_file(copy, "state.pt").write_bytes(b"not a checkpoint")
    status, _, err = run_cli("gpt", "train", "--out", copy, "--resume", "--max-iters", "200")
    assert status == 2 and "corrupt resume state" in err


def test_generate_api_rejects_zero_tokens(run):
    with pytest.raises(UserError, match="max_new_tokens must be positive"):
        aigc.gpt.generate(str(run), "to", max_new_tokens=0)


def test_generate_api_checks_the_sampling_settings(run):
    with pytest.raises(UserError, match="^temperature must be a finite number"):
        aigc.gpt.generate(str(run), "to", temperature=float("nan"))
