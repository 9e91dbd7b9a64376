"""Wake-ups for the daemon's engine: a datagram to a socket named after the database file.

A commit that queues an outbox row (from the CLI, cron, the REST API or the engine itself)
and the webhook receiver's commit of new deliveries each send one byte, so the dispatcher
or the applier starts at once instead of at its next tick (about 100 ms). A wake-up carries
nothing but "look now": the database stays the only source of truth, a lost datagram costs
at most one tick, and a stray one costs one cheap look.

The socket is in Linux's abstract namespace (no file to leave behind, no path length
limit). Elsewhere there is no socket, and the ticks alone drive the engine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

DISPATCH = b"d"  # an outbox row was queued
APPLY = b"a"  # webhook deliveries were stored


def address(db_path: Path | str) -> bytes | None:
    """The engine's socket for the database at ``db_path``; None where there is none."""
    return _address(str(db_path))


@functools.lru_cache(maxsize=64)
def _address(db_path: str) -> bytes | None:
    if not sys.platform.startswith("linux"):
        return None
    digest = hashlib.sha256(os.path.realpath(db_path).encode()).hexdigest()[:32]
    return b"\0im-engine-" + digest.encode()


_sender: socket.socket | None = None
_sender_guard = threading.Lock()


def poke(db_path: Path | str, what: bytes) -> None:
    """Tell the engine of this database to look now. Never fails: with no engine listening
    (no daemon, or its buffer full) the next tick finds the work."""
    global _sender
    target = address(db_path)
    if target is None:
        return
    with _sender_guard:
        if _sender is None:  # one socket for the process: a new one for each poke cost
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # more than the send
            _sender.setblocking(False)
        sender = _sender
    with contextlib.suppress(OSError):
        sender.sendto(what, target)


class Listener:
    """The engine's end: a thread that receives wake-ups and calls ``woken`` with the kinds
    that arrived, all that were waiting at once in one call."""

    def __init__(self, db_path: Path, woken: Callable[[set[bytes]], None]) -> None:
        self._woken = woken
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        target = address(db_path)
        if target is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(target)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="im-wake", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                kinds = {sock.recv(16)}
                with contextlib.suppress(BlockingIOError):
                    while True:  # everything already waiting: one look covers it all
                        kinds.add(sock.recv(16, socket.MSG_DONTWAIT))
            except OSError:
                return  # closed
            if b"" in kinds:  # close() sends an empty datagram to end the loop
                return
            self._woken(kinds)

    def close(self) -> None:
        if self._sock is None:
            return
        # a blocking send of its own: the shared sender drops a datagram when the buffer is
        # full, and this one must arrive for the thread to end
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(b"", self._sock.getsockname())
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        self._sock = None
