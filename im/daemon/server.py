"""uvicorn's server, for a program that *is* the server (``im daemon``, ``im sim``).

uvicorn re-raises the SIGINT / SIGTERM it handled once it has shut down, so that an embedding
program stops too. Here the shutdown is the program's own clean end, so it exits 0.
"""

from __future__ import annotations

from types import FrameType

import uvicorn


class Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
