"""A property test over request bodies: whatever JSON a client sends to the API routes, the
server answers with a status below 500 and, for an error, OpenAI's error JSON."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigc.serve.app import create_app
from serve_fixtures import LiveServer, gan_run, gpt_run  # noqa: F401 (fixtures)

ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/images/generations"]
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
          "stop", "seed", "logprobs", "top_logprobs", "echo", "stream", "stream_options", "repetition_penalty",
          "response_format", "size", "role", "content"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                    st.sampled_from(["tiny", "digits", "to be", "7", "b64_json", "user", "28x28"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)),
                      max_leaves=6)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8)


@pytest.fixture(scope="module")
def server(gpt_run, gan_run):
    live = LiveServer(create_app(gpt=[f"tiny={gpt_run}"], gan=[f"digits={gan_run}"], device="cpu",
                                 max_tokens_cap=64, max_n=4))
    yield live
    live.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), body=st.one_of(bodies, values))
def test_no_request_body_gets_a_5xx(server, route, body):
    response = httpx.post(server.url + route, content=json.dumps(body), timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=40))
def test_no_raw_body_gets_a_5xx(server, route, raw):
    response = httpx.post(server.url + route, content=raw, timeout=60)
    assert response.status_code < 500, (raw, response.text)
