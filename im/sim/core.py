"""What the three simulators share: the injected clock, seeded randomness, fault injection at
start and at run time, and outgoing webhooks with delivery ids, vendor-style retries and the
delivery faults (drop, duplicate, delay, reorder).

A simulator is an ASGI app (Starlette). Tests run it in-process through
``im.sim.transport.ASGIBridge`` and step webhook delivery themselves; ``im sim`` serves it with
uvicorn and delivers in a background task.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from im.clock import Clock, SystemClock, format_time
from im.sim.transport import ASGIBridge

ADMIN_PREFIX = "/_sim"


@dataclass
class Faults:
    """What goes wrong, as probabilities per request or delivery (0 = never, 1 = always)."""

    drop_webhooks: float = 0.0  # a delivery is never sent
    duplicate_webhooks: float = 0.0  # a delivery is sent twice
    delay_webhooks: float = 0.0  # seconds added before a delivery is due
    reorder_webhooks: float = 0.0  # a delivery jumps ahead of the one before it
    error_rate: float = 0.0  # API requests answered 500
    rate_limit_rate: float = 0.0  # API requests answered 429 with the vendor's headers
    retry_after: int = 2  # seconds, in those 429s
    timeout_rate: float = 0.0  # applied, but the response is lost (the client times out)
    write_timeout_rate: float = 0.0  # the same for writes only: an in-doubt create or update
    lost_request_rate: float = 0.0  # never applied, no response (the client times out)
    latency: float = 0.0  # seconds added to every API answer (served mode only)
    permanent_error: int = 0  # every write answered with this status (400, 404, 422, ...)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (from ``--fault`` or ``POST /_sim/faults``). Raises ValueError."""
        known = {f.name: f for f in dataclasses.fields(self)}
        for name, value in changes.items():
            key = name.replace("-", "_")
            if key not in known:
                names = ", ".join(n.replace("_", "-") for n in known)
                raise ValueError(f"unknown fault {name!r}: use one of {names}")
            kind = int if known[key].type in ("int", int) else float
            try:
                number = kind(value)
            except (TypeError, ValueError):
                what = "a whole number" if kind is int else "a number"
                raise ValueError(f"{name} takes {what}, not {str(value)[:40]!r}") from None
            if kind is float and key not in ("delay_webhooks", "latency") and not 0 <= number <= 1:
                raise ValueError(f"{name} is a probability between 0 and 1")
            if number < 0:
                raise ValueError(f"{name} must not be negative")
            setattr(self, key, number)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_fault(text: str) -> tuple[str, str]:
    """``drop-webhooks=0.2`` -> (name, value). Raises ValueError."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"--fault takes NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


@dataclass(frozen=True)
class RetryPolicy:
    """How the vendor retries a delivery that was not accepted."""

    statuses: frozenset[int]  # answers that are retried (connection failures always are)
    delays: tuple[float, ...]  # seconds before each retry; after the last, the delivery is dropped


@dataclass
class Delivery:
    id: str
    resource: str  # deliveries of one resource stay in order
    body: bytes
    headers: dict[str, str]
    due_at: datetime
    attempt: int = 1
    outcome: str = "pending"  # pending | delivered | dropped | failed
    answers: list[str] = field(default_factory=list)


Signer = Callable[[str, bytes, int], dict[str, str]]


class WebhookQueue:
    """Outgoing deliveries. ``due()`` / ``record()`` are the whole protocol, so a test can
    step delivery synchronously and the served simulator can run it in the background."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self.pending: list[Delivery] = []
        self.log: list[Delivery] = []

    def emit(self, resource: str, payload: Mapping[str, Any], delivery_id: str) -> None:
        """Queue one delivery of ``payload`` (compact JSON), subject to the delivery faults."""
        sim = self._sim
        if not sim.webhook_url:
            return
        body = json.dumps(payload, separators=(",", ":")).encode()
        delivery = Delivery(delivery_id, resource, body, {}, sim.clock.now())
        faults = sim.faults
        if sim.chance(faults.drop_webhooks):
            delivery.outcome = "dropped"
            delivery.answers.append("dropped by fault injection")
            self.log.append(delivery)
            return
        if faults.delay_webhooks:
            delivery.due_at += timedelta(seconds=faults.delay_webhooks)
        if self.pending and sim.chance(faults.reorder_webhooks):
            self.pending.insert(len(self.pending) - 1, delivery)
        else:
            self.pending.append(delivery)
        if sim.chance(faults.duplicate_webhooks):
            self.pending.append(dataclasses.replace(delivery, answers=[]))

    def due(self) -> list[Delivery]:
        """Deliveries to send now: the first due one of each resource, in queue order."""
        now = self._sim.clock.now()
        seen: set[str] = set()
        result = []
        for delivery in self.pending:
            if delivery.resource in seen:
                continue
            seen.add(delivery.resource)
            if delivery.due_at <= now:
                result.append(delivery)
        return result

    def prepare(self, delivery: Delivery) -> tuple[str, dict[str, str], bytes]:
        """URL, headers (signed now, numbered by attempt) and body for one send."""
        sim = self._sim
        headers = {"content-type": "application/json", "user-agent": sim.user_agent}
        headers.update(sim.sign(delivery.id, delivery.body, delivery.attempt))
        return sim.webhook_url, headers, delivery.body

    def record(self, delivery: Delivery, status: int | None, error: str = "") -> None:
        """What the receiver answered (None: no answer): done, retried later or dropped."""
        sim = self._sim
        answer = str(status) if status is not None else f"no answer ({error})"
        delivery.answers.append(
            f"{format_time(sim.clock.now())} attempt {delivery.attempt}: {answer}"
        )
        if status is not None and 200 <= status < 300:
            delivery.outcome = "delivered"
        elif (status is None or status in sim.retry.statuses) and delivery.attempt <= len(
            sim.retry.delays
        ):
            delivery.due_at = sim.clock.now() + timedelta(
                seconds=sim.retry.delays[delivery.attempt - 1]
            )
            delivery.attempt += 1
            return
        else:
            delivery.outcome = "failed"
        self.pending.remove(delivery)
        self.log.append(delivery)

    def deliver(self, client: httpx.Client) -> int:
        """Send every due delivery once with a synchronous client; the number sent."""
        sent = 0
        while batch := self.due():
            progressed = False
            for delivery in batch:
                url, headers, body = self.prepare(delivery)
                try:
                    status: int | None = client.post(url, headers=headers, content=body).status_code
                    error = ""
                except httpx.HTTPError as exc:
                    status, error = None, type(exc).__name__
                self.record(delivery, status, error)
                sent += 1
                progressed = progressed or delivery.outcome != "pending"
            if not progressed:  # everything due was retried for later
                break
        return sent

    async def deliver_async(self, client: httpx.AsyncClient) -> int:
        sent = 0
        for delivery in self.due():
            url, headers, body = self.prepare(delivery)
            try:
                status: int | None = (
                    await client.post(url, headers=headers, content=body)
                ).status_code
                error = ""
            except httpx.HTTPError as exc:
                status, error = None, type(exc).__name__
            self.record(delivery, status, error)
            sent += 1
        return sent


