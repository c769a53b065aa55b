"""An ``aigc serve`` app under uvicorn in a thread of this process, for notebooks, scripts and
tests (``aigc serve`` itself runs uvicorn in the foreground, with its signal handling):

    from aigc.serve.app import create_app
    from aigc.serve.background import BackgroundServer

    with BackgroundServer(create_app(gpt=["runs/shakespeare"], device="cpu")) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ...
    # leaving the block stops the server and waits for its thread

It listens on 127.0.0.1 and a free port unless told otherwise; ``url`` is where it listens.
"""

from __future__ import annotations

import threading

from aigc.serve.cli import listening_socket


class BackgroundServer:
    """Start ``app`` at once; ``close()`` (or the end of a ``with`` block) stops it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0):
        import uvicorn

        self.app = app
        self.socket = listening_socket(host, port)  # port 0: the system picks a free one
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True,
                                       name="aigc-serve")
        self.thread.start()
        self._wait_started(start_timeout)

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, for ``openai.OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    def _wait_started(self, timeout: float) -> None:
        waited = 0.0
        while not self.server.started:
            self.thread.join(0.02)
            waited += 0.02
            if not self.thread.is_alive() or waited > timeout:
                self.close()
                raise RuntimeError(f"the server at {self.url} did not start")

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, let uvicorn shut the app down (its engines stop), join the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=timeout)
        self.socket.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
