"""The daemon's ASGI app. Health checks now; the webhook receiver, the REST API and /metrics
mount here as they come."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(
    ready: Callable[[], tuple[bool, str]], lifespan: Lifespan | None = None
) -> Starlette:
    """``ready()`` says whether the daemon can do its work (database reachable, scheduler
    running) and why not."""

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

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz)],
        lifespan=lifespan or no_lifespan,
    )
