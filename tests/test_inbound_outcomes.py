"""What `im integration events` says about authentic deliveries that cannot be applied as they
are (SPEC §3, §5): one whose event time cannot be read fails with that reason, a value with no
mapping is skipped with a note while the rest of the event applies, and an ignored one says
why, never "applied"."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from im.store import meta
from im.sync.inbound import Applier
from tests.two_way import Two, new_incident


def deliver_changed(two: Two, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Deliver what the simulator has queued, its last delivery changed on the way by
    ``change`` (and signed as the vendor signs it), and apply it."""
    last = two.sims[name].webhooks.pending[-1]
    payload = json.loads(last.body)
    change(payload)
    last.body = json.dumps(payload).encode()
    two.deliver()


def agent_edit(two: Two, name: str, n: int) -> None:
    """A person's edit of INC-n's record in ``name``."""
    record = two.external_id(name, n)
    with two.agent(name) as agent:
        if name == "prod-snow":
            answer = agent.patch(
                f"/api/now/table/incident/{record}", json={"short_description": "agent title"}
            )
        elif name == "prod-jira":
            answer = agent.put(
                f"/rest/api/3/issue/{record}", json={"fields": {"summary": "agent title"}}
            )
        else:
            answer = agent.put(
                f"/incidents/{record}",
                json={"incident": {"type": "incident_reference", "status": "acknowledged"}},
            )
    assert answer.status_code < 300, answer.text


def _snow_time(value: str | None) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        if value is None:
            del payload["sys_updated_on"]
        else:
            payload["sys_updated_on"] = value

    return change


def _pd_time(value: str) -> Callable[[dict[str, Any]], None]:
    def change(payload: dict[str, Any]) -> None:
        payload["event"]["occurred_at"] = value

    return change


SNOW_TIME = "sys_updated_on is missing or not a ServiceNow time"


def _jira_without_time(payload: dict[str, Any]) -> None:
    del payload["timestamp"]
    payload["issue"]["fields"]["updated"] = ""


