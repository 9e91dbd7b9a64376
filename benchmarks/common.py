"""What the benchmarks share: the simulators' integration options and accounts, running `im`
as its own process, a world of simulators and a daemon each in its own process on loopback,
pacing a load, percentiles, and the output format. The benchmarks run as scripts
(`python benchmarks/NAME.py`), so this module is imported from their directory.

Output: every benchmark prints one JSON document whose ``rows`` list has one entry per SPEC §13
target it measures (``row``: its line in the table, 1-6; ``what``; ``measured``; ``unit``;
``target``; ``pass``: true, false, or null when nothing was measured); the rest of the document
is the benchmark's detail. ``run_all.py`` gathers the rows of every benchmark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# `im integration create` options per type, for the simulators' default accounts (SPEC §12)
OPTIONS = {
    "servicenow": ["--username", "im-integration"],
    "jira": ["--email", "im-integration@example.com", "--project", "OPS",
             "--client-key", "im-sim-jira"],
    "pagerduty": [
        "--from-email", "im-integration@example.com", "--service", "PSVC001",
        "--escalation-policy", "PEP0001",
    ],
}  # fmt: skip
SECRETS = {
    "servicenow": {"IM_PASSWORD": "im-integration"},
    "jira": {"IM_API_TOKEN": "im-integration-token"},
    "pagerduty": {"IM_API_TOKEN": "im-integration-token"},
}


def run_im(env: dict[str, str], *args: str, extra: dict[str, str] | None = None) -> None:
    """`im ARGS` in its own process; raises CalledProcessError when it fails."""
    subprocess.run(
        [sys.executable, "-m", "im", *args],
        env={**env, **(extra or {})},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_env(workdir: Path, db_path: Path) -> dict[str, str]:
    """The environment of every `im` process of one benchmark world (never the user's own
    database, configuration or keyring)."""
    return {
        **os.environ,
        "IM_DB": str(db_path),
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "IM_USER": "bench",
    }


# -- figures and the output format ---------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def latencies(values: list[float]) -> dict[str, Any]:
    """Count, p50, p99 and max of milliseconds (None when there are none)."""
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(values),
        "p50_ms": round(statistics.median(values), 1),
        "p99_ms": round(percentile(values, 0.99), 1),
        "max_ms": round(max(values), 1),
    }


def spec_row(
    number: int, what: str, measured: float | None, unit: str, op: str, limit: float
) -> dict[str, Any]:
    """One SPEC §13 target: ``measured`` ``op`` (``<`` or ``>=``) ``limit`` passes."""
    passed = None
    if measured is not None:
        passed = measured < limit if op == "<" else measured >= limit
    return {
        "row": number,
        "what": what,
        "measured": measured,
        "unit": unit,
        "target": f"{op} {limit:g} {unit}".strip(),
        "pass": passed,
    }


def paced(rate: float, duration: float, action: Callable[[int], None]) -> tuple[int, float]:
    """Call ``action(n)`` for n = 0, 1, ... ``rate`` times a second for ``duration`` seconds
    (late calls catch up at once). Returns how many were made and the rate achieved."""
    interval = 1.0 / rate
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < duration:
        action(count)
        count += 1
        delay = started + count * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return count, count / (time.monotonic() - started)


# -- processes on loopback -----------------------------------------------------------------


def wait_ready(url: str, process: subprocess.Popen[bytes], status: int | None = None) -> None:
    """Until ``url`` answers (with ``status`` when given); exits when the process dies."""
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the process exited")
        try:
            if status is None or httpx.get(url, timeout=1).status_code == status:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not start")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each (a daemon stops gracefully), then wait; kill what does not stop."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_daemon(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """`im daemon` on loopback, in its own process, once it is ready; exits when it does not
    get there."""
    from im.sim import world

    args = ["--port", str(port), "--log-level", "warning", "--log-file", str(log)]
    process = world.start_daemon(args, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        world.wait_ready(process, url)
    except world.DaemonNotReadyError as exc:
        raise SystemExit(f"{url}/readyz: {exc}") from None
    return process


def scalar(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> int:
    """One number from the database, read with a connection of its own."""
    import sqlite3

    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return int(conn.execute(sql, params).fetchone()[0] or 0)
    finally:
        conn.close()


def settled(db_path: Path) -> bool:
    """Nothing left to send (outbox) and nothing stored left to apply (inbound events)."""
    return not scalar(db_path, "SELECT count(*) FROM outbox WHERE state != 'done'") and not scalar(
        db_path, "SELECT count(*) FROM inbound_events WHERE state = 'received'"
    )


def wait_settled(db_path: Path, timeout: float, quiet: float = 0.0) -> bool:
    """Until ``settled`` has held for ``quiet`` seconds (webhooks still on their way), or
    ``timeout``; whether it did."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while time.monotonic() < deadline:
        if settled(db_path):
            since = since or time.monotonic()
            if time.monotonic() - since >= quiet:
                return True
        else:
            since = None
        time.sleep(0.1)
    return False


@dataclass
class World:
    """Simulators and a daemon, each in its own process on loopback, and the integrations
    ``bench-<type>`` between them (webhooks from each simulator to the daemon when on)."""

    workdir: Path
    db_path: Path
    env: dict[str, str]
    urls: dict[str, str] = field(default_factory=dict)
    daemon_url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def integration_id(self, kind: str) -> int:
        name = f"bench-{kind}"
        return scalar(self.db_path, "SELECT id FROM integrations WHERE name = ?", (name,))


