"""`aigc serve` on a live uvicorn server (loopback, a free port), through the official `openai`
client and plain HTTP: the OpenAI routes, the errors a client can cause, the limits."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from aigc.gpt.generation import Generator
from aigc.gpt.loading import load_gpt
from aigc.gpt.sampling import Sampling
from aigc.serve.app import create_app
from aigc.serve.cli import listening_socket
from conftest import assert_one_line_error
from serve_fixtures import LiveServer, gan_run, gpt_run, unconditional_gan_run  # noqa: F401 (fixtures)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def server(gpt_run, gan_run, unconditional_gan_run):
    live = LiveServer(create_app(gpt=[f"tiny={gpt_run}"], gan=[str(gan_run), f"any={unconditional_gan_run}"],
                                 device="cpu", max_batch=8, max_tokens_cap=5000, max_n=8, max_body=20_000))
    yield live
    live.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(gpt_run):
    loaded = load_gpt(gpt_run, device="cpu")
    return Generator(loaded.model, loaded.tokenizer)


def post(server, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=60,
                      **kwargs)


# ---------------------------------------------------------------- the OpenAI routes

def test_completion_equals_the_cli_generation_and_counts_usage(client, reference):
    expected = reference.completions("to be or", 20, Sampling(temperature=0))[0]
    response = client.completions.create(model="tiny", prompt="to be or", max_tokens=20, temperature=0)
    (choice,) = response.choices
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (8, 20, 28)
    assert response.object == "text_completion" and response.model == "tiny"


def test_streamed_completion_joins_to_the_same_text_and_reports_usage(client):
    whole = client.completions.create(model="tiny", prompt="to be", max_tokens=25, temperature=0).choices[0].text
    chunks = list(client.completions.create(model="tiny", prompt="to be", max_tokens=25, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert len([c for c in chunks if c.choices]) > 5  # token by token, not one lump
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 25


def test_n_choices_with_a_seed_repeat_and_differ_from_each_other(client):
    ask = dict(model="tiny", prompt=["to", "be"], max_tokens=20, temperature=1.5, n=3, seed=11)
    first = [c.text for c in client.completions.create(**ask).choices]
    assert len(first) == 6 and len(set(first)) > 1
    assert [c.text for c in client.completions.create(**ask).choices] == first
    alone = client.completions.create(**{**ask, "prompt": "be"}).choices
    assert [c.text for c in alone] == first[3:]  # a prompt's seeds do not depend on its neighbours


def test_stop_strings_end_the_text(client, reference):
    expected = reference.completions("to be or", 40, Sampling(temperature=0), stop=["the", "zz"])[0]
    assert expected.finish_reason == "stop"
    choice = client.completions.create(model="tiny", prompt="to be or", max_tokens=40, temperature=0,
                                       stop=["the", "zz"]).choices[0]
    assert (choice.text, choice.finish_reason) == (expected.text, "stop")
    streamed = client.completions.create(model="tiny", prompt="to be or", max_tokens=40, temperature=0, stop="the",
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == reference.completions(
        "to be or", 40, Sampling(temperature=0), stop="the")[0].text


def test_logprobs_and_echo(client):
    choice = client.completions.create(model="tiny", prompt="to be", max_tokens=6, temperature=0, logprobs=3).choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == 6
    assert all(len(top) == 3 and max(top.values()) == pytest.approx(value)  # greedy: the likeliest was taken
               for top, value in zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    echoed = client.completions.create(model="tiny", prompt="to be", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "to be" + choice.text


def test_chat_replies_with_the_template_and_streams_deltas(client, reference):
    messages = [{"role": "system", "content": "t"}, {"role": "user", "content": "to"}]
    prompt = "system: t\nuser: to\nassistant:"
    expected = reference.completions(prompt, 30, Sampling(temperature=0), stop=["\nuser:"])[0]
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0)
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].message.role == "assistant"
    assert response.usage.prompt_tokens == len(prompt)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason


def test_models_lists_both_kinds(client, gan_run):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"tiny", gan_run.name, "any"}
    assert cards["tiny"].kind == "gpt" and cards["tiny"].context_length == 32 and cards["tiny"].parameters > 0
    assert cards[gan_run.name].kind == "gan" and cards[gan_run.name].classes == [str(d) for d in range(10)]


def test_images_for_a_named_class(client, gan_run):
    def images(prompt: str, seed: int = 3) -> list[bytes]:
        response = client.images.generate(model=gan_run.name, prompt=prompt, n=4, response_format="b64_json",
                                          extra_body={"seed": seed})
        return [base64.b64decode(d.b64_json) for d in response.data]

    sevens = images("a handwritten 7")
    assert len(sevens) == 4 and Image.open(io.BytesIO(sevens[0])).size == (28, 28)
    assert images("seven") == sevens == images("7")
    assert images("3") != sevens and images("7", seed=4) != sevens
    with pytest.raises(openai.BadRequestError, match="name one of: 0, 1, 2"):
        images("a cat")
    unconditional = client.images.generate(model="any", prompt="whatever you like", n=2)
    assert len(unconditional.data) == 2


def test_health_is_open_and_metrics_count_what_happened(server, client):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    client.completions.create(model="tiny", prompt="to", max_tokens=5, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    for name in ("aigc:num_requests_running", "aigc:num_requests_waiting", "aigc:prompt_tokens_total",
                 "aigc:generation_tokens_total", "aigc:time_to_first_token_seconds_bucket",
                 "aigc:inter_token_latency_seconds_bucket", "aigc:e2e_request_latency_seconds_bucket"):
        assert name in text
    assert 'aigc:request_success_total{finished_reason="length",model_name="tiny"}' in text
    assert 'aigc:http_requests_total{method="POST",route="/v1/completions",status="200"}' in text


def test_a_client_that_disconnects_frees_its_row(server):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": "to", "max_tokens": 5000, "stream": True}) as response:
        lines = response.iter_lines()  # held: a dropped iterator would close the response itself
        next(lines)
        time.sleep(0.2)
        assert server.engine("tiny").running == 1
        response.close()
    deadline = time.monotonic() + 10
    while server.engine("tiny").running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.engine("tiny").running == 0


# ---------------------------------------------------------------- errors a client can cause

BAD_REQUESTS = {
    "malformed JSON": ('{"model": "tiny", "prompt": ', "JSON"),
    "wrong type": ({"model": "tiny", "prompt": "to", "max_tokens": "5"}, "max_tokens"),
    "negative max_tokens": ({"model": "tiny", "prompt": "to", "max_tokens": -1}, "max_tokens"),
    "huge max_tokens": ({"model": "tiny", "prompt": "to", "max_tokens": 10**9}, "at most 5000"),
    "n = 0": ({"model": "tiny", "prompt": "to", "n": 0}, "n"),
    "n = 10^6": ({"model": "tiny", "prompt": "to", "n": 10**6}, "at most 8"),
    "temperature < 0": ({"model": "tiny", "prompt": "to", "temperature": -0.5}, "temperature"),
    "top_p = 0": ({"model": "tiny", "prompt": "to", "top_p": 0}, "top_p"),
    "top_p > 1": ({"model": "tiny", "prompt": "to", "top_p": 1.5}, "top_p"),
    "empty prompt": ({"model": "tiny", "prompt": ""}, "empty"),
    "empty prompt list": ({"model": "tiny", "prompt": []}, "empty"),
    "unknown characters": ({"model": "tiny", "prompt": "to be ☃ or Z"}, "☃"),
    "prompt past the context": ({"model": "tiny", "prompt": "to be " * 10}, "context is 32"),
    "empty stop": ({"model": "tiny", "prompt": "to", "stop": [""]}, "stop"),
    "GAN on a text route": ({"model": "any", "prompt": "to"}, "images/generations"),
    "no model": ({"prompt": "to"}, "model"),
}


@pytest.mark.parametrize("body, fragment", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_completion_requests_are_400_with_openai_error_json(server, body, fragment):
    response = post(server, "/v1/completions", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_other_error_statuses(server, gan_run):
    unknown = post(server, "/v1/completions", {"model": "nope", "prompt": "to"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert post(server, "/v1/images/generations", {"model": "tiny", "prompt": "7"}).status_code == 400
    assert post(server, "/v1/chat/completions", {"model": "tiny", "messages": []}).status_code == 400
    assert httpx.get(server.url + "/v1/nothing-here").json()["error"]["type"] == "not_found_error"
    oversize = post(server, "/v1/completions", {"model": "tiny", "prompt": "t" * 30_000})
    assert oversize.status_code == 413 and "20000 bytes" in oversize.json()["error"]["message"]
    chunked = httpx.post(server.url + "/v1/completions", content=iter([b'{"prompt": "', b"t" * 30_000, b'"}']))
    assert chunked.status_code == 413  # no Content-Length: counted as it arrives


def test_unknown_fields_are_ignored_as_openai_does(client):
    response = client.completions.create(model="tiny", prompt="to", max_tokens=3, extra_body={"frobnicate": 1})
    assert len(response.choices) == 1


# ---------------------------------------------------------------- auth and limits

@pytest.fixture(scope="module")
def guarded(gpt_run):
    live = LiveServer(create_app(gpt=[f"tiny={gpt_run}"], device="cpu", api_key="sesame", rate_limit=5,
                                 max_batch=1, max_queue=0, max_tokens_cap=100_000))
    yield live
    live.close()


def test_the_api_key_guards_v1_and_metrics_but_not_health(guarded):
    assert httpx.get(guarded.url + "/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        response = httpx.get(guarded.url + "/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(guarded.url + "/metrics", headers=headers).status_code == 401
    assert httpx.get(guarded.url + "/metrics", headers={"Authorization": "Bearer sesame"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_rate_limit_and_full_queue_are_429(guarded):
    import threading

    other_key = openai.OpenAI(base_url=guarded.url + "/v1", api_key="sesame", max_retries=0)
    started, done = threading.Event(), threading.Event()

    def busy_client() -> None:  # reads as it comes, as a streaming client does
        with httpx.stream("POST", guarded.url + "/v1/completions", timeout=60,
                          headers={"Authorization": "Bearer sesame"},
                          json={"model": "tiny", "prompt": "to", "max_tokens": 100_000, "stream": True}) as busy:
            for _ in busy.iter_lines():
                started.set()
                if done.is_set():
                    return

    reader = threading.Thread(target=busy_client)
    reader.start()
    try:
        assert started.wait(30)
        assert (guarded.engine("tiny").running, guarded.engine("tiny").waiting) == (1, 0)
        with pytest.raises(openai.RateLimitError, match="queue is full"):  # one row, no queue behind it
            other_key.completions.create(model="tiny", prompt="to", max_tokens=2)
    finally:
        done.set()
        reader.join()
    statuses = [httpx.get(guarded.url + "/v1/models", headers={"Authorization": "Bearer sesame"}).status_code
                for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]  # 5 a minute: the two above, three more (401s do not count)
    limited = httpx.get(guarded.url + "/v1/models", headers={"Authorization": "Bearer sesame"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------- the command

def serve_command(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "aigc", "serve", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    with listening_socket("127.0.0.1", 0) as probe:
        return probe.getsockname()[1]


def test_sigterm_finishes_in_flight_requests_and_exits_0(gpt_run):
    port = free_port()
    process = serve_command("--gpt", str(gpt_run), "--port", str(port), "--device", "cpu", "--grace", "20")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        lines = []
        with httpx.stream("POST", url + "/v1/completions", timeout=60,
                          json={"model": gpt_run.name, "prompt": "to", "max_tokens": 150, "stream": True}) as response:
            for line in response.iter_lines():
                if not lines:
                    process.send_signal(signal.SIGTERM)
                    time.sleep(0.2)
                    with pytest.raises(httpx.TransportError):  # no longer accepting
                        httpx.get(url + "/health")
                lines.append(line)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
    assert events[-1]["choices"][0]["finish_reason"] == "length"  # finished, not cut
    assert "Traceback" not in process.stderr.read()


def test_a_folder_that_is_not_a_run_and_a_port_in_use_are_one_line(run_cli, tmp_path, gpt_run):
    port = str(free_port())
    assert_one_line_error(*run_cli("serve", "--gpt", str(tmp_path), "--port", port)[::2], str(tmp_path))
    assert_one_line_error(*run_cli("serve", "--gan", str(gpt_run), "--port", port)[::2], "gpt")
    with listening_socket("127.0.0.1", 0) as taken:
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_one_line_error(*run_cli("serve", "--gpt", str(gpt_run), "--port", port)[::2], port, "in use")


def test_an_image_seed_draws_what_aigc_gan_sample_draws(client, gan_run, tmp_path):
    import numpy as np

    from aigc.cli import main
    from aigc.gan.guide import GUIDE_FILE

    assert (gan_run / GUIDE_FILE).is_file()  # `aigc gan train` fitted a guide: both sides sample with it
    assert main(["gan", "sample", "--run", str(gan_run), "--n", "3", "--label", "5", "--seed", "9", "--format", "npz",
                 "--out", str(tmp_path / "fives.npz"), "--device", "cpu"]) == 0
    expected = np.load(tmp_path / "fives.npz")["images"]
    response = client.images.generate(model=gan_run.name, prompt="five", n=3, extra_body={"seed": 9})
    drawn = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in response.data]
    assert len(drawn) == 3 and all((img == e[:, :, 0]).all() for img, e in zip(drawn, expected))


def test_the_key_comes_from_the_environment_and_shutdown_answers_503(gpt_run, monkeypatch):
    monkeypatch.setenv("AIGC_API_KEY", "from-env")
    live = LiveServer(create_app(gpt=[f"tiny={gpt_run}"], device="cpu"))
    try:
        assert httpx.get(live.url + "/v1/models").status_code == 401
        assert httpx.get(live.url + "/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
        live.app.state.begin_shutdown(0.0).join()
        assert httpx.get(live.url + "/health").status_code == 503
        refused = httpx.post(live.url + "/v1/completions", headers={"Authorization": "Bearer from-env"},
                             json={"model": "tiny", "prompt": "to"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    finally:
        live.close()


def test_rates_read_as_requests_per_minute():
    from aigc.serve.config import parse_rate

    assert parse_rate("60/min") == parse_rate("60/m") == parse_rate("60") == 60
    with pytest.raises(ValueError):
        parse_rate("60/hour")
