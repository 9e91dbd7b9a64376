"""`im doctor`: the installation's checks, each ok / warn / FAIL with what to fix, against the
in-process two-way world (simulators reached through their ASGI transports) and real
database files."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from im.clock import format_time
from im.security import signatures
from im.store import daemon, open_database, write
from tests.conftest import Im
from tests.two_way import SECRET, Two, jira_issue, new_incident


def doctor(im: Im, *flags: str, code: int = 0) -> dict[str, Any]:
    result = im("doctor", "--format", "json", *flags)
    assert result.exit_code == code, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"] is (code == 0)
    return report


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["check"]: c["status"] for c in report["checks"]}


def detail(report: dict[str, Any], check: str) -> str:
    [found] = [c["detail"] for c in report["checks"] if c["check"] == check]
    return str(found)


def heartbeat(two: Two) -> None:
    """What a running daemon writes: its row and a fresh heartbeat (none runs in-process)."""
    db = open_database(two.im.db_path)
    now = format_time(two.clock.now())
    with write(db):
        daemon.register(
            db,
            {
                "pid": 4242,
                "hostname": "ops-1",
                "listen": "127.0.0.1:8080",
                "public_url": None,
                "started_at": now,
                "heartbeat_at": now,
            },
        )
    db.close()


def test_a_healthy_setup_passes_and_the_daemon_fails_until_one_beats(two: Two) -> None:
    new_incident(two)
    two.sync()  # every integration has received webhooks since
    # no daemon process runs in-process: SPEC §8 makes "daemon not running" failing, so does
    # the doctor, and it is the only check that fails
    report = doctor(two.im, code=1)
    failed = {name for name, status in statuses(report).items() if status != "ok"}
    assert failed == {"daemon"}
    assert detail(report, "daemon") == (
        "no daemon has ever run on this database: start it with `im daemon` (nothing is sent "
        "or applied without it)"
    )
    checks = statuses(report)
    for name in (
        "database", "database schema", "database WAL", "database file mode", "master key",
        "secrets", "prod-snow: enabled", "prod-snow: credentials", "prod-jira: reachability",
        "prod-pd: credentials", "prod-pd: paused", "prod-pd: webhooks", "prod-pd: dlq",
    ):  # fmt: skip
        assert checks[name] == "ok", name
    assert detail(report, "database file mode") == "mode 0600"
    assert detail(report, "secrets") == "the key opens all 6 secret(s) of 3 integration(s)"
    assert detail(report, "master key").endswith(f"{os.environ['XDG_CONFIG_HOME']}/im/master.key")

    # a daemon's heartbeat: everything passes
    heartbeat(two)
    report = doctor(two.im)
    assert set(statuses(report).values()) == {"ok"}
    assert detail(report, "daemon").startswith("running: pid 4242 on ops-1")
    table = two.im("doctor")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].startswith("ok    database: ")
    assert table.stdout.splitlines()[-1] == f"{len(report['checks'])} ok, 0 warn, 0 FAIL"

    # the heartbeat stops: a stale daemon fails
    two.clock.advance(60)
    report = doctor(two.im, code=1)
    assert statuses(report)["daemon"] == "FAIL"
    assert "stale heartbeat" in detail(report, "daemon") and "60 s ago" in detail(report, "daemon")


def test_a_wrong_api_token_fails_with_the_vendors_401(two: Two, tmp_path: Path) -> None:
    heartbeat(two)
    new_incident(two)
    two.sync()
    two.clock.advance(1)  # the dispatcher's connector is rebuilt when the integration changes
    heartbeat(two)
    wrong = tmp_path / "token"
    wrong.write_text("not-the-token\n")
    two.im.ok("integration", "configure", "prod-pd", "--api-token-file", str(wrong))
    report = doctor(two.im, code=1)
    failed = {name: detail(report, name) for name, s in statuses(report).items() if s == "FAIL"}
    assert list(failed) == ["prod-pd: credentials"]
    assert "401" in failed["prod-pd: credentials"]
    assert "the API token was refused" in failed["prod-pd: credentials"]
    assert "not-the-token" not in json.dumps(report)
    # a change then sent is refused too: sending pauses until the credentials are fixed
    two.clock.advance(5)
    heartbeat(two)
    two.im.ok("incident", "update", "INC-1", "--title", "Checkout API 5xx in eu-west")
    two.sync()
    report = doctor(two.im, code=1)
    assert statuses(report)["prod-pd: paused"] == "FAIL"
    paused = detail(report, "prod-pd: paused")
    assert "pagerduty refused the credentials" in paused
    assert "im integration configure prod-pd --api-token-file PATH" in paused
    # fixed (at the same instant, so the pause still holds): the doctor's credentials check
    # passes, which resumes sending, and it says so
    wrong.write_text("im-integration-token\n")
    two.im.ok("integration", "configure", "prod-pd", "--api-token-file", str(wrong))
    report = doctor(two.im)
    assert set(statuses(report).values()) == {"ok"}
    assert detail(report, "prod-pd: paused") == (
        "was paused since 2026-11-27T09:00:06.000Z for refused credentials; they work now, so "
        "sending resumed"
    )


def test_a_missing_master_key_fails_naming_what_to_do(two: Two) -> None:
    heartbeat(two)
    key_file = Path(os.environ["XDG_CONFIG_HOME"]) / "im" / "master.key"
    key_file.unlink()
    report = doctor(two.im, code=1)
    checks = statuses(report)
    assert checks["master key"] == "FAIL"
    message = detail(report, "master key")
    assert message.startswith("the master key ")
    assert f"restore the key file {key_file} (mode 0600) from your backup" in message
    assert "or set $IM_MASTER_KEY to that key" in message
    # what needs the key cannot be checked, and says why
    for name in ("prod-snow", "prod-jira", "prod-pd"):
        assert checks[f"{name}: connection"] == "FAIL"
        assert "credentials do not open" in detail(report, f"{name}: connection")
    assert "secrets" not in checks
    assert checks["database"] == checks["daemon"] == "ok"


def test_offline_makes_no_network_call(two: Two, monkeypatch: pytest.MonkeyPatch) -> None:
    heartbeat(two)
    new_incident(two)
    two.sync()
    calls: list[str] = []

    def transport_for(integration: Mapping[str, Any]) -> httpx.BaseTransport:
        calls.append(integration["name"])
        return two.sims[integration["name"]].transport()

    def no_network(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        raise AssertionError("no network call expected")

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", no_network)
    two.im.transport_for = transport_for
    result = two.im("doctor", "--offline", "--format", "json")
    assert result.exit_code == 0, result.stdout
    assert calls == []
    assert result.stderr == "network checks skipped (--offline)\n"
    checks = statuses(json.loads(result.stdout))
    assert "prod-pd: credentials" not in checks and "prod-snow: reachability" not in checks
    assert checks["prod-pd: paused"] == checks["prod-pd: webhooks"] == "ok"
    # online, the same world is reached through the transports
    doctor(two.im)
    assert set(calls) == {"prod-snow", "prod-jira", "prod-pd"}


def test_webhook_activity_and_the_dlq_warn_with_what_to_do(two: Two) -> None:
    heartbeat(two)
    two.im.ok("integration", "configure", "prod-pd", "--direction", "outbound")
    report = doctor(two.im, "--offline")  # warnings pass
    checks = statuses(report)
    assert checks["prod-snow: webhooks"] == checks["prod-jira: webhooks"] == "warn"
    assert detail(report, "prod-snow: webhooks") == (
        "no webhook ever received although it is bidirectional: configure the external system "
        "with what `im integration webhook-setup prod-snow` prints"
    )
    assert checks["prod-pd: webhooks"] == "ok"
    assert detail(report, "prod-pd: webhooks") == "outbound only: no webhooks expected"

    # a change PagerDuty refuses for good waits in the DLQ
    two.sims["prod-pd"].faults.update({"permanent_error": 422})
    n = new_incident(two)
    two.sync()
    report = doctor(two.im, "--offline")
    assert statuses(report)["prod-pd: dlq"] == "warn"
    assert detail(report, "prod-pd: dlq").startswith(
        "1 change(s) in the dead letter queue: see `im integration dlq prod-pd`"
    )
    assert statuses(report)["prod-snow: webhooks"] == "ok"

    # ServiceNow's Business Rule signs with another secret: every delivery is refused (401),
    # which leaves no event row, and nothing inbound syncs
    two.clock.advance(5)
    heartbeat(two)
    assert snow_delivery(two, "whsec_YW5vdGhlci1zZWNyZXQtYWx0b2dldGhlcg==").status_code == 401
    report = doctor(two.im, "--offline", code=1)
    assert statuses(report)["prod-snow: webhooks"] == "FAIL"
    refused = detail(report, "prod-snow: webhooks")
    assert refused.startswith(
        "deliveries are refused: the last at 2026-11-27T09:00:05.000Z (not authentic: "
    )
    assert "none was accepted since" in refused
    assert "compare the two with `im integration webhook-setup prod-snow --show-secret`" in refused
    assert SECRET["prod-snow"] not in json.dumps(report)
    assert [c for c, s in statuses(report).items() if s == "FAIL"] == ["prod-snow: webhooks"]

    # fixed there: an agent's edit is delivered and accepted; the refusal only warns now
    two.clock.advance(5)
    heartbeat(two)
    with two.agent("prod-snow") as agent:
        answer = agent.patch(
            f"/api/now/table/incident/{two.external_id('prod-snow', n)}",
            json={"work_notes": "Failover done"},
        )
    assert answer.status_code == 200
    two.deliver()
    report = doctor(two.im, "--offline")
    assert statuses(report)["prod-snow: webhooks"] == "warn"
    assert detail(report, "prod-snow: webhooks").startswith(
        "a delivery was refused at 2026-11-27T09:00:05.000Z (not authentic: "
    )
    assert "though later ones were accepted" in detail(report, "prod-snow: webhooks")
    two.clock.advance(3601)
    heartbeat(two)
    report = doctor(two.im, "--offline")
    assert statuses(report)["prod-snow: webhooks"] == "ok"
    assert detail(report, "prod-snow: webhooks") == (
        "last delivery received at 2026-11-27T09:00:10.000Z, none failed in the last hour"
    )


def snow_delivery(two: Two, secret: str) -> httpx.Response:
    """A delivery to the daemon's ServiceNow endpoint, signed with ``secret``."""
    body = json.dumps({"type": "incident.updated", "sys_id": "0123"}).encode()
    stamp = two.clock.now()
    return two.daemon.post(
        "/webhooks/prod-snow",
        content=body,
        headers={
            "webhook-id": "msg_refused",
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": signatures.standard_webhooks_sign(
                secret, "msg_refused", stamp, body
            ),
        },
    )


