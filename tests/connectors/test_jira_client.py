"""Atlassian's widely used Python client (``jira`` 3.10) against the simulator on a real
loopback socket: the incident operations the product relies on, as another program does them
(REST v2 and ``latest`` routes, Cloud mode with ``/search/jql``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from jira import JIRA, JIRAError

from im.config.mapping import mappings
from im.connectors.base import ConnectorConfig
from im.connectors.jira import JiraConnector
from im.sim.jira import JiraSimulator
from im.sim.server import Served, serve_in_thread

KEY = "im:client-test:INC-1"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[JiraSimulator, Served]]:
    sim = JiraSimulator(search_lag=0.0)
    with serve_in_thread(sim) as server:
        yield sim, server
    sim.shutdown()


@pytest.fixture(scope="module")
def client(served: tuple[JiraSimulator, Served]) -> Iterator[JIRA]:
    _, server = served
    jira = JIRA(server=server.url, basic_auth=("agent@example.com", "agent-token"), max_retries=0)
    yield jira
    jira.close()


def test_connects_in_cloud_mode(client: JIRA) -> None:
    info = client.server_info()
    assert info["deploymentType"] == "Cloud" and info["versionNumbers"][0] >= 1001
    assert client.myself()["emailAddress"] == "agent@example.com"
    assert client._is_cloud


def test_incident_lifecycle_through_the_client(
    client: JIRA, served: tuple[JiraSimulator, Served]
) -> None:
    sim, server = served
    issue = client.create_issue(
        fields={
            "project": {"key": "OPS"},
            "issuetype": {"name": "Incident"},
            "summary": "Payments timing out",
            "description": "p99 above 2 s.\n\nSince 09:00 UTC.",
            "priority": {"name": "High"},
            "labels": [KEY],
        }
    )
    assert issue.key.startswith("OPS-")
    assert issue.fields.summary == "Payments timing out"
    assert issue.fields.description == "p99 above 2 s.\n\nSince 09:00 UTC."
    assert issue.fields.priority.name == "High"
    assert issue.fields.status.name == "Open"

    issue.update(summary="Payments timing out in EU", priority={"name": "Highest"})
    client.assign_issue(issue.key, "bob@example.com")
    fetched = client.issue(issue.key)
    assert fetched.fields.summary == "Payments timing out in EU"
    assert fetched.fields.priority.name == "Highest"
    assert fetched.fields.assignee.emailAddress == "bob@example.com"

    assert [t["name"] for t in client.transitions(issue)] == ["Start progress"]
    client.transition_issue(issue, "Start progress")
    client.transition_issue(issue, "Resolve issue", comment="fixed by rollback")
    resolved = client.issue(issue.key)
    assert resolved.fields.status.name == "Resolved"
    assert resolved.fields.resolution.name == "Done"
    with pytest.raises(JIRAError):
        client.transition_issue(issue, "Start progress")  # not offered from Resolved

    client.add_comment(issue, "customers informed")
    client.add_comment(issue, "root cause: connection pool", is_internal=True)
    comments = client.comments(issue)
    assert [(c.body, c.raw["jsdPublic"]) for c in comments] == [
        ("fixed by rollback", True),
        ("customers informed", True),
        ("root cause: connection pool", False),
    ]

    found = client.search_issues(f'project = OPS AND labels = "{KEY}"')
    assert [i.key for i in found] == [issue.key]
    assert found[0].fields.summary == "Payments timing out in EU"

    # and the connector, over the same socket, reads what the client did
    settings = {"email": "im-integration@example.com", "project": "OPS"}
    connector = JiraConnector(
        ConnectorConfig(
            name="client-test",
            url=server.url,
            settings=settings,
            secrets={"api_token": "im-integration-token"},
            fields=mappings("jira", settings, {}),
        )
    )
    try:
        record = connector.find_by_correlation(KEY)
        assert record is not None and record.key == issue.key
        assert record.fields == {
            "title": "Payments timing out in EU",
            "description": "p99 above 2 s.\n\nSince 09:00 UTC.",
            "priority": "p1",
            "status": "resolved",
            "assigned_to": "bob@example.com",
        }
        journal = connector.list_journal(record.id)
        assert [(e.field, e.body, e.author) for e in journal][-1] == (
            "work_notes",
            "root cause: connection pool",
            "agent@example.com",
        )
    finally:
        connector.close()
    assert sim.record_count() == 1


def test_wrong_token_is_refused(served: tuple[JiraSimulator, Served]) -> None:
    _, server = served
    with pytest.raises(JIRAError) as caught:
        JIRA(server=server.url, basic_auth=("agent@example.com", "wrong"), max_retries=0).myself()
    assert caught.value.status_code == 401
