"""Inbound webhooks through real HTTP into the daemon's app (in-process), from the three
simulators, applied by the stepped applier on a frozen clock: authentic deliveries apply once,
echoes and duplicates change nothing, stale ones lose to newer values, and what is not
authentic is refused with the right status."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from im.daemon.app import create_app
from im.daemon.webhooks import WebhookReceiver
from im.security import signatures
from im.sim.transport import ASGIBridge
from im.store import integrations as integration_rows
from im.store import sync_state
from tests.two_way import SECRET, Two, jira_issue, new_incident


def test_our_own_writes_come_back_as_echoes_and_change_nothing(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    for name in ("prod-snow", "prod-jira"):
        assert two.counters(name).get("inbound_success", 0) == 0, name
        assert [e["state"] for e in two.events(name)] == ["echo"], two.events(name)
    external = (
        two.db()
        .execute(
            "SELECT field, new_value, source FROM field_changes "
            "WHERE incident_id = ? AND source LIKE 'external:%'",
            [n],
        )
        .fetchall()
    )
    # PagerDuty put the incident on the integration's escalation policy, a field it owns:
    # that is news for the platform, the rest of the echo is not
    assert external == [("escalation_policy", "PEP0001", "external:prod-pd")]


def test_an_agents_edit_is_applied_and_propagated(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    issue = two.external_id("prod-jira", n)
    two.clock.advance(10)
    with two.agent("prod-jira") as agent:
        assert (
            agent.put(
                f"/rest/api/3/issue/{issue}",
                json={"fields": {"summary": "Checkout API recovering"}},
            ).status_code
            == 204
        )
    two.sync()
    assert two.incident(n)["title"] == "Checkout API recovering"
    assert two.counters("prod-jira")["inbound_success"] == 1
    # the change goes on to the integrations that take platform titles
    pd = two.sims["prod-pd"]
    with two.agent("prod-pd") as agent:
        title = agent.get(f"/incidents/{two.external_id('prod-pd', n)}").json()["incident"]["title"]
    assert title == "Checkout API recovering"
    assert pd.record_count() == 1
    # and not back to Jira: no update row for it
    rows = (
        two.db()
        .execute(
            "SELECT count(*) FROM outbox o JOIN integrations i ON i.id = o.integration_id "
            "WHERE i.name = 'prod-jira' AND o.operation = 'update'"
        )
        .fetchone()[0]
    )
    assert rows == 0


def test_an_agents_revert_to_our_old_value_is_applied(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    issue = two.external_id("prod-jira", n)
    with two.agent("prod-jira") as agent:
        two.clock.advance(10)
        agent.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": "agent title"}})
        two.sync()
        two.clock.advance(10)
        agent.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": "Checkout API 5xx"}})
        two.sync()
    assert two.incident(n)["title"] == "Checkout API 5xx"
    assert two.counters("prod-jira")["inbound_success"] == 2


def test_a_duplicate_delivery_changes_nothing(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.sims["prod-jira"].faults.update({"duplicate_webhooks": 1})
    two.clock.advance(10)
    with two.agent("prod-jira") as agent:
        agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}",
            json={"fields": {"summary": "once"}},
        )
    two.deliver()
    states = [e["state"] for e in two.events("prod-jira")][:2]
    assert sorted(states) == ["applied", "duplicate"]
    assert two.counters("prod-jira")["inbound_duplicate"] == 1
    changes = (
        two.db()
        .execute(
            "SELECT count(*) FROM field_changes WHERE incident_id = ? AND source = 'external:prod-jira'",
            [n],
        )
        .fetchone()[0]
    )
    assert changes == 1


def test_a_late_reordered_delivery_does_not_overwrite_a_newer_value(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    issue = two.external_id("prod-jira", n)
    two.sims["prod-jira"].faults.update({"reorder_webhooks": 1})
    with two.agent("prod-jira") as agent:
        two.clock.advance(5)
        agent.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": "first"}})
        two.clock.advance(5)
        agent.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": "second"}})
    two.deliver()
    assert two.incident(n)["title"] == "second"
    notes = " ".join(e["outcome"] for e in two.events("prod-jira"))
    assert "stale" in notes


def test_an_agents_work_note_in_servicenow_reaches_the_others_once(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    sys_id = two.external_id("prod-snow", n)
    two.clock.advance(5)
    with two.agent("prod-snow") as agent:
        answer = agent.patch(
            f"/api/now/table/incident/{sys_id}", json={"work_notes": "Failover done"}
        )
        assert answer.status_code == 200
    two.sync()
    journal = json.loads(two.im.ok("incident", "show", f"INC-{n}", "--format", "json"))["journal"]
    assert [(j["kind"], j["body"]) for j in journal] == [("work_notes", "Failover done")]
    with two.agent("prod-pd") as agent:
        notes = agent.get(f"/incidents/{two.external_id('prod-pd', n)}/notes").json()["notes"]
    assert [note["content"] for note in notes] == ["Failover done"]
    two.sync()  # the echoes of those notes change nothing
    journal = json.loads(two.im.ok("incident", "show", f"INC-{n}", "--format", "json"))["journal"]
    assert len(journal) == 1


def test_a_record_made_in_jira_becomes_a_platform_incident_and_goes_on(two: Two) -> None:
    jira_issue(two, "Found by a human")
    two.sync()
    listed = two.im.ok("incident", "list", "--format", "json")
    assert [i["title"] for i in json.loads(listed)] == ["Found by a human"]
    assert two.sims["prod-snow"].record_count() == 1
    assert two.sims["prod-pd"].record_count() == 1
    assert two.sims["prod-jira"].record_count() == 1  # not sent back


def test_an_outbound_only_integration_ignores_authentic_webhooks(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.im.ok("integration", "configure", "prod-jira", "--direction", "outbound")
    with two.agent("prod-jira") as agent:
        agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}",
            json={"fields": {"summary": "ignored"}},
        )
    two.deliver()
    assert two.incident(n)["title"] == "Checkout API 5xx"
    assert two.events("prod-jira")[0]["state"] == "ignored"
    assert two.counters("prod-jira")["inbound_ignored"] >= 1


def _pd_post(two: Two, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return two.daemon.post("/webhooks/prod-pd", content=body, headers=headers)


def test_what_is_not_authentic_is_refused_and_applies_nothing(two: Two) -> None:
    body = json.dumps({"event": {"id": "E1", "event_type": "incident.triggered"}}).encode()
    good = signatures.pagerduty_signature(SECRET["prod-pd"], body)
    assert _pd_post(two, body, {}).status_code == 401
    assert _pd_post(two, body, {"X-PagerDuty-Signature": "v1=00"}).status_code == 401
    forged = _pd_post(two, body + b" ", {"X-PagerDuty-Signature": good})
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "unauthenticated"
    assert "secret" not in forged.text.lower() or SECRET["prod-pd"] not in forged.text
    not_json = b"not json"
    answer = _pd_post(
        two,
        not_json,
        {"X-PagerDuty-Signature": signatures.pagerduty_signature(SECRET["prod-pd"], not_json)},
    )
    assert answer.status_code == 400
    big = b"x" * (1024 * 1024 + 1)
    assert _pd_post(two, big, {"X-PagerDuty-Signature": "v1=00"}).status_code == 413
    assert two.daemon.post("/webhooks/nope", content=b"{}").status_code == 404
    assert two.counters("prod-pd")["inbound_failed"] == 4
    assert two.events("prod-pd") == []
    # no event row: when and why the last one was refused is kept with the integration
    state = rejection(two, "prod-pd")
    assert state == ("2026-11-27T09:00:00.000Z", "malformed: the body is not UTF-8 JSON")
    two.clock.advance(3)
    assert _pd_post(two, body, {"X-PagerDuty-Signature": "v1=00"}).status_code == 401
    at, reason = rejection(two, "prod-pd")
    assert at == "2026-11-27T09:00:03.000Z" and reason.startswith("not authentic: ")
    assert SECRET["prod-pd"] not in reason and reason.removeprefix("not authentic: ")
    assert rejection(two, "prod-jira") == (None, None)


def rejection(two: Two, name: str) -> tuple[str | None, str | None]:
    row = integration_rows.find(two.db(), name)
    assert row is not None
    state = sync_state.get(two.db(), row["id"])
    return state.get("last_rejected_at"), state.get("last_rejection")


def test_an_expired_standard_webhooks_delivery_is_refused(two: Two) -> None:
    body = b'{"type":"incident.updated"}'
    stamp = datetime(2026, 11, 27, 8, 54, 0, tzinfo=UTC)  # six minutes before the clock
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signatures.standard_webhooks_sign(
            SECRET["prod-snow"], "msg_1", stamp, body
        ),
    }
    answer = two.daemon.post("/webhooks/prod-snow", content=body, headers=headers)
    assert answer.status_code == 401
    assert "5 minutes" in answer.json()["error"]["message"]


def test_events_lists_deliveries_with_outcomes(two: Two) -> None:
    new_incident(two)
    two.sync()
    out = two.im.ok("integration", "events", "prod-snow")
    assert "echo" in out and "incident.created" in out
    assert SECRET["prod-snow"] not in out


def test_a_busy_database_is_a_503_with_retry_after_never_a_500(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    monkeypatch.setenv("IM_BUSY_TIMEOUT", "0.2")
    receiver = WebhookReceiver(two.im.db_path, two.clock)
    bridge = ASGIBridge(create_app(lambda: (True, ""), webhook=receiver.handle))
    body = json.dumps({"event": {"id": "E2", "event_type": "incident.acknowledged"}}).encode()
    holder = sqlite3.connect(two.im.db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with httpx.Client(transport=bridge, base_url="http://im") as daemon:
            answer = daemon.post(
                "/webhooks/prod-pd",
                content=body,
                headers={
                    "X-PagerDuty-Signature": signatures.pagerduty_signature(SECRET["prod-pd"], body)
                },
            )
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "busy"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        receiver.close()
        bridge.shutdown()


def test_an_event_that_cannot_be_applied_is_retried_then_dead_lettered_inbound(two: Two) -> None:
    jira = two.sims["prod-jira"]
    jira.faults.update({"drop_webhooks": 1})  # its create event is lost
    made = jira_issue(two, "made by hand")
    jira.faults.update({"drop_webhooks": 0})
    two.clock.advance(5)
    with two.agent("prod-jira") as agent:
        agent.put(f"/rest/api/3/issue/{made}", json={"fields": {"summary": "made by hand, edited"}})
    jira.faults.update({"error_rate": 1})  # reading the unknown issue fails
    two.deliver()
    for wait in (30, 120, 480, 1800):
        two.clock.advance(wait)
        two.applier.step()
    [entry] = json.loads(two.im.ok("integration", "dlq", "prod-jira", "--format", "json"))
    assert entry["direction"] == "inbound" and len(entry["attempts"]) == 5
    assert "500" in entry["error"]
    assert two.counters("prod-jira")["inbound_failed"] == 1
    jira.faults.update({"error_rate": 0})
    two.im.ok("integration", "dlq-retry", "prod-jira", entry["id"])
    two.applier.step()
    listed = json.loads(two.im.ok("incident", "list", "--format", "json"))
    assert [i["title"] for i in listed] == ["made by hand, edited"]
    assert json.loads(two.im.ok("integration", "dlq", "prod-jira", "--format", "json")) == []


def test_the_hourly_purge_forgets_what_is_older_than_a_week(two: Two) -> None:
    new_incident(two)
    two.sync()
    counts = "SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM pushes), (SELECT count(*) FROM inbound_events)"
    assert all(two.db().execute(counts).fetchone())
    two.clock.advance(6 * 24 * 3600)
    two.applier.purge()
    assert all(two.db().execute(counts).fetchone())
    two.clock.advance(2 * 24 * 3600)
    two.applier.purge()
    assert two.db().execute(counts).fetchone() == (0, 0, 0)


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("prod-pd", "x-pagerduty-signature"),
        ("prod-jira", "x-hub-signature"),
        ("prod-snow", "webhook-signature"),
    ],
)
def test_a_signature_header_with_non_ascii_bytes_is_a_401_not_a_500(
    two: Two, name: str, header: str
) -> None:
    value = {"x-pagerduty-signature": b"v1=\xc3\xa9", "x-hub-signature": b"sha256=\xc3\xa9"}.get(
        header, b"v1,\xc3\xa9=="
    )
    headers: dict[str, Any] = {header: value}
    if name == "prod-snow":
        headers |= {
            "webhook-id": "msg_9",
            "webhook-timestamp": str(int(two.clock.now().timestamp())),
        }
    answer = two.daemon.post(f"/webhooks/{name}", content=b"{}", headers=headers)
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", 'the delivery has no "event" object'),
        (b'{"event": null}', 'the delivery has no "event" object'),
        (
            b'{"event": {"id": "E3", "event_type": "incident.acknowledged", "resource_type": "incident"}}',
            "incident.acknowledged has no data object",
        ),
    ],
)
def test_an_authentic_but_malformed_delivery_is_a_422_with_the_reason(
    two: Two, body: bytes, reason: str
) -> None:
    signature = signatures.pagerduty_signature(SECRET["prod-pd"], body)
    answer = two.daemon.post(
        "/webhooks/prod-pd", content=body, headers={"X-PagerDuty-Signature": signature}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == reason
    assert two.events("prod-pd") == []
    assert two.counters("prod-pd")["inbound_failed"] == 1
    assert rejection(two, "prod-pd") == ("2026-11-27T09:00:00.000Z", f"malformed: {reason}")


def test_a_deleted_record_breaks_its_link_without_counting_as_a_success(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    before = two.counters("prod-jira").get("inbound_success", 0)
    with two.agent("prod-jira") as agent:
        issue = two.external_id("prod-jira", n)
        assert agent.delete(f"/rest/api/3/issue/{issue}").status_code == 204
    two.deliver()
    links = json.loads(two.im.ok("incident", "show", f"INC-{n}", "--format", "json"))["links"]
    assert ("prod-jira", "broken") in {(link["integration"], link["state"]) for link in links}
    assert two.counters("prod-jira").get("inbound_success", 0) == before
    assert two.counters("prod-jira")["inbound_ignored"] >= 1


def paste_a_tab_in_jira(two: Two, n: int) -> None:
    """An agent pastes a tab into a linked issue's summary: authentic, but the platform
    refuses the title (control characters), so the event fails to apply."""
    two.clock.advance(5)
    with two.agent("prod-jira") as agent:
        answer = agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}",
            json={"fields": {"summary": "Checkout\tAPI 5xx"}},
        )
    assert answer.status_code == 204
    two.deliver()


def test_an_event_that_fails_to_apply_keeps_its_incident_for_the_history(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    paste_a_tab_in_jira(two, n)
    [failed, _echo] = two.events("prod-jira")
    assert (failed["state"], failed["outcome"]) == (
        "failed",
        "title must not contain control characters",
    )
    assert (failed["event_type"], failed["external_id"], failed["incident"]) == (
        "jira:issue_updated",
        two.external_id("prod-jira", n),
        f"INC-{n}",
    )
    assert two.counters("prod-jira")["inbound_failed"] == 1
    history = json.loads(two.im.ok("incident", "history", f"INC-{n}", "--format", "json"))
    [entry] = [e for e in history if e["kind"] == "inbound" and e["state"] == "failed"]
    assert entry["integration"] == "prod-jira"
    assert "control characters" in entry["detail"]
    assert two.incident(n)["title"] == "Checkout API 5xx"


def test_an_event_waiting_for_a_retry_says_what_it_is_about(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    paste_a_tab_in_jira(two, n)  # an agent's edit: the applier knows the agent from here on
    # an issue made by hand whose create webhook is lost; its edit comes, and reading the
    # unknown issue fails (Jira answers 500) until it is dead-lettered
    jira = two.sims["prod-jira"]
    jira.faults.update({"drop_webhooks": 1})
    made = jira_issue(two, "made by hand")
    jira.faults.update({"drop_webhooks": 0})
    two.clock.advance(5)
    with two.agent("prod-jira") as agent:
        answer = agent.put(f"/rest/api/3/issue/{made}", json={"fields": {"summary": "edited"}})
        assert answer.status_code == 204
        issue_id = agent.get(f"/rest/api/3/issue/{made}").json()["id"]
    jira.faults.update({"error_rate": 1})
    two.deliver()
    [waiting] = [e for e in two.events("prod-jira") if e["state"] == "received"]
    assert waiting["attempts"] == 1 and "500" in waiting["outcome"]
    assert (waiting["event_type"], waiting["external_id"]) == ("jira:issue_updated", issue_id)
    assert waiting["incident"] == ""  # not linked: no incident yet
    for wait in (30, 120, 480, 1800):
        two.clock.advance(wait)
        two.applier.step()
    [dead] = [e for e in two.events("prod-jira") if e["state"] == "dead"]
    assert (dead["event_type"], dead["external_id"]) == ("jira:issue_updated", issue_id)


def pd_note_counters(two: Two) -> dict[str, int]:
    names = ("outbound_success", "inbound_echo", "inbound_ignored", "inbound_success")
    return {c: two.counters("prod-pd").get(c, 0) for c in names}


def test_our_work_note_coming_back_from_pagerduty_is_an_echo(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    before = pd_note_counters(two)
    two.clock.advance(10)
    two.im.ok("incident", "comment", f"INC-{n}", "--work-note", "Pager muted for 10 min")
    two.sync()
    after = pd_note_counters(two)
    assert after == {
        **before,
        "outbound_success": before["outbound_success"] + 1,
        "inbound_echo": before["inbound_echo"] + 1,
    }
    [annotated] = [e for e in two.events("prod-pd") if e["event_type"] == "incident.annotated"]
    assert (annotated["state"], annotated["incident"]) == ("echo", f"INC-{n}")


def test_our_work_note_whose_answer_was_lost_is_an_echo_when_it_comes_back(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    before = pd_note_counters(two)
    # PagerDuty writes the note, but its answer is lost: the send is in doubt and the note's
    # id unknown when its webhook comes back, matched by its text
    two.sims["prod-pd"].faults.update({"write_timeout_rate": 1})
    two.clock.advance(10)
    two.im.ok("incident", "comment", f"INC-{n}", "--work-note", "Pager muted for 10 min")
    two.dispatcher.step()
    two.sims["prod-pd"].faults.update({"write_timeout_rate": 0})
    two.deliver()
    [annotated] = [e for e in two.events("prod-pd") if e["event_type"] == "incident.annotated"]
    assert annotated["state"] == "echo"
    after = pd_note_counters(two)
    assert after["inbound_echo"] == before["inbound_echo"] + 1
    assert after["inbound_ignored"] == before["inbound_ignored"]
    assert after["inbound_success"] == before["inbound_success"]
    with two.agent("prod-pd") as agent:
        notes = agent.get(f"/incidents/{two.external_id('prod-pd', n)}/notes").json()["notes"]
    assert [note["content"] for note in notes] == ["Pager muted for 10 min"]
