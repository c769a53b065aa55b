"""``aigc serve``: the app under uvicorn, with a graceful SIGTERM/SIGINT.

A first signal stops accepting connections, answers 503 to requests that still arrive, and
gives in-flight ones ``--grace`` seconds to finish before they are cut (finish reason
"abort"); then the process exits with status 0. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import signal
import socket
import sys

from aigc.errors import UserError
from aigc.serve.config import ServeConfig


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a UserError (a port in use, an address not on this machine)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(config: ServeConfig) -> None:
    import uvicorn

    from aigc.serve.app import create_app

    sock = listening_socket(config.host, config.port)  # before loading models: a port in use fails fast
    try:
        app = create_app(config)
    except BaseException:
        sock.close()
        raise

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            # uvicorn's own handler re-raises the signal once it has shut down, which would end
            # the process with SIGTERM's status instead of 0.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
                return
            if not self.should_exit:
                app.state.begin_shutdown(config.grace)
            self.should_exit = True

    server = GracefulServer(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=int(config.grace) + 2))
    print(f"aigc serve: http://{config.host}:{config.port}/ serving {', '.join(app.state.models)}", file=sys.stderr)
    server.run(sockets=[sock])
