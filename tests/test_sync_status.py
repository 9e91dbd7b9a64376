"""`im integration sync-status` and its API route (SPEC §8) in the two-way world: every verdict
and every reason produced by real actions (sends, echoes, duplicates, DLQ entries, conflicts,
reconcile runs, rate limits, refused credentials) on a frozen clock, and each counter moving
exactly as the counter table says."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx

from im.api.app import create_api
from im.clock import format_time
from im.security import signatures
from im.sim.transport import ASGIBridge
from im.store import daemon
from im.store.db import write
from im.sync.schedules import ScheduleRunner
from im.sync.status import METRICS, OTHER_COUNTERS
from tests.test_conflicts import simultaneous
from tests.test_reconcile import lost_title_edit, run
from tests.two_way import SECRET, Two, new_incident

DAEMON_DOWN = "no daemon is running"


def alive(two: Two) -> None:
    """A daemon that beats now (no daemon process runs in the two-way world)."""
    now = format_time(two.clock.now())
    with write(two.db()):
        daemon.register(
            two.db(),
            {
                "pid": 4242,
                "hostname": "test",
                "listen": "127.0.0.1:8080",
                "public_url": None,
                "started_at": now,
                "heartbeat_at": now,
            },
        )


def status(two: Two, name: str = "prod-jira", daemon_alive: bool = True) -> dict[str, Any]:
    """`sync-status NAME --format json`, which exits 0 whatever the health."""
    if daemon_alive:
        alive(two)
    result = two.im("integration", "sync-status", name, "--format", "json")
    assert result.exit_code == 0, result.stderr
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


def reasons(shown: dict[str, Any]) -> str:
    return "\n".join(shown["reasons"])


def counters(two: Two, name: str = "prod-jira") -> dict[str, int]:
    shown = status(two, name)
    return {**shown["metrics"], **shown["other_counters"]}


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that changed, by how much."""
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def jira_put(two: Two, n: int, fields: dict[str, Any]) -> None:
    with two.agent("prod-jira") as agent:
        answer = agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}", json={"fields": fields}
        )
    assert answer.status_code == 204, answer.text


# -- healthy, and what the report shows ------------------------------------------------------


def test_a_synced_integration_with_a_live_daemon_is_healthy_and_says_what_it_knows(
    two: Two,
) -> None:
    before = status(two)
    assert before["health"] == "healthy" and before["reasons"] == []
    assert before["last_webhook_received_at"] is None
    assert before["last_outbound_success_at"] is None
    assert before["last_reconcile_run_id"] is None and before["backlog_oldest_seconds"] is None
    new_incident(two)
    two.clock.advance(3)
    two.sync()
    shown = status(two)
    assert shown["health"] == "healthy" and shown["reasons"] == []
    now = format_time(two.clock.now())
    assert {k: shown[k] for k in shown if k not in ("metrics", "other_counters")} == {
        "health": "healthy",
        "reasons": [],
        "integration": "prod-jira",
        "integration_id": 2,
        "type": "jira",
        "enabled": True,
        "direction": "bidirectional",
        "conflict_strategy": "last-write-wins",
        "daemon_running": True,
        "daemon_heartbeat_at": now,
        "last_webhook_received_at": now,
        "webhook_secret_previous_until": None,
        "last_outbound_success_at": now,
        "last_outbound_failure_at": None,
        "last_outbound_error": None,
        "paused": None,
        "paused_at": None,
        "paused_until": None,
        "backlog": 0,
        "backlog_oldest_seconds": None,
        "dlq_size": 0,
        "pending_conflicts": 0,
        "unmappable_events_last_hour": 0,
        "last_reconcile_run_id": None,
        "last_reconcile_started_at": None,
        "last_reconcile_finished_at": None,
        "last_reconcile_state": None,
        "last_reconcile_discrepancies": None,
        "last_reconcile_unresolved": None,
        "last_reconcile_error": None,
        "reconcile_schedule_interval": None,
        "reconcile_schedule_enabled": None,
        "reconcile_next_run_at": None,
        "checked_at": now,
    }
    # the guide's seven metrics by their names, the others beside them; 0 when never counted
    assert (
        list(shown["metrics"])
        == list(METRICS)
        == [
            "outbound_success",
            "outbound_failed",
            "inbound_success",
            "inbound_failed",
            "conflicts_detected",
            "conflicts_resolved",
            "drift_discrepancies",
        ]
    )
    assert list(shown["other_counters"]) == list(OTHER_COUNTERS)
    assert shown["metrics"]["outbound_success"] == 1
    assert shown["other_counters"]["inbound_echo"] == 1
    assert shown["metrics"]["conflicts_detected"] == 0


