"""The daemon's life: one per database (an exclusive lock beside the database file), a
heartbeat row every process can read, the dispatcher ticked by APScheduler, the HTTP server,
and a graceful stop on SIGINT / SIGTERM (the row being sent finishes, the others' leases are
given back) well within 10 s."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from im.clock import Clock, SystemClock, format_time
from im.config.connection import check_public_url
from im.daemon import logs, scheduler
from im.daemon.app import create_app
from im.daemon.server import check_port, check_tls
from im.errors import DatabaseBusyError, ImError, InProgressError
from im.store import daemon as daemon_rows
from im.store import locks, meta, open_database
from im.store import outbox as outbox_rows
from im.store.db import write
from im.sync.dispatcher import Dispatcher
from im.sync.inbound import BATCH, Applier
from im.sync.schedules import ScheduleRunner

T = TypeVar("T")
STALE_DISPATCH_SECONDS = 10.0
SWITCH_INTERVAL = 0.0002


@dataclass(frozen=True)
class Options:
    db_path: Path
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    log_file: Path | None = None
    log_level: str = "info"
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the server (then /metrics needs no token)."""
        try:
            return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".daemon.lock")


def exclusive(
    db_path: Path, running: daemon_rows.DaemonStatus
) -> contextlib.AbstractContextManager[None]:
    """Hold the database's daemon lock; a second daemon fails at once, naming the first."""

    def refusal() -> InProgressError:
        where = f" (pid {running.pid}, listening on {running.listen})" if running.pid else ""
        return InProgressError(
            f"a daemon is already running for {db_path}{where}",
            "stop it first, or use another database with --db",
        )

    return locks.exclusive(lock_path(db_path), refusal)


