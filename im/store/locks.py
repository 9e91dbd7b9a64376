"""Process-wide exclusive locks beside the database file (flock): one daemon per database,
one reconcile run per integration. The kernel drops a lock when its process dies, even by
SIGKILL, so a crash never leaves one behind; a second holder fails at once instead of
waiting."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from im.errors import InProgressError


@contextlib.contextmanager
def exclusive(path: Path, refusal: Callable[[], InProgressError]) -> Iterator[None]:
    """Hold the lock file ``path`` for the block. Raises ``refusal()`` when another process
    (or another open of it in this process) holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    handle: IO[str] = os.fdopen(fd, "r+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refusal() from None
        yield
    finally:
        handle.close()