def test_the_table_shows_health_and_reasons_first_then_the_rest_then_the_counters(
    two: Two,
) -> None:
    new_incident(two)
    two.sync()
    out = two.im.ok("integration", "sync-status", "prod-jira")  # no daemon: failing
    lines = out.splitlines()
    assert lines[0] == "prod-jira (jira): failing"
    assert lines[1].startswith("  - no daemon is running") and "`im daemon`" in lines[1]
    direction = next(i for i, line in enumerate(lines) if line.startswith("direction "))
    counter = next(i for i, line in enumerate(lines) if line.startswith("counter "))
    assert 1 < direction < counter
    assert lines[counter + 1].split() == ["outbound_success", "1"]
    assert lines[-1].split() == ["conflicts_manually_resolved", "0"]
    assert any(line.split() == ["last_reconcile_started_at", "never"] for line in lines)


def test_an_unknown_integration_is_an_error_naming_what_exists(two: Two) -> None:
    result = two.im("integration", "sync-status", "prod-jra")
    assert result.exit_code == 1
    assert "no integration 'prod-jra'" in result.stderr and "prod-jira" in result.stderr
    assert result.stdout == ""


def test_by_id_too(two: Two) -> None:
    assert status(two, "2")["integration"] == "prod-jira"


# -- failing ---------------------------------------------------------------------------------


def test_no_daemon_running_is_failing_and_a_stale_heartbeat_counts_as_none(two: Two) -> None:
    shown = status(two, daemon_alive=False)
    assert shown["health"] == "failing" and shown["daemon_running"] is False
    assert shown["reasons"] == [
        "no daemon is running, so nothing is sent or applied: start one with `im daemon`"
    ]
    alive(two)
    two.clock.advance(11)  # the daemon stopped beating
    shown = status(two, daemon_alive=False)
    assert shown["health"] == "failing" and DAEMON_DOWN in reasons(shown)
    assert status(two)["health"] == "healthy"


def test_refused_credentials_pause_the_integration_and_it_is_failing_until_they_change(
    two: Two,
) -> None:
    two.im.ok("integration", "configure", "prod-pd", "--api-token", "wrong-token")
    two.clock.advance(1)
    new_incident(two)
    two.sync()
    shown = status(two, "prod-pd")
    assert shown["health"] == "failing"
    assert shown["paused"] == "auth-failing" and shown["paused_until"] is None
    assert shown["paused_at"] == shown["last_outbound_failure_at"] is not None
    assert shown["last_outbound_error"]
    [reason] = shown["reasons"]
    assert "refused the credentials" in reason
    assert "im integration configure prod-pd --api-token-file PATH" in reason
    assert shown["backlog"] == 1 and shown["dlq_size"] == 0  # the row waits, uncharged
    # new credentials lift the pause; the row goes out
    two.clock.advance(1)
    two.im.ok("integration", "configure", "prod-pd", "--api-token", "im-integration-token")
    assert status(two, "prod-pd")["paused"] is None
    two.sync()
    shown = status(two, "prod-pd")
    assert (shown["health"], shown["reasons"], shown["backlog"]) == ("healthy", [], 0)


def test_a_backlog_degrades_after_5_minutes_fails_after_30_then_lands_in_the_dlq(
    two: Two,
) -> None:
    two.sims["prod-jira"].faults.update({"error_rate": 1})
    new_incident(two)
    two.sync()  # attempt 1 fails
    for wait in (30, 120):  # attempts 2 and 3, 2.5 min after the change
        two.clock.advance(wait)
        two.sync()
    shown = status(two)
    assert (shown["health"], shown["backlog"]) == ("healthy", 1)
    assert shown["backlog_oldest_seconds"] == 150.0
    assert shown["last_outbound_failure_at"] == format_time(two.clock.now())
    assert shown["last_outbound_error"]
    two.clock.advance(480)
    two.sync()  # attempt 4, 10.5 min after the change
    shown = status(two)
    assert shown["health"] == "degraded" and shown["backlog_oldest_seconds"] == 630.0
    assert shown["reasons"] == [
        "the oldest of 1 waiting change(s) has waited 10m (over 5m): see the last error below; "
        "the daemon keeps retrying"
    ]
    two.clock.advance(1800)  # attempt 5 is due: 40.5 min after the change
    shown = status(two)
    assert shown["health"] == "failing"
    [reason] = shown["reasons"]
    assert "has waited 40m (over 30m)" in reason and "im integration test prod-jira" in reason
    two.sync()  # attempt 5 fails: to the DLQ
    shown = status(two)
    assert (shown["health"], shown["backlog"], shown["dlq_size"]) == ("degraded", 0, 1)
    assert shown["metrics"]["outbound_failed"] == 5  # one per failed attempt
    assert shown["metrics"]["outbound_success"] == 0


