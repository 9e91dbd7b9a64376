"""Two-way sync in one process: the platform with its daemon app (webhooks in-process over
HTTP), the three simulators sending it webhooks, the dispatcher and the applier stepped by
hand on a frozen clock. Used by the inbound and conflict tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from im.clock import FrozenClock
from im.daemon.app import create_app
from im.daemon.webhooks import WebhookReceiver
from im.sim.core import Simulator
from im.sim.jira import JiraSimulator
from im.sim.pagerduty import PagerDutySimulator
from im.sim.servicenow import ServiceNowSimulator
from im.sim.transport import ASGIBridge
from im.store import integrations as integration_rows
from im.store import open_database, sync_state
from im.sync.dispatcher import Dispatcher
from im.sync.inbound import Applier
from tests.conftest import Im

SECRET = {
    "prod-snow": "whsec_c2ltdWxhdG9yLXdlYmhvb2stc2VjcmV0",
    "prod-jira": "jira-shared-secret-0123456789abcdef",
    "prod-pd": "pd-webhook-secret-0123456789",
}
CREATE = {
    "prod-snow": (["--type", "servicenow", "--url", "http://127.0.0.1:1", "--username", "im-integration"], {"IM_PASSWORD": "im-integration"}),
    "prod-jira": (["--type", "jira", "--url", "http://127.0.0.1:2", "--email", "im-integration@example.com", "--project", "OPS", "--client-key", "im-sim-jira"], {"IM_API_TOKEN": "im-integration-token"}),
    "prod-pd": (["--type", "pagerduty", "--url", "http://127.0.0.1:3", "--from-email", "im-integration@example.com", "--service", "PSVC001", "--escalation-policy", "PEP0001"], {"IM_API_TOKEN": "im-integration-token"}),
}  # fmt: skip
AGENTS = {
    "prod-snow": ("agent", "agent"),
    "prod-jira": ("agent@example.com", "agent-token"),
}


@dataclass
class Two:
    """The platform with its daemon app, and the three simulators sending it webhooks."""

    im: Im
    clock: FrozenClock
    sims: dict[str, Simulator]
    daemon: httpx.Client
    dispatcher: Dispatcher
    applier: Applier

    def sync(self, rounds: int = 3) -> None:
        """Send what is queued, deliver every webhook, apply them: until nothing moves."""
        for _ in range(rounds):
            self.dispatcher.step()
            for sim in self.sims.values():
                sim.webhooks.deliver(self.daemon)
            self.applier.step()

    def deliver(self) -> None:
        for sim in self.sims.values():
            sim.webhooks.deliver(self.daemon)
        self.applier.step()

    def db(self) -> Any:
        return self.dispatcher.db

    def counters(self, name: str) -> dict[str, int]:
        row = integration_rows.find(self.db(), name)
        assert row
        return sync_state.counters(self.db(), row["id"])

    def events(self, name: str) -> list[dict[str, Any]]:
        return json.loads(self.im.ok("integration", "events", name, "--format", "json"))

    def external_id(self, name: str, incident: int) -> str:
        return external_id(self.db(), name, incident)

    def agent(self, name: str) -> httpx.Client:
        return agent_client(self.sims[name], name)

    def incident(self, n: int) -> dict[str, Any]:
        shown: dict[str, Any] = json.loads(
            self.im.ok("incident", "show", f"INC-{n}", "--format", "json")
        )
        return shown


def external_id(db: Any, name: str, incident: int) -> str:
    """The id of the record in integration ``name`` linked to INC-``incident``."""
    row = db.execute(
        "SELECT external_id FROM links l JOIN integrations i ON i.id = l.integration_id "
        "WHERE i.name = ? AND l.incident_id = ?",
        [name, incident],
    ).fetchone()
    assert row, f"INC-{incident} is not linked to {name}"
    return str(row[0])


def agent_client(sim: Simulator, name: str, *, trust_env: bool = True) -> httpx.Client:
    """A client of ``sim``, the simulator of integration ``name``, logged in as its agent:
    the person there."""
    if name == "prod-pd":
        return httpx.Client(
            transport=sim.transport(),
            base_url="http://pd",
            headers={"Authorization": "Token token=agent-token", "From": "agent@example.com"},
            trust_env=trust_env,
        )
    return httpx.Client(
        transport=sim.transport(), base_url="http://sim", auth=AGENTS[name], trust_env=trust_env
    )


@pytest.fixture
def two(initialised: Im, clock: FrozenClock) -> Iterator[Two]:
    with two_way(initialised, clock) as world:
        yield world


@contextmanager
def two_way(im: Im, clock: FrozenClock) -> Iterator[Two]:
    """The three integrations (``CREATE``) made bidirectional in ``im``'s initialised
    database, their simulators on ``clock``, and the ``platform`` between them."""
    for name, (args, env) in CREATE.items():
        im.ok("integration", "create", name, *args, env={**env, "IM_WEBHOOK_SECRET": SECRET[name]})
        im.ok("integration", "configure", name, "--direction", "bidirectional")
    sims: dict[str, Simulator] = {
        "prod-snow": ServiceNowSimulator(clock=clock, webhook_url="http://im/webhooks/prod-snow", webhook_secret=SECRET["prod-snow"]),
        "prod-jira": JiraSimulator(clock=clock, webhook_url="http://im/webhooks/prod-jira", webhook_secret=SECRET["prod-jira"]),
        "prod-pd": PagerDutySimulator(clock=clock, webhook_url="http://im/webhooks/prod-pd", webhook_secret=SECRET["prod-pd"]),
    }  # fmt: skip

    def transport_for(integration: dict[str, Any]) -> httpx.BaseTransport:
        return sims[integration["name"]].transport()

    with platform(im, clock, sims, transport_for) as world:
        yield world


@contextmanager
def platform(
    im: Im,
    clock: FrozenClock,
    sims: dict[str, Simulator],
    transport_for: Callable[[dict[str, Any]], httpx.BaseTransport],
    serve: Callable[[Any], ASGIBridge] = ASGIBridge,
) -> Iterator[Two]:
    """The daemon's webhook route, sender and applier over ``im``'s database, reaching the
    simulators through ``transport_for``; everything closed at the end. ``serve`` makes the
    transport the webhook route is reached through."""
    receiver = WebhookReceiver(im.db_path, clock)
    bridge = serve(create_app(lambda: (True, ""), webhook=receiver.handle))
    daemon = httpx.Client(transport=bridge, base_url="http://im")
    im.transport_for = transport_for
    db = open_database(im.db_path)
    applier_db = open_database(im.db_path)
    world = Two(
        im,
        clock,
        sims,
        daemon,
        Dispatcher(db, clock, transport_for=transport_for, sleep=clock.advance),
        Applier(applier_db, clock, transport_for=transport_for, sleep=clock.advance),
    )
    try:
        yield world
    finally:
        world.dispatcher.close()
        world.applier.close()
        receiver.close()
        bridge.shutdown()
        db.close()
        applier_db.close()
        for sim in sims.values():
            sim.shutdown()


def new_incident(two: Two, *args: str) -> int:
    out = two.im.ok("incident", "create", "--title", "Checkout API 5xx", "--format", "json", *args)
    return int(json.loads(out)["incident"]["id"].removeprefix("INC-"))


def jira_issue(two: Two, summary: str) -> str:
    """An agent opens an issue in project OPS; its key."""
    with two.agent("prod-jira") as agent:
        made = agent.post(
            "/rest/api/3/issue",
            json={
                "fields": {
                    "project": {"key": "OPS"},
                    "issuetype": {"name": "Incident"},
                    "summary": summary,
                }
            },
        )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])
