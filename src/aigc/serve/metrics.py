"""Prometheus metrics, named as vLLM names them (``vllm:`` becomes ``aigc:``), so the dashboards
operators already have for vLLM chart aigc too:

====================================  =======================================================
``aigc:num_requests_running``         sequences decoding now, per model (``model_name``)
``aigc:num_requests_waiting``         sequences queued behind them
``aigc:prompt_tokens_total``          prompt tokens prefilled
``aigc:generation_tokens_total``      tokens generated
``aigc:request_success_total``        finished sequences, by ``finished_reason`` (stop, length)
``aigc:time_to_first_token_seconds``  histogram: request arrival to first token
``aigc:inter_token_latency_seconds``  histogram: between a sequence's consecutive tokens
``aigc:e2e_request_latency_seconds``  histogram: request arrival to last token
``aigc:http_requests_total``          HTTP requests by ``route``, ``method`` and ``status``
====================================  =======================================================

Each app has its own registry, so several apps in one process (the tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        model = ["model_name"]
        self.running = Gauge("aigc:num_requests_running", "Sequences decoding now.", model, registry=self.registry)
        self.waiting = Gauge("aigc:num_requests_waiting", "Sequences waiting for a row.", model,
                             registry=self.registry)
        self.prompt_tokens = Counter("aigc:prompt_tokens", "Prompt tokens prefilled.", model, registry=self.registry)
        self.generation_tokens = Counter("aigc:generation_tokens", "Tokens generated.", model,
                                         registry=self.registry)
        self.success = Counter("aigc:request_success", "Finished sequences by reason.", [*model, "finished_reason"],
                               registry=self.registry)
        self.time_to_first_token = Histogram("aigc:time_to_first_token_seconds", "Arrival to first token.", model,
                                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inter_token_latency = Histogram("aigc:inter_token_latency_seconds", "Between consecutive tokens.",
                                             model, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.e2e_latency = Histogram("aigc:e2e_request_latency_seconds", "Arrival to last token.", model,
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.http_requests = Counter("aigc:http_requests", "HTTP requests.", ["route", "method", "status"],
                                     registry=self.registry)

    def watch_engine(self, model_name: str, engine) -> None:
        """Read running and waiting counts from ``engine`` at every scrape."""
        self.running.labels(model_name).set_function(lambda: engine.running)
        self.waiting.labels(model_name).set_function(lambda: engine.waiting)
