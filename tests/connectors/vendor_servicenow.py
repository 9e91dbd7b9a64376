"""The ServiceNow harness: the simulator on a frozen clock, the connector on its in-process
transport (paging by 2, scoped to the "Service Desk" group), and the agent's own Table API
client."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from im.clock import FrozenClock, format_time
from im.config.mapping import mappings
from im.connectors.base import Connector, ConnectorConfig
from im.connectors.servicenow import SEVERITY_OUT, STATE_OUT, ServiceNowConnector
from im.sim.servicenow import SN_TIME, ServiceNowSimulator
from tests.connectors.harness import Harness

URL = "https://im-test.service-now.com"
WEBHOOK_URL = "http://127.0.0.1:9/webhooks/test"
WEBHOOK_SECRET = "whsec_c2VydmljZW5vdy1oYXJuZXNzLXNlY3JldA=="
SETTINGS = {
    "username": "im-integration",
    "assignment_group": "Service Desk",
    "correlation_field": "correlation_id",
}
TABLE = "/api/now/table/incident"


def config_for(sim: ServiceNowSimulator, clock: FrozenClock, **settings: str) -> ConnectorConfig:
    """The connector configuration an integration would have, on the simulator's transport."""
    merged = {**SETTINGS, **settings}
    return ConnectorConfig(
        name="test",
        url=URL,
        settings=merged,
        secrets={"password": "im-integration", "webhook_secret": WEBHOOK_SECRET},
        fields=mappings("servicenow", merged, {}),
        transport=sim.transport(),
        page_size=2,
        sleep=clock.advance,
    )


def agent_client(
    sim: ServiceNowSimulator, user: str = "agent", password: str = "agent"
) -> httpx.Client:
    return httpx.Client(
        base_url=URL,
        auth=(user, password),
        transport=sim.transport(),
        headers={"Accept": "application/json"},
    )


def user_id(client: httpx.Client, email: str) -> str:
    response = client.get(
        "/api/now/table/sys_user",
        params={"sysparm_query": f"email={email}", "sysparm_fields": "sys_id"},
    )
    response.raise_for_status()
    return str(response.json()["result"][0]["sys_id"])


def agent_columns(client: httpx.Client, field: str, value: str) -> dict[str, str]:
    """What a person types into the incident form for a platform field's value."""
    if field == "title":
        return {"short_description": value}
    if field == "description":
        return {"description": value}
    if field == "severity":
        impact, urgency = SEVERITY_OUT[value].split("/")
        return {"impact": impact, "urgency": urgency}
    if field == "status":
        state = STATE_OUT[value]
        closing = {"close_code": "Solved (Work Around)", "close_notes": "done by hand"}
        return {"state": state, **(closing if state in ("6", "7") else {})}
    if field == "assigned_to":
        return {"assigned_to": user_id(client, value) if value else ""}
    raise ValueError(field)


def make_harness(clock: FrozenClock, **sim_options: Any) -> Harness:
    sim = ServiceNowSimulator(
        clock=clock, webhook_url=WEBHOOK_URL, webhook_secret=WEBHOOK_SECRET, **sim_options
    )
    config = config_for(sim, clock)
    connector = ServiceNowConnector(config)
    agent = agent_client(sim)

    def agent_edit(external_id: str, field: str, value: str) -> None:
        response = agent.patch(f"{TABLE}/{external_id}", json=agent_columns(agent, field, value))
        response.raise_for_status()

    def agent_journal(external_id: str, field: str, body: str) -> None:
        response = agent.patch(f"{TABLE}/{external_id}", json={field: body})
        response.raise_for_status()

    def with_wrong_credentials() -> Connector:
        return ServiceNowConnector(
            dataclasses.replace(config, secrets={**config.secrets, "password": "wrong"})
        )

    def created_in_vendor(sys_id: str) -> str:
        stored = datetime.strptime(sim.incident(sys_id)["sys_created_on"], SN_TIME)
        return format_time(stored.replace(tzinfo=UTC))

    return Harness(
        kind="servicenow",
        clock=clock,
        sim=sim,
        connector=connector,
        agent=agent,
        agent_edit=agent_edit,
        agent_journal=agent_journal,
        with_wrong_credentials=with_wrong_credentials,
        webhook_secret=WEBHOOK_SECRET,
        other_scope=lambda: ServiceNowConnector(config_for(sim, clock, assignment_group="Network")),
        missing_id="0123456789abcdef" * 2,
        sample={
            "title": "Mail relay rejects outbound mail",
            "description": "Users in eu-west cannot send mail.\nQueue depth is growing.",
            "severity": "sev2",
            "status": "triggered",
            "assigned_to": "alice@example.com",
        },
        updates=[
            ("title", "Mail relay rejects outbound mail in eu-west"),
            ("title", "A title longer than ServiceNow's short description allows " * 4),
            ("description", "Root cause: an expired TLS certificate on the relay."),
            ("severity", "sev1"),
            ("severity", "sev4"),
            ("severity", "sev5"),
            ("assigned_to", "bob@example.com"),
            ("assigned_to", ""),
            ("status", "acknowledged"),
            ("status", "resolved"),
            ("status", "triggered"),
            ("status", "resolved"),
            ("status", "closed"),
        ],
        journal_fields=("work_notes", "comments"),
        created_in_vendor=created_in_vendor,
        created_since_slack=timedelta(seconds=1),  # sys_created_on has whole seconds
    )
