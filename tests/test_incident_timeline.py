"""`im incident history INC-n`: the incident's sync timeline across systems (SPEC §2), built in
the two-way world from real sends, echoes, an agent's edit, a conflict and a DLQ entry; and
the API route answering the same entries."""

from __future__ import annotations

import json
from typing import Any

import httpx

from im.api.app import create_api
from im.sim.transport import ASGIBridge
from tests.two_way import Two, new_incident

ALL = {"prod-snow", "prod-jira", "prod-pd"}


def timeline(two: Two, n: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(
        two.im.ok("incident", "history", f"INC-{n}", "--format", "json")
    )
    return entries


def change(entries: list[dict[str, Any]], field: str, new: str) -> dict[str, Any]:
    [found] = [
        e
        for e in entries
        if e["kind"] in ("change", "journal") and (e["field"], e["new_value"]) == (field, new)
    ]
    return found


def sends(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["integration"]: s for s in entry["sent_to"]}


def snow_patch(two: Two, n: int, body: dict[str, str]) -> None:
    with two.agent("prod-snow") as agent:
        answer = agent.patch(
            f"/api/now/table/incident/{two.external_id('prod-snow', n)}", json=body
        )
    assert answer.status_code == 200, answer.text


def jira_title(two: Two, n: int, title: str) -> None:
    with two.agent("prod-jira") as agent:
        answer = agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}",
            json={"fields": {"summary": title}},
        )
    assert answer.status_code == 204, answer.text


def test_the_timeline_follows_each_change_to_every_system_and_back(two: Two) -> None:
    # created on the platform: every system gets it, and each one's echo acknowledges it
    n = new_incident(two, "--severity", "sev2")
    two.sync()
    created = change(timeline(two, n), "title", "Checkout API 5xx")
    assert (created["kind"], created["source"], created["actor"]) == ("change", "platform", "alice")
    assert created["old_value"] is None and created["at"] == "2026-11-27T09:00:00.000Z"
    for name, send in sends(created).items():
        assert name in ALL
        assert (send["operation"], send["state"], send["value"]) == (
            "create",
            "done",
            "Checkout API 5xx",
        )
        assert send["sent_at"] == send["acked_at"] == "2026-11-27T09:00:00.000Z"
    assert set(sends(created)) == ALL

    # updated: sent to the three, each answered and echoed back
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--status", "acknowledged")
    two.clock.advance(1)
    two.sync()
    acknowledged = change(timeline(two, n), "status", "acknowledged")
    assert (acknowledged["old_value"], acknowledged["at"]) == (
        "triggered",
        "2026-11-27T09:00:10.000Z",
    )
    assert {
        name: (s["operation"], s["state"], s["queued_at"], s["sent_at"], s["acked_at"], s["note"])
        for name, s in sends(acknowledged).items()
    } == {
        name: (
            "update",
            "done",
            "2026-11-27T09:00:10.000Z",
            "2026-11-27T09:00:11.000Z",
            "2026-11-27T09:00:11.000Z",
            None,
        )
        for name in ALL
    }

    # commented: a comment goes where ownership lets it (ServiceNow; Jira owns its comments),
    # a work note to Jira and PagerDuty (ServiceNow owns its work notes); each is acknowledged
    # by the vendor's entry id
    two.clock.advance(10)
    two.im.ok("incident", "comment", f"INC-{n}", "Rolled back deploy 42")
    two.im.ok("incident", "comment", f"INC-{n}", "--work-note", "Pager muted for 10 min")
    two.sync()
    entries = timeline(two, n)
    comment = change(entries, "comments", "Rolled back deploy 42")
    note = change(entries, "work_notes", "Pager muted for 10 min")
    assert (comment["kind"], comment["source"]) == ("journal", "platform")
    assert set(sends(comment)) == {"prod-snow"} and set(sends(note)) == {"prod-jira", "prod-pd"}
    for send in [*comment["sent_to"], *note["sent_to"]]:
        assert send["state"] == "done" and send["vendor_id"]

    # an agent resolves it in ServiceNow: the webhook is applied, the change is external and
    # goes on to Jira and PagerDuty, never back to ServiceNow
    two.clock.advance(10)
    snow_patch(two, n, {"state": "6", "close_code": "Solved (Permanently)", "close_notes": "ok"})
    two.clock.advance(1)
    two.sync()
    entries = timeline(two, n)
    resolved = change(entries, "status", "resolved")
    assert (resolved["source"], resolved["actor"]) == ("external:prod-snow", "agent")
    assert set(sends(resolved)) == {"prod-jira", "prod-pd"}
    assert all(s["state"] == "done" and s["acked_at"] for s in resolved["sent_to"])
    [webhook] = [
        e
        for e in entries
        if e["kind"] == "inbound" and e["state"] == "applied" and e["integration"] == "prod-snow"
    ]
    assert webhook["source"] == "external:prod-snow" and webhook["ref"].startswith("event-")
    assert "applied status" in webhook["detail"] and webhook["applied_at"] == webhook["at"]
    assert webhook["at"] == resolved["at"]
    assert entries.index(resolved) < entries.index(webhook)  # the same instant: the change first

    # the platform and an agent in Jira change the title two seconds apart: a conflict, which
    # last-write-wins gives to the agent
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    two.clock.advance(2)
    jira_title(two, n, "agent title")
    two.sync()
    entries = timeline(two, n)
    ours = change(entries, "title", "platform title")
    assert sends(ours)["prod-jira"]["state"] == "done"
    assert sends(ours)["prod-jira"]["note"].startswith("not written")  # the agent's edit kept
    assert sends(ours)["prod-snow"]["acked_at"]
    [detected] = [e for e in entries if e["kind"] == "conflict"]
    [settled] = [e for e in entries if e["kind"] == "conflict_resolved"]
    assert (detected["ref"], detected["field"], detected["integration"], detected["state"]) == (
        "conflict-1", "title", "prod-jira", "resolved",
    )  # fmt: skip
    assert (detected["source"], detected["actor"]) == ("external:prod-jira", "agent@example.com")
    assert "'platform title' by alice" in detected["detail"]
    assert "'agent title' by agent@example.com" in detected["detail"]
    assert (settled["ref"], settled["winner"], settled["new_value"], settled["actor"]) == (
        "conflict-1", "external", "agent title", "strategy",
    )  # fmt: skip
    theirs = change(entries, "title", "agent title")
    assert (theirs["source"], theirs["actor"]) == ("external:prod-jira", "agent@example.com")
    assert set(sends(theirs)) == {"prod-snow", "prod-pd"}
    # detected, resolved and applied in one transaction, shown in that order
    assert detected["at"] == settled["at"] == theirs["at"]
    assert entries.index(detected) < entries.index(settled) < entries.index(theirs)

    # PagerDuty refuses a change for good: it waits in the DLQ, Jira has it
    two.clock.advance(10)
    two.sims["prod-pd"].faults.update({"permanent_error": 422})
    two.im.ok("incident", "update", f"INC-{n}", "--priority", "p1")
    two.sync()
    stuck = sends(change(timeline(two, n), "priority", "p1"))
    assert set(stuck) == {"prod-jira", "prod-pd"}
    assert stuck["prod-jira"]["state"] == "done" and stuck["prod-jira"]["acked_at"]
    dead = stuck["prod-pd"]
    assert (dead["state"], dead["dlq_entry"], dead["sent_at"], dead["acked_at"]) == (
        "dead",
        "entry-1",
        None,
        None,
    )
    assert "422" in dead["error"] and dead["note"].startswith("in the DLQ as entry-1: ")

    # retried from the DLQ once PagerDuty accepts it again: the timeline follows the re-sent row
    two.sims["prod-pd"].faults.update({"permanent_error": 0})
    two.clock.advance(10)
    two.im.ok("integration", "dlq-retry", "prod-pd", "--all")
    two.sync()
    retried = sends(change(timeline(two, n), "priority", "p1"))["prod-pd"]
    assert (retried["state"], retried["queued_at"]) == ("done", "2026-11-27T09:01:04.000Z")

    # oldest first; every entry has the same keys
    entries = timeline(two, n)
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    assert len({tuple(e) for e in entries}) == 1

    # the table: time, what, origin, sent to / acknowledged
    table = two.im.ok("incident", "history", f"INC-{n}").splitlines()
    assert table[0].split() == ["time", "what", "origin", "sent", "to", "/", "acknowledged"]
    [row] = [line for line in table if "status: acknowledged -> resolved" in line]
    assert "external:prod-snow (agent)" in row
    assert "prod-jira: sent 2026-11-27T09:00:32.000Z, acked 2026-11-27T09:00:32.000Z" in row
    [row] = [line for line in table if "conflict-1 resolved:" in line]
    assert "the external value won: last write wins" in row


