"""Text GAN: the SeqGAN oracle port, reward alignment, rollouts, discriminators, BLEU, the recipe."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from aigc.gpt.model import GPT, GPTConfig
from aigc.gpt.sampling import draw
from aigc.metrics.text_gan import bleu, self_bleu
from aigc.textgan import generator as gen
from aigc.textgan.discriminators import build_discriminator, discriminator_loss
from aigc.textgan.oracle import Oracle
from aigc.textgan.rollout import policy_gradient_loss, rollout_completions, rollout_rewards
from aigc.textgan.loading import load_textgan
from conftest import assert_one_line_error


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread only busy-waits on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(vocab: int, length: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab + 1, block_size=length, n_layer=1, n_head=2, n_embd=16))


def write_oracle(path, vocab=12, emb=4, hidden=5, seed=0, **override) -> str:
    rng = np.random.default_rng(seed)
    shapes = {"emb": (vocab, emb), "Wo": (hidden, vocab), "bo": (vocab,)}
    for gate in ("i", "f", "og", "c"):
        shapes.update({f"W{gate}": (emb, hidden), f"U{gate}": (hidden, hidden), f"b{gate}": (hidden,)})
    arrays = {name: rng.normal(0, 1, shape).astype(np.float32) for name, shape in shapes.items()}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


# --- the oracle ---------------------------------------------------------------------------

def test_oracle_port_matches_seqgan_check_value(shared_data):
    oracle = Oracle.load(shared_data / "seqgan" / "oracle_params.npz")
    tokens = torch.from_numpy(np.loadtxt(shared_data / "seqgan" / "oracle_train.txt", dtype=np.int64))
    assert tokens.shape == (9984, 20)
    assert oracle.nll(tokens) == pytest.approx(5.761, abs=0.01)


def test_oracle_port_is_the_tensorflow_recurrence(tmp_path):
    """The torch LSTM equals SeqGAN's equations written out with x @ W, h @ U."""
    path = write_oracle(tmp_path / "o.npz")
    p = {k: torch.from_numpy(v) for k, v in np.load(path).items()}
    oracle = Oracle.load(path)
    tokens = torch.tensor([[3, 7, 1, 0, 11]])
    h = c = torch.zeros(1, 5)
    expected, previous = [], 0
    for token in tokens[0].tolist():
        x = p["emb"][previous][None]
        i, f = (torch.sigmoid(x @ p[f"W{g}"] + h @ p[f"U{g}"] + p[f"b{g}"]) for g in ("i", "f"))
        o = torch.sigmoid(x @ p["Wog"] + h @ p["Uog"] + p["bog"])
        c = f * c + i * torch.tanh(x @ p["Wc"] + h @ p["Uc"] + p["bc"])
        h = o * torch.tanh(c)
        expected.append(h @ p["Wo"] + p["bo"])
        previous = token
    torch.testing.assert_close(oracle(tokens)[0], torch.cat(expected), rtol=1e-5, atol=1e-5)


def test_oracle_log_prob_is_a_distribution_over_sequences(tmp_path):
    """Over every sequence of a tiny oracle, exp(log_prob) sums to 1 (in chunks as whole), and
    nll is the negative mean per token of the same numbers."""
    oracle = Oracle.load(write_oracle(tmp_path / "o.npz", vocab=4))
    every = torch.tensor(list(itertools.product(range(4), repeat=3)))  # (64, 3)
    log_p = oracle.log_prob(every, batch_size=5)
    assert log_p.dtype == torch.float64 and log_p.shape == (64,)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(log_p, oracle.log_prob(every))
    assert oracle.nll(every) == pytest.approx(-log_p.sum().item() / every.numel(), rel=1e-6)