def test_failing_lists_the_degraded_reasons_too_failing_first(two: Two) -> None:
    two.sims["prod-snow"].faults.update({"permanent_error": 422})
    new_incident(two)
    two.sync()
    shown = status(two, "prod-snow", daemon_alive=False)
    assert shown["health"] == "failing"
    daemon_down, dlq = shown["reasons"]
    assert DAEMON_DOWN in daemon_down and "in the dead letter queue" in dlq


# -- degraded --------------------------------------------------------------------------------


def test_a_dlq_entry_degrades_until_it_is_retried_or_discarded(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.sims["prod-jira"].faults.update({"permanent_error": 422})
    two.clock.advance(5)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "refused there")
    two.sync()
    shown = status(two)
    assert (shown["health"], shown["dlq_size"], shown["backlog"]) == ("degraded", 1, 0)
    assert shown["reasons"] == [
        "1 change(s) in the dead letter queue: see `im integration dlq prod-jira`, then "
        "`im integration dlq-retry prod-jira ENTRY` or `dlq-discard`"
    ]
    assert shown["metrics"]["outbound_failed"] == 1
    two.sims["prod-jira"].faults.update({"permanent_error": 0})
    two.im.ok("integration", "dlq-retry", "prod-jira", "--all")
    shown = status(two)
    assert (shown["health"], shown["dlq_size"], shown["backlog"]) == ("healthy", 0, 1)
    two.sync()
    shown = status(two)
    assert (shown["backlog"], shown["metrics"]["outbound_success"]) == (0, 2)


def test_a_pending_conflict_degrades_until_it_is_resolved(two: Two) -> None:
    simultaneous(two, "manual-review")
    shown = status(two)
    assert (shown["health"], shown["pending_conflicts"]) == ("degraded", 1)
    assert shown["reasons"] == [
        "1 conflict(s) await review: see `im conflict list --integration prod-jira`, then "
        "`im conflict resolve ID`"
    ]
    assert shown["conflict_strategy"] == "manual-review"
    [pending] = json.loads(two.im.ok("conflict", "list", "--format", "json"))
    two.im.ok("conflict", "resolve", pending["id"], "--use-platform")
    two.sync()
    shown = status(two)
    assert (shown["health"], shown["pending_conflicts"]) == ("healthy", 0)


def test_a_reconcile_that_found_drift_degrades_until_a_run_finds_none(two: Two) -> None:
    lost_title_edit(two)
    report = run(two, "prod-jira", "--dry-run")
    shown = status(two)
    assert shown["health"] == "degraded"
    assert shown["last_reconcile_run_id"] == report["run_id"] == "run-1"
    assert (shown["last_reconcile_state"], shown["last_reconcile_discrepancies"]) == ("done", 1)
    assert shown["last_reconcile_started_at"] and shown["last_reconcile_finished_at"]
    [reason] = shown["reasons"]
    assert (
        reason.startswith("the last reconcile (run-1, ")
        and "left 1 discrepancies to act on" in reason
    )
    assert "im integration reconcile prod-jira --dry-run" in reason
    healed = run(two, "prod-jira", "--auto-heal")  # finds it too, and heals it
    assert healed["healed"] == 1
    assert status(two)["health"] == "healthy"  # nothing left to act on
    two.sync()
    run(two, "prod-jira", "--dry-run")
    shown = status(two)
    assert (shown["health"], shown["last_reconcile_run_id"]) == ("healthy", "run-3")


