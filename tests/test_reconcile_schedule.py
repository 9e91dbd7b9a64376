"""Scheduled and cron reconciliation (SPEC §7): the schedule set by the CLI and by the guide's
API call, run by the daemon's schedule runner (in-process on a frozen clock, and a real
daemon process), and the README's crontab line run under cron's bare environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from im.api.app import create_api
from im.cli.reconcile import CRON_LINE
from im.sim.jira import JiraSimulator
from im.sim.server import free_port, serve_in_thread
from im.sim.servicenow import ServiceNowSimulator
from im.sim.transport import ASGIBridge
from im.sync.schedules import ScheduleRunner, format_interval, parse_interval
from tests.test_daemon import Live, start_daemon, stop
from tests.test_daemon import live as live  # the fixture
from tests.test_reconcile import lost_title_edit
from tests.two_way import Two


def history(two_im: object, name: str) -> list[dict[str, object]]:
    out = two_im.ok("integration", "reconcile", "history", name, "--format", "json")  # type: ignore[attr-defined]
    rows: list[dict[str, object]] = json.loads(out)
    return rows


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [("30s", 30, "30s"), ("15m", 900, "15m"), ("1h", 3600, "1h"), ("1d", 86400, "1d"), ("90m", 5400, "90m")],
)  # fmt: skip
def test_intervals_read_and_show_as_the_guide_writes_them(
    text: str, seconds: int, shown: str
) -> None:
    assert parse_interval(text) == seconds
    assert format_interval(seconds) == shown


def test_the_cli_sets_shows_disables_and_refuses_a_bad_interval(two: Two) -> None:
    im = two.im
    missing = im("integration", "reconcile", "schedule", "prod-jira")
    assert missing.exit_code == 1
    assert "prod-jira has no reconcile schedule" in missing.stderr
    assert "--interval 1h" in missing.stderr
    too_short = im("integration", "reconcile", "schedule", "prod-jira", "--interval", "10s")
    assert too_short.exit_code == 2
    assert "at least 30s" in too_short.stderr
    made = im("integration", "reconcile", "schedule", "prod-jira", "--interval", "1h", "--auto-heal", "--format", "json")  # fmt: skip
    assert made.exit_code == 0, made.stderr
    shown = json.loads(made.stdout)
    assert (shown["interval"], shown["auto_heal"], shown["enabled"]) == ("1h", True, True)
    assert shown["next_run_at"] == "2026-11-27T09:00:00.000Z"  # a new schedule runs at once
    assert "no daemon is running" in made.stderr
    off = json.loads(im.ok("integration", "reconcile", "schedule", "prod-jira", "--disable", "--format", "json"))  # fmt: skip
    assert (off["enabled"], off["next_run_at"], off["interval"]) == (False, None, "1h")
    kept = json.loads(
        im.ok("integration", "reconcile", "schedule", "prod-jira", "--format", "json")
    )
    assert kept["auto_heal"] is True and kept["enabled"] is False


def test_the_guides_api_call_makes_a_schedule_the_runner_runs_and_reruns(two: Two) -> None:
    token = two.im.ok("token", "create", "ops").strip()
    api = httpx.Client(
        transport=ASGIBridge(create_api(two.im.db_path, two.clock)), base_url="http://im"
    )
    integration_id = (
        two.db().execute("SELECT id FROM integrations WHERE name = 'prod-jira'").fetchone()[0]
    )
    # the guide's body, to /integrations/{id}, with the token the README adds
    answer = api.post(
        f"/integrations/{integration_id}/reconcile/schedule",
        json={"interval": "1h", "auto_heal": True, "enabled": True},
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    shown = api.get(
        f"/integrations/{integration_id}/reconcile/schedule",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert shown["next_run_at"] == "2026-11-27T09:00:00.000Z" and shown["auto_heal"] is True
    assert (
        api.post(f"/integrations/{integration_id}/reconcile/schedule", json={}).status_code == 401
    )

    n = lost_title_edit(two)
    two.clock.advance(2)  # Jira's search shows it
    runner = ScheduleRunner(two.im.db_path, two.clock, transport_for=two.im.transport_for)
    try:
        [first] = runner.tick()
        first.result(timeout=30)
        assert runner.tick() == []  # not due again for an hour
        assert two.incident(n)["title"] == "agent title"  # healed: the pull applied
        two.clock.advance(3600)
        [second] = runner.tick()
        second.result(timeout=30)
        # a changed schedule is picked up without restarting anything
        two.im.ok("integration", "reconcile", "schedule", "prod-jira", "--interval", "30m", "--no-auto-heal")  # fmt: skip
        [third] = runner.tick()
        third.result(timeout=30)
    finally:
        runner.stop()
    runs = history(two.im, "prod-jira")
    assert [(r["trigger"], r["mode"], r["discrepancies"]) for r in runs] == [
        ("schedule", "dry-run", 0),
        ("schedule", "auto-heal", 0),
        ("schedule", "auto-heal", 1),
    ]


def test_the_api_runs_a_reconcile_and_shows_its_history(two: Two) -> None:
    token = two.im.ok("token", "create", "ops").strip()
    api = httpx.Client(
        transport=ASGIBridge(create_api(two.im.db_path, two.clock, two.im.transport_for)),
        base_url="http://im",
        headers={"Authorization": f"Bearer {token}"},
    )
    n = lost_title_edit(two)
    two.clock.advance(2)  # Jira's search shows it
    answer = api.post("/integrations/prod-jira/reconcile", json={"auto_heal": True})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["run_id"], report["mode"], report["checked"], report["healed"]) == (
        "run-1", "auto-heal", 1, 1,
    )  # fmt: skip
    [pulled] = report["discrepancies"]
    assert (pulled["incident_id"], pulled["field"], pulled["action"]) == (
        f"INC-{n}",
        "title",
        "pull",
    )
    assert two.incident(n)["title"] == "agent title"
    bad = api.post("/integrations/prod-jira/reconcile", json={"backfill": "last tuesday"})
    assert bad.status_code == 422
    assert "not a date, time or age" in bad.json()["error"]["message"]
    two.im.ok("integration", "configure", "prod-jira", "--api-token", "revoked-token")
    failed = api.post("/integrations/prod-jira/reconcile", json={}).json()
    assert "401" in failed["failed"] and "revoked-token" not in failed["failed"]
    assert failed["failed"] and failed["run_id"] == "run-2"
    rows = api.get("/integrations/prod-jira/reconcile/history").json()
    assert [(r["run_id"], r["state"], r["trigger"]) for r in rows] == [
        ("run-2", "failed", "manual"),
        ("run-1", "done", "manual"),
    ]


def _jira_integration(live: Live, url: str) -> None:
    live.ok(
        "integration", "create", "prod-jira", "--type", "jira", "--url", url,
        "--email", "im-integration@example.com", "--project", "OPS",
        "--direction", "bidirectional", env={"IM_API_TOKEN": "im-integration-token"},
    )  # fmt: skip


def test_a_real_daemon_runs_the_schedule_set_through_its_api(live: Live, db_path: Path) -> None:
    with serve_in_thread(JiraSimulator()) as jira:
        _jira_integration(live, jira.url)
        token = live.ok("token", "create", "ops").strip()
        port = free_port()
        daemon = start_daemon(db_path, port)
        try:
            answer = httpx.post(
                f"http://127.0.0.1:{port}/api/v1/integrations/prod-jira/reconcile/schedule",
                json={"interval": "1h", "auto_heal": True, "enabled": True},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 200, answer.text
            deadline = time.monotonic() + 20
            runs: list[dict[str, object]] = []
            while time.monotonic() < deadline and not any(r["state"] == "done" for r in runs):
                time.sleep(0.2)
                runs = history(live, "prod-jira")
        finally:
            code, _ = stop(daemon)
    assert [(r["trigger"], r["mode"], r["state"]) for r in runs] == [
        ("schedule", "auto-heal", "done")
    ]
    assert code == 0


def test_the_readmes_crontab_line_works_under_crons_bare_environment(
    live: Live, db_path: Path, tmp_path: Path
) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert CRON_LINE in readme  # the line tested is the line documented
    with serve_in_thread(ServiceNowSimulator()) as snow:
        live.ok(
            "integration", "create", "prod-snow", "--type", "servicenow", "--url", snow.url,
            "--username", "im-integration", env={"IM_PASSWORD": "im-integration"},
        )  # fmt: skip
        # the job acts as the crontab's user, who needs a role that may reconcile
        live.ok("access", "grant", "cron", "--role", "integration.manager", "--scope", "prod-*")
        # cron gives a job HOME, LOGNAME, SHELL and PATH=/usr/bin:/bin, nothing else: the key
        # file must be in HOME's config directory (not XDG_CONFIG_HOME, which cron lacks)
        home = tmp_path / "home"
        (home / ".config" / "im").mkdir(parents=True)
        key = Path(os.environ["XDG_CONFIG_HOME"]) / "im" / "master.key"
        shutil.copy(key, home / ".config" / "im" / "master.key")
        (home / ".config" / "im" / "master.key").chmod(0o600)
        im = Path(sys.executable).parent / "im"
        line = CRON_LINE.replace("/path/to/im.db", str(db_path)).replace("/path/to/im", str(im))
        command = line.split(" ", 5)[5]  # what cron runs: everything after the five times
        done = subprocess.run(
            ["env", "-i", f"HOME={home}", "LOGNAME=cron", "SHELL=/bin/sh", "PATH=/usr/bin:/bin",
             "/bin/sh", "-c", command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    logged = (home / "im-reconcile.log").read_text()
    assert "prod-snow run-1 (auto-heal): checked 0, 0 discrepancies" in logged
    assert "\x1b[" not in logged  # no progress bar or colour in a log file
    [run] = history(live, "prod-snow")
    assert (run["trigger"], run["mode"], run["state"]) == ("cron", "auto-heal", "done")
