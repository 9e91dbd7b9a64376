"""The daemon's engine: the outbox dispatcher, the inbound applier, scheduled reconciles and
the hourly dedupe purge, in a process of its own beside the HTTP server's.

Sending (httpx), receiving (uvicorn) and applying all run Python code; in one process they
shared one GIL, and at 50 changes/s that process was the bottleneck (SPEC §13 row 1's p99
was over a second with a core to spare). The two processes share nothing but the database,
and wake-ups (``im.store.wake``) for what the other queued.

APScheduler ticks the dispatcher about every 100 ms and a wake-up starts it at once; the
applier runs on its own thread, woken by each commit of new deliveries and at least every
tick. The engine stops, finishing the row being sent and giving the others' leases back,
on SIGTERM or SIGINT, or when its stdin closes (the daemon asked, or is gone). On Linux the
kernel kills it when the daemon dies, so a killed daemon never leaves a sender behind.

Run by the daemon as ``python -m im.daemon.engine DB_PATH LOG_LEVEL PARENT_PID STATUS_FD
[LOG_FILE]``: a byte on STATUS_FD says the dispatcher still steps (the daemon's /readyz).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from im.clock import Clock, SystemClock, format_time
from im.daemon import logs, scheduler
from im.errors import DatabaseBusyError, ImError, InProgressError
from im.store import locks, open_database, wake
from im.store import outbox as outbox_rows
from im.store.db import write
from im.sync.dispatcher import Dispatcher
from im.sync.inbound import BATCH, Applier
from im.sync.schedules import ScheduleRunner

T = TypeVar("T")
# The HTTP server shares its process with nothing busy now, but the engine's senders,
# applier and wake-up listener still hand the GIL to each other: with Python's 5 ms switch
# interval every handoff to a busy thread could cost a send up to 5 ms.
SWITCH_INTERVAL = 0.0002
STEPPED_EVERY = 1.0  # how often the engine tells the daemon that the dispatcher still steps
LOCK_WAIT_SECONDS = 30.0  # longer than a send may take


class Engine:
    def __init__(
        self,
        db_path: Path,
        clock: Clock,
        logger: logging.Logger,
        stepped: Callable[[], None] = lambda: None,
    ) -> None:
        self.db_path = db_path
        self.clock = clock
        self.logger = logger
        self._stepped = stepped
        self._last_told = 0.0
        self._dispatch_lock = threading.Lock()
        self._dispatch_again = threading.Event()
        self._apply_wake = threading.Event()
        self._stop = threading.Event()
        self._applier_lock = threading.Lock()  # apply and purge share the connection

    def start(self) -> None:
        """Take back every lease (only one engine runs per database: ``main`` holds its lock,
        so their owner is gone), then start the work."""
        log = self._log
        self._dispatcher = Dispatcher(
            open_database(self.db_path),
            self.clock,
            parallel=True,
            log=lambda name, fields: log(name, fields, "failed" in name),
        )
        db = self._dispatcher.db
        with write(db):
            taken_back = outbox_rows.reap(db, format_time(self.clock.now()), every=True)
        log("engine.started", {"pid": os.getpid(), "leases_taken_back": taken_back}, False)
        self._applier = Applier(open_database(self.db_path), self.clock)
        self._schedules = ScheduleRunner(
            self.db_path, self.clock, log=lambda name, fields: log(name, fields, "error" in name)
        )
        self._apply_thread = threading.Thread(target=self._apply_loop, name="im-apply")
        self._apply_thread.start()
        self._listener: wake.Listener | None = None
        try:
            self._listener = wake.Listener(self.db_path, self._woken)
        except OSError as exc:  # another engine holds it: run on ticks alone, and say so
            log("engine.wake_unavailable", {"error": exc.strerror or str(exc)}, True)
        self._scheduler = scheduler.start(
            {
                "dispatch": (self._dispatch, scheduler.TICK_SECONDS),
                "purge": (self._purge, 3600.0),
                "reconcile": (self._reconcile, scheduler.SCHEDULE_SECONDS),
            }
        )
        self._dispatch()  # the first step at once: the daemon is ready once it has run

    def wait(self) -> None:
        """Until stop() is asked for."""
        while not self._stop.wait(1.0):
            pass

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Finish the row being sent and the event being applied; give the other leases back."""
        self._dispatcher.stop()
        if self._listener is not None:
            self._listener.close()
        self._scheduler.shutdown(wait=True)  # the running step finishes its current row
        self._schedules.stop()  # a running reconcile stops at its next page
        self._apply_wake.set()
        self._apply_thread.join()
        self._dispatcher.close()
        self._dispatcher.db.close()
        self._applier.close()
        self._applier.db.close()

    # -- the work ------------------------------------------------------------------------------

    def _woken(self, kinds: set[bytes]) -> None:
        if wake.APPLY in kinds:
            self._apply_wake.set()
        if wake.DISPATCH in kinds:
            self._dispatch()

    def _dispatch(self) -> None:
        """One dispatcher step, from the tick or a wake-up. A call that finds a step running
        leaves it to step once more, so no wake-up is lost to a step that began before its
        row was committed."""
        self._dispatch_again.set()
        while self._dispatch_again.is_set() and not self._stop.is_set():
            if not self._dispatch_lock.acquire(blocking=False):
                return  # the step under way sees the flag and runs once more
            try:
                self._dispatch_again.clear()
                self._guarded("dispatch", self._dispatcher.step)
            finally:
                self._dispatch_lock.release()
        now = time.monotonic()
        if now - self._last_told >= STEPPED_EVERY:
            self._last_told = now
            self._stepped()

    def _apply_loop(self) -> None:
        while not self._stop.is_set():
            with self._applier_lock:
                settled = self._guarded("apply", self._applier.step)
            if settled != BATCH:  # a full batch: more are waiting, go on at once
                self._apply_wake.wait(scheduler.TICK_SECONDS)
                self._apply_wake.clear()

    def _reconcile(self) -> None:
        self._guarded("reconcile", self._schedules.tick)

    def _purge(self) -> None:
        with self._applier_lock:
            self._guarded("purge", self._applier.purge)

    def _guarded(self, name: str, work: Callable[[], T]) -> T | None:
        """Run one tick of ``work``; a tick that fails is logged (None) and the next one runs."""
        try:
            return work()
        except DatabaseBusyError as exc:
            self._log(f"{name}.busy", {"error": exc.message}, True)
        except ImError as exc:
            logs.event(self.logger, f"{name}.error", {"error": str(exc)}, logging.ERROR)
        except Exception as exc:  # the loop must survive anything, and say what happened
            logs.event(
                self.logger,
                f"{name}.error",
                {"error": type(exc).__name__, "detail": str(exc)[:200]},
                logging.ERROR,
            )
        return None

    def _log(self, name: str, fields: dict[str, Any], warning: bool) -> None:
        logs.event(self.logger, name, fields, logging.WARNING if warning else logging.INFO)


