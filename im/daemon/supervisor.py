"""The daemon's side of its engine process (``im.daemon.engine``): start it, start it again
a second after it dies, tell /readyz whether its dispatcher still steps, and stop it within
the daemon's shutdown budget."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from im.daemon import logs

RESTART_DELAY = 1.0
STALE_DISPATCH_SECONDS = 10.0


class EngineProcess:
    def __init__(
        self, db_path: Path, log_level: str, log_file: Path | None, logger: logging.Logger
    ) -> None:
        self._command = [
            sys.executable, "-m", "im.daemon.engine", str(db_path), log_level, str(os.getpid()),
        ]  # fmt: skip
        self._log_file = log_file
        self._logger = logger
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the running process, between the watcher and stop()
        self._process: subprocess.Popen[bytes] | None = None
        self._last_step: float | None = None  # when it last said its dispatcher stepped
        self._thread = threading.Thread(target=self._supervise, name="im-engine")

    def start(self) -> None:
        self._thread.start()

    def ready(self) -> tuple[bool, str]:
        last = self._last_step
        if last is None:
            return False, "the engine (dispatcher and applier) is not running"
        if time.monotonic() - last > STALE_DISPATCH_SECONDS:
            return False, "the dispatcher has not finished a step for 10 s"
        return True, ""

    def stop(self, timeout: float) -> None:
        """Ask the engine to finish what it is sending and exit; kill it after ``timeout``."""
        self._stopping.set()
        with self._lock:
            process = self._process
            if process is not None and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()  # the engine stops at the end of its stdin
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                logs.event(self._logger, "engine.killed", {"after_s": timeout}, logging.WARNING)
        self._thread.join()

    def _supervise(self) -> None:
        # Started from this thread, which lives as long as the daemon: on Linux the kernel
        # ties the engine's life to the thread that started it.
        while not self._stopping.is_set():
            try:
                code: int | str = self._run_once()
            except OSError as exc:  # no process could be made (fds, memory): try again
                code = exc.strerror or str(exc)
            self._last_step = None
            if self._stopping.wait(RESTART_DELAY):
                return
            logs.event(self._logger, "engine.restarting", {"exit_code": code}, logging.ERROR)

    def _run_once(self) -> int:
        """Start the engine and follow it until it exits; its exit code."""
        status, ours = os.pipe()
        said = os.fdopen(status, "rb", buffering=0)
        with said:
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return 0
                    command = [*self._command, str(ours)]
                    if self._log_file is not None:
                        command.append(str(self._log_file))
                    process = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=(ours,))
                    self._process = process
            finally:
                os.close(ours)  # the engine holds the only writing end: its exit ends the read
            while said.read(64):  # a byte each second or so while the dispatcher steps
                self._last_step = time.monotonic()
        return process.wait()
