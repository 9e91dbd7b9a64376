"""SPEC §13: `im integration reconcile NAME --dry-run` over N linked incidents, against a
simulator served on loopback in this process while the reconcile runs as its own process.
Prints JSON: wall time and the reconcile process's peak memory, at two sizes, so that memory
independent of the count shows as a ratio near 1. Not part of the test run:

    python benchmarks/reconcile.py [--incidents 10000] [--small 2000] [--vendors jira,...]

Set-up (not timed): the records are created in the simulator through the connector, and the
platform incidents, links and synced snapshots are written straight into the database, as
if every one had been synced; then `--drift` records are edited by the agent (webhooks off),
so the run has something to find.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import OPTIONS, SECRETS, run_im

from im.clock import SystemClock, format_time
from im.config.connection import open_connector
from im.model import SCALAR_FIELDS
from im.sim.core import Simulator
from im.sim.jira import JiraSimulator
from im.sim.pagerduty import PagerDutySimulator
from im.sim.server import serve_in_thread
from im.sim.servicenow import ServiceNowSimulator
from im.store import incidents as incident_rows
from im.store import integrations as integration_rows
from im.store import links, meta, open_database, snapshots
from im.store.db import write
from im.sync.outbound import correlation_key

SIMS: dict[str, type[Simulator]] = {
    "servicenow": ServiceNowSimulator,
    "jira": JiraSimulator,
    "pagerduty": PagerDutySimulator,
}
SEVERITIES = ("sev1", "sev2", "sev3", "sev4", "sev5")


def _agent_edit(kind: str, sim: Simulator, external_id: str) -> None:
    """A person changes the title there; the webhook never arrives."""
    import httpx

    if kind == "servicenow":
        with httpx.Client(
            transport=sim.transport(), base_url="http://sim", auth=("agent", "agent")
        ) as c:
            c.patch(f"/api/now/table/incident/{external_id}", json={"short_description": "edited"})
    elif kind == "jira":
        auth = ("agent@example.com", "agent-token")
        with httpx.Client(transport=sim.transport(), base_url="http://sim", auth=auth) as c:
            c.put(f"/rest/api/3/issue/{external_id}", json={"fields": {"summary": "edited"}})
    else:
        headers = {"Authorization": "Token token=agent-token", "From": "agent@example.com"}
        with httpx.Client(transport=sim.transport(), base_url="http://sim", headers=headers) as c:
            body = {"incident": {"type": "incident_reference", "title": "edited"}}
            c.put(f"/incidents/{external_id}", json=body)


def _world(kind: str, count: int, drift: int, workdir: Path) -> tuple[Simulator, dict[str, str]]:
    """A database with ``count`` incidents linked to ``count`` records in a new simulator."""
    db_path = workdir / f"{kind}-{count}.db"
    env = {
        **os.environ,
        "IM_DB": str(db_path),
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "IM_USER": "bench",
    }
    os.environ.update({k: env[k] for k in ("XDG_CONFIG_HOME", "PYTHON_KEYRING_BACKEND")})
    sim = SIMS[kind]()
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
    step = max(1, count // max(drift, 1))
    for external_id in made[::step][:drift]:
        _agent_edit(kind, sim, external_id)
    time.sleep(1.5)  # Jira's search shows a write after about a second
    return sim, env


# Runs `im` and, at exit, writes its peak resident memory (VmHWM: this process image only;
# ru_maxrss would also count the benchmark's own memory, inherited across fork).
PEAK = """
import atexit, sys
where = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as status, open(where, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
atexit.register(peak)
from im.cli import main
sys.argv[0] = "im"
main()
"""


def _reconcile(env: dict[str, str], url: str, db_path: str, workdir: Path) -> dict[str, Any]:
    """One dry run in its own process: wall time, its peak memory and what it found."""
    run_im(env, "integration", "configure", "bench", "--url", url)
    peak_file = workdir / "peak-kb"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(peak_file), "--db", db_path, "integration",
         "reconcile", "bench", "--dry-run", "--format", "json"],
        env=env, capture_output=True,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"reconcile failed: {done.stderr.decode()[-500:]}")
    report = json.loads(done.stdout)
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(int(peak_file.read_text()) / 1024, 1),
        "checked": report["checked"],
        "discrepancies": len(report["discrepancies"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2_000, help="the size memory is compared to")
    parser.add_argument("--drift", type=int, default=20, help="records an agent edits")
    parser.add_argument("--vendors", default="servicenow,jira,pagerduty")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="im-bench-reconcile-"))
    results: dict[str, Any] = {}
    for kind in args.vendors.split(","):
        row: dict[str, Any] = {}
        for count in (args.small, args.incidents):
            sim, env = _world(kind, count, args.drift, workdir)
            with serve_in_thread(sim) as served:
                row[str(count)] = _reconcile(env, served.url, env["IM_DB"], workdir)
            sim.shutdown()
        small, large = row[str(args.small)], row[str(args.incidents)]
        row["memory_ratio"] = round(large["peak_rss_mb"] / small["peak_rss_mb"], 2)
        results[kind] = row
    print(
        json.dumps(
            {
                "what": "reconcile --dry-run over linked incidents (simulator on loopback)",
                "target": "< 20 s at 10,000; peak memory independent of the count",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