class FaultMiddleware:
    """Answers API requests with the injected faults before (or instead of) the vendor app.
    Admin routes under ``/_sim`` are never faulted."""

    def __init__(self, app: ASGIApp, sim: Simulator) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        sim, faults = self.sim, self.sim.faults
        if faults.latency and sim.served:
            await asyncio.sleep(faults.latency)
        if sim.chance(faults.lost_request_rate):
            await self._lost(send)
            return
        if sim.chance(faults.rate_limit_rate):
            await sim.rate_limited(faults.retry_after)(scope, receive, send)
            return
        if sim.chance(faults.error_rate):
            await sim.error(500, "simulated internal error")(scope, receive, send)
            return
        if faults.permanent_error and sim.is_write(scope):
            status = faults.permanent_error
            await sim.error(status, "simulated permanent error")(scope, receive, send)
            return
        if sim.chance(faults.timeout_rate) or (
            sim.is_write(scope) and sim.chance(faults.write_timeout_rate)
        ):
            # apply the request, then lose the answer
            async def discard(message: Any) -> None:
                return None

            await self.app(scope, receive, discard)
            await self._lost(send)
            return
        await self.app(scope, receive, send)

    async def _lost(self, send: Send) -> None:
        if self.sim.served:
            await asyncio.sleep(self.sim.lost_response_seconds)
        from im.sim.transport import LOST_RESPONSE

        await send(
            {
                "type": "http.response.start",
                "status": 504,
                "headers": [(LOST_RESPONSE.encode(), b"1")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


Handler = Callable[[Request], Awaitable[Response]]


class Simulator:
    """The shared half of a vendor simulator. Subclasses add the vendor's routes, auth, error
    bodies, 429 headers, webhook signing and retry policy."""

    kind = ""
    user_agent = "im-sim"
    retry = RetryPolicy(frozenset({408, 429, 500, 502, 503, 504}), (1.0, 5.0, 30.0))

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        seed: int = 0,
        webhook_url: str = "",
        webhook_secret: str = "",
        faults: Faults | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.rng = random.Random(seed)
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.faults = faults or Faults()
        self.webhooks = WebhookQueue(self)
        self.served = False  # True under uvicorn: latency and lost responses take real time
        self.lost_response_seconds = 60.0
        self._delivery_counter = 0
        self._app: Starlette | None = None
        self._bridge: ASGIBridge | None = None

    # -- for subclasses ---------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def sign(self, delivery_id: str, body: bytes, attempt: int) -> dict[str, str]:
        """The vendor's signature and delivery headers for one send."""
        raise NotImplementedError

    def error(self, status: int, message: str) -> Response:
        """The vendor's error body for ``status``."""
        raise NotImplementedError

    def rate_limited(self, retry_after: int) -> Response:
        """The vendor's 429 with its rate-limit headers."""
        raise NotImplementedError

    def is_write(self, scope: Scope) -> bool:
        """Whether a request changes state (``permanent_error`` answers only those)."""
        return (
            scope["method"] in ("POST", "PUT", "PATCH", "DELETE") and "search" not in scope["path"]
        )

    def describe(self) -> dict[str, Any]:
        """Accounts and fixtures, for ``im sim`` to print."""
        raise NotImplementedError

    def record_count(self) -> int:
        """How many incidents (or issues) exist: tests check nothing was duplicated."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------

    def chance(self, probability: float) -> bool:
        return probability > 0 and (probability >= 1 or self.rng.random() < probability)

    def random_hex(self, length: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(length))

    def random_id(self, prefix: str, length: int = 6) -> str:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        return prefix + "".join(self.rng.choice(alphabet) for _ in range(length))

    def next_delivery_id(self, prefix: str = "") -> str:
        self._delivery_counter += 1
        return f"{prefix}{self.random_hex(8)}-{self._delivery_counter:06d}"

    @property
    def app(self) -> Starlette:
        if self._app is None:
            app = Starlette(routes=[*self._admin_routes(), *self.routes()])
            app.add_middleware(FaultMiddleware, sim=self)
            self._app = app
        return self._app

    def transport(self) -> ASGIBridge:
        """An in-process httpx transport to this simulator (one per simulator)."""
        if self._bridge is None:
            self._bridge = ASGIBridge(self.app)
        return self._bridge

    def shutdown(self) -> None:
        if self._bridge is not None:
            self._bridge.shutdown()
            self._bridge = None

    def _admin_routes(self) -> list[BaseRoute]:
        async def faults(request: Request) -> Response:
            if request.method == "POST":
                try:
                    changes = await request.json()
                    if not isinstance(changes, dict):
                        raise ValueError("the body must be a JSON object of fault: value")
                    self.faults.update(changes)
                except (ValueError, TypeError) as exc:
                    return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(self.faults.as_dict())

        async def webhooks(request: Request) -> Response:
            def show(d: Delivery) -> dict[str, Any]:
                return {
                    "id": d.id,
                    "resource": d.resource,
                    "outcome": d.outcome,
                    "attempt": d.attempt,
                    "due_at": format_time(d.due_at),
                    "answers": d.answers,
                }

            return JSONResponse(
                {
                    "url": self.webhook_url,
                    "pending": [show(d) for d in self.webhooks.pending],
                    "log": [show(d) for d in self.webhooks.log[-200:]],
                }
            )

        return [
            Route(f"{ADMIN_PREFIX}/faults", faults, methods=["GET", "POST"]),
            Route(f"{ADMIN_PREFIX}/webhooks", webhooks, methods=["GET"]),
        ]


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) from ``Authorization: Basic``, or None."""
    header = request.headers.get("authorization", "")
    if header[:6].lower() != "basic ":
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


async def json_object(request: Request) -> dict[str, Any] | None:
    """The request's JSON object body, or None when it is not one."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None
