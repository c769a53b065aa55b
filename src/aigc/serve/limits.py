"""Who may call, how often, and how much: the API key, the per-key rate limit, the body cap."""

from __future__ import annotations

import collections
import hmac
import threading
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def key_matches(authorization: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <api_key>``, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    return hmac.compare_digest(given.strip().encode(), api_key.encode()) and scheme.lower() == "bearer"


class RateLimiter:
    """At most ``per_minute`` requests per client in any sliding 60-second window."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute, self.clock = per_minute, clock
        self._seen: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def allow(self, client: str) -> float | None:
        """Count a request of ``client``: None when allowed, else the seconds until it would be."""
        now = self.clock()
        with self._lock:
            times = self._seen[client]
            while times and times[0] <= now - 60:
                times.popleft()
            if len(times) >= self.per_minute:
                return times[0] + 60 - now
            times.append(now)
            return None


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered by ``too_large`` (a 413)
    before it is parsed, whether its Content-Length says so or its chunks add up to it; the
    app then sees the client as gone, and anything it still sends is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int, too_large: ASGIApp):
        self.app, self.max_bytes, self.too_large = app, max_bytes, too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.too_large(scope, receive, send)
            return
        received, answered = 0, False

        async def counting_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes and not answered:
                answered = True
                await self.too_large(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)