@pytest.mark.parametrize("override, message", [
    ({"Uc": None}, "missing array(s) Uc"),
    ({"Wi": np.zeros((5, 4), np.float32)}, "array 'Wi' has shape [5, 4], expected [4, 5]"),
    ({"Wo": np.zeros((5, 11), np.float32)}, "array 'Wo' has shape [5, 11]"),
])
def test_bad_oracle_file_is_one_line(tmp_path, run_cli, override, message):
    path = write_oracle(tmp_path / "o.npz", **override)
    status, _, err = run_cli("textgan", "train", "--data", "oracle", "--oracle", path, "--out", tmp_path / "run")
    assert_one_line_error(status, err, message)


def test_oracle_file_that_is_not_npz(tmp_path, run_cli):
    (tmp_path / "o.npz").write_text("not a zip")
    status, _, err = run_cli("textgan", "train", "--data", "oracle", "--oracle", tmp_path / "o.npz",
                             "--out", tmp_path / "run")
    assert_one_line_error(status, err, "cannot read oracle parameters")


# --- sampling, rollouts and rewards --------------------------------------------------------

def test_nll_at_each_temperature_is_that_of_the_tempered_softmax():
    model = tiny_gpt(vocab=6, length=5)
    tokens = gen.sample(model, 40, bos=6, generator=torch.Generator().manual_seed(0))
    temperatures = [0.5, 1.0, 1.7]
    with torch.no_grad():
        logits = model.eval()(gen.with_bos(tokens, 6))[0][..., :6]  # (B, L, 6): the start token left out
    expected = [-(logits / t).log_softmax(-1).gather(2, tokens[..., None]).mean().item() for t in temperatures]
    measured = gen.nll_at_temperatures(model, tokens, 6, temperatures, batch_size=16)
    assert measured == pytest.approx(expected, rel=1e-5)
    assert abs(measured[0] - measured[2]) > 0.01  # the temperature matters
    assert gen.nll(model, tokens, 6, 1.7) == pytest.approx(expected[2], rel=1e-5)


def test_rollouts_complete_the_prefix_without_changing_it():
    model = tiny_gpt(vocab=7, length=6).eval()
    tokens = gen.sample(model, 5, bos=7, generator=torch.Generator().manual_seed(1))  # (5, 6)
    for t in range(1, 6):
        out = rollout_completions(model, tokens, 7, t, rollouts=4, generator=torch.Generator().manual_seed(2))
        assert out.shape == (20, 6)
        assert torch.equal(out[:, :t], tokens.repeat_interleave(4, dim=0)[:, :t])  # sample-major, untouched
        assert out.min() >= 0 and out.max() < 7  # never the start token
        # The cached completion equals re-reading the whole context for every new token.
        reference, g = tokens.repeat_interleave(4, dim=0).clone(), torch.Generator().manual_seed(2)
        with torch.no_grad():
            for s in range(t, 6):
                logits = model(gen.with_bos(reference, 7)[:, :s + 1])[0][:, -1]
                reference[:, s] = draw(gen.masked_logits(logits, 7).softmax(-1), g)
        assert torch.equal(out, reference)
    assert not torch.equal(out[:, 1:], tokens.repeat_interleave(4, dim=0)[:, 1:])  # they do sample


def test_each_reward_belongs_to_its_own_sample_and_step():
    """A judge that likes token 3 at position 2: every reward from step 2 on is exactly that verdict."""
    model = tiny_gpt(vocab=5, length=5)
    tokens = gen.sample(model, 64, bos=5, generator=torch.Generator().manual_seed(0))
    rewards = rollout_rewards(model, tokens, 5, lambda x: (x[:, 2] == 3).float(), rollouts=8,
                              generator=torch.Generator().manual_seed(1))
    liked = (tokens[:, 2] == 3).float()
    assert 0 < liked.sum() < 64
    for col in (2, 3, 4):
        assert torch.equal(rewards[:, col], liked)
    assert not torch.equal(rewards[:, 1], liked) and 0 < rewards[:, :2].mean() < 1  # before it: an estimate