def test_a_scheduled_reconcile_older_than_2_hours_degrades(two: Two) -> None:
    made = two.im.ok(
        "integration", "reconcile", "schedule", "prod-jira", "--interval", "1h", "--format", "json"
    )
    assert json.loads(made)["enabled"] is True
    new_incident(two)
    two.sync()
    two.clock.advance(2)
    runner = ScheduleRunner(two.im.db_path, two.clock, transport_for=two.im.transport_for)
    try:
        [first] = runner.tick()
        first.result(timeout=30)
        shown = status(two)
        assert shown["health"] == "healthy", shown["reasons"]
        assert (shown["reconcile_schedule_interval"], shown["reconcile_schedule_enabled"]) == (
            "1h",
            True,
        )
        assert shown["reconcile_next_run_at"] == format_time(two.clock.now() + timedelta(hours=1))
        ran_at = shown["last_reconcile_started_at"]
        two.clock.advance(2 * 3600)  # exactly 2 h: not older yet
        assert status(two)["health"] == "healthy"
        two.clock.advance(1)  # the scheduler stopped ticking
        shown = status(two)
        assert shown["health"] == "degraded"
        assert shown["reasons"] == [
            f"the scheduled reconcile last worked at {ran_at} (over 2h ago): check that the daemon "
            "runs and `im integration reconcile history prod-jira`"
        ]
        [second] = runner.tick()
        second.result(timeout=30)
    finally:
        runner.stop()
    assert status(two)["health"] == "healthy"
    # without an enabled schedule an old reconcile is no reason
    two.im.ok("integration", "reconcile", "schedule", "prod-jira", "--disable")
    two.clock.advance(3 * 3600)
    shown = status(two)
    assert (shown["health"], shown["reconcile_next_run_at"]) == ("healthy", None)


def test_a_schedule_that_never_ran_in_2_hours_degrades(two: Two) -> None:
    two.im.ok("integration", "reconcile", "schedule", "prod-jira", "--interval", "30m")
    assert status(two)["health"] == "healthy"
    two.clock.advance(2 * 3600 + 1)
    assert status(two)["reasons"] == [
        "the scheduled reconcile never ran (over 2h ago): check that the daemon runs and "
        "`im integration reconcile history prod-jira`"
    ]


def test_unmappable_values_in_the_last_hour_degrade(two: Two) -> None:
    # p4 goes out as High too, so Jira's "Low" has no platform value
    two.im.ok(
        "integration", "field-mapping", "set", "prod-jira", "priority", "priority",
        "--value", "p4=High",
    )  # fmt: skip
    n = new_incident(two)
    two.sync()
    two.clock.advance(5)
    jira_put(two, n, {"priority": {"name": "Low"}})
    two.deliver()
    shown = status(two)
    assert (shown["health"], shown["unmappable_events_last_hour"]) == ("degraded", 1)
    [reason] = shown["reasons"]
    assert reason.startswith("1 inbound event(s) in the last hour had values with no mapping")
    assert "'Low'" in reason
    assert "im integration field-mapping set prod-jira FIELD EXTERNAL_FIELD" in reason
    two.clock.advance(3600)  # exactly an hour: still in the last hour
    assert status(two)["health"] == "degraded"
    two.clock.advance(1)
    shown = status(two)
    assert (shown["health"], shown["unmappable_events_last_hour"]) == ("healthy", 0)


def test_rate_limited_now_degrades_until_the_pause_ends(two: Two) -> None:
    two.sims["prod-jira"].faults.update({"rate_limit_rate": 1, "retry_after": 60})
    new_incident(two)
    two.sync()
    shown = status(two)
    until = format_time(two.clock.now() + timedelta(seconds=60))
    assert (shown["health"], shown["paused"], shown["paused_until"]) == (
        "degraded",
        "rate-limited",
        until,
    )
    assert shown["reasons"] == [
        f"rate-limited by jira until {until}: sending resumes by itself; pace it with "
        "`im integration configure prod-jira --rate-limit N/s`"
    ]
    assert shown["metrics"]["outbound_failed"] == 1  # a 429 is a failed attempt (uncharged)
    two.sims["prod-jira"].faults.update({"rate_limit_rate": 0})
    two.clock.advance(60)  # the pause ends
    shown = status(two)
    assert (shown["health"], shown["paused"]) == ("healthy", None)
    two.sync()
    shown = status(two)
    assert (shown["backlog"], shown["metrics"]["outbound_success"]) == (0, 1)


