"""The daemon's ASGI app: health checks, the webhook receiver, the REST API and /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from im.api.errors import http_error

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]
Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    ready: Callable[[], tuple[bool, str]],
    lifespan: Lifespan | None = None,
    webhook: Endpoint | None = None,
    api: ASGIApp | None = None,
    metrics: Endpoint | None = None,
) -> Starlette:
    """``ready()`` says whether the daemon can do its work (database reachable, scheduler
    running) and why not; ``webhook`` answers ``POST /webhooks/{integration}``; ``api`` is
    the REST API, served under ``/api/v1``; ``metrics`` answers ``GET /metrics``."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        ok, reason = ready()
        body: dict[str, Any] = {"status": "ready" if ok else "not ready"}
        if not ok:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if ok else 503)

    @asynccontextmanager
    async def no_lifespan(app: Starlette) -> AsyncIterator[None]:
        yield

    routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if webhook is not None:
        routes.append(Route("/webhooks/{integration}", webhook, methods=["POST"]))
    if api is not None:
        routes.append(Mount("/api/v1", app=api))
    if metrics is not None:
        routes.append(Route("/metrics", metrics, methods=["GET"]))
    # an unknown path (also one no route pattern takes, e.g. an id with a newline under
    # /api/v1) or method answers in the API's one error shape, not Starlette's plain text
    return Starlette(
        routes=routes,
        lifespan=lifespan or no_lifespan,
        exception_handlers={HTTPException: http_error},
    )
