"""Run an ASGI app (a simulator, later the daemon) behind a *synchronous* httpx transport, so
the real connectors talk to it in-process: no sockets, no threads of our own to manage, and a
deterministic order of events for tests and the fault simulation.

The app runs on an event loop in a blocking portal thread; each request is handed over and
waited for. A simulator that decides a response is lost (its ``timeout`` fault) marks it with
``LOST_RESPONSE``; the transport turns that into the ``httpx.ReadTimeout`` a real client sees.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

LOST_RESPONSE = "x-im-sim-lost-response"


class ASGIBridge(httpx.BaseTransport):
    def __init__(self, app: Any) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._portal_cm is None:
            raise httpx.ConnectError("the in-process server is closed", request=request)
        body = request.read()
        forwarded = httpx.Request(
            request.method, request.url, headers=request.headers, content=body
        )

        async def call() -> tuple[int, httpx.Headers, bytes]:
            response = await self._inner.handle_async_request(forwarded)
            content = await response.aread()
            return response.status_code, response.headers, content

        status, headers, content = self._portal.call(call)
        if LOST_RESPONSE in headers:
            raise httpx.ReadTimeout("the simulator lost the response", request=request)
        return httpx.Response(status, headers=headers, content=content, request=request)

    def close(self) -> None:
        """Clients sharing this transport close it when they close: keep serving."""

    def shutdown(self) -> None:
        """Stop the portal thread (the owner's job, once every client is done)."""
        if self._portal_cm is not None:
            cm, self._portal_cm = self._portal_cm, None
            cm.__exit__(None, None, None)
