"""The HTTP app: OpenAI's routes over the batching engines, the playground page, health and metrics.

``create_app(gpt=["runs/shakespeare"], gan=["runs/cdcgan"], ...)`` loads the runs and returns the
ASGI app (options: :class:`aigc.serve.config.ServeConfig`). Routes stay thin: they check a
request against the server's caps, turn it into engine sequences (:class:`Generation`) and
shape the events that come back as OpenAI's JSON or server-sent events.

Every error is OpenAI's ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad
request (malformed JSON, wrong types, a bad value, a prompt the model cannot read, a model of
the wrong kind), 401 without the API key, 404 for an unknown model or route, 413 for a body
over the cap, 429 over the rate limit or with the queue full, 503 while shutting down.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigc.config import build_config
from aigc.devices import resolve_device
from aigc.errors import UserError
from aigc.gpt.sampling import Sampling
import aigc.serve.schemas as schemas
from aigc.serve.config import ServeConfig
from aigc.serve.engine import EngineClosed, Event, QueueFull, Sequence
from aigc.serve.limits import BodySizeLimit, RateLimiter, key_matches
from aigc.serve.metrics import Metrics
from aigc.serve.models import ServedGan, ServedGpt, load_models

STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    """An error a client caused, answered as OpenAI's error JSON."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = schemas.ErrorResponse(error=schemas.ErrorDetail(message=self.message, type=self.type,
                                                               param=self.param, code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", "service_unavailable", code="shutting_down")


class CountAndDrain:
    """ASGI middleware: counts responses by route, method and status; while the server shuts
    down, answers every request but /health with a 503. (Plain ASGI: Starlette's
    BaseHTTPMiddleware would end a streaming response when the next request arrives.)"""

    def __init__(self, app: ASGIApp, metrics: Metrics, draining: Callable[[], bool]):
        self.app, self.metrics, self.draining = app, metrics, draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.draining() and scope["path"] != "/health":
                await shutting_down().response()(scope, receive, noting_send)
            else:
                await self.app(scope, receive, noting_send)
        finally:
            route = scope.get("route")  # set by the router once a route matched
            self.metrics.http_requests.labels(route.path if route else "unmatched", scope["method"], str(status)).inc()


