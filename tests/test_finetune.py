"""Fine-tuning: completion-only loss, LoRA/AdaLoRA/adapters, merge, resume, classification, bad input."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace

import pytest
import torch

from aigc.errors import UserError
from aigc.gpt.config import FINETUNE_METHODS, GptFinetuneConfig, GptTrainConfig
from aigc.gpt.finetune import finetune
from aigc.gpt.loading import ADAPTER_FILE, load_finetuned, load_gpt
from aigc.gpt.generation import Sampling, beam_search, generate_tokens
from aigc.gpt.model import GPT, GPTConfig
from aigc.gpt.peft_methods import MethodSettings, apply_method, count_parameters
from aigc.gpt.tasks import IGNORE, Encoded, TaskModel, completion_batch
from aigc.gpt.train import train
from aigc.logging import read_metrics
from aigc.runs import load_weights
from conftest import assert_one_line_error, checkpoint_file

WORDS = ["cat", "dog", "bird", "fish", "cow", "pig", "hen", "fox", "owl", "bee", "ant", "elk"]


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        pairs.append((words, words.upper()))
    return pairs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIGC_CACHE_DIR", str(root / "cache"))
        corpus = root / "corpus.txt"
        corpus.write_text("".join(f"{a} => {b}\n{a}, {a}.\n" for a, b in _pairs(400, 0)) + "good bad great awful\n")
        train(GptTrainConfig(data=str(corpus), out=str(root / "base"), n_layer=2, n_head=2, n_embd=32, block_size=48,
                             batch_size=16, lr=1e-2, warmup_iters=5, max_iters=40, eval_interval=40, eval_iters=2,
                             amp=False, device="cpu"))
        (root / "train.jsonl").write_text("".join(json.dumps({"prompt": a, "completion": b}) + "\n"
                                                  for a, b in _pairs(200, 1)))
        yield root


@pytest.fixture(autouse=True)
def token_cache(root, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE_DIR", str(root / "cache"))


def tiny(root, out, **overrides) -> GptFinetuneConfig:
    settings = dict(base=str(root / "base"), out=str(out), data=str(root / "train.jsonl"), batch_size=8,
                    max_iters=20, warmup_iters=2, eval_interval=10, eval_examples=16, log_every=1, amp=False,
                    device="cpu", rank=2, adapter_size=8)
    return GptFinetuneConfig(**{**settings, **overrides})


def small_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


# ---------------------------------------------------------------- components

def test_completion_loss_counts_completion_tokens_only():
    example = Encoded(ids=[5, 6, 7, 8, 9, 10], start=3)  # prompt 5 6 7, completion 8 9 10
    x, y = completion_batch([example, Encoded([1, 2, 3], start=2)])
    assert x[0].tolist() == [5, 6, 7, 8, 9]
    assert y[0].tolist() == [IGNORE, IGNORE, 8, 9, 10]  # 5->6 and 6->7 are prompt predictions: no loss
    assert y[1].tolist() == [IGNORE, 3, IGNORE, IGNORE, IGNORE]  # padding carries no loss either

    gpt = small_gpt()
    model = TaskModel(gpt)
    loss = model.loss([example], torch.device("cpu"))
    logits, _ = gpt(x[:1])
    expected = torch.nn.functional.cross_entropy(logits[0, 2:], torch.tensor([8, 9, 10]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # The gradient reaches the logits of completion positions only.
    leaf = logits.detach().requires_grad_()
    torch.nn.functional.cross_entropy(leaf.flatten(0, 1), y[:1].flatten(), ignore_index=IGNORE).backward()
    assert leaf.grad[0, :2].abs().sum() == 0 and (leaf.grad[0, 2:].abs().sum(dim=-1) > 0).all()


@pytest.mark.parametrize("method", ["lora", "adalora", "adapter"])
def test_a_fresh_method_leaves_the_outputs_unchanged(method):
    gpt = small_gpt()
    x = torch.randint(0, 40, (2, 10))
    before, _ = gpt(x)
    tuned = apply_method(gpt, MethodSettings(method, rank=4, adapter_size=8, total_steps=100))
    after, _ = tuned.gpt(x)
    torch.testing.assert_close(after, before)
    trainable, total = count_parameters(gpt)
    assert 0 < trainable < 0.5 * total


def test_merge_equals_the_unmerged_model():
    gpt = small_gpt()
    tuned = apply_method(gpt, MethodSettings("lora", rank=4))
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a trained-looking update (B starts at zero)
    x = torch.randint(0, 40, (2, 10))
    unmerged, _ = gpt(x)
    merged = tuned.merged()
    assert not any("lora" in name for name in merged.state_dict())
    torch.testing.assert_close(merged(x)[0], unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmerged, small_gpt()(x)[0], atol=1e-3)  # the update did change the model


def test_beam_of_width_one_is_greedy(root, run_cli):
    base = load_gpt(root / "base")
    model, tokenizer = base.model, base.tokenizer
    idx = torch.tensor([tokenizer.encode("cat dog => "), tokenizer.encode("fox owl => ")])  # (2, T)
    greedy = torch.stack(list(generate_tokens(model, idx, 12, Sampling(temperature=0))), dim=1).tolist()
    assert beam_search(model, idx, 12, beams=1) == greedy
    wide = beam_search(model, idx, 12, beams=4)
    assert [len(row) for row in wide] == [12, 12]  # no stop token given: decode to max_new_tokens

    common = ("gpt", "generate", "--run", root / "base", "--prompt", "cat => ", "--max-new-tokens", "20")
    _, greedy_text, _ = run_cli(*common, "--temperature", "0", "--stop", "\n")
    status, beam_text, err = run_cli(*common, "--beams", "1")
    assert status == 0, err
    assert beam_text == greedy_text


# ---------------------------------------------------------------- the recipe

def test_lora_run_saves_a_small_adapter_merges_and_learns(root, tmp_path, run_cli):
    run = finetune(tiny(root, tmp_path / "lora", method="lora", max_iters=60, lr=1e-2, eval_interval=30))
    losses = [m["val_loss"] for m in read_metrics(run / "metrics.jsonl") if "val_loss" in m]
    assert losses[-1] < losses[0]
    assert not checkpoint_file(run).exists()
    assert checkpoint_file(run, ADAPTER_FILE).stat().st_size < 0.5 * checkpoint_file(root / "base").stat().st_size

    status, out, err = run_cli("gpt", "merge", "--run", run, "--out", tmp_path / "merged")
    assert status == 0, err
    loaded = load_gpt(tmp_path / "merged")
    merged, merged_config = loaded.model, loaded.run_config
    assert merged_config["task"]["kind"] == "completion"
    finetuned = load_finetuned(run)
    x = torch.tensor([finetuned.tokenizer.encode("cat dog => CAT")])
    torch.testing.assert_close(merged(x)[0], finetuned.model.gpt(x)[0], rtol=1e-5, atol=1e-5)

    pairs = _pairs(20, 2)
    (tmp_path / "src.txt").write_text("".join(a + "\n" for a, _ in pairs))
    (tmp_path / "ref.txt").write_text("".join(b + "\n" for _, b in pairs))
    status, out, err = run_cli("gpt", "eval", "--run", tmp_path / "merged", "--metrics", "bleu,chrf,rouge,distinct",
                               "--source", tmp_path / "src.txt", "--target", tmp_path / "ref.txt", "--beams", "2",
                               "--json", tmp_path / "eval.json")
    assert status == 0, err
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["bleu_signature"].startswith("nrefs:1|") and "bleu_signature" in out
    assert len((tmp_path / "eval.hyp.txt").read_text().splitlines()) == 20
    assert 0 <= results["bleu"] <= 100 and results["rougeL"] > 0


def test_generate_and_perplexity_read_an_unmerged_run_as_its_merge(root, tmp_path, run_cli):
    run = finetune(tiny(root, tmp_path / "lora", method="lora", max_iters=10, lr=1e-2))
    assert run_cli("gpt", "merge", "--run", run, "--out", tmp_path / "merged")[0] == 0
    texts, perplexities = [], []
    for source in (run, tmp_path / "merged"):
        status, out, err = run_cli("gpt", "generate", "--run", source, "--prompt", "cat dog => ",
                                   "--max-new-tokens", "6", "--temperature", "0")
        assert status == 0, err
        texts.append(out)
        status, out, err = run_cli("gpt", "eval", "--run", source, "--data", root / "corpus.txt", "--device", "cpu")
        assert status == 0, err
        perplexities.append(out)
    assert texts[0] == texts[1] and "cat dog => " in texts[0]
    assert perplexities[0] == perplexities[1]
    status, _, err = run_cli("gpt", "eval", "--run", run)
    assert_one_line_error(status, err, "is a fine-tuned run; pass --data FILE")


def test_adapter_round_trip(root, tmp_path):
    run = finetune(tiny(root, tmp_path / "adapter", method="adapter", max_iters=10, lr=1e-2))
    saved = load_finetuned(run, "last")
    tensors, _ = load_weights(checkpoint_file(run, ADAPTER_FILE))
    assert tensors and all(".adapter." in n or ".ln_" in n for n in tensors)
    loaded = dict(saved.model.named_parameters())
    for name, tensor in tensors.items():
        torch.testing.assert_close(loaded[name], tensor)
    x = torch.tensor([saved.tokenizer.encode("cat dog => ")])
    again = load_finetuned(run, "last")
    torch.testing.assert_close(again.model.gpt(x)[0], saved.model.gpt(x)[0])
    base = load_gpt(root / "base").model
    assert not torch.allclose(base(x)[0], saved.model.gpt(x)[0], atol=1e-4)


def test_adalora_rank_budget_shrinks(root, tmp_path):
    run = finetune(tiny(root, tmp_path / "adalora", method="adalora", rank=2, max_iters=30, eval_interval=30,
                        lr=1e-2))
    ranks = [m["ranks"] for m in read_metrics(run / "metrics.jsonl") if "ranks" in m]
    adapted_layers = 4 * 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
    assert ranks[0] == 3 * adapted_layers  # starts at 1.5 r = 3 per layer
    assert ranks[-1] <= 2 * adapted_layers < ranks[0]  # pruned to the target budget of r = 2 on average
    assert all(later <= earlier for earlier, later in zip(ranks, ranks[1:]))


def test_resume_continues_the_same_trajectory(root, tmp_path):
    full = finetune(tiny(root, tmp_path / "full", method="lora", max_iters=8, eval_interval=4, lr=1e-2))
    half = tiny(root, tmp_path / "half", method="lora", max_iters=4, lr_decay_iters=8, eval_interval=4, lr=1e-2)
    finetune(half)
    with pytest.raises(UserError, match="cannot resume with --rank 4: the run was trained with 2"):
        finetune(replace(half, max_iters=8, resume=True, rank=4))
    resumed = finetune(replace(half, max_iters=8, resume=True))
    expected = [m.get("loss") for m in read_metrics(full / "metrics.jsonl")]
    assert [m.get("loss") for m in read_metrics(resumed / "metrics.jsonl")] == expected


def test_classification_learns_a_separable_set(root, tmp_path, run_cli):
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(3)) + " " + label, "label": label}
            for label in ("good", "bad") for _ in range(60)]
    rng.shuffle(rows)
    data, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:100]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[100:]))
    run = finetune(tiny(root, tmp_path / "cls", task="classify", data=str(data), val_data=str(test), method="lora",
                        max_iters=40, lr=1e-2))
    status, out, err = run_cli("gpt", "eval", "--run", run, "--metrics", "accuracy", "--json", tmp_path / "cls.json")
    assert status == 0, err
    results = json.loads((tmp_path / "cls.json").read_text())
    assert results["accuracy"] == 100.0 and results["macro_f1"] == 100.0

    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text(json.dumps({"text": "cat dog", "label": "neutral"}) + "\n")
    status, _, err = run_cli("gpt", "eval", "--run", run, "--metrics", "accuracy", "--data", unseen)
    assert_one_line_error(status, err, "'neutral' never seen in training")
    status, _, err = run_cli("gpt", "generate", "--run", run)
    assert_one_line_error(status, err, "is a classify run: its output is a label, not text")


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a"}', "bad.jsonl:2: missing field 'completion'"),
    ("{not json", "bad.jsonl:2: not JSON"),
    ('["a", "b"]', "bad.jsonl:2: expected a JSON object"),
])
def test_bad_jsonl_names_the_line(root, tmp_path, run_cli, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "cat", "completion": "CAT"}\n' + line + "\n")
    status, _, err = run_cli("gpt", "finetune", "--base", root / "base", "--out", tmp_path / "run", "--data", bad)
    assert_one_line_error(status, err, message)


def test_misaligned_files_unknown_method_and_wrong_base(root, tmp_path, run_cli):
    (tmp_path / "s.txt").write_text("cat\ndog\n")
    (tmp_path / "t.txt").write_text("CAT\n")
    status, _, err = run_cli("gpt", "finetune", "--base", root / "base", "--out", tmp_path / "a",
                             "--source", tmp_path / "s.txt", "--target", tmp_path / "t.txt")
    assert_one_line_error(status, err, "has 2 lines but", "has 1")

    status, _, err = run_cli("gpt", "finetune", "--base", root / "base", "--out", tmp_path / "b",
                             "--data", root / "train.jsonl", "--method", "prefix")
    assert_one_line_error(status, err, "invalid choice: 'prefix'")
    with pytest.raises(UserError, match="unknown --method 'prefix'"):
        apply_method(small_gpt(), MethodSettings("prefix"))

    run = finetune(tiny(root, tmp_path / "lora", method="lora", max_iters=2))
    other = tmp_path / "other"
    train(GptTrainConfig(data=str(root / "corpus.txt"), out=str(other), n_layer=1, n_head=2, n_embd=16,
                         block_size=48, batch_size=4, max_iters=1, eval_interval=1, eval_iters=1, amp=False,
                         device="cpu"))
    status, _, err = run_cli("gpt", "merge", "--run", run, "--out", tmp_path / "m", "--base", other)
    assert_one_line_error(status, err, "fine-tuned on a base of another shape")
    assert not (tmp_path / "m").exists()


def test_adapters_cannot_be_merged(root, tmp_path, run_cli):
    run = finetune(tiny(root, tmp_path / "adapter", method="adapter", max_iters=2))
    status, _, err = run_cli("gpt", "merge", "--run", run, "--out", tmp_path / "m")
    assert_one_line_error(status, err, "cannot be merged")
    assert not (tmp_path / "m").exists()
    status, _, err = run_cli("gpt", "export-hf", "--run", run, "--out", tmp_path / "hf")
    assert_one_line_error(status, err, "fine-tuned with adapters, which have no place in a GPT-2 layout")
    assert not (tmp_path / "hf").exists()


def test_every_cli_method_has_its_own_implementation_and_a_test():
    """Each --method the CLI offers reaches a distinct implementation through apply_method (a new
    name falling through to another method's branch fails here) and is tested on a fresh model."""
    def trainable(method: str) -> frozenset[str]:  # parameter names, the block index left out
        gpt = small_gpt()
        apply_method(gpt, MethodSettings(method, rank=4, adapter_size=8, total_steps=100))
        return frozenset(re.sub(r"\.\d+\.", ".", name) for name, p in gpt.named_parameters() if p.requires_grad)

    trained = {method: trainable(method) for method in FINETUNE_METHODS}
    assert len(set(trained.values())) == len(FINETUNE_METHODS)
    assert trained["full"] == {re.sub(r"\.\d+\.", ".", name) for name, _ in small_gpt().named_parameters()}
    assert trained["lora"] and all(".lora_A." in name or ".lora_B." in name for name in trained["lora"])
    assert any(".lora_E." in name for name in trained["adalora"])
    assert any(".adapter." in name for name in trained["adapter"])
    fresh = test_a_fresh_method_leaves_the_outputs_unchanged.pytestmark[0].args[1]  # its parametrisation
    assert set(FINETUNE_METHODS) == {"full", *fresh}
