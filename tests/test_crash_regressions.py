"""Lost changes found by the crash soak (benchmarks/crash_soak.py), replayed deterministically
on the two-way world: a daemon that dies between a vendor's write and recording it, a create
made of several requests whose first states come back as webhooks, and an in-doubt create
found half done."""

from __future__ import annotations

from typing import Any

import pytest

from im.clock import format_time
from im.connectors import http
from im.connectors import jira as jira_connector
from im.connectors import pagerduty as pagerduty_connector
from im.store import outbox
from im.store.db import write
from im.sync.dispatcher import Dispatcher, Result
from tests.two_way import Two, new_incident


class Killed(BaseException):
    """The daemon dies here (SIGKILL): nothing after this point runs, no handler sees it."""


def jira_issue(two: Two, n: int) -> dict[str, Any]:
    with two.agent("prod-jira") as agent:
        fields: dict[str, Any] = agent.get(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}"
        ).json()["fields"]
    return fields


def pd_incident(two: Two, n: int) -> dict[str, Any]:
    with two.agent("prod-pd") as agent:
        incident: dict[str, Any] = agent.get(f"/incidents/{two.external_id('prod-pd', n)}").json()[
            "incident"
        ]
    return incident


def restart(two: Two) -> None:
    """What a new daemon does first: take back every lease of the one that died."""
    db = two.db()
    with write(db):
        outbox.reap(db, format_time(two.clock.now()), every=True)


def test_the_echo_of_a_create_whose_daemon_died_does_not_undo_a_later_change(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = Dispatcher._record

    def dies_after_jiras_create(self: Dispatcher, result: Result) -> None:
        if result.job.integration["name"] == "prod-jira" and result.job.creating:
            raise Killed
        record(self, result)

    n = new_incident(two)  # "Checkout API 5xx"
    monkeypatch.setattr(Dispatcher, "_record", dies_after_jiras_create)
    with pytest.raises(Killed):
        two.dispatcher.step()  # Jira has the issue; the daemon never recorded it
    monkeypatch.setattr(Dispatcher, "_record", record)
    two.clock.advance(2)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "Checkout API 502s")
    restart(two)
    two.deliver()  # the issue's creation comes back first, by our own account
    two.sync()
    assert two.incident(n)["title"] == "Checkout API 502s"
    assert jira_issue(two, n)["summary"] == "Checkout API 502s"
    assert two.sims["prod-jira"].record_count() == 1


def test_the_states_a_create_passes_through_do_not_come_back_as_changes(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = Dispatcher._record

    def webhooks_first(self: Dispatcher, result: Result) -> None:
        if result.job.creating:  # the daemon applies webhooks while the sender works
            two.deliver()
        record(self, result)

    n = new_incident(two)
    two.im.ok("incident", "update", f"INC-{n}", "--status", "acknowledged")
    two.im.ok("incident", "update", f"INC-{n}", "--status", "resolved")
    monkeypatch.setattr(Dispatcher, "_record", webhooks_first)
    two.sync()  # created triggered (Open), then moved on: each state sends a webhook
    assert two.incident(n)["status"] == "resolved"
    assert pd_incident(two, n)["status"] == "resolved"
    assert jira_issue(two, n)["status"]["name"] == "Resolved"
    for name in ("prod-jira", "prod-pd"):
        assert not [
            e for e in two.events(name) if e["state"] == "applied" and "status" in e["outcome"]
        ]


def test_an_in_doubt_create_found_half_done_is_finished(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    update = pagerduty_connector.PagerDutyConnector.update

    def times_out(self: Any, external_id: str, changes: Any) -> Any:
        raise http.RequestTimeoutError("PagerDuty: no answer in time")

    n = new_incident(two)
    two.im.ok("incident", "update", f"INC-{n}", "--status", "acknowledged")
    monkeypatch.setattr(pagerduty_connector.PagerDutyConnector, "update", times_out)
    two.sims["prod-pd"].faults.update({"drop_webhooks": 1})  # nothing links it meanwhile
    two.sync()  # PagerDuty has the incident, triggered; its status call went unanswered
    two.sims["prod-pd"].faults.update({"drop_webhooks": 0})
    monkeypatch.setattr(pagerduty_connector.PagerDutyConnector, "update", update)
    assert pd_incident_by_key(two)["status"] == "triggered"
    two.clock.advance(31)  # the retry looks the key up, finds it, and finishes it
    two.sync()
    assert pd_incident(two, n)["status"] == "acknowledged"
    assert two.incident(n)["status"] == "acknowledged"
    assert two.sims["prod-pd"].record_count() == 1


def test_a_path_of_transitions_cut_short_by_a_kill_is_walked_to_the_end(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = jira_connector.JiraConnector._send
    steps: list[str] = []

    def dies_on_the_second_step(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        if method == "POST" and path.endswith("/transitions"):
            steps.append(path)
            if len(steps) == 2:
                raise Killed
        return send(self, method, path, **kwargs)

    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--status", "acknowledged")
    two.im.ok("incident", "update", f"INC-{n}", "--status", "resolved")  # one row
    monkeypatch.setattr(jira_connector.JiraConnector, "_send", dies_on_the_second_step)
    with pytest.raises(Killed):
        two.dispatcher.step()  # Open -> In Progress done, In Progress -> Resolved never sent
    monkeypatch.setattr(jira_connector.JiraConnector, "_send", send)
    assert jira_issue(two, n)["status"]["name"] == "In Progress"
    restart(two)
    two.deliver()  # In Progress comes back, by our own account
    two.sync()
    assert two.incident(n)["status"] == "resolved"
    assert jira_issue(two, n)["status"]["name"] == "Resolved"


def pd_incident_by_key(two: Two) -> dict[str, Any]:
    with two.agent("prod-pd") as agent:
        [incident] = agent.get("/incidents", params={"date_range": "all"}).json()["incidents"]
    assert isinstance(incident, dict)
    return incident
