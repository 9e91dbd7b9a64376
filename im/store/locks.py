"""Process-wide exclusive locks beside the database file (flock): one daemon per database,
one reconcile run per integration, one change of the user's master key. The kernel drops a
lock when its process dies, even by SIGKILL, so a crash never leaves one behind; a second
holder fails at once, or after ``wait`` seconds for locks held only briefly."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from im.errors import InProgressError
from im.security.secrets import key_lock_path


@contextlib.contextmanager
def exclusive(
    path: Path, refusal: Callable[[], InProgressError], wait: float = 0.0
) -> Iterator[None]:
    """Hold the lock file ``path`` for the block. Raises ``refusal()`` when another process
    (or another open of it in this process) still holds it after ``wait`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    handle: IO[str] = os.fdopen(fd, "r+")
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise refusal() from None
                time.sleep(0.01)  # flock has no timeout of its own
        yield
    finally:
        handle.close()


@contextlib.contextmanager
def key_store(wait: float = 0.0) -> Iterator[None]:
    """Hold the user's key store: two `im init` making the key at once would each store one,
    and a rotation stages a new key over the usual one."""
    path = key_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def refusal() -> InProgressError:
        return InProgressError(
            "another im process is making or rotating the master key", "wait for it to finish"
        )

    with exclusive(path, refusal, wait):
        yield
