"""Drift reconciliation (SPEC §7) in the two-way world: simulators that drop webhooks while an
agent edits, then `im integration reconcile` comparing, reporting and healing. Each row of
SPEC §7's table is produced by a real edit; expected values are read back from the
simulators' own state."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

from im.store import integrations as integration_rows
from im.store import open_database
from im.sync import reconcile
from tests.two_way import Two, jira_issue, new_incident


def drop_webhooks(two: Two, name: str) -> None:
    two.sims[name].faults.update({"drop_webhooks": 1})


def run(two: Two, name: str, *flags: str) -> dict[str, Any]:
    """A reconcile run's JSON report (after Jira's search index caught up)."""
    two.clock.advance(2)
    result = two.im("integration", "reconcile", name, *flags, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def found(report: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(d["incident_id"], d["field"], d["action"]) for d in report["discrepancies"]}


def snow_user(two: Two, email: str) -> str:
    with two.agent("prod-snow") as agent:
        rows = agent.get(
            "/api/now/table/sys_user", params={"sysparm_query": f"email={email}"}
        ).json()["result"]
    return str(rows[0]["sys_id"])


def snow_record(two: Two, n: int) -> dict[str, Any]:
    with two.agent("prod-snow") as agent:
        answer = agent.get(
            f"/api/now/table/incident/{two.external_id('prod-snow', n)}",
            params={"sysparm_display_value": "false"},
        )
    record: dict[str, Any] = answer.json()["result"]
    return record


def snow_patch(two: Two, n: int, body: dict[str, str]) -> None:
    with two.agent("prod-snow") as agent:
        answer = agent.patch(
            f"/api/now/table/incident/{two.external_id('prod-snow', n)}", json=body
        )
    assert answer.status_code == 200, answer.text


def jira_put(two: Two, n: int, fields: dict[str, Any]) -> None:
    with two.agent("prod-jira") as agent:
        answer = agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}", json={"fields": fields}
        )
    assert answer.status_code == 204, answer.text


def jira_summary(two: Two, n: int) -> str:
    with two.agent("prod-jira") as agent:
        issue = agent.get(f"/rest/api/3/issue/{two.external_id('prod-jira', n)}").json()
    return str(issue["fields"]["summary"])


def lost_title_edit(two: Two) -> int:
    """A synced incident whose Jira title an agent then changed; the webhook was lost."""
    n = new_incident(two)
    two.sync()
    drop_webhooks(two, "prod-jira")
    two.clock.advance(10)
    jira_put(two, n, {"summary": "agent title"})
    return n


def lost(two: Two, name: str, *change: str) -> None:
    """Make a platform change that never reaches ``name``: it refuses the write for good, the
    change goes to the DLQ, and someone discards it."""
    two.sims[name].faults.update({"permanent_error": 422})
    two.clock.advance(10)
    two.im.ok(*change)
    two.sync()
    two.sims[name].faults.update({"permanent_error": 0})
    two.im.ok("integration", "dlq-discard", name, "--all")


def pd_notes(two: Two, n: int) -> list[str]:
    with two.agent("prod-pd") as agent:
        notes = agent.get(f"/incidents/{two.external_id('prod-pd', n)}/notes").json()["notes"]
    return [note["content"] for note in notes]


def outbox_rows(two: Two) -> int:
    return int(two.db().execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_dry_run_lists_exactly_what_differs_changes_nothing_and_auto_heal_converges(
    two: Two,
) -> None:
    n = new_incident(two)
    two.sync()
    drop_webhooks(two, "prod-snow")
    two.clock.advance(30)
    bob = snow_user(two, "bob@example.com")
    # an agent edits four things in ServiceNow; none of the webhooks arrives
    snow_patch(two, n, {"short_description": "agent title"})  # platform owns title: push
    snow_patch(two, n, {"assigned_to": bob})  # ServiceNow owns assigned_to: pull
    snow_patch(two, n, {"state": "2"})  # nobody owns status, only SN moved: pull
    snow_patch(two, n, {"work_notes": "Rolled back the deploy"})  # SN owns work notes
    before = (two.incident(n), outbox_rows(two), snow_record(two, n)["sys_mod_count"])

    report = run(two, "prod-snow", "--dry-run")
    assert report["mode"] == "dry-run" and report["checked"] == 1
    assert found(report) == {
        (f"INC-{n}", "title", "push"),
        (f"INC-{n}", "assigned_to", "pull"),
        (f"INC-{n}", "status", "pull"),
        (f"INC-{n}", "work_notes", "append-journal"),
    }
    shown = {d["field"]: d for d in report["discrepancies"]}
    real = snow_record(two, n)
    assert shown["title"]["external_value"] == real["short_description"] == "agent title"
    assert shown["title"]["platform_value"] == shown["title"]["snapshot_value"]
    assert shown["assigned_to"]["external_value"] == "bob@example.com"
    assert shown["status"]["external_value"] == "acknowledged"
    assert shown["work_notes"]["external_value"] == "Rolled back the deploy"
    # nothing changed anywhere
    assert (two.incident(n), outbox_rows(two), snow_record(two, n)["sys_mod_count"]) == before

    healed = run(two, "prod-snow", "--auto-heal")
    assert healed["mode"] == "auto-heal" and healed["healed"] == 4
    two.sync()
    incident = two.incident(n)
    assert incident["assigned_to"] == "bob@example.com"
    assert incident["status"] == "acknowledged"
    assert incident["title"] == "Checkout API 5xx"
    assert snow_record(two, n)["short_description"] == "Checkout API 5xx"
    journal = json.loads(two.im.ok("incident", "show", f"INC-{n}", "--format", "json"))["journal"]
    assert [j["body"] for j in journal] == ["Rolled back the deploy"]
    # what was pulled went on to the other integrations, and nothing differs any more
    assert run(two, "prod-snow", "--dry-run")["discrepancies"] == []
    # Jira and PagerDuty own assigned_to too, by default at the same priority: the oldest
    # integration decides, and their differences are reported, never acted on
    for name in ("prod-jira", "prod-pd"):
        [shadowed] = run(two, name, "--auto-heal")["discrepancies"]
        assert (shadowed["field"], shadowed["action"]) == ("assigned_to", "shadowed")
        assert shadowed["reason"] == "prod-snow owns it with a higher priority"
    assert two.incident(n)["assigned_to"] == "bob@example.com"
    # counted per run: the dry run found 4, the healing run the same 4
    assert two.counters("prod-snow")["drift_discrepancies"] == 8


def test_no_mode_is_a_dry_run_and_says_so(two: Two) -> None:
    n = lost_title_edit(two)
    two.clock.advance(2)
    result = two.im("integration", "reconcile", "prod-jira")
    assert result.exit_code == 0
    assert "dry run, nothing is changed" in result.stderr
    assert "title" in result.stdout and "pull" in result.stdout
    assert "prod-jira run-1 (dry-run): checked 1, 1 discrepancies" in result.stdout
    assert two.incident(n)["title"] == "Checkout API 5xx"


def test_both_modes_together_is_a_usage_error(two: Two) -> None:
    result = two.im("integration", "reconcile", "prod-jira", "--dry-run", "--auto-heal")
    assert result.exit_code == 2
    assert "--dry-run and --auto-heal exclude each other" in result.stderr


def test_an_unknown_integration_is_an_error_naming_what_exists(two: Two) -> None:
    result = two.im("integration", "reconcile", "prod-snoww", "--dry-run")
    assert result.exit_code == 1
    assert "prod-snow" in result.stderr


def test_a_field_nobody_owns_changed_only_on_the_platform_is_pushed(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    lost(two, "prod-jira", "incident", "update", f"INC-{n}", "--title", "platform title")
    report = run(two, "prod-jira", "--dry-run")
    assert found(report) == {(f"INC-{n}", "title", "push")}
    assert report["discrepancies"][0]["reason"] == "only the platform changed it"
    run(two, "prod-jira", "--auto-heal")
    two.sync()
    assert jira_summary(two, n) == "platform title"
    assert run(two, "prod-jira")["discrepancies"] == []


def test_a_concurrent_change_whose_event_never_came_is_decided_by_the_conflict_rules(
    two: Two,
) -> None:
    n = lost_title_edit(two)
    two.clock.advance(10)  # more than the 5 s window later: no conflict record
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    two.sync()  # the dispatcher sees Jira moved and waits for that edit's event
    assert jira_summary(two, n) == "agent title"
    report = run(two, "prod-jira", "--dry-run")
    assert found(report) == {(f"INC-{n}", "title", "push")}
    assert "both sides changed it" in report["discrepancies"][0]["reason"]
    assert "the later change" in report["discrepancies"][0]["reason"]
    run(two, "prod-jira", "--auto-heal")
    two.sync()
    assert jira_summary(two, n) == "platform title"
    assert two.incident(n)["title"] == "platform title"
    assert run(two, "prod-jira")["discrepancies"] == []


def test_simultaneous_edits_under_manual_review_become_a_held_conflict(two: Two) -> None:
    two.im.ok("integration", "configure", "prod-jira", "--conflict-strategy", "manual-review")
    n = new_incident(two)
    two.sync()
    drop_webhooks(two, "prod-jira")
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    two.clock.advance(1)
    jira_put(two, n, {"summary": "agent title"})
    two.sync()
    assert found(run(two, "prod-jira", "--dry-run")) == {(f"INC-{n}", "title", "conflict")}
    assert json.loads(two.im.ok("conflict", "list", "--format", "json")) == []
    healed = run(two, "prod-jira", "--auto-heal")
    assert found(healed) == {(f"INC-{n}", "title", "conflict")}
    [pending] = json.loads(two.im.ok("conflict", "list", "--format", "json"))
    assert (pending["field"], pending["external_value"]) == ("title", "agent title")
    again = run(two, "prod-jira", "--auto-heal")
    assert found(again) == {(f"INC-{n}", "title", "held")}
    assert again["discrepancies"][0]["reason"] == f"held by {pending['id']}"
    assert jira_summary(two, n) == "agent title"  # a held field is never healed
    # an accepted divergence is skipped until either side changes the field again
    two.im.ok("conflict", "resolve", pending["id"], "--ignore")
    assert run(two, "prod-jira", "--dry-run")["discrepancies"] == []
    two.clock.advance(30)
    jira_put(two, n, {"summary": "agent title again"})
    [again] = run(two, "prod-jira", "--dry-run")["discrepancies"]
    assert (again["field"], again["action"]) == ("title", "pull")  # the later change wins
    assert "the later change" in again["reason"]


def test_an_external_owner_below_another_is_shadowed(two: Two) -> None:
    two.im.ok("integration", "field-ownership", "set", "prod-jira", "title", "--owner", "external", "--priority", "7")  # fmt: skip
    two.im.ok("integration", "field-ownership", "set", "prod-snow", "title", "--owner", "external", "--priority", "3")  # fmt: skip
    n = new_incident(two)
    two.sync()
    drop_webhooks(two, "prod-snow")
    two.clock.advance(10)
    snow_patch(two, n, {"short_description": "snow title"})
    report = run(two, "prod-snow", "--auto-heal")
    assert found(report) == {(f"INC-{n}", "title", "shadowed")}
    assert two.incident(n)["title"] == "Checkout API 5xx"
    assert snow_record(two, n)["short_description"] == "snow title"


def test_an_outbound_only_integration_never_pulls(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.im.ok("integration", "configure", "prod-snow", "--direction", "outbound")
    two.clock.advance(10)
    snow_patch(two, n, {"assigned_to": snow_user(two, "bob@example.com")})
    snow_patch(two, n, {"work_notes": "from the agent"})
    report = run(two, "prod-snow", "--auto-heal")
    assert found(report) == {
        (f"INC-{n}", "assigned_to", "blocked-by-direction"),
        (f"INC-{n}", "work_notes", "blocked-by-direction"),
    }
    assert report["healed"] == 0
    incident = json.loads(two.im.ok("incident", "show", f"INC-{n}", "--format", "json"))
    assert incident["assigned_to"] == "" and incident["journal"] == []


def test_an_inbound_only_integration_never_pushes(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.im.ok("integration", "configure", "prod-snow", "--direction", "inbound")
    drop_webhooks(two, "prod-snow")
    two.clock.advance(10)
    snow_patch(two, n, {"short_description": "agent title"})
    report = run(two, "prod-snow", "--auto-heal")
    assert found(report) == {(f"INC-{n}", "title", "blocked-by-direction")}
    two.sync()
    assert snow_record(two, n)["short_description"] == "agent title"


def test_a_platform_note_that_never_arrived_is_appended_once(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    lost(
        two, "prod-pd", "incident", "comment", f"INC-{n}", "--work-note", "Paged the database team"
    )
    report = run(two, "prod-pd", "--dry-run")
    assert found(report) == {(f"INC-{n}", "work_notes", "append-journal")}
    assert report["discrepancies"][0]["platform_value"] == "Paged the database team"
    run(two, "prod-pd", "--auto-heal")
    two.sync()
    assert pd_notes(two, n) == ["Paged the database team"]
    assert run(two, "prod-pd", "--auto-heal")["discrepancies"] == []
    two.sync()
    assert len(pd_notes(two, n)) == 1


def test_a_deleted_external_record_is_reported_and_recreated_only_when_asked(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    gone = two.external_id("prod-jira", n)
    drop_webhooks(two, "prod-jira")
    with two.agent("prod-jira") as agent:
        assert agent.delete(f"/rest/api/3/issue/{gone}").status_code == 204
    report = run(two, "prod-jira", "--auto-heal")
    assert found(report) == {(f"INC-{n}", "", "missing-external")}
    assert "--recreate-missing" in report["discrepancies"][0]["reason"]
    two.sync()
    assert two.sims["prod-jira"].record_count() == 0
    links = json.loads(two.im.ok("incident", "show", f"INC-{n}", "--format", "json"))["links"]
    assert ("prod-jira", "broken") in {(link["integration"], link["state"]) for link in links}

    again = run(two, "prod-jira", "--auto-heal", "--recreate-missing")
    assert found(again) == {(f"INC-{n}", "", "missing-external")}
    assert again["discrepancies"][0]["reason"] == "gone; re-created"
    two.sync()
    assert two.sims["prod-jira"].record_count() == 1
    assert two.external_id("prod-jira", n) != gone
    assert jira_summary(two, n) == "Checkout API 5xx"
    assert run(two, "prod-jira")["discrepancies"] == []


def test_an_unlinked_record_in_scope_becomes_an_incident_when_healed(two: Two) -> None:
    drop_webhooks(two, "prod-jira")
    two.clock.advance(10)
    key = jira_issue(two, "Found by a human")
    report = run(two, "prod-jira", "--dry-run")
    assert [(d["external_key"], d["action"]) for d in report["discrepancies"]] == [
        (key, "create-platform")
    ]
    assert json.loads(two.im.ok("incident", "list", "--format", "json")) == []
    run(two, "prod-jira", "--auto-heal")
    [incident] = json.loads(two.im.ok("incident", "list", "--format", "json"))
    assert incident["title"] == "Found by a human"
    two.sync()
    assert two.sims["prod-snow"].record_count() == 1  # and it goes on
    assert run(two, "prod-jira")["discrepancies"] == []


def test_records_older_than_the_integration_are_taken_only_with_backfill(two: Two) -> None:
    drop_webhooks(two, "prod-jira")
    two.clock.advance(10)
    key = jira_issue(two, "Before the integration")
    two.clock.advance(60)
    args = ["--url", "http://127.0.0.1:2", "--email", "im-integration@example.com"]
    two.im.ok(
        "integration", "create", "ops-jira", "--type", "jira", *args, "--project", "OPS",
        "--direction", "bidirectional", env={"IM_API_TOKEN": "im-integration-token"},
    )  # fmt: skip
    jira = two.sims["prod-jira"]
    two.im.transport_for = lambda integration: jira.transport()
    assert run(two, "ops-jira", "--dry-run")["discrepancies"] == []
    backfilled = run(two, "ops-jira", "--dry-run", "--backfill", "1h")
    assert [(d["external_key"], d["action"]) for d in backfilled["discrepancies"]] == [
        (key, "create-platform")
    ]


def test_a_platform_edit_after_the_external_read_is_not_overwritten(two: Two) -> None:
    n = lost_title_edit(two)
    two.clock.advance(2)
    sim = two.sims["prod-jira"]
    edited = threading.Event()

    class EditDuringTheRun(httpx.BaseTransport):
        """Once Jira has answered the listing, a person edits the title on the platform."""

        def __init__(self) -> None:
            self.inner = sim.transport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = self.inner.handle_request(request)
            if request.url.path.endswith("/search/jql") and not edited.is_set():
                edited.set()
                two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
            return response

    two.im.transport_for = lambda integration: EditDuringTheRun()
    result = two.im("integration", "reconcile", "prod-jira", "--auto-heal", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert edited.is_set()
    # the new value is on its way out and never overwritten by Jira's old one; Jira's edit
    # (its event lost) meets it, so the run decides it: the platform's edit is the later one
    report = json.loads(result.stdout)
    assert found(report) == {(f"INC-{n}", "title", "push")}
    assert two.incident(n)["title"] == "platform title"
    two.sync()  # sent over Jira's edit, not left for an event that never comes
    assert jira_summary(two, n) == "platform title"


def test_a_second_run_at_once_exits_3_saying_why(two: Two) -> None:
    started = threading.Event()
    release = threading.Event()
    sim = two.sims["prod-jira"]

    class Slow(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = sim.transport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            started.set()
            release.wait(10)
            return self.inner.handle_request(request)

    first_db = open_database(two.im.db_path)
    results: list[reconcile.Report] = []
    row = integration_rows.find(first_db, "prod-jira")
    assert row is not None
    worker = threading.Thread(
        target=lambda: results.append(
            reconcile.run(
                first_db, two.clock, row, reconcile.Options(trigger="cron"),
                transport_for=lambda i: Slow(),
            )
        )
    )  # fmt: skip
    worker.start()
    assert started.wait(10)
    second = two.im("integration", "reconcile", "prod-jira", "--auto-heal")
    release.set()
    worker.join(10)
    first_db.close()
    assert second.exit_code == 3
    assert "another reconcile of prod-jira is in progress" in second.stderr
    assert "run-1, cron" in second.stderr
    assert results and results[0].failed is None
    history = json.loads(
        two.im.ok("integration", "reconcile", "history", "prod-jira", "--format", "json")
    )
    assert [(h["run_id"], h["trigger"], h["state"]) for h in history] == [("run-1", "cron", "done")]


def test_history_lists_runs_newest_first_with_their_counts(two: Two) -> None:
    lost_title_edit(two)
    run(two, "prod-jira", "--dry-run")
    run(two, "prod-jira", "--auto-heal")
    history = json.loads(
        two.im.ok("integration", "reconcile", "history", "prod-jira", "--format", "json")
    )
    assert [
        (
            h["run_id"],
            h["trigger"],
            h["mode"],
            h["state"],
            h["checked"],
            h["discrepancies"],
            h["healed"],
        )
        for h in history
    ] == [
        ("run-2", "manual", "auto-heal", "done", 1, 1, 1),
        ("run-1", "manual", "dry-run", "done", 1, 1, 0),
    ]
    assert all(h["duration_seconds"] is not None for h in history)
    table = two.im.ok("integration", "reconcile", "history", "prod-jira")
    assert "run-2" in table.splitlines()[1]


def test_an_unreachable_system_fails_the_run_with_exit_1_and_is_recorded(two: Two) -> None:
    two.sims["prod-jira"].faults.update({"error_rate": 1})
    result = two.im("integration", "reconcile", "prod-jira", "--dry-run")
    assert result.exit_code == 1
    assert "run-1 failed" in result.stderr
    [row] = json.loads(
        two.im.ok("integration", "reconcile", "history", "prod-jira", "--format", "json")
    )
    assert row["state"] == "failed" and row["error"]