class Generation:
    """The engine sequences of one HTTP request, and their events as they arrive.

    ``choices[i]`` is (prompt ids, seed) of choice i. Events come from the engine's thread
    through ``loop.call_soon_threadsafe``; metrics are recorded there, as tokens are made.
    """

    def __init__(self, served: ServedGpt, metrics: Metrics, choices: list[tuple[list[int], int]], max_tokens: int,
                 sampling: Sampling, stop: list[str], logprobs: int | None):
        self.served, self.metrics = served, metrics
        self.started = time.monotonic()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.sequences = []
        for index, (ids, seed) in enumerate(choices):
            timing = {"last": None}

            def on_event(event: Event, index: int = index, timing: dict = timing) -> None:
                self._record(event, timing)
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

            self.sequences.append(Sequence(ids, max_tokens, sampling, on_event, stop, seed, logprobs))

    def _record(self, event: Event, timing: dict) -> None:
        name, now = self.served.id, time.monotonic()
        if timing["last"] is None:
            self.metrics.time_to_first_token.labels(name).observe(now - self.started)
        else:
            self.metrics.inter_token_latency.labels(name).observe(now - timing["last"])
        timing["last"] = now
        if event.finish_reason is not None:
            self.metrics.e2e_latency.labels(name).observe(now - self.started)
            self.metrics.success.labels(name, event.finish_reason).inc()
            self.metrics.prompt_tokens.labels(name).inc(event.prompt_tokens)
            self.metrics.generation_tokens.labels(name).inc(event.completion_tokens)

    def submit(self) -> None:
        try:
            self.served.engine.submit(self.sequences)
        except QueueFull as exc:
            raise ApiError(429, f"{exc}; retry later", "rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except EngineClosed:
            raise shutting_down() from None

    async def events(self, request: Request | None = None) -> AsyncIterator[tuple[int, Event]]:
        """(choice index, event) until every choice has finished. With ``request``, a client
        that disconnects cancels its sequences (checked twice a second)."""
        unfinished = len(self.sequences)
        while unfinished:
            try:
                index, event = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.cancel()
                    return
                continue
            unfinished -= event.finish_reason is not None
            yield index, event

    def cancel(self) -> None:
        for sequence in self.sequences:
            self.served.engine.cancel(sequence)


def create_app(config: ServeConfig | None = None, **options) -> FastAPI:
    """The ASGI app serving the runs of ``config`` (or of ``options``: ServeConfig's fields,
    e.g. ``gpt=["runs/shakespeare"]``). The API key defaults to ``$AIGC_API_KEY``."""
    config = config or build_config(ServeConfig, options)
    api_key = config.api_key or os.environ.get("AIGC_API_KEY") or None
    models = load_models(config.gpt or [], config.gan or [], resolve_device(config.device), config.checkpoint,
                         config.max_batch, config.max_queue, config.dtype, config.compile)
    metrics = Metrics()
    for served in models.values():
        if isinstance(served, ServedGpt):
            metrics.watch_engine(served.id, served.engine)
    limiter = RateLimiter(config.rate_limit) if config.rate_limit else None
    created = int(time.time())

    def close_engines(grace: float) -> None:
        for served in models.values():
            if isinstance(served, ServedGpt):
                served.engine.close(grace)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(close_engines, 0.0)

    app = FastAPI(title="aigc", version="1", lifespan=lifespan,
                  description="OpenAI-compatible completions, chat and images for aigc runs.")
    app.state.models = models
    app.state.draining = False

    def begin_shutdown(grace: float) -> threading.Thread:
        """Refuse new requests (503) and give in-flight ones ``grace`` seconds before they are cut."""
        app.state.draining = True
        closing = threading.Thread(target=close_engines, args=(grace,), name="aigc-drain", daemon=True)
        closing.start()
        return closing

    app.state.begin_shutdown = begin_shutdown

    # ---------------------------------------------------------------- errors

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return ApiError(400, str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return ApiError(400, "the body is not valid JSON", code="invalid_json").response()
        message = first.get("msg", "invalid request")
        return ApiError(400, f"{'.'.join(where) or 'body'}: {message}", param=".".join(where) or None).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, "internal server error", "server_error").response()  # no traceback to clients

    too_large = ApiError(413, f"the request body is larger than this server's cap of {config.max_body} bytes",
                         code="request_too_large").response()
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body, too_large=too_large)

    app.add_middleware(CountAndDrain, metrics=metrics, draining=lambda: app.state.draining)

    # ---------------------------------------------------------------- who may call

    def authorized(request: Request) -> None:
        if api_key is not None and not key_matches(request.headers.get("authorization"), api_key):
            raise ApiError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                           "authentication_error", code="invalid_api_key")

    def within_rate(request: Request) -> None:
        if limiter is None:
            return
        client = request.headers.get("authorization") or (request.client.host if request.client else "?")
        wait = limiter.allow(client)
        if wait is not None:
            raise ApiError(429, f"more than {config.rate_limit} requests a minute; retry in {wait:.0f} s",
                           "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(max(1, round(wait)))})

    api = [Depends(authorized), Depends(within_rate)]

    def model_of(name: str, kind: type) -> ServedGpt | ServedGan:
        served = models.get(name)
        if served is None:
            raise ApiError(404, f"the model {name!r} does not exist; served: {', '.join(models)}", param="model",
                           code="model_not_found")
        if not isinstance(served, kind):
            other = "/v1/images/generations" if isinstance(served, ServedGan) else "/v1/completions or /v1/chat/completions"
            raise ApiError(400, f"{name} is a {'GAN' if isinstance(served, ServedGan) else 'GPT'} model; "
                                f"use {other}", param="model")
        return served

    def check_n(n: int) -> None:
        if n > config.max_n:
            raise ApiError(400, f"n is {n}; this server allows at most {config.max_n}", param="n")

    def generation(body: schemas.SamplingFields, served: ServedGpt, prompts: list[list[int]], max_tokens: int,
                   stop: list[str], logprobs: int | None) -> Generation:
        check_n(body.n)
        if max_tokens > config.max_tokens_cap:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {config.max_tokens_cap}",
                           param="max_tokens")
        if "" in stop:
            raise ApiError(400, "a stop string is empty", param="stop")
        sampling = Sampling(body.temperature, body.top_k, body.top_p if body.top_p < 1 else None,
                            body.repetition_penalty)
        seeds = [secrets.randbits(62) if body.seed is None else body.seed + choice for choice in range(body.n)]
        choices = [(ids, seed) for ids in prompts for seed in seeds]  # choice i: prompt i // n, seed i % n
        return Generation(served, metrics, choices, max_tokens, sampling, stop, logprobs)

    # ---------------------------------------------------------------- OpenAI routes

    @app.get("/v1/models", dependencies=api, response_model=schemas.ModelList)
    async def list_models() -> schemas.ModelList:
        cards = []
        for served in models.values():
            if isinstance(served, ServedGpt):
                cards.append(schemas.ModelCard(id=served.id, created=created, kind="gpt",
                                               context_length=served.context_length,
                                               parameters=served.run.model.num_params()))
            else:
                cards.append(schemas.ModelCard(id=served.id, created=created, kind="gan", classes=served.classes,
                                               parameters=sum(p.numel() for p in served.run.generator.parameters())))
        return schemas.ModelList(data=cards)

    @app.post("/v1/completions", dependencies=api, response_model=schemas.CompletionResponse)
    async def completions(body: schemas.CompletionRequest, request: Request):
        served = model_of(body.model, ServedGpt)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise ApiError(400, "prompt is an empty list", param="prompt")
        if body.echo and body.logprobs is not None:
            raise ApiError(400, "echo with logprobs is not supported (no log-probabilities for prompt tokens)",
                           param="echo")
        stop = _stops(body.stop)
        run = generation(body, served, [served.engine.encode(t) for t in texts], body.max_tokens, stop,
                         body.logprobs)
        run.submit()
        shape = CompletionShape(body, texts, run, _request_id("cmpl"), created)
        if body.stream:
            return _sse(shape.chunks(), run)
        return await shape.response(request)

    @app.post("/v1/chat/completions", dependencies=api, response_model=schemas.ChatResponse)
    async def chat_completions(body: schemas.ChatRequest, request: Request):
        served = model_of(body.model, ServedGpt)
        prompt, turn_stop = served.chat_prompt([(m.role, m.text()) for m in body.messages])
        max_tokens = body.max_completion_tokens or body.max_tokens or config.max_tokens_cap
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        run = generation(body, served, [served.engine.encode(prompt)], max_tokens, _stops(body.stop) + turn_stop,
                         logprobs)
        run.submit()
        shape = ChatShape(body, run, _request_id("chatcmpl"), created)
        if body.stream:
            return _sse(shape.chunks(), run)
        return await shape.response(request)

    @app.post("/v1/images/generations", dependencies=api, response_model=schemas.ImageResponse)
    async def images(body: schemas.ImageRequest) -> schemas.ImageResponse:
        served = model_of(body.model, ServedGan)
        check_n(body.n)
        if body.size is not None and body.size != served.size:
            raise ApiError(400, f"size {body.size}: {served.id} draws {served.size} images only", param="size")
        label = served.label_of(body.prompt)
        seed = secrets.randbits(62) if body.seed is None else body.seed
        pngs = await run_in_threadpool(served.png_images, body.n, label, seed)
        return schemas.ImageResponse(created=int(time.time()), data=[schemas.Image(b64_json=p) for p in pngs])

    # ---------------------------------------------------------------- operations and the page

    @app.get("/health")
    async def health() -> JSONResponse:
        if app.state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(models)})

    @app.get("/metrics", dependencies=[] if config.metrics_public else [Depends(authorized)])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _stops(stop: str | list[str] | None) -> list[str]:
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def _request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _usage(prompt_tokens: int, completion_tokens: int) -> schemas.Usage:
    return schemas.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens)


