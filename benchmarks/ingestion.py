"""SPEC §13: webhook ingestion of one `im daemon` (verified, stored, applied) against a bare
uvicorn endpoint that verifies an HMAC and inserts one SQLite row (``bare_ingest.py``), both
measured with `wrk` in the same run, each in its own process on loopback. Prints JSON. Not part
of the test run (needs `wrk`: `apt-get install wrk`):

    python benchmarks/ingestion.py [--duration 15] [--warmup 2] [--threads 2]
                                   [--connections 16] [--records 1000] [--bare asgi]

Set-up (not timed): ``--records`` incidents linked to records in an in-process ServiceNow
simulator, written straight into the database (as reconcile.py does), and a webhook secret on
the integration. The simulator's agent assigns each record once; the simulator's own Business
Rule delivery of that edit is the record's template. Deliveries are generated up front, right
before each wrk run (Standard Webhooks timestamps are good for 5 minutes): each one new (its
own ``webhook-id``), authentic (signed with the secret by `im`'s signer) and a real change (the
assignee goes round alice, bob, agent, ``sys_mod_count`` one higher each time), so the daemon
stores and applies every one. Each wrk thread sends its own file (the records are split between the
threads, so one record's deliveries go out in order) through ``deliveries.lua``.

Both targets get the same load (the same kind of deliveries, wrk options and durations), the
bare endpoint first: a ``--warmup`` run that also measures the rate, then the measured run with
deliveries for 2.5 times that rate (none is sent twice: ``repeated_deliveries`` says so). The
figure is accepted (2xx) requests per second. The daemon applies off the request path; after
its run the benchmark waits for it to apply what it stored, and reports how many deliveries
ended in each state and how fast they were applied.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    agent,
    latencies,
    linked_world,
    run_im,
    scalar,
    spec_row,
    start_daemon,
    stop,
    wait_ready,
)

from im.clock import SystemClock, format_time, parse_time
from im.security.signatures import standard_webhooks_sign

HERE = Path(__file__).resolve().parent
LUA = HERE / "deliveries.lua"
# assignees in turn: three, so that a delivery wrk skips (wrk 4.1 calls request() once on its
# first thread to check the script) still leaves every next one a change
USERS = ("alice@example.com", "bob@example.com", "agent@example.com")


def _templates(sim: Any, made: list[str], secret: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """One real delivery per record: the simulator's agent assigns it to alice. Returns the
    deliveries' payloads and (sys_id, email) of each of USERS."""
    sim.webhook_url, sim.webhook_secret = "http://127.0.0.1:9/webhooks/bench", secret
    users = []
    with agent("servicenow", "http://sim", sim.transport()) as client:
        for email in USERS:
            found = client.get(
                "/api/now/table/sys_user",
                params={"sysparm_query": f"email={email}", "sysparm_fields": "sys_id"},
            )
            users.append((found.json()["result"][0]["sys_id"], email))
        for sys_id in made:
            answer = client.patch(
                f"/api/now/table/incident/{sys_id}", json={"assigned_to": users[0][0]}
            )
            answer.raise_for_status()
    templates = [json.loads(d.body) for d in sim.webhooks.pending]
    sim.webhooks.pending.clear()
    if len(templates) != len(made):
        raise SystemExit(f"the simulator sent {len(templates)} deliveries for {len(made)} edits")
    return templates, users