class Daemon:
    def __init__(self, options: Options, clock: Clock | None = None) -> None:
        self.options = options
        self.clock = clock or SystemClock()
        self.logger = logging.getLogger(logs.LOGGER)
        self._last_step = 0.0
        self._scheduler: Any = None
        self._dispatcher: Dispatcher | None = None
        # the applier runs on a thread of its own, woken as soon as deliveries are stored
        # (else every tick): a tick's wait was most of a webhook's time to be applied
        self._apply_wake = threading.Event()
        self._apply_stop = threading.Event()
        self._apply_thread: threading.Thread | None = None
        self._applier_lock = threading.Lock()  # apply and purge share the connection

    def run(self) -> None:
        """Serve until SIGINT / SIGTERM. Raises ImError for a database, lock or port problem."""
        options = self.options
        public_url = check_public_url(options.public_url) if options.public_url else None
        db = open_database(options.db_path)
        try:
            running = daemon_rows.status(db, self.clock.now())
            with exclusive(options.db_path, running):
                check_port(options.host, options.port)
                if options.tls_cert and options.tls_key:
                    check_tls(str(options.tls_cert), str(options.tls_key))
                self.logger = logs.setup(options.log_level, options.log_file)
                now = format_time(self.clock.now())
                with write(db):
                    daemon_rows.register(
                        db,
                        {
                            "pid": os.getpid(),
                            "hostname": socket.gethostname(),
                            "listen": f"{options.host}:{options.port}",
                            "public_url": public_url,
                            "started_at": now,
                            "heartbeat_at": now,
                        },
                    )
                    if public_url:
                        meta.put(db, "public_url", public_url)
                    taken_back = outbox_rows.reap(db, now, every=True)
                logs.event(
                    self.logger,
                    "daemon.started",
                    {
                        "pid": os.getpid(),
                        "listen": f"{options.scheme}://{options.host}:{options.port}",
                        "database": str(options.db_path),
                        "leases_taken_back": taken_back,
                    },
                )
                self._serve()
        finally:
            db.close()

    def _serve(self) -> None:
        import uvicorn

        # The event loop answering webhooks shares the GIL with the applier and the
        # dispatcher; with Python's 5 ms switch interval every handoff to a busy thread cost
        # a request up to 5 ms (a convoy). A shorter one keeps answers prompt under load.
        sys.setswitchinterval(SWITCH_INTERVAL)

        from im.api.app import create_api
        from im.daemon.metrics import MetricsEndpoint
        from im.daemon.server import Server
        from im.daemon.webhooks import WebhookReceiver

        self._receiver = WebhookReceiver(
            self.options.db_path, self.clock, stored=self._apply_wake.set
        )
        api = create_api(self.options.db_path, self.clock)
        metrics = MetricsEndpoint(self.options.db_path, self.clock, self.options.loopback)
        app = create_app(self._ready, self._lifespan, self._receiver.handle, api, metrics.handle)
        server = Server(
            uvicorn.Config(
                app,
                host=self.options.host,
                port=self.options.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                ssl_certfile=str(self.options.tls_cert) if self.options.tls_cert else None,
                ssl_keyfile=str(self.options.tls_key) if self.options.tls_key else None,
            )
        )
        server.run()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncIterator[None]:
        self._start_work()
        try:
            yield
        finally:
            self._stop_work()

    def _start_work(self) -> None:
        work_db = open_database(self.options.db_path)
        self._heartbeat_db = open_database(self.options.db_path)
        self._dispatcher = Dispatcher(
            work_db,
            self.clock,
            parallel=True,
            log=lambda name, fields: logs.event(
                self.logger, name, fields, logging.WARNING if "failed" in name else logging.INFO
            ),
        )
        self._applier = Applier(open_database(self.options.db_path), self.clock)
        self._schedules = ScheduleRunner(
            self.options.db_path,
            self.clock,
            log=lambda name, fields: logs.event(
                self.logger, name, fields, logging.WARNING if "error" in name else logging.INFO
            ),
        )
        self._last_step = time.monotonic()
        self._apply_thread = threading.Thread(target=self._apply_loop, name="im-apply")
        self._apply_thread.start()
        self._scheduler = scheduler.start(
            {
                "dispatch": (self._dispatch, scheduler.TICK_SECONDS),
                "heartbeat": (self._beat, daemon_rows.HEARTBEAT_SECONDS),
                "purge": (self._purge, 3600.0),
                "reconcile": (self._reconcile, scheduler.SCHEDULE_SECONDS),
            }
        )

    def _stop_work(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # the running step finishes its current row
        self._schedules.stop()  # a running reconcile stops at its next page
        self._apply_stop.set()
        self._apply_wake.set()
        if self._apply_thread is not None:
            self._apply_thread.join()  # the event being applied finishes
        if dispatcher is not None:
            dispatcher.close()
            dispatcher.db.close()
        self._applier.close()
        self._applier.db.close()
        self._receiver.close()
        with write(self._heartbeat_db):
            daemon_rows.stopped(self._heartbeat_db, format_time(self.clock.now()))
        self._heartbeat_db.close()
        logs.event(self.logger, "daemon.stopped", {"pid": os.getpid()})

    def _dispatch(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is not None:
            self._guarded("dispatch", dispatcher.step)
        self._last_step = time.monotonic()

    def _apply_loop(self) -> None:
        while not self._apply_stop.is_set():
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
            logs.event(self.logger, f"{name}.busy", {"error": exc.message}, logging.WARNING)
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

    def _beat(self) -> None:
        try:
            with write(self._heartbeat_db):
                daemon_rows.beat(self._heartbeat_db, format_time(self.clock.now()))
        except ImError as exc:
            logs.event(self.logger, "heartbeat.failed", {"error": str(exc)}, logging.WARNING)

    def _ready(self) -> tuple[bool, str]:
        if self._scheduler is None or not self._scheduler.running:
            return False, "the scheduler is not running"
        if time.monotonic() - self._last_step > STALE_DISPATCH_SECONDS:
            return False, "the dispatcher has not finished a step for 10 s"
        return True, ""