def test_a_change_coalesced_into_a_waiting_row_was_sent_with_the_later_change(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "first title")
    two.clock.advance(1)
    # merged into the row still waiting for each integration
    two.im.ok("incident", "update", f"INC-{n}", "--title", "second title")
    two.sync()
    entries = timeline(two, n)
    first, second = (
        change(entries, "title", "first title"),
        change(entries, "title", "second title"),
    )
    for send in first["sent_to"]:
        assert (send["value"], send["note"]) == ("second title", "sent with a later change")
    for send in second["sent_to"]:
        assert (send["value"], send["note"], send["state"]) == ("second title", None, "done")
        assert send["queued_at"] == first["at"]  # the row the first change queued
    assert set(sends(first)) == set(sends(second)) == ALL


def test_a_pending_change_says_it_waits_and_the_api_answers_the_same_entries(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--severity", "sev1")
    waiting = change(timeline(two, n), "severity", "sev1")
    for send in waiting["sent_to"]:
        assert (send["state"], send["sent_at"], send["note"]) == ("pending", None, None)

    token = two.im.ok("token", "create", "tester").strip()
    bridge = ASGIBridge(create_api(two.im.db_path, two.clock))
    with httpx.Client(transport=bridge, base_url="http://im") as client:
        answer = client.get(
            f"/incidents/INC-{n}/history", headers={"Authorization": f"Bearer {token}"}
        )
    bridge.shutdown()
    assert answer.status_code == 200, answer.text
    assert answer.json() == timeline(two, n)


def test_an_unknown_incident_is_an_error_naming_what_exists(two: Two) -> None:
    new_incident(two)
    result = two.im("incident", "history", "INC-9")
    assert result.exit_code == 1
    assert "INC-1" in result.stderr