class Deliveries:
    """Signed deliveries, generated up front into one file per wrk thread. Thread t sends the
    records t, t + threads, ...; each file goes round its records. Each record's next
    delivery is one ``sys_mod_count`` newer than its last and assigns the next user."""

    def __init__(
        self, templates: list[dict[str, Any]], users: list[Any], secret: str, threads: int
    ):
        self.per_thread = [templates[t::threads] for t in range(threads)]
        self.users = users
        self.secret = secret
        # sys_id -> [its next sys_mod_count, the index in users of its next assignee]
        self.next = {t["sys_id"]: [int(t["sys_mod_count"]), 0] for t in templates}

    def sync(self, db_path: Path) -> None:
        """Go on from what the platform has now (after a run whose last deliveries may have
        been cut off), so that every next delivery is a change."""
        import sqlite3

        emails = [email for _, email in self.users]
        conn = sqlite3.connect(db_path)
        for sys_id, version, assigned in conn.execute(
            "SELECT l.external_id, s.version, i.assigned_to FROM links l "
            "JOIN incidents i ON i.id = l.incident_id JOIN sync_snapshots s ON "
            "s.integration_id = l.integration_id AND s.incident_id = l.incident_id "
            "AND s.field = 'assigned_to'"
        ):
            if sys_id in self.next and version:
                turn = (emails.index(assigned) + 1) % len(emails) if assigned in emails else 0
                self.next[sys_id] = [int(version) + 1, turn]
        conn.close()

    def write(self, prefix: Path, requests: int) -> int:
        """Files PREFIX.0 ... of about ``requests`` deliveries in all; how many were written."""
        each = math.ceil(requests / len(self.per_thread))
        for thread, mine in enumerate(self.per_thread):
            with open(f"{prefix}.{thread}", "w") as out:
                for n in range(each):
                    payload = dict(mine[n % len(mine)])
                    upcoming = self.next[payload["sys_id"]]
                    sys_id, email = self.users[upcoming[1]]
                    now = datetime.now(UTC)
                    payload["sys_mod_count"] = str(upcoming[0])
                    payload["sys_updated_on"] = now.strftime("%Y-%m-%d %H:%M:%S")
                    payload["assigned_to"] = {"sys_id": sys_id, "email": email}
                    payload["changes"] = {"assigned_to": sys_id}
                    upcoming[0] += 1
                    upcoming[1] = (upcoming[1] + 1) % len(self.users)
                    body = json.dumps(payload, separators=(",", ":"))
                    msg_id = "msg_" + secrets.token_hex(16)
                    signature = standard_webhooks_sign(self.secret, msg_id, now, body.encode())
                    out.write(f"{msg_id}\t{int(now.timestamp())}\t{signature}\t{body}\n")
        return each * len(self.per_thread)


