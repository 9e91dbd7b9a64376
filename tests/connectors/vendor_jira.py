"""The Jira harness: the simulator on the test's clock, the connector through its in-process
transport, and the agent's hand edits through the REST API (v3 and the JSM comment API)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from im.clock import FrozenClock, format_time
from im.config.mapping import mappings
from im.connectors.base import ConnectorConfig
from im.connectors.jira import PRIORITY_OUT, SEVERITY_OUT, STATUS_OUT, JiraConnector, text_to_adf
from im.sim.jira import JiraSimulator
from tests.connectors.harness import Harness

URL = "https://acme.atlassian.net"
WEBHOOK_URL = "http://127.0.0.1:9/webhooks/test"
WEBHOOK_SECRET = "jira-webhook-secret-for-tests"
SETTINGS = {
    "email": "im-integration@example.com",
    "project": "OPS",
    "issue_type": "Incident",
    "severity_field": "customfield_10050",
    "client_key": "im-sim-jira",
}
AGENT = ("agent@example.com", "agent-token")


def connector_config(
    sim: JiraSimulator,
    clock: FrozenClock,
    token: str = "im-integration-token",
    **settings: str,
) -> ConnectorConfig:
    merged = {**SETTINGS, **settings}
    return ConnectorConfig(
        name="test-jira",
        url=URL,
        settings=merged,
        secrets={"api_token": token, "webhook_secret": WEBHOOK_SECRET},
        fields=mappings("jira", merged, {}),
        page_size=2,
        sleep=clock.advance,
        transport=sim.transport(),
    )


def agent_client(sim: JiraSimulator) -> httpx.Client:
    return httpx.Client(base_url=URL, auth=AGENT, transport=sim.transport())


def agent_edit(agent: httpx.Client, issue: str, field: str, value: str) -> None:
    """What a person does in Jira: edit a field, assign, or walk the workflow by hand."""
    path = f"/rest/api/3/issue/{issue}"
    if field == "status":
        _walk(agent, path, STATUS_OUT[value])
        return
    if field == "assigned_to":
        account = None
        if value:
            users = agent.get("/rest/api/3/user/search", params={"query": value}).json()
            account = users[0]["accountId"]
        agent.put(f"{path}/assignee", json={"accountId": account}).raise_for_status()
        return
    fields: dict[str, Any] = {
        "title": lambda: {"summary": value},
        "description": lambda: {"description": text_to_adf(value)},
        "priority": lambda: {"priority": {"name": PRIORITY_OUT[value]}},
        "severity": lambda: {SETTINGS["severity_field"]: {"value": SEVERITY_OUT[value]}},
    }[field]()
    agent.put(path, json={"fields": fields}).raise_for_status()


def _walk(agent: httpx.Client, path: str, target: str) -> None:
    """Click through the offered transitions towards ``target``, as a person would: the
    direct one when offered, else one to a status not visited yet."""
    current = agent.get(path, params={"fields": "status"}).json()["fields"]["status"]["name"]
    seen = {current}
    while current != target:
        offered = agent.get(f"{path}/transitions").json()["transitions"]
        direct = [t for t in offered if t["to"]["name"] == target]
        step = direct[0] if direct else next(t for t in offered if t["to"]["name"] not in seen)
        agent.post(
            f"{path}/transitions", json={"transition": {"id": step["id"]}}
        ).raise_for_status()
        current = step["to"]["name"]
        seen.add(current)


def agent_journal(agent: httpx.Client, issue: str, field: str, body: str) -> None:
    if field == "work_notes":
        response = agent.post(
            f"/rest/servicedeskapi/request/{issue}/comment", json={"body": body, "public": False}
        )
    else:
        response = agent.post(
            f"/rest/api/3/issue/{issue}/comment", json={"body": text_to_adf(body)}
        )
    response.raise_for_status()


def make_harness(clock: FrozenClock, **sim_options: Any) -> Harness:
    # The simulator's default, Connect JWT signing, unless a test asks for admin webhooks.
    sim_options.setdefault("signing", "connect")
    sim = JiraSimulator(
        clock=clock, webhook_url=WEBHOOK_URL, webhook_secret=WEBHOOK_SECRET, **sim_options
    )
    connector = JiraConnector(connector_config(sim, clock))
    agent = agent_client(sim)
    return Harness(
        kind="jira",
        clock=clock,
        sim=sim,
        connector=connector,
        agent=agent,
        agent_edit=lambda issue, field, value: agent_edit(agent, issue, field, value),
        agent_journal=lambda issue, field, body: agent_journal(agent, issue, field, body),
        with_wrong_credentials=lambda: JiraConnector(
            connector_config(sim, clock, token="not-the-token")
        ),
        webhook_secret=WEBHOOK_SECRET,
        other_scope=lambda: JiraConnector(
            connector_config(sim, clock, issue_type="Service request")
        ),
        missing_id="99999",
        # a Connect JWT signs the method, path and query (qsh), not the body
        signs_body=sim_options["signing"] == "hub",
        sample={
            "title": "Checkout API returning 502 for EU customers",
            "description": "Error rate on /checkout above 20%.\n\nSince 10:12 UTC; rollback started.",
            "severity": "sev2",
            "priority": "p2",
            "status": "triggered",
            "assigned_to": "alice@example.com",
        },
        updates=[
            ("title", "Checkout API recovering for EU customers"),
            ("description", "Rolled back deploy 2026.11.27-3.\nMonitoring  \n\n\nError rate 2%."),
            ("severity", "sev1"),
            ("priority", "p1"),
            ("assigned_to", "bob@example.com"),
            ("assigned_to", ""),
            ("assigned_to", "alice@example.com"),
            ("status", "acknowledged"),
            ("status", "resolved"),
            ("status", "triggered"),  # reopen: Resolved -> Open
            ("status", "resolved"),  # Open -> In Progress -> Resolved
            ("status", "closed"),
        ],
        journal_fields=("work_notes", "comments"),
        created_in_vendor=lambda issue: format_time(sim.issues[int(issue)].created),
        # JQL dates have whole minutes, and the connector asks from a minute earlier
        created_since_slack=timedelta(minutes=2),
    )
