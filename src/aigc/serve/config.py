"""The config of ``aigc serve`` (no torch or FastAPI import: ``aigc --help`` stays fast)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aigc.config import DEVICE_CHOICES, option, require
from aigc.gpt.config import DECODE_DTYPES, DTYPE_HELP


def parse_rate(text: str) -> int:
    """'60/min', '60/m' or a plain number of requests per minute -> requests per minute."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:/\s*(?:min|m|minute))?\s*", str(text))
    if not match:
        raise ValueError(f"not a rate: {text!r} (use e.g. 60/min)")
    return int(match.group(1))


@dataclass
class ServeConfig:
    gpt: list[str] | None = option(None, "a GPT run to serve, as PATH (model id: the folder name) or NAME=PATH; "
                                         "repeat the flag for several")
    gan: list[str] | None = option(None, "a GAN run to serve on /v1/images/generations, PATH or NAME=PATH; "
                                         "repeat the flag for several")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface; set --api-key then)")
    port: int = option(8000, "TCP port")
    api_key: str | None = option(None, "require 'Authorization: Bearer KEY' on /v1/* and /metrics "
                                       "(default: the AIGC_API_KEY environment variable; none: open)")
    max_batch: int = option(16, "sequences decoded together per GPT model (1: one at a time)")
    max_queue: int = option(64, "sequences waiting per GPT model beyond --max-batch; more is a 429")
    max_tokens_cap: int = option(1024, "the largest max_tokens a request may ask for (chat asks for this much when a request names none)")
    max_n: int = option(16, "the largest n (choices or images) a request may ask for")
    max_body: int = option(1 << 20, "the largest request body in bytes; more is a 413")
    rate_limit: int | None = option(None, "requests per minute per API key (or per client address without one), "
                                          "e.g. 60/min; more is a 429", parse=parse_rate)
    metrics_public: bool = option(False, "serve /metrics without the API key")
    grace: float = option(10.0, "seconds that in-flight requests may take to finish on SIGTERM/SIGINT")
    checkpoint: str = option("best", "GPT checkpoint to serve", choices=("best", "last"))
    device: str = option("auto", "where the models run", choices=DEVICE_CHOICES)
    dtype: str = option("auto", DTYPE_HELP, choices=DECODE_DTYPES)
    compile: bool = option(False, "torch.compile each GPT's decoding step at start-up (tens of seconds per "
                                  "model; needs a C++ compiler on a CPU): faster for a few clients at a time, "
                                  "slower for 16 (docs/benchmarks-serve.md)")

    def validate(self) -> None:
        require(bool(self.gpt or self.gan), "give at least one run to serve: --gpt PATH or --gan PATH")
        require(self.api_key is None or bool(self.api_key.strip()), "--api-key must not be empty or blank")
        require(0 < self.port < 65536, f"--port must be in 1-65535, got {self.port}")
        for name in ("max_batch", "max_tokens_cap", "max_n", "max_body"):
            require(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        require(self.max_queue >= 0, f"--max-queue must be >= 0, got {self.max_queue}")
        require(self.rate_limit is None or self.rate_limit > 0, f"--rate-limit must be positive, got {self.rate_limit}")
        require(self.grace >= 0, f"--grace must be >= 0, got {self.grace}")