def test_a_disabled_integration_is_degraded_and_says_how_to_enable_it(two: Two) -> None:
    two.im.ok("integration", "configure", "prod-jira", "--disable")
    shown = status(two)
    assert (shown["health"], shown["enabled"]) == ("degraded", False)
    assert shown["reasons"] == [
        "the integration is disabled: nothing is sent or applied; enable it with "
        "`im integration configure prod-jira --enable`"
    ]
    # its changes wait on purpose: however long, that is the one reason, not a failure
    new_incident(two)
    two.clock.advance(3600)
    shown = status(two)
    assert (shown["health"], shown["backlog"], len(shown["reasons"])) == ("degraded", 1, 1)
    two.im.ok("integration", "configure", "prod-jira", "--enable")
    two.sync()
    assert status(two)["health"] == "healthy"


# -- the counters (SPEC §8's table) ----------------------------------------------------------


def test_each_delivered_outbox_row_counts_one_outbound_success(two: Two) -> None:
    before = counters(two)
    n = new_incident(two)
    two.sync()
    after_create = counters(two)
    assert moved(before, after_create) == {"outbound_success": 1, "inbound_echo": 1}
    # two changes made before the daemon sends coalesce into one row: one delivery
    two.clock.advance(5)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "first")
    two.im.ok("incident", "update", f"INC-{n}", "--priority", "p2")
    two.sync()
    assert moved(after_create, counters(two)) == {"outbound_success": 1, "inbound_echo": 1}