def _sse(chunks: AsyncIterator[str], run: Generation) -> StreamingResponse:
    """Server-sent events; a client that goes away mid-stream cancels its sequences."""

    async def stream() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {chunk}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            run.cancel()  # a no-op for sequences already finished

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class CompletionShape:
    """Events of /v1/completions as OpenAI's response or its stream of chunks."""

    def __init__(self, body: schemas.CompletionRequest, texts: list[str], run: Generation, id: str, created: int):
        self.body, self.texts, self.run, self.id, self.created = body, texts, run, id, created
        self.prompt_tokens = sum(len(s.prompt_ids) for s in run.sequences[::body.n])  # each prompt once

    def _prefix(self, index: int) -> str:
        return self.texts[index // self.body.n] if self.body.echo else ""

    async def response(self, request: Request) -> schemas.CompletionResponse:
        n = len(self.run.sequences)
        texts, reasons, completion_tokens = [self._prefix(i) for i in range(n)], [None] * n, 0
        logprobs = [schemas.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
                    for _ in range(n)]
        async for index, event in self.run.events(request):
            _add_logprobs(logprobs[index], event, len(texts[index]))
            texts[index] += event.text
            if event.finish_reason is not None:
                reasons[index], completion_tokens = event.finish_reason, completion_tokens + event.completion_tokens
        choices = [schemas.CompletionChoice(index=i, text=texts[i], finish_reason=reasons[i],
                                            logprobs=logprobs[i] if self.body.logprobs is not None else None)
                   for i in range(n)]
        return schemas.CompletionResponse(id=self.id, created=self.created, model=self.body.model, choices=choices,
                                          usage=_usage(self.prompt_tokens, completion_tokens))

    async def chunks(self) -> AsyncIterator[str]:
        def chunk(index: int, text: str, finish_reason: str | None = None,
                  logprobs: schemas.CompletionLogprobs | None = None) -> str:
            choice = schemas.CompletionChoice(index=index, text=text, finish_reason=finish_reason, logprobs=logprobs)
            return schemas.CompletionResponse(id=self.id, created=self.created, model=self.body.model,
                                              choices=[choice]).model_dump_json(exclude={"usage"})

        offsets = [len(self._prefix(i)) for i in range(len(self.run.sequences))]
        for index in range(len(self.run.sequences)):
            if self.body.echo:
                yield chunk(index, self._prefix(index))
        completion_tokens = 0
        async for index, event in self.run.events():
            if not (event.text or event.finish_reason or event.logprobs):
                continue  # text held back while a stop string may be starting
            logprobs = None
            if self.body.logprobs is not None:
                logprobs = schemas.CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
                _add_logprobs(logprobs, event, offsets[index])
            offsets[index] += len(event.text)
            completion_tokens += event.completion_tokens
            yield chunk(index, event.text, event.finish_reason, logprobs)
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield json.dumps({"id": self.id, "object": "text_completion", "created": self.created,
                              "model": self.body.model, "choices": [],
                              "usage": _usage(self.prompt_tokens, completion_tokens).model_dump()})


def _add_logprobs(logprobs: schemas.CompletionLogprobs, event: Event, offset: int) -> None:
    for entry in event.logprobs:
        logprobs.tokens.append(entry.token)
        logprobs.token_logprobs.append(entry.logprob)
        logprobs.top_logprobs.append(entry.top)
        logprobs.text_offset.append(offset)
        offset += len(entry.token)


class ChatShape:
    """Events of /v1/chat/completions as OpenAI's response or its stream of deltas."""

    def __init__(self, body: schemas.ChatRequest, run: Generation, id: str, created: int):
        self.body, self.run, self.id, self.created = body, run, id, created
        self.prompt_tokens = len(run.sequences[0].prompt_ids)

    def _logprobs(self, event: Event) -> list[schemas.TokenLogprob]:
        def entry(token: str, logprob: float) -> dict:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        return [schemas.TokenLogprob(**entry(e.token, e.logprob),
                                     top_logprobs=[schemas.TopLogprob(**entry(t, lp)) for t, lp in e.top.items()])
                for e in event.logprobs]

    async def response(self, request: Request) -> schemas.ChatResponse:
        n = len(self.run.sequences)
        texts, reasons, completion_tokens = [""] * n, [""] * n, 0
        logprobs: list[list[schemas.TokenLogprob]] = [[] for _ in range(n)]
        async for index, event in self.run.events(request):
            texts[index] += event.text
            logprobs[index] += self._logprobs(event)
            if event.finish_reason is not None:
                reasons[index], completion_tokens = event.finish_reason, completion_tokens + event.completion_tokens
        choices = [schemas.ChatChoice(index=i, message=schemas.ChatMessage(content=texts[i]), finish_reason=reasons[i],
                                      logprobs=schemas.ChatLogprobs(content=logprobs[i]) if self.body.logprobs else None)
                   for i in range(n)]
        return schemas.ChatResponse(id=self.id, created=self.created, model=self.body.model, choices=choices,
                                    usage=_usage(self.prompt_tokens, completion_tokens))

    async def chunks(self) -> AsyncIterator[str]:
        def chunk(choices: list[schemas.ChatChunkChoice], usage: schemas.Usage | None = None) -> str:
            return schemas.ChatChunk(id=self.id, created=self.created, model=self.body.model, choices=choices,
                                     usage=usage).model_dump_json(exclude={"usage"} if usage is None else None)

        for index in range(len(self.run.sequences)):
            yield chunk([schemas.ChatChunkChoice(index=index, delta=schemas.Delta(role="assistant", content=""))])
        completion_tokens = 0
        async for index, event in self.run.events():
            if not (event.text or event.finish_reason or event.logprobs):
                continue
            logprobs = schemas.ChatLogprobs(content=self._logprobs(event)) if self.body.logprobs else None
            delta = schemas.Delta(content=event.text) if event.text else schemas.Delta()
            completion_tokens += event.completion_tokens
            yield chunk([schemas.ChatChunkChoice(index=index, delta=delta, logprobs=logprobs,
                                                 finish_reason=event.finish_reason)])
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield chunk([], _usage(self.prompt_tokens, completion_tokens))
