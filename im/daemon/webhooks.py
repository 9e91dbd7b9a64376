"""``POST /webhooks/{integration}``: the HTTP side of the Inbound Webhook Handler. Reads the
body within its limit, has ``im.sync.inbound.receive`` check it, waits until what it leaves
is committed, and answers; a transient database fault is a 503 with Retry-After, never a 500.

Deliveries are committed in groups by one writer thread (group commit): one transaction for
the deliveries that arrived while the previous one was written, and the event loop never
waits for the database's write lock (the applier and the dispatcher hold it in turn). A
delivery is still answered only once it is committed."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sqlite_utils import Database
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from im.clock import Clock
from im.config.connection import ConnectorCache
from im.config.webhook_secrets import Accepted
from im.connectors.base import WebhookRequest
from im.errors import DatabaseBusyError, ImError
from im.store import integrations as integration_rows
from im.store import meta, open_database
from im.store.db import write
from im.sync import inbound

# deliveries written in one transaction at most (more wait for the next one)
GROUP = 200


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


@dataclass
class _Pending:
    receipt: inbound.Receipt
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[inbound.Answer]
    answer: inbound.Answer | None = None
    error: BaseException | None = field(default=None)

    def settle(self) -> None:
        """Hand the outcome to the waiting request, on its event loop."""

        def done() -> None:
            if self.future.done():  # the request went away meanwhile
                return
            if self.error is not None:
                self.future.set_exception(self.error)
            else:
                self.future.set_result(self.answer or self.receipt.answer)

        with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits any more
            self.loop.call_soon_threadsafe(done)


class GroupWriter:
    """One thread that writes receipts in groups, each in one transaction, each delivery in
    a savepoint of its own (one that cannot be written fails alone)."""

    def __init__(self, db_path: Path, stored: Callable[[], None] | None = None) -> None:
        self._db_path = db_path
        self._stored = stored or (lambda: None)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def write(self, receipt: inbound.Receipt) -> inbound.Answer:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="im-webhook-writer", daemon=True
                )
                self._thread.start()
        loop = asyncio.get_running_loop()
        pending = _Pending(receipt, loop, loop.create_future())
        self._queue.put(pending)
        return await pending.future

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        db: Database | None = None
        try:
            while (first := self._queue.get()) is not None:
                group = [first]
                while len(group) < GROUP:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._queue.put(None)  # stop after this group
                        break
                    group.append(more)
                try:
                    db = db or open_database(self._db_path)
                except Exception as exc:  # e.g. the file went away: these answer 503
                    for pending in group:
                        pending.error = exc
                        pending.settle()
                    continue
                self._commit(db, group)
        finally:
            if db is not None:
                db.close()

    def _commit(self, db: Database, group: list[_Pending]) -> None:
        try:
            with write(db):
                for pending in group:
                    try:
                        with write(db):  # a savepoint
                            pending.answer = inbound.record(db, pending.receipt)
                    except Exception as exc:
                        pending.error = exc
        except Exception as exc:  # the commit failed (e.g. busy): nothing of it was kept
            for pending in group:
                pending.error = pending.error or exc
                pending.answer = None
        for pending in group:
            pending.settle()
        if any(p.answer is not None and p.receipt.event is not None for p in group):
            self._stored()


class WebhookReceiver:
    """``stored`` is called once deliveries to apply are committed (the daemon wakes its
    applier)."""

    def __init__(
        self, db_path: Path, clock: Clock, stored: Callable[[], None] | None = None
    ) -> None:
        self._db_path = db_path
        self._clock = clock
        self._db: Database | None = None
        self._connectors: ConnectorCache | None = None
        self._secrets = Accepted()
        self._writer = GroupWriter(db_path, stored)
        self._prefix: str | None = None

    @property
    def db(self) -> Database:
        # opened on first use, on the server's thread: requests are handled one at a time
        # there, so the connection is never shared between transactions
        if self._db is None:
            self._db = open_database(self._db_path)
        return self._db

    @property
    def connectors(self) -> ConnectorCache:
        # kept between requests: opening secrets and a client per delivery is wasted work
        if self._connectors is None:
            self._connectors = ConnectorCache(self.db)
        return self._connectors

    def close(self) -> None:
        self._writer.close()
        if self._connectors is not None:
            self._connectors.close()
            self._connectors = None
        if self._db is not None:
            self._db.close()
            self._db = None

    async def handle(self, request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > inbound.MAX_BODY:
            return _error(413, "too_large", "the body is larger than 1 MiB")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > inbound.MAX_BODY:
                    return _error(413, "too_large", "the body is larger than 1 MiB")
        except ClientDisconnect:
            return _error(400, "disconnected", "the client went away")
        try:
            integration = integration_rows.find(self.db, request.path_params["integration"])
            if integration is None:
                return _error(404, "not_found", "no such integration")
            if self._prefix is None:  # set by this daemon before it began serving
                self._prefix = urlsplit(meta.get(self.db, "public_url") or "").path.rstrip("/")
            receipt = inbound.receive(
                self.db,
                self._clock,
                integration,
                self.connectors.get(integration),
                WebhookRequest(
                    method=request.method,
                    path=self._prefix + request.url.path,
                    query=request.url.query,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=bytes(body),
                ),
                self._secrets,
            )
            answer = await self._writer.write(receipt)
        except DatabaseBusyError:
            return _error(503, "busy", "the database is busy; try again", **{"Retry-After": "1"})
        except ImError as exc:  # e.g. the master key is missing: the vendor retries later
            return _error(503, "unavailable", exc.message, **{"Retry-After": "30"})
        except Exception as exc:  # never a 500: say what kind of fault, nothing more
            return _error(
                503, "internal", f"internal error ({type(exc).__name__})", **{"Retry-After": "30"}
            )
        return JSONResponse(answer.body, answer.status, headers=answer.headers)