def _load(
    url: str,
    prefix: Path,
    deliveries: Deliveries,
    args: Any,
    between: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """A warm-up run (``--warmup`` s) that also measures the rate, ``between()``, then the
    measured run with deliveries for 2.5 times that rate, so that none is sent twice."""
    deliveries.write(prefix, args.warmup * args.max_rate)
    warmup = _wrk(url, prefix, args.warmup, args)
    between()
    wanted = max(1000, math.ceil(warmup["accepted_per_s"] * args.duration * 2.5))
    written = deliveries.write(prefix, wanted)
    started = format_time(SystemClock().now())
    result = _wrk(url, prefix, args.duration, args)
    return {
        **result,
        "started_at": started,
        "deliveries_written": written,
        "warmup_accepted_per_s": warmup["accepted_per_s"],
    }


def _wrk(url: str, prefix: Path, seconds: int, args: Any) -> dict[str, Any]:
    command = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
        "--timeout", "5s", "-s", str(LUA), url, "--", str(prefix),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    found = [line for line in done.stdout.splitlines() if line.startswith("wrk-json ")]
    if done.returncode != 0 or not found:
        raise SystemExit(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}"[:500])
    figures = json.loads(found[0].removeprefix("wrk-json "))
    took = figures.pop("duration_us") / 1e6
    accepted = figures["requests"] - figures["errors"]["status"]
    latency = {k: round(v / 1000, 2) for k, v in figures.pop("latency_us").items()}
    return {
        "accepted_per_s": round(accepted / took, 1),
        "requests_per_s": round(figures["requests"] / took, 1),
        "seconds": round(took, 2),
        "requests": figures["requests"],
        "accepted": accepted,
        "repeated_deliveries": figures["repeated"],
        "errors": figures["errors"],
        "latency_ms": latency,
        "command": " ".join(command),
    }


def _bare(
    workdir: Path, secret_file: Path, framework: str, deliveries: Deliveries, args: Any
) -> dict[str, Any]:
    from im.sim.server import free_port

    port = free_port()
    db = workdir / f"bare-{framework}.db"
    process = subprocess.Popen(
        [sys.executable, str(HERE / "bare_ingest.py"), "--port", str(port), "--db", str(db),
         "--secret-file", str(secret_file), "--framework", framework],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/", process, status=200)
        prefix = workdir / "bare-deliveries"
        result = _load(f"http://127.0.0.1:{port}/webhooks/bench", prefix, deliveries, args)
    finally:
        stop([process])
    stored = scalar(db, "SELECT count(*) FROM deliveries")
    return {"framework": framework, **result, "rows_stored": stored}


def _daemon(
    workdir: Path, env: dict[str, str], deliveries: Deliveries, args: Any
) -> dict[str, Any]:
    from im.sim.server import free_port

    port = free_port()
    db_path = Path(env["IM_DB"])

    def apply_all() -> float:
        """Until the daemon has applied every stored delivery (or --drain); the seconds."""
        started = time.monotonic()
        waiting = "SELECT count(*) FROM inbound_events WHERE state = 'received'"
        while scalar(db_path, waiting) and time.monotonic() - started < args.drain:
            time.sleep(0.2)
        return time.monotonic() - started

    def between() -> None:
        time.sleep(0.5)  # the requests wrk left in flight land
        apply_all()
        deliveries.sync(db_path)

    process = start_daemon(env, port, workdir / "daemon.log")
    try:
        prefix = workdir / "daemon-deliveries"
        url = f"http://127.0.0.1:{port}/webhooks/bench"
        result = _load(url, prefix, deliveries, args, between)
        drained = apply_all()
    finally:
        stop([process])
    import sqlite3

    conn = sqlite3.connect(db_path)
    states = dict(conn.execute("SELECT state, count(*) FROM inbound_events GROUP BY state"))
    applied = conn.execute(
        "SELECT received_at, applied_at FROM inbound_events WHERE state = 'applied' "
        "AND received_at >= ?",
        [result["started_at"]],
    ).fetchall()
    conn.close()
    delays = [(parse_time(b) - parse_time(a)).total_seconds() * 1000 for a, b in applied]
    span = None
    if applied:
        first = min(parse_time(a) for a, _ in applied)
        span = (max(parse_time(b) for _, b in applied) - first).total_seconds()
    return {
        **result,
        "events_by_state": states,
        "applied_of_this_run": len(applied),
        "applied_per_s": round(len(applied) / span, 1) if span else None,
        "seconds_to_apply_after_the_run": round(drained, 1),
        "stored_to_applied": latencies(delays),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds of wrk per target")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--records", type=int, default=1000, help="linked incidents")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each run")
    parser.add_argument(
        "--max-rate", type=int, default=20000, help="requests/s the warm-up files are sized for"
    )
    parser.add_argument(
        "--drain", type=float, default=600, help="seconds to wait for the daemon to apply"
    )
    parser.add_argument(
        "--bare",
        default="asgi",
        help="the baseline: asgi (a plain ASGI callable) or starlette (one Starlette route); "
        "asgi,starlette measures both, the first one makes the row",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("ingestion.py needs wrk (apt-get install wrk)")
    if args.records % args.threads or args.records < 2 * args.connections:
        raise SystemExit("--records must be a multiple of --threads and at least 2 x connections")
    from im.config.webhook_secrets import new_secret

    workdir = Path(tempfile.mkdtemp(prefix="im-bench-ingestion-"))
    sim, env, made = linked_world("servicenow", args.records, workdir)
    secret = new_secret("servicenow")
    secret_file = workdir / "webhook-secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(secret)
    run_im(env, "integration", "configure", "bench", "--webhook-secret-file", str(secret_file))
    templates, users = _templates(sim, made, secret)
    sim.shutdown()

    deliveries = Deliveries(templates, users, secret, args.threads)
    bare = [_bare(workdir, secret_file, name, deliveries, args) for name in args.bare.split(",")]
    daemon = _daemon(workdir, env, deliveries, args)
    for baseline in bare:
        baseline["daemon_share_percent"] = round(
            100 * daemon["accepted_per_s"] / baseline["accepted_per_s"], 1
        )
    shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": "ingestion",
        "what": "signed webhook deliveries accepted per second under wrk: im daemon vs bare",
        "rows": [
            spec_row(
                4,
                "webhook ingestion, one daemon, as a share of a bare uvicorn endpoint "
                "(HMAC + one SQLite row), accepted requests/s under wrk",
                bare[0]["daemon_share_percent"],
                "%",
                ">=",
                50,
            )
        ],
        "wrk": _wrk_version(),
        "server_stack": _stack(),
        "records": args.records,
        "bare": bare[0],
        "daemon": daemon,
        **({"other_baselines": bare[1:]} if bare[1:] else {}),
    }
    print(json.dumps(report, indent=2))


def _wrk_version() -> str:
    shown = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (shown.stdout + shown.stderr).split("\n")[0].split(" Copyright")[0]


def _stack() -> str:
    """What uvicorn runs on (loop="auto", http="auto"), for both servers."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn, {loop} + {http}, one worker"


if __name__ == "__main__":
    main()
