"""GPT-2 interoperability: logits parity with transformers both ways, tokenizers that load in transformers."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from aigc.data.tokenizers import train_tokenizer  # noqa: E402
from aigc.gpt.loading import load_gpt, save_inference_run  # noqa: E402
from aigc.gpt.model import GPT, GPTConfig  # noqa: E402

TEXT = "Some text for a tiny tokenizer: naïve café, 123 + 456 = 579.\n" * 30


def make_run(path, kind: str, activation: str = "gelu_tanh"):
    tokenizer = train_tokenizer(kind, TEXT.encode(), 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32,
                          activation=activation))
    for p in model.parameters():  # not just the init: biases and LayerNorms nonzero too
        p.data.normal_(0, 0.2)
    path.mkdir()
    save_inference_run(path, model, tokenizer)
    return path


@pytest.mark.parametrize("kind, activation", [("char", "gelu_tanh"), ("bpe", "gelu_tanh"), ("char", "gelu")])
def test_export_loads_in_transformers_with_the_same_logits_and_tokens(run_cli, tmp_path, kind, activation):
    run = make_run(tmp_path / "run", kind, activation)
    status, _, err = run_cli("gpt", "export-hf", "--run", run, "--out", tmp_path / "hf")
    assert status == 0, err
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    loaded = load_gpt(run)
    model, tokenizer = loaded.model, loaded.tokenizer
    text = "naïve café: 579 = 123 + 456"
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text
    with torch.no_grad():
        ours, _ = model(torch.tensor([ids]))
        theirs = hf_model(torch.tensor([ids])).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_bpe_export_loads_with_the_gpt2_tokenizer_class(run_cli, tmp_path):
    run = make_run(tmp_path / "run", "bpe")
    run_cli("gpt", "export-hf", "--run", run, "--out", tmp_path / "hf")
    gpt2_tokenizer = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "hf", local_files_only=True)
    tokenizer = load_gpt(run).tokenizer
    assert gpt2_tokenizer("café 123")["input_ids"] == tokenizer.encode("café 123")


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_import_matches_a_random_gpt2(run_cli, tmp_path, activation):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_layer=2, n_head=3,
                                     activation_function=activation)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    for p in hf_model.parameters():
        p.data.normal_(0, 0.2)
    hf_model.save_pretrained(tmp_path / "hf")
    bpe = train_tokenizer("bpe", TEXT.encode(), 299)  # GPT-2's tokenizer class adds <|endoftext|> as token 299
    transformers.GPT2TokenizerFast(tokenizer_object=bpe.backend).save_pretrained(tmp_path / "hf")

    status, _, err = run_cli("gpt", "import-hf", "--hf", tmp_path / "hf", "--out", tmp_path / "run")
    assert status == 0, err
    loaded = load_gpt(tmp_path / "run")
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = torch.tensor([tokenizer.encode("123 + 456 = 579, café")])
    with torch.no_grad():
        diff = (model(ids)[0] - hf_model(ids).logits).abs().max().item()
    assert diff <= 1e-4
    status, out, _ = run_cli("gpt", "generate", "--run", tmp_path / "run", "--prompt", "café", "--max-new-tokens", "5")
    assert status == 0 and out.startswith("café")
    assert tokenizer.decode([299]) == "<|endoftext|>"


def test_import_refuses_what_is_not_gpt2(run_cli, tmp_path):
    status, _, err = run_cli("gpt", "import-hf", "--hf", tmp_path, "--out", tmp_path / "run")
    assert status == 2 and "no config.json" in err
    hf = tmp_path / "hf"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1,
                                                         n_head=2, activation_function="relu")).save_pretrained(hf)
    transformers.GPT2TokenizerFast(tokenizer_object=train_tokenizer("bpe", b"abc", 256).backend).save_pretrained(hf)
    status, _, err = run_cli("gpt", "import-hf", "--hf", hf, "--out", tmp_path / "run")
    assert status == 2 and "activation 'relu'" in err
    assert json.loads((hf / "config.json").read_text())["model_type"] == "gpt2"


def test_import_refuses_what_is_not_a_whole_gpt2_folder(run_cli, tmp_path):
    """A BERT folder, a GPT-2 folder without its tokenizer, truncated or mismatched weights: one line
    each, and no run written (these used to import, or to give a traceback)."""
    import shutil

    from conftest import assert_one_line_error

    from aigc.runs import load_weights, save_weights

    run = make_run(tmp_path / "run", "bpe")
    assert run_cli("gpt", "export-hf", "--run", run, "--out", tmp_path / "hf")[0] == 0
    bert = tmp_path / "bert"
    shutil.copytree(tmp_path / "hf", bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert", "architectures": ["BertModel"]}))
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(tmp_path / "hf", no_tokenizer)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink(missing_ok=True)
    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "hf", truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "hf", partial)
    tensors, metadata = load_weights(partial / "model.safetensors")
    save_weights(partial / "model.safetensors", {k: v for k, v in tensors.items() if ".h.1." not in k}, metadata)
    for folder, fragment in [(bert, "holds a 'bert' model"), (no_tokenizer, "has no tokenizer"),
                             (truncated, "cannot load"), (partial, "do not fit its config")]:
        status, _, err = run_cli("gpt", "import-hf", "--hf", folder, "--out", tmp_path / f"run-{folder.name}")
        assert_one_line_error(status, err, fragment)
        assert not (tmp_path / f"run-{folder.name}").exists()
    status, _, err = run_cli("gpt", "import-hf", "--hf", tmp_path / "hf", "--out", tmp_path / "imported")
    assert status == 0, err
