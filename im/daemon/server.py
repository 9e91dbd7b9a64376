"""uvicorn's server, for a program that *is* the server (``im daemon``, ``im sim``).

uvicorn re-raises the SIGINT / SIGTERM it handled once it has shut down, so that an embedding
program stops too. Here the shutdown is the program's own clean end, so it exits 0.
"""

from __future__ import annotations

import socket
from types import FrameType

import uvicorn

from im.errors import UsageError


def check_port(host: str, port: int) -> None:
    """Fail with one clear line, before anything starts, when the port is taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}", "pass another --port"
            ) from None


class Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