@contextlib.contextmanager
def world(*, webhooks: bool = True, direction: str = "bidirectional") -> Iterator[World]:
    """Start the three simulators (signing webhooks to the daemon when ``webhooks``), create
    one integration per simulator, then start the daemon. Everything stops, and its
    directory is removed, at the end."""
    from im.config.webhook_secrets import new_secret
    from im.sim.server import free_port

    workdir = Path(tempfile.mkdtemp(prefix="im-bench-"))
    db_path = workdir / "im.db"
    env = bench_env(workdir, db_path)
    # the benchmark's own library calls use the same database and master key
    os.environ.update({k: env[k] for k in ("IM_DB", "XDG_CONFIG_HOME", "PYTHON_KEYRING_BACKEND")})
    here = World(workdir, db_path, env)
    try:
        run_im(env, "init")
        daemon_port = free_port()
        here.daemon_url = f"http://127.0.0.1:{daemon_port}"
        for kind, options in OPTIONS.items():
            port = free_port()
            command = [sys.executable, "-m", "im", "sim", kind, "--port", str(port)]
            secret = {}
            if webhooks:
                secret = {"IM_WEBHOOK_SECRET": new_secret(kind)}
                command += [
                    "--webhook-url", f"{here.daemon_url}/webhooks/bench-{kind}",
                    "--webhook-secret", secret["IM_WEBHOOK_SECRET"],
                ]  # fmt: skip
            here.processes.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
            here.urls[kind] = f"http://127.0.0.1:{port}"
            wait_ready(f"{here.urls[kind]}/_sim/faults", here.processes[-1])
            run_im(
                env,
                "integration", "create", f"bench-{kind}", "--type", kind,
                "--url", here.urls[kind], "--direction", direction, *options,
                extra={**SECRETS[kind], **secret},
            )  # fmt: skip
        here.processes.append(start_daemon(env, daemon_port, workdir / "daemon.log"))
        yield here
    finally:
        stop(here.processes)
        shutil.rmtree(workdir, ignore_errors=True)


AGENT_LOGINS: dict[str, dict[str, Any]] = {
    "servicenow": {"auth": ("agent", "agent")},
    "jira": {"auth": ("agent@example.com", "agent-token")},
    "pagerduty": {
        "headers": {"Authorization": "Token token=agent-token", "From": "agent@example.com"}
    },
}


def agent(kind: str, base_url: str, transport: Any = None) -> Any:
    """An httpx client of simulator ``kind`` logged in as its agent: the person there."""
    import httpx

    return httpx.Client(base_url=base_url, timeout=10, transport=transport, **AGENT_LOGINS[kind])


# -- a database of linked incidents, written directly (reconcile, ingestion) ---------------

SEVERITIES = ("sev1", "sev2", "sev3", "sev4", "sev5")


def linked_world(kind: str, count: int, workdir: Path) -> tuple[Any, dict[str, str], list[str]]:
    """A database with ``count`` incidents linked to ``count`` records in a new in-process
    simulator, as if every one had been synced: (simulator, env, the records' ids). The
    integration ``bench`` is bidirectional; its URL is a placeholder (nothing is sent)."""
    from im.clock import SystemClock, format_time
    from im.config.connection import open_connector
    from im.model import SCALAR_FIELDS
    from im.sim.jira import JiraSimulator
    from im.sim.pagerduty import PagerDutySimulator
    from im.sim.servicenow import ServiceNowSimulator
    from im.store import incidents as incident_rows
    from im.store import integrations as integration_rows
    from im.store import links, meta, open_database, snapshots
    from im.store.db import write
    from im.sync.outbound import correlation_key

    sims = {
        "servicenow": ServiceNowSimulator,
        "jira": JiraSimulator,
        "pagerduty": PagerDutySimulator,
    }
    db_path = workdir / f"{kind}-{count}.db"
    env = bench_env(workdir, db_path)
    os.environ.update({k: env[k] for k in ("XDG_CONFIG_HOME", "PYTHON_KEYRING_BACKEND")})
    sim = sims[kind]()
    run_im(env, "init")
    run_im(
        env, "integration", "create", "bench", "--type", kind, "--url", "http://127.0.0.1:9",
        "--direction", "bidirectional", *OPTIONS[kind], extra=SECRETS[kind],
    )  # fmt: skip
    db = open_database(db_path)
    integration = integration_rows.find(db, "bench")
    assert integration is not None
    connector = open_connector(db, integration, transport=sim.transport(), sleep=lambda s: None)
    install = meta.require(db, "install_id")
    clock = SystemClock()
    made: list[str] = []
    for start in range(0, count, 500):
        with write(db):
            for n in range(start + 1, min(count, start + 500) + 1):
                values = {"title": f"bench incident {n}", "severity": SEVERITIES[n % 5]}
                now = format_time(clock.now())
                incident_id = incident_rows.insert(
                    db,
                    {
                        "title": values["title"], "description": "", "severity": values["severity"],
                        "priority": "p3", "status": "triggered", "assigned_to": "",
                        "escalation_policy": "", "commander": "", "created_at": now,
                        "updated_at": now, "created_by": "bench",
                    },
                )  # fmt: skip
                record = connector.create(values, correlation_key(install, incident_id))
                # in sync: the platform holds what the vendor shows (its defaults included)
                synced = {k: v for k, v in record.fields.items() if k in SCALAR_FIELDS}
                incident_rows.update(db, incident_id, synced)
                links.create(db, incident_id, integration["id"], record.id, record.key, now)
                snapshots.put(
                    db, integration["id"], incident_id, dict(record.fields), record.version, now
                )
                made.append(record.id)
    connector.close()
    db.close()
    return sim, env, made
