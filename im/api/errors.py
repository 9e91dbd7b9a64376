"""Every failure of the API as ``{"error": {"code", "message"}}`` with a 4xx or 503 status,
never a 500 and never a traceback (SPEC §10, §11).

Known errors (ImError) keep their message, which names the problem and the fix and never a
secret. Anything unexpected becomes a bare ``503 internal``: its text could carry anything,
so only its type is logged.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from im.access import ForbiddenError
from im.api.models import ErrorOut
from im.errors import (
    DatabaseBusyError,
    DatabaseError,
    ImError,
    InProgressError,
    NotFoundError,
    SecretError,
    StateError,
    UsageError,
    ValidationError,
)
from im.security.tokens import AuthenticationError

log = logging.getLogger("im.api")

MAX_BODY = 1024 * 1024
RETRY_AFTER_BUSY = 5  # seconds: the lock holder already kept it for the whole busy timeout
# Most specific first: ValidationError is a UsageError, DatabaseBusyError a DatabaseError.
STATUS: tuple[tuple[type[ImError], int, str], ...] = (
    (AuthenticationError, 401, "unauthorized"),
    (ForbiddenError, 403, "forbidden"),
    (NotFoundError, 404, "not_found"),
    (ValidationError, 422, "invalid"),
    (UsageError, 400, "bad_request"),
    (InProgressError, 409, "in_progress"),
    (StateError, 409, "conflict"),
    (DatabaseBusyError, 503, "busy"),
    (DatabaseError, 503, "database_unavailable"),
    (SecretError, 503, "secrets_unavailable"),
)
FALLBACK = (409, "failed")  # other known failures: the request was fine, the outcome was not
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limited",
}


# what each error status means, for the OpenAPI document (every one has the ErrorOut shape)
MEANING = {
    400: "The request cannot be done as given (e.g. an update that changes nothing)",
    401: "No token, or an unknown or revoked one",
    403: "The policy denies the caller this action (with its reason)",
    404: "No such incident, integration, conflict or DLQ entry (the message says what exists)",
    409: "The current state does not allow it (e.g. a forbidden status move)",
    413: "The request body is larger than 1 MiB",
    422: "A bad value, an unknown key or malformed JSON (one line per problem)",
    503: "Busy (see Retry-After) or unavailable",
}


def declared(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, with the one error shape."""
    return {status: {"model": ErrorOut, "description": MEANING[status]} for status in statuses}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _busy() -> JSONResponse:
    return error_response(
        503,
        "busy",
        "the database is busy; retry shortly",
        {"Retry-After": str(RETRY_AFTER_BUSY)},
    )


async def known_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImError)
    status, code = next(((s, c) for kind, s, c in STATUS if isinstance(exc, kind)), FALLBACK)
    headers: dict[str, str] = {}
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, DatabaseBusyError):
        headers["Retry-After"] = str(RETRY_AFTER_BUSY)
    message = str(exc)
    if isinstance(exc, DatabaseError) and not isinstance(exc, DatabaseBusyError):
        # It names the database file and its directory: the daemon's log has it, a caller
        # does not need it.
        log.error("database unavailable: %s", exc)
        message = "the database is not available; see the log of `im daemon`"
    return error_response(status, code, message, headers)


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    """SQLite's own errors (a read that met a lock, a full disk): the service is unavailable
    for now; its text stays in the log."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return _busy()
    log.error("database error on %s %s: %s", request.method, request.url.path, text)
    return error_response(503, "database_unavailable", "database error; see the daemon's log")


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's checks of the path, query and body, as one line per problem."""
    assert isinstance(exc, RequestValidationError)
    sent_json = request.headers.get("content-type", "").startswith("application/json")
    if request.method in ("POST", "PUT", "PATCH") and not sent_json:
        # FastAPI reads a body without the JSON content type as text: say what to fix
        return error_response(
            422, "invalid", "send the request body as JSON, with Content-Type: application/json"
        )
    problems = [_problem(e) for e in exc.errors()[:5]]
    return error_response(422, "invalid", "; ".join(problems) or "invalid request")


def _problem(error: Any) -> str:
    if error.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    where = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
    if not where and error.get("type") == "missing":
        return "a JSON request body is required"
    return f"{'.'.join(where) or 'body'}: {error.get('msg', 'invalid')}"


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers: an unknown path, a method the path does not have."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI's answer to a JSON body json.loads cannot read at all (not UTF-8, nested too
        # deep): malformed JSON, as any other
        return error_response(422, "invalid", "the request body is not valid JSON")
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no such resource: {request.url.path[:200]}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path[:200]}"
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


HANDLERS: dict[type[Exception], Any] = {
    ImError: known_error,
    sqlite3.Error: database_error,
    RequestValidationError: invalid_request,
    HTTPException: http_error,
}


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:g} MiB" if n >= 1024 * 1024 else f"{n / 1024:g} KiB"


class Guard:
    """The outermost layer of the API: refuses bodies over ``MAX_BODY`` with 413 before the
    app reads them, and turns any exception that got this far into ``503 internal``."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            replay = await self._bounded(scope, receive)
            if replay is None:
                too_big = error_response(
                    413,
                    "too_large",
                    f"the request body is larger than {_size(self.max_body)}",
                )
                await too_big(scope, receive, send)
                return
            await self.app(scope, replay, tracked)
        except Exception as exc:
            log.error(
                "internal error (%s) on %s %s",
                type(exc).__name__,
                scope.get("method"),
                str(scope.get("path"))[:200],
            )
            if started:
                return  # the answer is on its way already; nothing better can be sent
            internal = error_response(503, "internal", "internal error; see the daemon's log")
            await internal(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Receive) -> Receive | None:
        """A receive that replays the request body, read whole; None when it is too large."""
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return None
        chunks: list[bytes] = []
        size = 0
        gone: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                gone = message  # the client went away: let the app see that
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return gone or {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
