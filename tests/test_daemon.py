"""`im daemon` as a real process against the three simulators on real sockets: one daemon per
database, a clean stop on SIGTERM, end-to-end delivery that respects ownership, and a SIGKILL
in the middle of delivery that loses nothing and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlite_utils import Database

from im.clock import SystemClock
from im.config.connection import open_connector
from im.sim.core import Simulator
from im.sim.jira import JiraSimulator
from im.sim.pagerduty import PagerDutySimulator
from im.sim.server import Served, free_port, serve_in_thread
from im.sim.servicenow import ServiceNowSimulator
from im.store import integrations as integration_rows
from tests.conftest import Im


class Live(Im):
    """The CLI on the real clock, so that what it queues is due for a real daemon."""


@pytest.fixture
def live(db_path: Path) -> Live:
    im = Live(db_path, SystemClock())  # type: ignore[arg-type]
    im.ok("init")
    return im


def start_daemon(db_path: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "im", "--db", str(db_path), "daemon", "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited: {process.stderr.read()}")  # type: ignore[union-attr]
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the daemon did not become ready")


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=10)
    return code, process.stderr.read()  # type: ignore[union-attr]


def wait_until_sent(db_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Database(db_path) as db:
            left = db.execute("SELECT count(*) FROM outbox WHERE state != 'done'").fetchone()[0]
        if left == 0:
            return
        time.sleep(0.1)
    with Database(db_path) as db:
        stuck = list(
            db.query(
                "SELECT o.id, i.name, o.operation, o.state, o.attempts, o.next_attempt_at, "
                "o.last_error FROM outbox o JOIN integrations i ON i.id = o.integration_id "
                "WHERE o.state != 'done' ORDER BY o.id LIMIT 5"
            )
        )
    raise AssertionError(f"{left} outbox rows still not sent, e.g. {stuck}")


def test_one_daemon_per_database_and_a_clean_stop(live: Live, db_path: Path) -> None:
    live.ok(
        "integration", "create", "prod-pd", "--type", "pagerduty", "--url", f"http://127.0.0.1:{free_port()}",
        "--from-email", "im@example.com", "--service", "PSVC001", env={"IM_API_TOKEN": "t"},
    )  # fmt: skip
    port = free_port()
    first = start_daemon(db_path, port, "--log-file", str(db_path.parent / "daemon.log"))
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "im",
                "--db",
                str(db_path),
                "daemon",
                "--port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 3
        assert second.stderr.startswith(
            f"error: a daemon is already running for {db_path} (pid {first.pid}"
        )
        created = live("incident", "create", "--title", "while running")
        assert "no daemon is running" not in created.stderr
    finally:
        code, log = stop(first)
    assert code == 0
    assert "event=daemon.started" in log and "event=daemon.stopped" in log
    assert "event=daemon.stopped" in (db_path.parent / "daemon.log").read_text()
    after = live("incident", "create", "--title", "after the stop")
    assert "no daemon is running" in after.stderr


SIMULATORS = {
    "servicenow": ServiceNowSimulator,
    "jira": JiraSimulator,
    "pagerduty": PagerDutySimulator,
}


@pytest.fixture
def served() -> Iterator[dict[str, tuple[Simulator, Served]]]:
    with ExitStack() as stack:
        result = {}
        for kind, factory in SIMULATORS.items():
            sim = factory()
            result[kind] = (sim, stack.enter_context(serve_in_thread(sim)))
        yield result


def create_integrations(im: Im, served: dict[str, tuple[Simulator, Served]]) -> None:
    snow, jira, pd = (served[k][1].url for k in ("servicenow", "jira", "pagerduty"))
    im.ok(
        "integration", "create", "prod-snow", "--type", "servicenow", "--url", snow,
        "--username", "im-integration", env={"IM_PASSWORD": "im-integration"},
    )  # fmt: skip
    im.ok(
        "integration", "create", "prod-jira", "--type", "jira", "--url", jira,
        "--email", "im-integration@example.com", "--project", "OPS",
        env={"IM_API_TOKEN": "im-integration-token"},
    )  # fmt: skip
    im.ok(
        "integration", "create", "prod-pd", "--type", "pagerduty", "--url", pd,
        "--from-email", "im-integration@example.com", "--service", "PSVC001",
        "--escalation-policy", "PEP0001", env={"IM_API_TOKEN": "im-integration-token"},
    )  # fmt: skip


def external(db_path: Path, name: str, incident: int) -> dict[str, str]:
    with Database(db_path) as db:
        from im.store import open_database

        store = open_database(db_path)
        integration = integration_rows.find(store, name)
        assert integration is not None
        link = db.execute(
            "SELECT external_id FROM links WHERE integration_id = ? AND incident_id = ?",
            [integration["id"], incident],
        ).fetchone()
        assert link, f"INC-{incident} not linked to {name}"
        connector = open_connector(store, integration)
        try:
            record = connector.get(link[0])
            notes = connector.list_journal(link[0])
        finally:
            connector.close()
            store.close()
    return {**record.fields, "_journal": json.dumps(sorted(e.body for e in notes))}


def test_incidents_and_updates_reach_all_three_systems_through_the_daemon(
    live: Live, db_path: Path, served: dict[str, tuple[Simulator, Served]]
) -> None:
    create_integrations(live, served)
    daemon = start_daemon(db_path, free_port())
    try:
        live.ok("incident", "create", "--title", "Checkout API 5xx", "--severity", "sev2")
        wait_until_sent(db_path)  # else the update rides on the create, which sends every field
        live.ok(
            "incident",
            "update",
            "INC-1",
            "--assigned-to",
            "alice@example.com",
            "--title",
            "Checkout API 502s",
        )
        live.ok("incident", "comment", "INC-1", "DB failover at 09:12", "--work-note")
        wait_until_sent(db_path)
    finally:
        code, _ = stop(daemon)
    assert code == 0
    snow = external(db_path, "prod-snow", 1)
    jira = external(db_path, "prod-jira", 1)
    pd = external(db_path, "prod-pd", 1)
    assert snow["title"] == jira["title"] == pd["title"] == "Checkout API 502s"
    assert snow["severity"] == "sev2"
    # every default gives assigned_to to the external side: the update does not send it
    assert [r.get("assigned_to", "") for r in (snow, jira, pd)] == ["", "", ""]
    assert json.loads(jira["_journal"]) == ["DB failover at 09:12"]
    # work notes: ServiceNow owns its own, Jira and PagerDuty get ours
    assert json.loads(pd["_journal"]) == ["DB failover at 09:12"]
    assert json.loads(snow["_journal"]) == []
    for sim, _ in served.values():
        assert sim.record_count() == 1


def finished(db: Database) -> int:
    return int(db.execute("SELECT count(*) FROM outbox WHERE state = 'done'").fetchone()[0])


def test_a_daemon_killed_mid_delivery_loses_and_duplicates_nothing(
    live: Live, db_path: Path, served: dict[str, tuple[Simulator, Served]]
) -> None:
    create_integrations(live, served)
    for sim, _ in served.values():
        sim.faults.update({"latency": 0.1})
    count = 12
    for n in range(1, count + 1):
        live.ok("incident", "create", "--title", f"incident {n}")
        live.ok("incident", "comment", f"INC-{n}", f"note {n}", "--work-note")
    port = free_port()
    daemon = start_daemon(db_path, port)
    with Database(db_path) as db:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not finished(db):
            time.sleep(0.01)
        daemon.send_signal(signal.SIGKILL)  # mid-delivery: the first row is done
        daemon.wait(timeout=10)
        done = finished(db)
    assert 0 < done < count * 3, "the kill should land in the middle of delivery"
    for n in range(1, count + 1):
        live.ok("incident", "update", f"INC-{n}", "--title", f"incident {n}, renamed")
    restarted = start_daemon(db_path, port)
    try:
        wait_until_sent(db_path)
    finally:
        stop(restarted)
    for sim, _ in served.values():
        assert sim.record_count() == count
    for n in range(1, count + 1):
        pd = external(db_path, "prod-pd", n)
        jira = external(db_path, "prod-jira", n)
        assert pd["title"] == jira["title"] == f"incident {n}, renamed"
        assert json.loads(pd["_journal"]) == [f"note {n}"]
        assert json.loads(jira["_journal"]) == [f"note {n}"]
    assert os.path.exists(str(db_path) + ".daemon.lock")


def test_an_agents_edit_comes_back_through_the_daemons_webhook(live: Live, db_path: Path) -> None:
    port = free_port()
    secret = "jira-shared-secret-0123456789abcdef"
    sim = JiraSimulator(
        webhook_url=f"http://127.0.0.1:{port}/webhooks/prod-jira", webhook_secret=secret
    )
    with serve_in_thread(sim) as running:
        live.ok(
            "integration", "create", "prod-jira", "--type", "jira", "--url", running.url,
            "--email", "im-integration@example.com", "--project", "OPS", "--client-key", "im-sim-jira",
            "--direction", "bidirectional",
            env={"IM_API_TOKEN": "im-integration-token", "IM_WEBHOOK_SECRET": secret},
        )  # fmt: skip
        daemon = start_daemon(db_path, port, "--public-url", f"http://127.0.0.1:{port}")
        try:
            live.ok("incident", "create", "--title", "Checkout API 5xx")
            wait_until_sent(db_path)
            with Database(db_path) as db:
                issue = db.execute("SELECT external_id FROM links").fetchone()[0]
            with httpx.Client(
                base_url=running.url, auth=("agent@example.com", "agent-token")
            ) as agent:
                agent.put(
                    f"/rest/api/3/issue/{issue}", json={"fields": {"summary": "renamed in Jira"}}
                )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                shown = json.loads(live.ok("incident", "show", "INC-1", "--format", "json"))
                if shown["title"] == "renamed in Jira":
                    break
                time.sleep(0.1)
            assert shown["title"] == "renamed in Jira"
            events = json.loads(live.ok("integration", "events", "prod-jira", "--format", "json"))
            assert [e["state"] for e in events][:2] == ["applied", "echo"]
        finally:
            stop(daemon)


def test_the_daemon_serves_the_rest_api_with_a_token(live: Live, db_path: Path) -> None:
    token = live.ok("token", "create", "ci").strip()
    port = free_port()
    daemon = start_daemon(db_path, port)
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        assert httpx.get(f"{base}/incidents").status_code == 401
        made = httpx.post(
            f"{base}/incidents",
            json={"title": "from the API"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert made.status_code == 201
        listed = httpx.get(f"{base}/incidents", headers={"Authorization": f"Bearer {token}"})
        assert [i["title"] for i in listed.json()] == ["from the API"]
        assert httpx.get(f"{base}/openapi.json").json()["paths"]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")  # loopback: no token
        assert metrics.status_code == 200 and "im_sync_backlog" in metrics.text
    finally:
        stop(daemon)


def test_the_daemon_serves_https_and_warns_off_loopback_without_tls(
    live: Live, db_path: Path, tmp_path: Path
) -> None:
    from im.sim.server import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path / "tls")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "im", "--db", str(db_path), "daemon", "--port", str(port),
         "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                trust = ssl.create_default_context(cafile=str(cert))
                answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        assert answer.json() == {"status": "ok"}
    finally:
        stop(process)
    half = live("daemon", "--tls-cert", str(cert))
    assert half.exit_code == 2 and "go together" in half.stderr
    exposed = start_daemon(db_path, free_port(), "--host", "0.0.0.0")
    _, log = stop(exposed)
    assert "warning: listening on 0.0.0.0 without TLS" in log


def test_daemon_options_that_cannot_work_are_refused_before_it_starts(
    live: Live, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    bad_tls = live(
        "daemon", "--port", str(free_port()), "--tls-cert", str(junk), "--tls-key", str(junk)
    )
    assert bad_tls.exit_code == 2 and "cannot be used" in bad_tls.stderr
    bad_host = live("daemon", "--host", "999.1.1.1", "--port", str(free_port()))
    assert bad_host.exit_code == 2 and "--host" in bad_host.stderr
    assert live("daemon", "--public-url", "http://a b").exit_code == 2


def engine_of(daemon: subprocess.Popen[str]) -> int:
    """The pid of the daemon's engine process (Linux: /proc lists a process's children)."""
    children = [
        int(pid)
        for task in Path(f"/proc/{daemon.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert len(children) == 1, children
    return children[0]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's wait is missing


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout} s: {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_engine_is_started_again_when_it_dies_and_dies_with_the_daemon(
    live: Live, db_path: Path, served: dict[str, tuple[Simulator, Served]]
) -> None:
    create_integrations(live, served)
    port = free_port()
    log = db_path.parent / "daemon.log"
    daemon = start_daemon(db_path, port, "--log-file", str(log))
    try:
        first = engine_of(daemon)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "event=engine.restarting" in log.read_text(), "the daemon says so")
        assert "exit_code=-9" in log.read_text()
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200,
            "ready again",
        )
        second = engine_of(daemon)
        assert second != first
        live.ok("incident", "create", "--title", "sent by the new engine")
        wait_until_sent(db_path)
        daemon.kill()
        daemon.wait()
        wait_for(lambda: not alive(second), "the engine gone with the daemon")
    finally:
        if daemon.poll() is None:
            stop(daemon)
    for sim, _ in served.values():
        assert sim.record_count() == 1