def _die_with_parent(parent: int) -> None:
    """Linux: be killed with the daemon, even by SIGKILL (its stdin closing is the slower,
    graceful way elsewhere). A daemon already gone by now is caught by the pid check."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def main(argv: list[str]) -> int:
    db_path, level, parent, status_fd = Path(argv[0]), argv[1], int(argv[2]), int(argv[3])
    log_file = Path(argv[4]) if len(argv) > 4 else None
    _die_with_parent(parent)
    os.set_blocking(status_fd, False)  # a daemon that stopped reading never holds us up
    sys.setswitchinterval(SWITCH_INTERVAL)
    logger = logs.setup(level, log_file)

    def stepped() -> None:
        with contextlib.suppress(OSError):  # the daemon is gone: stdin's end stops us
            os.write(status_fd, b".")

    engine = Engine(db_path, SystemClock(), logger, stepped)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: engine.stop())
    threading.Thread(target=_stop_at_eof, args=(engine,), name="im-parent", daemon=True).start()

    def refusal() -> InProgressError:
        return InProgressError(f"another engine still runs for {db_path}")

    try:
        # An engine left by a daemon killed where the kernel does not kill it too finishes
        # its sends before a new one takes the leases back.
        with locks.exclusive(lock_path(db_path), refusal, wait=LOCK_WAIT_SECONDS):
            engine.start()
            engine.wait()
            engine.close()
    except ImError as exc:
        logs.event(logger, "engine.error", {"error": str(exc)}, logging.ERROR)
        return 1
    return 0


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".engine.lock")


def _stop_at_eof(engine: Engine) -> None:
    while os.read(sys.stdin.fileno(), 64):
        pass
    engine.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
