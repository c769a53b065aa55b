"""The batching engine and the batch KV cache under it: batched decoding gives what decoding
each sequence alone gives."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from aigc.gpt.generation import Generator
from aigc.gpt.loading import load_gpt
from aigc.gpt.model import GPT, GPTConfig
from aigc.gpt.sampling import Sampling
from aigc.serve.engine import ABORT, Engine, EngineClosed, Event, QueueFull, Sequence
from serve_fixtures import gpt_run  # noqa: F401 (a fixture)

PROMPTS = ["to be", "or not", "t", "that is the q", "be, that", "question. ", "not to be or", "is"]


def test_batch_cache_rows_of_different_lengths_match_each_row_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    prompts = [torch.randint(0, 50, (1, n)) for n in (3, 7, 1, 12)]
    batch = model.new_batch_cache(4)
    alone = []
    with torch.no_grad():
        for prompt in prompts:
            cache = model.new_cache(1)
            model(prompt, cache=cache)
            batch.add(cache)
            alone.append(cache)
        nxt = torch.randint(0, 50, (4, 1))
        batched = model(nxt, cache=batch)[0][:, -1]  # (4, V)
        for b, cache in enumerate(alone):
            expected = model(nxt[b:b + 1], cache=cache)[0][:, -1]
            torch.testing.assert_close(batched[b:b + 1], expected, rtol=1e-5, atol=1e-5)
        # a row leaves: the last row moves into its place and keeps decoding as before
        batch.remove(1)
        assert batch.lengths == [4, 13, 2]
        nxt2 = torch.randint(0, 50, (3, 1))
        batched = model(nxt2, cache=batch)[0][:, -1]
        for b, cache in zip(range(3), [alone[0], alone[3], alone[2]]):
            torch.testing.assert_close(batched[b:b + 1], model(nxt2[b:b + 1], cache=cache)[0][:, -1],
                                       rtol=1e-5, atol=1e-5)


def collect(engine: Engine, prompt: str, max_tokens: int, sampling: Sampling, **options) -> tuple[Sequence, queue.Queue]:
    events: queue.Queue[Event] = queue.Queue()
    sequence = Sequence(engine.encode(prompt), max_tokens, sampling, events.put, **options)
    return sequence, events


def result(events: queue.Queue, timeout: float = 60) -> tuple[str, Event]:
    text = []
    while True:
        event = events.get(timeout=timeout)
        text.append(event.text)
        if event.finish_reason is not None:
            return "".join(text), event


@pytest.fixture(scope="module")
def loaded(gpt_run):
    return load_gpt(gpt_run, device="cpu")


@pytest.fixture
def engine(loaded):
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=8, max_queue=16)
    yield engine
    engine.close()


@pytest.mark.parametrize("max_tokens", [12, 70], ids=["in-context", "sliding-window"])
def test_eight_concurrent_greedy_requests_equal_one_at_a_time(loaded, engine, max_tokens):
    reference = Generator(loaded.model, loaded.tokenizer)
    greedy = Sampling(temperature=0)
    alone = [reference.completions(p, max_tokens, greedy)[0].text for p in PROMPTS]
    submitted = [collect(engine, p, max_tokens, greedy) for p in PROMPTS]
    engine.submit([sequence for sequence, _ in submitted])
    together = [result(events)[0] for _, events in submitted]
    assert together == alone
    assert len(set(together)) > 1  # the prompts lead to different texts: rows really differ


def test_a_compiled_server_decodes_what_the_eager_model_does(loaded, gpt_run):
    """`aigc serve --compile`: every batch shape compiled at start-up; rows leave one by one (eight,
    then fewer than MATVEC_ROWS, then one) and one slides its window, as the eager model decodes."""
    from aigc.serve.app import create_app

    app = create_app(gpt=[f"tiny={gpt_run}"], max_batch=8, dtype="fp32", compile=True)
    engine = app.state.models["tiny"].engine
    try:
        assert engine.model.decoding_compiled
        reference = Generator(loaded.model, loaded.tokenizer)
        greedy = Sampling(temperature=0)
        lengths = [70, 3, 6, 9, 12, 15, 18, 21]  # 70: past the 32-token context
        alone = [reference.completions(p, n, greedy)[0].text for p, n in zip(PROMPTS, lengths)]
        submitted = [collect(engine, p, n, greedy) for p, n in zip(PROMPTS, lengths)]
        engine.submit([sequence for sequence, _ in submitted])
        assert [result(events)[0] for _, events in submitted] == alone
    finally:
        app.state.begin_shutdown(0).join()


def test_a_seed_gives_the_same_text_alone_and_in_a_batch(loaded, engine):
    hot = Sampling(temperature=1.5, top_p=0.95)
    alone = Generator(loaded.model, loaded.tokenizer).completions("to be", 30, hot, seed=7)[0].text
    others = [collect(engine, p, 30, hot, seed=i) for i, p in enumerate(PROMPTS[1:])]
    mine = collect(engine, "to be", 30, hot, seed=7)
    engine.submit([s for s, _ in others[:3]] + [mine[0]] + [s for s, _ in others[3:]])
    assert result(mine[1])[0] == alone
    texts = [result(events)[0] for _, events in others]
    assert len(set(texts)) > 1


def test_a_request_joins_a_running_batch_and_leaves_without_waiting(loaded, engine):
    greedy = Sampling(temperature=0)
    long_one, long_events = collect(engine, "to be", 200, greedy)
    engine.submit([long_one])
    long_events.get(timeout=60)  # the long one is decoding
    short, short_events = collect(engine, "or not", 5, greedy)
    engine.submit([short])
    text, last = result(short_events)
    assert last.finish_reason == "length" and last.completion_tokens == 5
    assert text == Generator(loaded.model, loaded.tokenizer).completions("or not", 5, greedy)[0].text
    assert engine.running == 1  # the short one left; the long one is still decoding
    engine.cancel(long_one)
    deadline = threading.Event()
    while engine.running and not deadline.wait(0.01):
        pass
    assert engine.running == 0  # the cancelled row was freed


def test_stop_strings_and_token_counts_per_row(loaded, engine):
    greedy = Sampling(temperature=0)
    reference = Generator(loaded.model, loaded.tokenizer).completions("to be or", 40, greedy, stop=["the", "zz"])[0]
    assert reference.finish_reason == "stop"
    stopped, stop_events = collect(engine, "to be or", 40, greedy, stop=["the", "zz"])
    plain, plain_events = collect(engine, "to be or", 10, greedy, logprobs=2)
    engine.submit([stopped, plain])
    text, last = result(stop_events)
    assert (text, last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
        reference.text, reference.finish_reason, reference.prompt_tokens, reference.completion_tokens)
    logprobs = []
    while True:
        event = plain_events.get(timeout=60)
        logprobs += event.logprobs
        if event.finish_reason:
            break
    assert len(logprobs) == 10
    for entry in logprobs:  # greedy: the chosen token is the likeliest one
        assert len(entry.top) == 2 and entry.logprob == pytest.approx(max(entry.top.values()))


def test_a_full_queue_refuses_and_a_closing_engine_aborts(loaded):
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=1, max_queue=1)
    greedy = Sampling(temperature=0)
    first, first_events = collect(engine, "to be", 10_000, greedy)
    engine.submit([first])
    first_events.get(timeout=60)  # running: its row is taken, the one place in the queue is free
    waiting, waiting_events = collect(engine, "or", 5, greedy)
    engine.submit([waiting])
    with pytest.raises(QueueFull):
        engine.submit([collect(engine, "is", 5, greedy)[0]])
    engine.close(grace=0.2)
    with pytest.raises(EngineClosed):
        engine.submit([collect(engine, "is", 5, greedy)[0]])
    assert result(first_events)[1].finish_reason == ABORT
    assert result(waiting_events)[1].finish_reason == ABORT
