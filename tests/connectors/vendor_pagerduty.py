"""The PagerDuty harness: the simulator on a frozen clock, the connector and the agent's own
client on its in-process transport."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from im.clock import FrozenClock, format_time
from im.config.mapping import mappings
from im.connectors.base import ConnectorConfig
from im.connectors.pagerduty import (
    ACCEPT,
    PRIORITY_OUT,
    STATUS_OUT,
    URGENCY_OUT,
    PagerDutyConnector,
)
from im.sim.core import Simulator
from im.sim.pagerduty import DEFAULT_OTHER_SERVICES, PagerDutySimulator
from tests.connectors.harness import Harness

URL = "https://pagerduty.sim.test"
WEBHOOK_URL = "http://127.0.0.1:9/webhooks/test"
WEBHOOK_SECRET = "pd-webhook-secret-0f3c2a9e"
TOKEN = "im-integration-token"
SETTINGS = {
    "from_email": "im-integration@example.com",
    "service": "PSVC001",
    "escalation_policy": "PEP0001",
}
OTHER_SERVICE = next(iter(DEFAULT_OTHER_SERVICES))  # another team's service
SAMPLE = {
    "title": "Database is on fire",
    "description": "Disk full on db-1.\nRotate the logs.",
    "severity": "sev2",
    "priority": "p2",
    "status": "triggered",
    "assigned_to": "alice@example.com",
    "escalation_policy": "PEP0002",
}
UPDATES = [
    ("assigned_to", "bob@example.com"),  # the agent can do it too, and it sends a webhook
    ("title", "Database is still on fire"),
    ("severity", "sev4"),
    ("severity", "sev1"),
    ("priority", "p1"),
    ("escalation_policy", "PEP0001"),
    ("status", "acknowledged"),
    ("status", "resolved"),
    ("status", "triggered"),  # reopens
    ("assigned_to", "alice@example.com"),
    ("status", "closed"),  # PagerDuty's resolved
]


def connector(
    sim: Simulator,
    clock: FrozenClock,
    *,
    token: str = TOKEN,
    page_size: int | None = 2,
    settings: dict[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> PagerDutyConnector:
    """A connector of the test integration, talking to ``sim`` in-process (through
    ``transport`` when given, e.g. a recording one)."""
    chosen = {**SETTINGS, **(settings or {})}
    return PagerDutyConnector(
        ConnectorConfig(
            name="test-pd",
            url=URL,
            settings=chosen,
            secrets={"api_token": token, "webhook_secret": WEBHOOK_SECRET},
            fields=mappings("pagerduty", chosen, {}),
            page_size=page_size,
            sleep=clock.advance,
            transport=transport or sim.transport(),
        )
    )


def agent_client(sim: Simulator) -> httpx.Client:
    """The person's own PagerDuty client (``agent-token``), on the same transport."""
    return httpx.Client(
        base_url=URL,
        transport=sim.transport(),
        headers={
            "Authorization": "Token token=agent-token",
            "Accept": ACCEPT,
            "From": "agent@example.com",
        },
    )


def agent_change(agent: httpx.Client, field: str, value: str) -> dict[str, Any]:
    """What a person's PUT /incidents/{id} sends for a platform field's value."""
    if field == "title":
        return {"title": value}
    if field == "severity":
        return {"urgency": URGENCY_OUT[value]}
    if field == "priority":
        return {"priority": PRIORITY_OUT[value]}  # PagerDuty takes a priority's name too
    if field == "status":
        return {"status": STATUS_OUT[value]}
    if field == "escalation_policy":
        return {"escalation_policy": {"id": value, "type": "escalation_policy_reference"}}
    if field == "assigned_to":
        users = agent.get("/users", params={"query": value}).raise_for_status().json()["users"]
        user = next(u for u in users if u["email"] == value)
        return {"assignments": [{"assignee": {"id": user["id"], "type": "user_reference"}}]}
    raise ValueError(f"a person cannot change {field} in PagerDuty")


def make_harness(clock: FrozenClock, **sim_options: Any) -> Harness:
    options: dict[str, Any] = {
        "clock": clock,
        "webhook_url": WEBHOOK_URL,
        "webhook_secret": WEBHOOK_SECRET,
        **sim_options,
    }
    sim = PagerDutySimulator(**options)
    ours = connector(sim, clock)
    agent = agent_client(sim)

    def agent_edit(external_id: str, field: str, value: str) -> None:
        change = {"type": "incident_reference", **agent_change(agent, field, value)}
        agent.put(f"/incidents/{external_id}", json={"incident": change}).raise_for_status()

    def agent_journal(external_id: str, field: str, body: str) -> None:
        assert field == "work_notes", field
        answer = agent.post(f"/incidents/{external_id}/notes", json={"note": {"content": body}})
        answer.raise_for_status()

    return Harness(
        kind="pagerduty",
        clock=clock,
        sim=sim,
        connector=ours,
        agent=agent,
        agent_edit=agent_edit,
        agent_journal=agent_journal,
        with_wrong_credentials=lambda: connector(sim, clock, token="not-a-token"),
        webhook_secret=WEBHOOK_SECRET,
        other_scope=lambda: connector(sim, clock, settings={"service": OTHER_SERVICE}),
        missing_id="QMISSNG",
        sample=SAMPLE,
        updates=UPDATES,
        journal_fields=("work_notes",),
        created_in_vendor=lambda incident: format_time(sim.incidents[incident].created_at),
        # since/until may count whole days (in the account's time zone): a day's margin, and
        # the day it falls on
        created_since_slack=timedelta(days=2),
    )
