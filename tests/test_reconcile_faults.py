"""Reconciliation while things go wrong or move under it: lost answers, a daemon sending or
linking during the run, a lagging search index, a rate-limited listing, an interrupted run,
a change the platform cannot take, a disabled integration."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from im.store import integrations as integration_rows
from im.store import links
from im.sync import reconcile
from tests.test_reconcile import (
    drop_webhooks,
    found,
    jira_put,
    jira_summary,
    lost_title_edit,
    pd_notes,
    run,
    snow_patch,
    snow_record,
)
from tests.two_way import Two, jira_issue, new_incident


def test_a_note_whose_answer_was_lost_is_neither_appended_back_nor_sent_twice(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.sims["prod-pd"].faults.update({"drop_webhooks": 1, "write_timeout_rate": 1})
    two.im.ok("incident", "comment", f"INC-{n}", "--work-note", "Paged the database team")
    two.dispatcher.step()  # PagerDuty keeps the note, the answer is lost: the row waits 30 s
    two.sims["prod-pd"].faults.update({"write_timeout_rate": 0})
    assert pd_notes(two, n) == ["Paged the database team"]
    report = run(two, "prod-pd", "--auto-heal")
    assert report["discrepancies"] == []  # our note on its way, not one missing here
    two.clock.advance(120)
    two.sync()
    assert [j["body"] for j in two.incident(n)["journal"]] == ["Paged the database team"]
    assert pd_notes(two, n) == ["Paged the database team"]


def test_the_later_change_is_judged_by_when_the_value_was_seen_not_by_later_edits(
    two: Two,
) -> None:
    n = new_incident(two)
    two.sync()
    drop_webhooks(two, "prod-jira")
    two.clock.advance(10)
    jira_put(two, n, {"summary": "agent title"})  # its event is lost
    two.clock.advance(600)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    two.sync()  # the dispatcher sees Jira moved and leaves the agent's title in place
    two.clock.advance(600)
    description = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": "more detail"}]}]}  # fmt: skip
    jira_put(two, n, {"description": description})  # a later edit of another field
    report = run(two, "prod-jira", "--auto-heal")
    assert (f"INC-{n}", "title", "push") in found(report)
    two.sync()
    assert jira_summary(two, n) == "platform title"
    assert two.incident(n)["title"] == "platform title"


def test_a_disabled_integration_is_only_ever_dry_run(two: Two) -> None:
    n = lost_title_edit(two)
    jira_issue(two, "made by a human")
    two.im.ok("integration", "configure", "prod-jira", "--disable")
    refused = two.im("integration", "reconcile", "prod-jira", "--auto-heal")
    assert refused.exit_code == 1
    assert "prod-jira is disabled: it sends and applies nothing" in refused.stderr
    report = run(two, "prod-jira", "--dry-run")
    assert {d["action"] for d in report["discrepancies"]} == {"pull", "create-platform"}
    assert two.incident(n)["title"] == "Checkout API 5xx"
    assert len(json.loads(two.im.ok("incident", "list", "--format", "json"))) == 1


def test_an_interrupted_run_is_recorded_as_failed(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_incident(two)
    two.sync()

    def interrupted(self: reconcile.Reconciler, records: list[Any]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(reconcile.Reconciler, "_page", interrupted)
    two.clock.advance(2)  # Jira's search shows the issue
    result = two.im("integration", "reconcile", "prod-jira", "--auto-heal")
    assert result.exit_code == 130
    [row] = json.loads(
        two.im.ok("integration", "reconcile", "history", "prod-jira", "--format", "json")
    )
    assert (row["state"], row["error"]) == ("failed", "interrupted")


def test_a_vendor_reopen_of_a_closed_incident_is_reported_not_an_error(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.im.ok("incident", "update", f"INC-{n}", "--status", "closed")
    two.sync()
    drop_webhooks(two, "prod-snow")
    two.clock.advance(10)
    snow_patch(two, n, {"state": "2"})  # an agent puts it back In Progress
    for _ in range(2):  # every run says so, and none fails for it
        report = run(two, "prod-snow", "--auto-heal")
        [refused] = report["discrepancies"]
        assert (refused["field"], refused["action"]) == ("status", "refused")
        assert "closed" in refused["reason"]
        assert report["errors"] == [] and report["healed"] == 0
    assert two.incident(n)["status"] == "closed"


def test_one_rate_limited_listing_page_is_asked_for_again(two: Two) -> None:
    n = lost_title_edit(two)
    two.clock.advance(2)
    sim = two.sims["prod-jira"]
    limited: list[float] = []

    class OnceLimited(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = sim.transport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/search/jql") and not limited:
                limited.append(two.clock.now().timestamp())
                return httpx.Response(
                    429, headers={"Retry-After": "7"}, json={"errorMessages": ["Rate limited"]}
                )
            return self.inner.handle_request(request)

    two.im.transport_for = lambda integration: OnceLimited()
    result = two.im("integration", "reconcile", "prod-jira", "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert limited and two.clock.now().timestamp() - limited[0] >= 7  # waited as told
    assert found(json.loads(result.stdout)) == {(f"INC-{n}", "title", "pull")}


def test_a_lagging_search_is_read_again_rather_than_undoing_a_change(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    two.sync()  # sent and acknowledged: the snapshot is Jira's newest version
    # at once: Jira's search still shows the old summary, the issue itself the new one
    result = two.im("integration", "reconcile", "prod-jira", "--auto-heal", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["discrepancies"] == []
    assert two.incident(n)["title"] == "platform title"


@pytest.mark.parametrize("sent", [False, True], ids=["queued", "sent"])
def test_a_platform_edit_between_diff_and_heal_is_decided_again(
    two: Two, monkeypatch: pytest.MonkeyPatch, sent: bool
) -> None:
    n = lost_title_edit(two)
    heal = reconcile.Reconciler._heal

    def edit_then_heal(self: reconcile.Reconciler, *args: Any) -> None:
        # another process commits a platform edit just before the heal (and the daemon may
        # already have tried to send it)
        two.clock.advance(10)
        two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
        if sent:
            two.dispatcher.step()
        heal(self, *args)

    monkeypatch.setattr(reconcile.Reconciler, "_heal", edit_then_heal)
    report = run(two, "prod-jira", "--auto-heal")
    assert found(report) == {(f"INC-{n}", "title", "pull")}  # what the diff saw
    # Decided again inside the heal, never pulled over the edit. Queued, the edit would meet
    # Jira's title on its way out and leave it in place for an event that was lost; sent,
    # the daemon left Jira's title in place (both moved). Either way the platform's edit is
    # the later one, so the heal pushes it.
    assert report["healed"] == 1
    assert two.incident(n)["title"] == "platform title"
    two.sync()
    assert two.incident(n)["title"] == "platform title"
    assert jira_summary(two, n) == "platform title"


def test_a_create_linked_during_the_run_is_not_a_second_record(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_webhooks(two, "prod-jira")
    two.sims["prod-jira"].faults.update({"write_timeout_rate": 1})
    new_incident(two)
    two.dispatcher.step()  # Jira creates the issue, the answer is lost: the create is in doubt
    two.sims["prod-jira"].faults.update({"write_timeout_rate": 0})
    original = links.by_externals

    def then_the_daemon_links_it(*args: Any) -> Any:
        known = original(*args)
        two.clock.advance(60)
        two.dispatcher.step()  # the retry finds the issue by its key and links it
        return known

    monkeypatch.setattr(reconcile.links, "by_externals", then_the_daemon_links_it)
    report = run(two, "prod-jira", "--dry-run")
    assert report["discrepancies"] == []
    assert two.sims["prod-jira"].record_count() == 1


def test_our_record_whose_create_was_given_up_is_linked_not_duplicated(two: Two) -> None:
    drop_webhooks(two, "prod-jira")
    jira = two.sims["prod-jira"]
    jira.faults.update({"write_timeout_rate": 1})
    n = new_incident(two)
    two.dispatcher.step()  # created there, the answer lost
    jira.faults.update({"write_timeout_rate": 0, "error_rate": 1})
    for wait in (30, 120, 480, 1800):  # every look-up fails: the create ends in the DLQ
        two.clock.advance(wait)
        two.dispatcher.step()
    jira.faults.update({"error_rate": 0})
    two.im.ok("integration", "dlq-discard", "prod-jira", "--all")
    report = run(two, "prod-jira", "--auto-heal")
    assert [(d["incident_id"], d["action"]) for d in report["discrepancies"]] == [
        (f"INC-{n}", "link")
    ]
    assert jira.record_count() == 1
    assert two.external_id("prod-jira", n)
    assert run(two, "prod-jira")["discrepancies"] == []


def test_a_schedule_stops_between_pages_when_asked(two: Two) -> None:
    for _ in range(3):
        new_incident(two)
    two.sync()
    two.clock.advance(5)
    db = two.dispatcher.db
    row = integration_rows.find(db, "prod-jira")
    assert row is not None
    report = reconcile.run(
        db, two.clock, row, reconcile.Options(trigger="schedule"),
        transport_for=two.im.transport_for, stop=lambda: True,
    )  # fmt: skip
    assert report.failed == "stopped before the end: the daemon is shutting down"


def test_a_linked_record_that_left_the_scope_is_reported_and_never_touched(two: Two) -> None:
    two.im.ok("integration", "configure", "prod-snow", "--assignment-group", "Service Desk")
    n = new_incident(two)
    two.sync()
    drop_webhooks(two, "prod-snow")
    two.clock.advance(10)
    with two.agent("prod-snow") as agent:
        [network] = agent.get(
            "/api/now/table/sys_user_group", params={"sysparm_query": "name=Network"}
        ).json()["result"]
    # another team takes the ticket over and retitles it (the platform owns the title)
    snow_patch(two, n, {"assignment_group": network["sys_id"], "short_description": "theirs now"})
    report = run(two, "prod-snow", "--auto-heal")
    [left] = report["discrepancies"]
    assert (left["incident_id"], left["action"]) == (f"INC-{n}", "out-of-scope")
    assert report["healed"] == 0
    two.sync()
    assert snow_record(two, n)["short_description"] == "theirs now"
