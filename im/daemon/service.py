"""The daemon's life: one per database (an exclusive lock beside the database file), a
heartbeat row every process can read, the HTTP server (webhooks, REST API, /metrics) in this
process and the engine (dispatcher, applier, reconcile schedules) in a child process of its
own (``im.daemon.engine``), and a graceful stop on SIGINT / SIGTERM (the rows being sent
finish, the others' leases are given back) well within 10 s."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from im.clock import Clock, SystemClock, format_time
from im.config.connection import check_public_url
from im.daemon import logs, scheduler
from im.daemon.app import create_app
from im.daemon.engine import SWITCH_INTERVAL
from im.daemon.server import check_port, check_tls
from im.daemon.supervisor import EngineProcess
from im.errors import ImError, InProgressError
from im.store import daemon as daemon_rows
from im.store import locks, meta, open_database, wake
from im.store.db import write

ENGINE_STOP_SECONDS = 8.0  # of the 10 s a graceful stop may take


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
        self._scheduler: Any = None

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
                logs.event(
                    self.logger,
                    "daemon.started",
                    {
                        "pid": os.getpid(),
                        "listen": f"{options.scheme}://{options.host}:{options.port}",
                        "database": str(options.db_path),
                    },
                )
                self._serve()
        finally:
            db.close()

    def _serve(self) -> None:
        import uvicorn

        # The event loop answering webhooks hands the GIL to the writer thread that commits
        # them; with Python's 5 ms switch interval every handoff to a busy thread cost a
        # request up to 5 ms (a convoy). A shorter one keeps answers prompt under load.
        sys.setswitchinterval(SWITCH_INTERVAL)

        from im.api.app import create_api
        from im.daemon.metrics import MetricsEndpoint
        from im.daemon.server import Server
        from im.daemon.webhooks import WebhookReceiver

        options = self.options
        db_path = options.db_path
        self._receiver = WebhookReceiver(
            db_path, self.clock, stored=lambda: wake.poke(db_path, wake.APPLY)
        )
        self._engine = EngineProcess(db_path, options.log_level, options.log_file, self.logger)
        api = create_api(db_path, self.clock)
        metrics = MetricsEndpoint(db_path, self.clock, options.loopback)
        app = create_app(self._ready, self._lifespan, self._receiver.handle, api, metrics.handle)
        server = Server(
            uvicorn.Config(
                app,
                host=options.host,
                port=options.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
                ssl_keyfile=str(options.tls_key) if options.tls_key else None,
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
        self._heartbeat_db = open_database(self.options.db_path)
        self._engine.start()
        self._scheduler = scheduler.start(
            {"heartbeat": (self._beat, daemon_rows.HEARTBEAT_SECONDS)}
        )

    def _stop_work(self) -> None:
        self._engine.stop(ENGINE_STOP_SECONDS)  # the rows being sent finish
        self._scheduler.shutdown(wait=True)
        self._receiver.close()
        with write(self._heartbeat_db):
            daemon_rows.stopped(self._heartbeat_db, format_time(self.clock.now()))
        self._heartbeat_db.close()
        logs.event(self.logger, "daemon.stopped", {"pid": os.getpid()})

    def _beat(self) -> None:
        try:
            with write(self._heartbeat_db):
                daemon_rows.beat(self._heartbeat_db, format_time(self.clock.now()))
        except ImError as exc:
            logs.event(self.logger, "heartbeat.failed", {"error": str(exc)}, logging.WARNING)

    def _ready(self) -> tuple[bool, str]:
        return self._engine.ready()