@pytest.mark.parametrize(
    ("name", "change", "reason"),
    [
        ("prod-snow", _snow_time(""), SNOW_TIME),
        ("prod-snow", _snow_time(None), SNOW_TIME),
        ("prod-snow", _snow_time("27/11/2026"), SNOW_TIME),
        ("prod-pd", _pd_time(""), "PagerDuty sent an unreadable time ''"),
        # out of range once in UTC: it was an OverflowError
        ("prod-pd", _pd_time("0001-01-01T00:00:00+01:00"), "PagerDuty sent an unreadable time "),
        ("prod-jira", _jira_without_time, "jira:issue_updated with an unreadable time"),
    ],
    ids=["snow-empty", "snow-missing", "snow-unreadable", "pd-empty", "pd-overflow", "jira-none"],
)
def test_an_edit_whose_event_time_cannot_be_read_fails_with_that_reason(
    two: Two, name: str, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    """ServiceNow's was taken in, then failed as "could not be applied (ValueError)" when the
    edit met a platform change of the same field (conflicts are judged on the times)."""
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")  # not sent yet
    agent_edit(two, name, n)
    deliver_changed(two, name, change)
    event = two.events(name)[0]
    assert event["state"] == "failed" and event["outcome"].startswith(reason), event
    assert "\n" not in event["outcome"]
    shown = two.incident(n)
    assert (shown["title"], shown["status"]) == ("platform title", "triggered")


def test_a_vendor_time_before_the_year_1000_is_judged_not_a_crash(two: Two) -> None:
    """Written as "68-09-03T…", such a time did not read back when the edit met a platform
    change: "could not be applied (ValueError)". Now the two are just far apart: no conflict,
    and the field's rule decides (title is unowned in Jira: the later change, the platform's)."""
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    agent_edit(two, "prod-jira", n)
    deliver_changed(two, "prod-jira", lambda p: p.update(timestamp=-60_000_000_000_000))
    event = two.events("prod-jira")[0]
    assert event["state"] == "ignored", event
    assert event["outcome"].startswith("title: "), event
    assert two.incident(n)["title"] == "platform title"


def rename_priority(two: Two, old: str, new: str) -> str:
    """Rename one of the PagerDuty account's priorities; its id."""
    priorities = two.sims["prod-pd"].priorities
    [priority] = [p for p, item in priorities.items() if item["name"] == old]
    priorities[priority]["name"] = new
    return priority


@pytest.mark.parametrize("renamed", [True, False], ids=["unmapped", "removed"])
def test_a_pagerduty_priority_with_no_platform_value_is_skipped_not_a_failure(
    two: Two, renamed: bool
) -> None:
    """Applied as an empty priority, it failed the event ("priority must be one of …")."""
    n = new_incident(two)
    two.sync()
    urgent = rename_priority(two, "P2", "Urgent")
    two.clock.advance(10)
    priority = {"id": urgent, "type": "priority_reference"} if renamed else None
    with two.agent("prod-pd") as agent:
        answer = agent.put(
            f"/incidents/{two.external_id('prod-pd', n)}",
            json={"incident": {"type": "incident_reference", "priority": priority}},
        )
    assert answer.status_code == 200, answer.text
    two.deliver()
    event = two.events("prod-pd")[0]
    assert (event["event_type"], event["state"]) == ("incident.priority_updated", "ignored")
    note = "priority: PagerDuty priority 'Urgent' has no platform value"
    assert event["outcome"] == (note if renamed else "ignored")
    assert two.incident(n)["priority"] == "p3"
    assert two.counters("prod-pd").get("inbound_failed", 0) == 0


def test_a_new_pagerduty_incident_with_an_unmapped_priority_comes_in_with_a_note(
    two: Two,
) -> None:
    urgent = rename_priority(two, "P1", "Urgent")
    with two.agent("prod-pd") as agent:
        answer = agent.post(
            "/incidents",
            json={
                "incident": {
                    "type": "incident",
                    "title": "Payments down",
                    "service": {"id": "PSVC001", "type": "service_reference"},
                    "urgency": "high",
                    "priority": {"id": urgent, "type": "priority_reference"},
                }
            },
        )
    assert answer.status_code == 201, answer.text
    two.deliver()
    [event] = [e for e in two.events("prod-pd") if e["event_type"] == "incident.triggered"]
    assert event["state"] == "applied", event
    assert event["outcome"].endswith(
        "; created INC-1; priority: PagerDuty priority 'Urgent' has no platform value"
    )
    shown = two.incident(1)
    assert (shown["title"], shown["severity"], shown["priority"]) == ("Payments down", "sev2", "p3")


def test_a_second_record_of_a_linked_incident_is_ignored_saying_so(two: Two) -> None:
    """Its note was put in the applied fields: "applied a second record (…)"."""
    n = new_incident(two)
    two.sync()
    ours = f"im:{meta.get(two.db(), 'install_id')}:INC-{n}"
    two.clock.advance(10)
    with two.agent("prod-snow") as agent:
        answer = agent.post(
            "/api/now/table/incident",
            json={"short_description": "a copy", "correlation_id": ours},
        )
    assert answer.status_code == 201, answer.text
    copy = answer.json()["result"]["number"]
    two.deliver()
    event = two.events("prod-snow")[0]
    assert (event["state"], event["incident"]) == ("ignored", f"INC-{n}")
    assert event["outcome"] == f"a second record ({copy}) for an incident linked there"
    assert two.counters("prod-snow").get("inbound_success", 0) == 0


def test_an_event_that_breaks_while_applying_still_says_what_it_was_about(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected fault rolls back the applying transaction, which also records what the
    event is about; the failure must not leave `im integration events` blind to it."""
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    agent_edit(two, "prod-jira", n)

    def broken(*args: Any) -> None:
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(Applier, "_apply", broken)
    two.deliver()
    event = two.events("prod-jira")[0]
    assert event["state"] == "failed"
    assert event["outcome"] == "could not be applied (RuntimeError)"
    assert (event["incident"], event["event_type"]) == (f"INC-{n}", "jira:issue_updated")