def test_an_agents_edit_counts_inbound_success_and_an_echo_does_not(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    before = counters(two)
    two.clock.advance(10)
    jira_put(two, n, {"summary": "Checkout API recovering"})
    two.sync()
    assert moved(before, counters(two)) == {"inbound_success": 1}
    assert two.incident(n)["title"] == "Checkout API recovering"


def test_a_duplicate_delivery_counts_inbound_duplicate_only(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    before = counters(two)
    two.sims["prod-jira"].faults.update({"duplicate_webhooks": 1})
    two.clock.advance(10)
    jira_put(two, n, {"summary": "once"})
    two.deliver()
    assert moved(before, counters(two)) == {"inbound_success": 1, "inbound_duplicate": 1}


def test_an_ignored_event_counts_inbound_ignored_not_success(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    two.im.ok("integration", "configure", "prod-jira", "--direction", "outbound")
    before = counters(two)
    two.clock.advance(10)
    jira_put(two, n, {"summary": "ignored"})
    two.deliver()
    assert moved(before, counters(two)) == {"inbound_ignored": 1}
    assert two.incident(n)["title"] == "Checkout API 5xx"


def test_a_rejected_signature_counts_inbound_failed(two: Two) -> None:
    before = counters(two, "prod-pd")
    body = json.dumps({"event": {"id": "E1", "event_type": "incident.triggered"}}).encode()
    forged = two.daemon.post(
        "/webhooks/prod-pd", content=body, headers={"X-PagerDuty-Signature": "v1=00"}
    )
    assert forged.status_code == 401
    malformed = b"not json"
    answer = two.daemon.post(
        "/webhooks/prod-pd",
        content=malformed,
        headers={
            "X-PagerDuty-Signature": signatures.pagerduty_signature(SECRET["prod-pd"], malformed)
        },
    )
    assert answer.status_code == 400
    shown = status(two, "prod-pd")
    assert moved(before, {**shown["metrics"], **shown["other_counters"]}) == {"inbound_failed": 2}
    assert shown["last_webhook_received_at"] is None  # neither was stored


def test_conflicts_count_detected_and_resolved_by_strategy_or_by_hand(two: Two) -> None:
    simultaneous(two, "last-write-wins")
    auto = counters(two)
    assert (auto["conflicts_detected"], auto["conflicts_resolved"]) == (1, 1)
    assert auto["conflicts_manually_resolved"] == 0
    simultaneous(two, "manual-review")
    held = counters(two)
    assert moved(auto, held).get("conflicts_detected") == 1
    assert "conflicts_resolved" not in moved(auto, held)
    [pending] = json.loads(two.im.ok("conflict", "list", "--format", "json"))
    two.im.ok("conflict", "resolve", pending["id"], "--use-external")
    after = counters(two)
    assert moved(held, after) == {"conflicts_manually_resolved": 1}


def test_each_reconcile_run_adds_the_discrepancies_it_found(two: Two) -> None:
    lost_title_edit(two)
    before = counters(two)
    run(two, "prod-jira", "--dry-run")
    assert moved(before, counters(two)) == {"drift_discrepancies": 1}
    run(two, "prod-jira", "--dry-run")  # found again: counted again
    assert counters(two)["drift_discrepancies"] == 2


# -- the API ---------------------------------------------------------------------------------


def test_the_api_answers_what_the_cli_shows(two: Two) -> None:
    two.sims["prod-snow"].faults.update({"permanent_error": 422})
    new_incident(two)
    two.sync()
    token = two.im.ok("token", "create", "ops").strip()
    bridge = ASGIBridge(create_api(two.im.db_path, two.clock))
    with httpx.Client(
        transport=bridge, base_url="http://im", headers={"Authorization": f"Bearer {token}"}
    ) as api:
        shown = status(two, "prod-snow")
        answer = api.get("/integrations/prod-snow/sync-status")
        assert answer.status_code == 200, answer.text
        assert answer.json() == shown
        assert shown["health"] == "degraded"
        by_id = api.get(f"/integrations/{shown['integration_id']}/sync-status")
        assert by_id.json()["integration"] == "prod-snow"
        # failing is still a 200: the report ran
        two.clock.advance(11)
        assert api.get("/integrations/prod-snow/sync-status").json()["health"] == "failing"
        missing = api.get("/integrations/nope/sync-status")
        assert missing.status_code == 404
        assert list(missing.json()) == ["error"]
        schema = api.get("/openapi.json").json()["components"]["schemas"]
        assert list(schema["MetricsOut"]["properties"]) == list(METRICS)
    bridge.shutdown()


def test_drift_that_only_the_direction_blocks_does_not_degrade(two: Two) -> None:
    """An outbound-only integration reports an agent's edit of a field ServiceNow owns as
    blocked-by-direction on every run: a report, nothing anyone can heal."""
    from tests.test_reconcile import run, snow_patch, snow_user

    n = new_incident(two)
    two.sync()
    two.im.ok("integration", "configure", "prod-snow", "--direction", "outbound")
    two.clock.advance(10)
    snow_patch(two, n, {"assigned_to": snow_user(two, "bob@example.com")})
    report = run(two, "prod-snow", "--auto-heal")
    assert {d["action"] for d in report["discrepancies"]} == {"blocked-by-direction"}
    shown = json.loads(two.im.ok("integration", "sync-status", "prod-snow", "--format", "json"))
    assert (shown["last_reconcile_discrepancies"], shown["last_reconcile_unresolved"]) == (1, 0)
    assert not [r for r in shown["reasons"] if "reconcile" in r]


def test_a_failing_scheduled_reconcile_degrades_and_goes_stale(two: Two) -> None:
    two.im.ok("integration", "reconcile", "schedule", "prod-jira", "--interval", "1h")
    two.sims["prod-jira"].faults.update({"error_rate": 1})
    for _ in range(3):
        two.clock.advance(3600)
        assert two.im("integration", "reconcile", "prod-jira").exit_code == 1
    shown = json.loads(two.im.ok("integration", "sync-status", "prod-jira", "--format", "json"))
    assert shown["health"] in ("degraded", "failing")
    assert any("reconcile (run-3" in r and "failed" in r for r in shown["reasons"])
    assert any("scheduled reconcile has not worked since it was set" in r for r in shown["reasons"])


def test_new_field_mapping_does_not_lift_a_pause_for_refused_credentials(two: Two) -> None:
    two.im.ok("integration", "configure", "prod-pd", "--api-token", "revoked-token")
    two.clock.advance(1)
    new_incident(two)
    two.sync()
    shown = json.loads(two.im.ok("integration", "sync-status", "prod-pd", "--format", "json"))
    assert shown["paused"] == "auth-failing"
    two.clock.advance(1)
    two.im.ok(
        "integration",
        "field-mapping",
        "set",
        "prod-pd",
        "severity",
        "urgency",
        "--value",
        "sev1=high",
    )
    shown = json.loads(two.im.ok("integration", "sync-status", "prod-pd", "--format", "json"))
    assert shown["paused"] == "auth-failing"
    assert shown["backlog"] == 1  # nothing was sent with the refused token
