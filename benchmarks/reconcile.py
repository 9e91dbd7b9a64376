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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import agent, linked_world, run_im, spec_row

from im.sim.core import Simulator
from im.sim.server import serve_in_thread


def _agent_edit(kind: str, sim: Simulator, external_id: str) -> None:
    """A person changes the title there; the webhook never arrives."""
    with agent(kind, "http://sim", sim.transport()) as c:
        if kind == "servicenow":
            c.patch(f"/api/now/table/incident/{external_id}", json={"short_description": "edited"})
        elif kind == "jira":
            c.put(f"/rest/api/3/issue/{external_id}", json={"fields": {"summary": "edited"}})
        else:
            body = {"incident": {"type": "incident_reference", "title": "edited"}}
            c.put(f"/incidents/{external_id}", json=body)


def _world(kind: str, count: int, drift: int, workdir: Path) -> tuple[Simulator, dict[str, str]]:
    """A database with ``count`` incidents linked to ``count`` records in a new simulator,
    ``drift`` of them then edited there."""
    sim, env, made = linked_world(kind, count, workdir)
    step = max(1, count // max(drift, 1))
    for external_id in made[::step][:drift]:
        _agent_edit(kind, sim, external_id)
    time.sleep(1.5)  # Jira's search shows a write after about a second
    return sim, env


# "Independent of the count": peak memory at --incidents within this factor of that at
# --small (5 times fewer by default); memory that grew with the count would show about 5.
MEMORY_RATIO = 1.25

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
    shutil.rmtree(workdir, ignore_errors=True)
    large = [r[str(args.incidents)]["seconds"] for r in results.values()]
    ratios = [r["memory_ratio"] for r in results.values()]
    sizes = f"{args.incidents:,} / {args.small:,} incidents"
    rows = [
        spec_row(5, f"reconcile --dry-run, {args.incidents:,} linked incidents, slowest vendor",
                 max(large), "s", "<", 20),
        spec_row(5, f"reconcile --dry-run peak memory, {sizes}, largest ratio (independent "
                 "of the count)", max(ratios), "", "<", MEMORY_RATIO),
    ]  # fmt: skip
    print(
        json.dumps(
            {
                "benchmark": "reconcile",
                "what": "reconcile --dry-run over linked incidents (simulator on loopback)",
                "target": "< 20 s at 10,000; peak memory independent of the count",
                "rows": rows,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