def test_a_malformed_delivery_warns_once_a_later_one_is_accepted(two: Two) -> None:
    heartbeat(two)
    new_incident(two)
    two.sync()
    body = b'{"event": null}'
    answer = two.daemon.post(
        "/webhooks/prod-pd",
        content=body,
        headers={"X-PagerDuty-Signature": signatures.pagerduty_signature(SECRET["prod-pd"], body)},
    )
    assert answer.status_code == 422
    report = doctor(two.im, "--offline")  # the same instant as the accepted ones: a warning
    assert statuses(report)["prod-pd: webhooks"] == "warn"
    malformed = detail(report, "prod-pd: webhooks")
    assert '(malformed: the delivery has no "event" object)' in malformed
    assert "pagerduty sends what im cannot read" in malformed
    assert "--show-secret" not in malformed


def test_events_retried_or_failed_to_apply_warn(two: Two) -> None:
    heartbeat(two)
    n = new_incident(two)
    two.sync()
    # an agent pastes a tab into a linked issue's summary: authentic, but it fails to apply
    two.clock.advance(5)
    with two.agent("prod-jira") as agent:
        answer = agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}",
            json={"fields": {"summary": "Checkout\tAPI"}},
        )
    assert answer.status_code == 204
    two.deliver()
    # an issue made by hand whose create webhook is lost: its edit cannot be read (Jira
    # answers 500), so the event waits for a retry
    jira = two.sims["prod-jira"]
    jira.faults.update({"drop_webhooks": 1})
    made = jira_issue(two, "made by hand")
    jira.faults.update({"drop_webhooks": 0})
    with two.agent("prod-jira") as agent:
        answer = agent.put(f"/rest/api/3/issue/{made}", json={"fields": {"summary": "edited"}})
    assert answer.status_code == 204
    jira.faults.update({"error_rate": 1})
    two.deliver()
    report = doctor(two.im, "--offline")
    assert statuses(report)["prod-jira: webhooks"] == "warn"
    assert detail(report, "prod-jira: webhooks") == (
        "1 event(s) could not be applied yet and wait for a retry (latest error: GET "
        "/rest/api/3/issue/10002: 500 simulated internal error); 1 delivery(ies) failed in the "
        "last hour (latest: title must not contain control characters); see `im integration "
        "events prod-jira`"
    )


def test_database_problems_fail_with_the_fix(initialised: Im) -> None:
    path = initialised.db_path
    report = doctor(initialised, code=1)
    assert statuses(report)["integrations"] == "warn"
    path.chmod(0o644)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    report = doctor(initialised, code=1)
    assert statuses(report)["database file mode"] == "FAIL"
    assert detail(report, "database file mode").endswith(f"run `chmod 600 {path}`")
    assert statuses(report)["database WAL"] == "FAIL"
    assert "not WAL" in detail(report, "database WAL")


def test_no_database_fails_saying_how_to_make_one(im: Im) -> None:
    result = im("doctor")
    assert result.exit_code == 1
    assert result.stdout.startswith(f"FAIL  database: no database at {im.db_path} (run `im init`")
