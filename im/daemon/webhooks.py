"""``POST /webhooks/{integration}``: the HTTP side of the Inbound Webhook Handler. Reads the
body within its limit, hands it to ``im.sync.inbound.receive`` and answers; a transient
database fault is a 503 with Retry-After, never a 500."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from sqlite_utils import Database
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from im.clock import Clock
from im.config.connection import ConnectorCache
from im.connectors.base import WebhookRequest
from im.errors import DatabaseBusyError, ImError
from im.store import integrations as integration_rows
from im.store import meta, open_database
from im.sync import inbound


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


class WebhookReceiver:
    def __init__(self, db_path: Path, clock: Clock) -> None:
        self._db_path = db_path
        self._clock = clock
        self._db: Database | None = None
        self._connectors: ConnectorCache | None = None

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
            prefix = urlsplit(meta.get(self.db, "public_url") or "").path.rstrip("/")
            answer = inbound.receive(
                self.db,
                self._clock,
                integration,
                self.connectors.get(integration),
                WebhookRequest(
                    method=request.method,
                    path=prefix + request.url.path,
                    query=request.url.query,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=bytes(body),
                ),
            )
        except DatabaseBusyError:
            return _error(503, "busy", "the database is busy; try again", **{"Retry-After": "1"})
        except ImError as exc:  # e.g. the master key is missing: the vendor retries later
            return _error(503, "unavailable", exc.message, **{"Retry-After": "30"})
        except Exception as exc:  # never a 500: say what kind of fault, nothing more
            return _error(
                503, "internal", f"internal error ({type(exc).__name__})", **{"Retry-After": "30"}
            )
        return JSONResponse(answer.body, answer.status, headers=answer.headers)
