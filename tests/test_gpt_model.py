"""The GPT model and generation: GPT-2 names, causal masking, KV cache == recomputation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aigc.errors import UserError
from aigc.gpt.generation import generate_tokens
from aigc.gpt.model import GPT, GPTConfig, KVCache
from aigc.gpt.sampling import Sampling

TINY = GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


def test_gpt2_parameter_names_and_tied_embedding(model):
    names = set(model.state_dict())
    for suffix in ("ln_1.weight", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "ln_2.bias",
                   "mlp.c_fc.weight", "mlp.c_proj.bias"):
        assert f"transformer.h.1.{suffix}" in names
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= names
    assert model.lm_head.weight is model.transformer.wte.weight
    assert "lm_head.weight" not in model.weights()


def test_logits_and_loss_shapes(model):
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, TINY.vocab_size)
    assert loss.ndim == 0 and abs(loss.item() - torch.log(torch.tensor(37.0)).item()) < 0.5


def test_changing_token_t_never_changes_logits_before_t(model):
    idx = torch.randint(0, TINY.vocab_size, (1, TINY.block_size))
    before, _ = model(idx)
    for t in (0, 5, TINY.block_size - 1):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % TINY.vocab_size
        after, _ = model(changed)
        assert torch.equal(after[:, :t], before[:, :t])
        assert not torch.allclose(after[:, t], before[:, t])


def test_cached_forward_matches_full_forward(model):
    idx = torch.randint(0, TINY.vocab_size, (2, 12))
    full, _ = model(idx)
    cache = KVCache(TINY, 2, torch.device("cpu"), torch.float32)
    first, _ = model(idx[:, :5], cache=cache)  # a prompt of 5, then 3 tokens at once, then one by one
    middle, _ = model(idx[:, 5:8], cache=cache)
    rest = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(8, 12)]
    torch.testing.assert_close(torch.cat([first, middle, *rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_hidden_states_are_what_the_lm_head_reads(model):
    idx = torch.randint(0, TINY.vocab_size, (2, 9))
    read = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: read.append(args[0]))
    logits, _ = model(idx)
    hook.remove()
    hidden = model.hidden_states(idx)  # (B, T, C)
    assert hidden.shape == (2, 9, TINY.n_embd)
    assert torch.equal(hidden, read[0])
    assert torch.equal(model.lm_head(hidden), logits)
    cache = model.new_cache(2)
    cached = torch.cat([model.hidden_states(idx[:, :4], cache), model.hidden_states(idx[:, 4:], cache)], dim=1)
    torch.testing.assert_close(cached, hidden, atol=1e-5, rtol=1e-5)


def cached_logits(model: GPT, cache: KVCache, idx: torch.Tensor) -> torch.Tensor:
    """Feed idx (B, T) one token at a time through the cache -> logits (B, T, V)."""
    return torch.cat([model(idx[:, t:t + 1], cache=cache)[0] for t in range(idx.size(1))], dim=1)


def test_cache_reorder_equals_recomputing_the_reordered_rows(model):
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    cache = model.new_cache(3)
    model(idx[:, :6], cache=cache)
    rows = torch.tensor([2, 0, 0, 1])  # reordered, one row twice, and a different batch size
    cache.reorder(rows)
    full, _ = model(idx[rows])
    torch.testing.assert_close(cached_logits(model, cache, idx[rows, 6:]), full[:, 6:], atol=1e-5, rtol=1e-5)


def test_cache_truncate_forgets_the_tokens_after_it(model):
    idx = torch.randint(0, TINY.vocab_size, (2, 10))
    other = (idx + 1) % TINY.vocab_size
    cache = model.new_cache(2)
    model(idx, cache=cache)
    cache.truncate(6)  # keep idx[:, :6], continue with other tokens
    full, _ = model(torch.cat([idx[:, :6], other[:, 6:]], dim=1))
    torch.testing.assert_close(cached_logits(model, cache, other[:, 6:]), full[:, 6:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot truncate"):
        cache.truncate(11)


def test_cache_select_branches_a_prefix_and_leaves_the_source_alone(model):
    idx = torch.randint(0, TINY.vocab_size, (2, 10))
    source = model.new_cache(2)
    model(idx[:, :8], cache=source)
    rows = torch.tensor([1, 1, 1, 0])
    branch = source.select(rows, length=5)  # the first 5 tokens of rows 1, 1, 1, 0
    continuation = torch.randint(0, TINY.vocab_size, (4, 3))
    full, _ = model(torch.cat([idx[rows, :5], continuation], dim=1))
    torch.testing.assert_close(cached_logits(model, branch, continuation), full[:, 5:], atol=1e-5, rtol=1e-5)
    whole, _ = model(idx)  # the source still holds its 8 tokens of both rows
    torch.testing.assert_close(cached_logits(model, source, idx[:, 8:]), whole[:, 8:], atol=1e-5, rtol=1e-5)


def test_kv_cache_generation_equals_recomputation_greedy(model):
    prompt = torch.randint(0, TINY.vocab_size, (2, 4))
    greedy = Sampling(temperature=0)
    cached = torch.stack(list(generate_tokens(model, prompt, 12, greedy, use_cache=True)), dim=1)
    recomputed = torch.stack(list(generate_tokens(model, prompt, 12, greedy, use_cache=False)), dim=1)
    assert torch.equal(cached, recomputed)


def test_generation_slides_past_the_context(model):
    prompt = torch.randint(0, TINY.vocab_size, (1, 40))  # longer than block_size
    tokens = list(generate_tokens(model, prompt, 30, Sampling(temperature=1.0), torch.Generator().manual_seed(0)))
    assert len(tokens) == 30
    assert all(0 <= int(t) < TINY.vocab_size for t in tokens)


def test_the_model_refuses_more_than_block_size(model):
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, TINY.block_size + 1, dtype=torch.long))


def test_optimizer_groups_decay_matrices_only(model):
    decay, no_decay = model.optimizer_groups(0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()


def test_attention_under_cpu_autocast_runs_in_float32():
    """bf16 autocast on a CPU: the attention is float32 (its bf16 backward is the slow one), the
    result handed back in bf16; without autocast, bf16 inputs stay a bf16 computation."""
    from aigc.gpt.model import _attention

    q, k, v = (torch.randn(2, 4, 16, 8).bfloat16() for _ in range(3))
    with torch.autocast("cpu", torch.bfloat16):
        y = _attention(q, k, v, is_causal=True)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).bfloat16()
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)
    assert torch.equal(_attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_gelu_forms_and_runs_saved_before_the_activation_field(tmp_path):
    """New models may use the exact GELU; a config without the field (GPT-2's, or a run saved
    before it existed) keeps GPT-2's tanh form; anything else is refused in one line."""
    from aigc.gpt.loading import model_config_of

    x = torch.linspace(-4, 4, 101)
    exact = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=16, activation="gelu"))
    assert torch.equal(exact.transformer.h[0].mlp.gelu(x), torch.nn.functional.gelu(x))
    saved = {"vocab_size": 11, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0}
    old = GPT(model_config_of({"model": saved}, tmp_path))
    assert torch.equal(old.transformer.h[0].mlp.gelu(x), torch.nn.functional.gelu(x, approximate="tanh"))
    with pytest.raises(UserError, match="activation must be one of gelu, gelu_tanh, got 'relu'"):
        GPTConfig(vocab_size=11, activation="relu")