def first_end(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """Index of each row's first ``eos`` (B,); the row length where it has none."""
    is_end = torch.cat([tokens == eos, torch.ones_like(tokens[:, :1], dtype=torch.bool)], dim=1)
    return is_end.int().argmax(dim=1)


def test_the_end_token_is_absorbing_and_changes_nothing_before_it():
    model, eos = tiny_gpt(vocab=5, length=8), 0
    free = gen.sample(model, 300, bos=5, generator=torch.Generator().manual_seed(0))
    ended = gen.sample(model, 300, bos=5, generator=torch.Generator().manual_seed(0), eos=eos)
    ends = first_end(ended, eos)
    assert 0 < (ends < 8).float().mean() < 1
    after = torch.arange(8)[None, :] > ends[:, None]  # (B, L)
    assert torch.all(ended[after] == eos)
    assert torch.any(free[after] != eos)  # without it the model does write on
    up_to_end = ~after
    assert torch.equal(free[up_to_end], ended[up_to_end])  # the same draws until a row ends


def test_ended_prefixes_are_rewarded_with_the_sequence_verdict_and_not_rolled_out():
    model, eos, rollouts = tiny_gpt(vocab=5, length=8), 0, 4
    tokens = gen.sample(model, 64, bos=5, generator=torch.Generator().manual_seed(0), eos=eos)
    judged = []

    def judge(x: torch.Tensor) -> torch.Tensor:
        judged.append(len(x))
        return (x[:, 1] == 3).float() + 0.1 * (x == eos).sum(dim=1) / 8  # depends on the padding too

    rewards = rollout_rewards(model, tokens, 5, judge, rollouts, torch.Generator().manual_seed(1), eos=eos)
    ends = first_end(tokens, eos)
    ended = torch.arange(8)[None, :] >= ends[:, None]  # (B, L): prefix tokens[:, :t + 1] holds eos
    verdicts = judge(tokens)
    assert torch.equal(rewards[ended], verdicts[:, None].expand(-1, 8)[ended])
    open_prefixes = (~ended[:, :-1]).sum().item()  # columns 0 .. L - 2 are rolled out while open
    assert judged[1:-1] and sum(judged[1:-1]) == open_prefixes * rollouts
    for t in range(1, 8):
        out = rollout_completions(model, tokens, 5, t, rollouts, torch.Generator().manual_seed(t), eos=eos)
        assert torch.equal(out[:, :t], tokens.repeat_interleave(rollouts, dim=0)[:, :t])
        out_ends = first_end(out, eos)
        assert torch.all(out[torch.arange(8)[None, :] > out_ends[:, None]] == eos)


def exact_marginals(model: GPT, vocab: int, length: int) -> torch.Tensor:
    """P(y_t = v) (L, V) by enumerating every sequence."""
    every = torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # (V^L, L)
    with torch.no_grad():
        p = gen.token_log_probs(model.eval(), every, vocab).sum(1).exp()  # (V^L,)
    return torch.stack([torch.zeros(vocab).index_add_(0, every[:, t], p) for t in range(length)])


def logit_ascent(aligned: bool, batch: int = 512) -> torch.Tensor:
    """How the policy gradient pushes each (position, token) logit, summed over a batch (L, V)."""
    vocab, length, position, token = 4, 4, 2, 1
    model = tiny_gpt(vocab, length, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    tokens = gen.sample(model, batch, vocab, generator=g)
    rewards = rollout_rewards(model, tokens, vocab, lambda x: (x[:, position] == token).float(), 8, g)
    if not aligned:  # the known bug: rewards scrambled across samples
        rewards = rewards[torch.randperm(batch, generator=g)]
    logits = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: logits.append(out))
    loss = policy_gradient_loss(model, tokens, rewards, vocab, baseline=True)
    hook.remove()
    (gradient,) = torch.autograd.grad(loss, logits[0])  # (B, L, V + 1)
    return -gradient.sum(0)[:, :vocab] * batch * length


def test_policy_gradient_raises_exactly_the_rewarded_token_where_rewarded():
    push = logit_ascent(aligned=True)
    assert divmod(push.argmax().item(), 4) == (2, 1)
    others = push.clone()
    others[2, 1] = 0
    assert push[2, 1] > 50 and others.max() < push[2, 1] / 4
    scrambled = logit_ascent(aligned=False)
    assert scrambled[2, 1].abs() < push[2, 1] / 4


def test_policy_gradient_steps_make_the_rewarded_token_likely_there():
    vocab, length = 4, 4
    model = tiny_gpt(vocab, length, seed=3)
    before = exact_marginals(model, vocab, length)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        tokens = gen.sample(model, 64, vocab, generator=g)
        rewards = rollout_rewards(model, tokens, vocab, lambda x: (x[:, 2] == 1).float(), 4, g)
        loss = policy_gradient_loss(model.eval(), tokens, rewards, vocab, baseline=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = exact_marginals(model, vocab, length)
    assert after[2, 1] > 0.8 and after[2, 1] - before[2, 1] > 0.4


# --- discriminators -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_discriminator_learns_real_vs_shuffled(kind):
    torch.manual_seed(0)
    vocab, length = 20, 12

    def real(n):  # arithmetic progressions mod vocab: order is everything
        start, step = torch.randint(vocab, (n, 1)), torch.randint(1, 4, (n, 1))
        return (start + step * torch.arange(length)) % vocab

    def shuffled(x):
        return x.gather(1, torch.rand(x.shape).argsort(dim=1))

    disc = build_discriminator(kind, vocab, length)
    optimizer = torch.optim.Adam(disc.parameters(), lr=2e-3)
    for _ in range(120):
        x = real(64)
        loss, _ = discriminator_loss(disc, x, shuffled(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    disc.eval()
    test = real(500)
    with torch.no_grad():
        accuracy = ((disc(test) > 0).float().mean() + (disc(shuffled(test)) < 0).float().mean()) / 2
    assert accuracy > 0.9


# --- BLEU and Self-BLEU ---------------------------------------------------------------------

def words(*sentences: str) -> list[list[str]]:
    return [s.split() for s in sentences]


def test_bleu_hand_checked():
    refs = words("a b c e")
    assert bleu(words("a b c d"), refs, 2) == pytest.approx(math.sqrt(3 / 4 * 2 / 3))
    assert bleu(words("a b c d"), refs, 3) == pytest.approx((3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3))
    # no 4-gram matches: smoothing method 1 counts 0.1 of the one 4-gram
    assert bleu(words("a b c d"), refs, 4) == pytest.approx((3 / 4 * 2 / 3 * 1 / 2 * 0.1) ** (1 / 4))
    assert bleu(words("a b"), refs, 2) == pytest.approx(math.exp(1 - 4 / 2))  # brevity penalty
    assert bleu(words("a a a a"), refs, 2) == pytest.approx(math.sqrt(1 / 4 * 0.1 / 3))  # clipped counts
    assert bleu(words("x y"), refs, 2) == 0.0  # no unigram at all
    # several references: counts clip at the highest count in any one of them; the closest length wins
    assert bleu(words("a a b c"), words("a b", "a a c d e"), 2) == pytest.approx(math.exp(1 - 5 / 4) * math.sqrt(2 / 3))
    assert bleu(words("a b c d", "a b"), refs, 2) == pytest.approx((math.sqrt(1 / 2) + math.exp(-1)) / 2)


def test_self_bleu_leaves_each_sentence_out():
    sentences = words("a b c d", "a b c d", "e f g h")
    assert self_bleu(sentences, 2) == pytest.approx(2 / 3)  # two exact twins, one stranger
    assert self_bleu(words("a a b", "a b", "c a"), 2) == pytest.approx(
        (math.sqrt(2 / 3 * 1 / 2) + 1 + math.sqrt(1 / 2 * 0.1)) / 3)  # "a a b" may not count its own second "a"


def test_bleu_equals_nltk_sentence_bleu_method1():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    rng = np.random.default_rng(0)
    vocabulary = list("abcdefg")
    refs = [list(rng.choice(vocabulary, rng.integers(3, 9))) for _ in range(30)]
    hyps = [list(rng.choice(vocabulary, rng.integers(1, 9))) for _ in range(20)]
    method1 = bleu_score.SmoothingFunction().method1
    for n in (2, 3, 4, 5):
        expected = np.mean([bleu_score.sentence_bleu(refs, h, [1 / n] * n, smoothing_function=method1) for h in hyps])
        assert bleu(hyps, refs, n) == pytest.approx(expected, abs=1e-12)
        expected_self = np.mean([bleu_score.sentence_bleu(refs[:i] + refs[i + 1:], s, [1 / n] * n,
                                                          smoothing_function=method1) for i, s in enumerate(refs)])
        assert self_bleu(refs, n) == pytest.approx(expected_self, abs=1e-12)


# --- the recipe -----------------------------------------------------------------------------

SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "8", "--max-iters", "6",
         "--d-pretrain-steps", "3", "--rollouts", "2", "--log-every", "2", "--eval-every", "4",
         "--save-every", "3", "--device", "cpu"]


def oracle_args(tmp_path) -> list[str]:
    return ["--data", "oracle", "--oracle", write_oracle(tmp_path / "o.npz"), "--oracle-samples", "64",
            "--oracle-length", "6"]


def test_train_runs_every_phase_and_resume_continues_the_same_run(tmp_path, run_cli):
    status, _, err = run_cli("textgan", "train", *oracle_args(tmp_path), *SMALL, "--adv-rounds", "3",
                             "--mle-steps", "1", "--out", tmp_path / "full")
    assert status == 0, err
    lines = (tmp_path / "full" / "metrics.jsonl").read_text()
    for key in ("mle_loss", "d_accuracy", "reward", "pg_loss", "nll_oracle", "val_nll"):
        assert f'"{key}"' in lines
    status, _, err = run_cli("textgan", "train", *oracle_args(tmp_path), *SMALL, "--adv-rounds", "1",
                             "--mle-steps", "1", "--out", tmp_path / "split")
    assert status == 0, err
    status, _, err = run_cli("textgan", "train", "--resume", "--rollouts", "5", "--out", tmp_path / "split")
    assert_one_line_error(status, err, "cannot resume with --rollouts 5: the run was trained with")
    status, _, err = run_cli("textgan", "train", "--resume", "--adv-rounds", "3", "--out", tmp_path / "split")
    assert status == 0, err
    full, split = (load_textgan(tmp_path / name).model.state_dict() for name in ("full", "split"))
    for name in full:
        assert torch.equal(full[name], split[name]), name


def test_words_data_base_run_and_constant_reward_control(tmp_path, run_cli):
    data = tmp_path / "train.txt"
    data.write_text("a man rides a horse .\na cat sits on a mat .\ntwo dogs play in the park .\n" * 10)
    status, _, err = run_cli("textgan", "train", "--data", data, *SMALL, "--adv-rounds", "0", "--out", tmp_path / "mle")
    assert status == 0, err
    loaded = load_textgan(tmp_path / "mle")
    model, codec = loaded.model, loaded.codec
    assert model.config.block_size == 8 and codec.decode(codec.encode([["a", "cat"]], 8)) == [["a", "cat"]]
    status, _, err = run_cli("textgan", "train", "--data", data, "--base", tmp_path / "mle", *SMALL,
                             "--adv-rounds", "2", "--reward", "constant", "--disc", "transformer",
                             "--out", tmp_path / "control")
    assert status == 0, err
    assert not (tmp_path / "control" / "discriminator.safetensors").exists()
    assert '"reward": 0.5' in (tmp_path / "control" / "metrics.jsonl").read_text()
    # --base: no MLE phase, the generator starts where the base ended
    assert '"mle_loss"' not in (tmp_path / "control" / "metrics.jsonl").read_text()

    longer = tmp_path / "long.txt"
    longer.write_text("a man rides a horse along the beach .\n")
    status, _, err = run_cli("textgan", "train", "--data", longer, "--base", tmp_path / "mle", *SMALL,
                             "--out", tmp_path / "long")
    assert_one_line_error(status, err, "does not fit the generator's context of 8 tokens")


def test_token_ids_outside_the_vocabulary_are_one_line(tmp_path, run_cli):
    data = tmp_path / "ids.txt"
    data.write_text("1 2 3\n4 12 5\n")
    status, _, err = run_cli("textgan", "train", "--data", data, "--oracle", write_oracle(tmp_path / "o.npz"),
                             "--out", tmp_path / "run")
    assert_one_line_error(status, err, "line 2 has token id 12 outside the vocabulary [0, 12)")
    status, _, err = run_cli("textgan", "train", "--data", data, "--vocab-size", "20", "--base", tmp_path / "nope",
                             "--out", tmp_path / "run2")
    assert_one_line_error(status, err, "run directory not found")


@pytest.mark.parametrize("args, message", [
    (["--rollouts", "0"], "--rollouts must be at least 1, got 0"),
    (["--data", "oracle"], "--data oracle needs --oracle"),
])
def test_bad_flags_are_one_line(tmp_path, run_cli, args, message):
    data = tmp_path / "ids.txt"
    data.write_text("1 2 3\n")
    status, _, err = run_cli("textgan", "train", "--data", data, "--vocab-size", "5", "--out", tmp_path / "r", *args)
    assert_one_line_error(status, err, message)


def test_ids_of_unequal_length_and_longer_than_the_base_context(tmp_path, run_cli):
    data = tmp_path / "ids.txt"
    data.write_text("1 2 3\n4 5\n")
    status, _, err = run_cli("textgan", "train", "--data", data, "--vocab-size", "6", "--out", tmp_path / "r")
    assert_one_line_error(status, err, "line 2 has 2 tokens, line 1 has 3")
    status, _, err = run_cli("textgan", "train", *oracle_args(tmp_path), *SMALL, "--adv-rounds", "0",
                             "--out", tmp_path / "base")
    assert status == 0, err
    data.write_text("1 2 3 4 5 6 7\n")
    status, _, err = run_cli("textgan", "train", "--data", data, "--base", tmp_path / "base", "--out", tmp_path / "r2")
    assert_one_line_error(status, err, "sequences of 7 tokens but the base generator")


def test_base_can_be_a_pretrained_gpt_run(tmp_path, run_cli):
    text = tmp_path / "lines.txt"
    text.write_text("the cat sat.\nthe dog ran.\na cat ran.\n" * 40)
    status, _, err = run_cli("gpt", "train", "--data", text, "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                             "--block-size", "16", "--max-iters", "30", "--eval-interval", "30", "--eval-iters", "2",
                             "--device", "cpu", "--out", tmp_path / "gpt")
    assert status == 0, err
    status, _, err = run_cli("textgan", "train", "--data", text, "--base", tmp_path / "gpt", *SMALL,
                             "--adv-rounds", "1", "--out", tmp_path / "gan")
    assert status == 0, err
    loaded = load_textgan(tmp_path / "gan")
    model, codec = loaded.model, loaded.codec
    assert codec.kind == "tokenizer" and model.config.vocab_size == codec.size + 1
    tokens = codec.encode([["the", "cat", "sat."]], 16)
    assert tokens[0, 12:].tolist() == [codec.eos] * 4 and codec.decode(tokens) == [["the", "cat", "sat."]]
    samples = codec.decode(gen.sample(model, 4, codec.bos, generator=torch.Generator().manual_seed(0)))
    assert len(samples) == 4 and all(isinstance(w, str) for s in samples for w in s)
    text.write_text("the cat sat. the dog ran. a cat ran.\n")  # 36 characters
    status, _, err = run_cli("textgan", "train", "--data", text, "--base", tmp_path / "gpt", "--out", tmp_path / "x")
    assert_one_line_error(status, err, "does not fit the generator's context of 16 tokens")
