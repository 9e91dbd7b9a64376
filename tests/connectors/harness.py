"""One harness per vendor, so that one behavioural suite runs against each connector and its
simulator, in-process, on a frozen clock.

Each ``vendor_<type>.py`` module beside this one provides ``make_harness(clock, **sim_options)``
returning a ``Harness``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from im.clock import FrozenClock
from im.connectors.base import Connector, WebhookRequest
from im.sim.core import Delivery, Simulator


@dataclass
class Harness:
    kind: str
    clock: FrozenClock
    sim: Simulator
    connector: Connector
    # the human ("agent") account, through the same in-process transport
    agent: httpx.Client
    # agent_edit(external_id, platform_field, platform_value): a person's edit in the vendor
    agent_edit: Callable[[str, str, str], None]
    # agent_journal(external_id, journal_field, body): a person's work note / comment
    agent_journal: Callable[[str, str, str], None]
    # a connector of the same integration with a wrong password / token
    with_wrong_credentials: Callable[[], Connector]
    # what the integration was configured with (settings, secrets) for webhook checks
    webhook_secret: str
    # a connector of the same vendor whose scope excludes this integration's (ServiceNow:
    # another assignment group; Jira: another issue type; PagerDuty: another service)
    other_scope: Callable[[], Connector]
    # an id of the vendor's form that names no record
    missing_id: str
    # whether the webhook signature covers the body (else it covers the request line)
    signs_body: bool = True
    # fields the vendor can hold, with a valid platform value for each, for create/update tests
    sample: Mapping[str, str] = field(default_factory=dict)
    # fields (and their later values) an update test walks through
    updates: list[tuple[str, str]] = field(default_factory=list)
    journal_fields: tuple[str, ...] = ()
    # the vendor's own attributes of the webhook request (public URL path/query)
    webhook_path: str = "/webhooks/test"
    # created_in_vendor(external_id): the creation time the simulator stored, in the
    # platform's form (UTC, milliseconds, Z)
    created_in_vendor: Callable[[str], str] = field(default=lambda external_id: "")
    # how much earlier than asked list_in_scope(created_since) may reach: the vendor's
    # creation-time filter is that coarse (ServiceNow: seconds, JQL: minutes, PagerDuty: days)
    created_since_slack: timedelta = timedelta(0)

    def request_for(self, delivery: Delivery) -> WebhookRequest:
        """The delivery as our daemon would receive it."""
        url, headers, body = self.sim.webhooks.prepare(delivery)
        parsed = httpx.URL(url)
        return WebhookRequest(
            method="POST",
            path=parsed.path,
            query=parsed.query.decode(),
            headers={k.lower(): v for k, v in headers.items()},
            body=body,
        )

    def close(self) -> None:
        self.connector.close()
        self.agent.close()
        self.sim.shutdown()


class Recording(httpx.BaseTransport):
    """A transport that remembers every request before passing it on (tests that count
    what a connector sends)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    @property
    def seen(self) -> list[tuple[str, str]]:
        return [(r.method, r.url.path) for r in self.requests]

    def paths(self, suffix: str) -> list[str]:
        return [str(r.url) for r in self.requests if r.url.path.endswith(suffix)]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)


def make(kind: str, clock: FrozenClock, **sim_options: Any) -> Harness:
    module = importlib.import_module(f"tests.connectors.vendor_{kind}")
    harness: Harness = module.make_harness(clock, **sim_options)
    return harness
