"""Picking tokens: the inverse-CDF draw, the filters, the settings' validation, the shared loop."""

from __future__ import annotations

import pytest
import torch

from aigc.errors import UserError
from aigc.gpt.model import GPT, GPTConfig
from aigc.gpt.sampling import Sampling, draw, next_token, sample_tokens


def test_draw_samples_the_given_distribution_and_never_a_zero_probability_token():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0]).expand(200_000, 5)
    counts = torch.bincount(draw(probs, torch.Generator().manual_seed(0)), minlength=5).float()
    assert counts[1] == 0 and counts[4] == 0
    torch.testing.assert_close(counts / counts.sum(), probs[0], atol=0.005, rtol=0)


def test_sampling_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    history = torch.tensor([[0]])
    seeds = range(30)
    pick = lambda s, seed, banned=None: int(  # noqa: E731
        next_token(logits, history, s, torch.Generator().manual_seed(seed), banned))
    assert pick(Sampling(temperature=0), 0) == 0
    assert {pick(Sampling(temperature=1.0, top_k=1), s) for s in seeds} == {0}
    assert {pick(Sampling(temperature=5.0, top_k=2), s) for s in seeds} == {0, 1}
    # top_p: p(0) = 0.64, p(1) = 0.24; 0.7 needs both, never a third
    assert {pick(Sampling(temperature=1.0, top_p=0.7), s) for s in seeds} == {0, 1}
    # repetition penalty 10: the seen token 0 (logit 3 -> 0.3) loses to token 1 under greedy
    assert pick(Sampling(temperature=0, repetition_penalty=10.0), 0) == 1
    # a banned token is never picked, greedy or not, and the caller's logits stay as they were
    assert pick(Sampling(temperature=0), 0, banned=0) == 1
    assert 0 not in {pick(Sampling(temperature=5.0, top_k=2), s, banned=0) for s in seeds}
    assert logits[0, 0] == 3.0


@pytest.mark.parametrize("settings, name", [
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
])
def test_bad_sampling_settings_are_one_line_naming_the_parameter(settings, name):
    with pytest.raises(UserError) as error:
        Sampling(**settings)
    message = str(error.value)
    assert message.startswith(name + " ") and "\n" not in message
    assert repr(next(iter(settings.values()))) in message  # it shows the refused value


def test_the_edges_of_the_valid_ranges_are_accepted():
    Sampling(temperature=0, top_k=1, top_p=1.0, repetition_penalty=1e-3)
    Sampling(temperature=1e-6, top_k=None, top_p=1e-9, repetition_penalty=100)


def test_the_loop_fills_the_buffer_after_the_prefix_and_yields_each_column():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    tokens = torch.randint(0, 11, (3, 20))  # longer than the context: the window slides
    prefix = tokens[:, :5].clone()
    cache = model.new_cache(3)
    with torch.no_grad():
        logits = model(prefix, cache=cache)[0][:, -1]
        columns = list(sample_tokens(model, cache, logits, tokens, 5, Sampling(temperature=1.0),
                                     torch.Generator().manual_seed(0), banned=4))
    assert torch.equal(tokens[:, :5], prefix)
    assert torch.equal(torch.stack(columns, dim=1), tokens[:, 5:])
    assert not (tokens[:, 5:] == 4).any()
