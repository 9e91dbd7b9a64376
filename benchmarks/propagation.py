"""SPEC §13: platform -> external propagation at a steady rate, through a real `im daemon`
and the three simulators, each in its own process on loopback. Prints JSON. Not part of the
test run:

    python benchmarks/propagation.py [--rate 50] [--duration 60] [--incidents 50]

Each change updates one incident's title; every integration gets it. Propagation of a change
is the time from its commit to the outbox row being acknowledged by the vendor (a change that
was coalesced into a waiting row counts from the row's first commit: the slowest of them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OPTIONS, SECRETS, run_im

from im.clock import SystemClock, format_time, parse_time
from im.sim.server import free_port


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the process exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not start")


def _outstanding(db_path: Path) -> int:
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE state != 'done'").fetchone()[0])


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="changes per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--incidents", type=int, default=50, help="incidents changed in turn")
    args = parser.parse_args()

    from im import incidents
    from im.store import open_database

    workdir = Path(tempfile.mkdtemp(prefix="im-bench-"))
    db_path = workdir / "im.db"
    env = {
        **os.environ,
        "IM_DB": str(db_path),
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "IM_USER": "bench",
    }
    os.environ.update({k: env[k] for k in ("IM_DB", "XDG_CONFIG_HOME", "PYTHON_KEYRING_BACKEND")})
    processes: list[subprocess.Popen[bytes]] = []
    try:
        run_im(env, "init")
        for kind, options in OPTIONS.items():
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "im", "sim", kind, "--port", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            _wait_ready(f"{url}/_sim/faults", processes[-1])
            run_im(
                env,
                "integration", "create", f"bench-{kind}", "--type", kind, "--url", url, *options,
                extra=SECRETS[kind],
            )  # fmt: skip
        daemon_port = free_port()
        daemon_log = workdir / "daemon.log"
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "im",
                    "daemon",
                    "--port",
                    str(daemon_port),
                    "--log-level",
                    "warning",
                    "--log-file",
                    str(daemon_log),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_ready(f"http://127.0.0.1:{daemon_port}/healthz", processes[-1])

        db = open_database(db_path)
        clock = SystemClock()
        for n in range(args.incidents):
            incidents.create(db, clock, "bench", {"title": f"bench incident {n}"})
        while _outstanding(db_path):
            time.sleep(0.1)
        load_start = clock.now()
        interval = 1.0 / args.rate
        started = time.monotonic()
        changes = 0
        while time.monotonic() - started < args.duration:
            incident = changes % args.incidents + 1
            incidents.update(db, clock, "bench", str(incident), {"title": f"change {changes}"})
            changes += 1
            delay = started + changes * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        achieved = changes / (time.monotonic() - started)
        deadline = time.monotonic() + 120
        while _outstanding(db_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _outstanding(db_path)
        samples: dict[str, list[float]] = {}
        for row in db.query(
            "SELECT i.type, o.created_at, o.done_at FROM outbox o "
            "JOIN integrations i ON i.id = o.integration_id "
            "WHERE o.state = 'done' AND o.created_at >= ?",
            [format_time(load_start)],
        ):
            delay_ms = (parse_time(row["done_at"]) - parse_time(row["created_at"])).total_seconds()
            samples.setdefault(row["type"], []).append(delay_ms * 1000)
        everything = [v for values in samples.values() for v in values]
        report = {
            "what": "platform -> external propagation (commit to vendor acknowledgement)",
            "rate_per_s": args.rate,
            "achieved_rate_per_s": round(achieved, 1),
            "duration_s": args.duration,
            "changes": changes,
            "rows_delivered": len(everything),
            "rows_not_delivered": left,
            "p50_ms": round(statistics.median(everything), 1) if everything else None,
            "p99_ms": round(_percentile(everything, 0.99), 1) if everything else None,
            "max_ms": round(max(everything), 1) if everything else None,
            "target_p99_ms": 250,
            "by_type": {
                kind: {
                    "rows": len(values),
                    "p50_ms": round(statistics.median(values), 1),
                    "p99_ms": round(_percentile(values, 0.99), 1),
                }
                for kind, values in sorted(samples.items())
            },
        }
        print(json.dumps(report, indent=2))
        db.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
