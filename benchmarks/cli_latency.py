"""SPEC §13 CLI targets: `im --help` < 200 ms; `im incident list` (default limit) on 10,000
incidents < 400 ms. Prints JSON. Not part of the test run:

    python benchmarks/cli_latency.py [--incidents 10000] [--runs 10]
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

from common import spec_row

# Runs in a child process: creates the incidents through the library in one transaction.
SEED = """
import sys
from pathlib import Path
from im import incidents
from im.clock import SystemClock
from im.store import open_database
from im.store.db import write
db = open_database(Path(sys.argv[1]))
with write(db):
    for n in range(int(sys.argv[2])):
        incidents.create(db, SystemClock(), "bench", {"title": f"incident {n}", "severity": "sev2"})
"""


def _time(command: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(samples), 1), "max_ms": round(max(samples), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "IM_DB": str(Path(tmp) / "im.db"),
            "XDG_CONFIG_HOME": str(Path(tmp) / "config"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        }
        im = [sys.executable, "-m", "im"]
        subprocess.run([*im, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", SEED, env["IM_DB"], str(args.incidents)], env=env, check=True
        )
        seeded = time.perf_counter() - started
        shown = _time([*im, "--help"], env, args.runs)
        listed = _time([*im, "incident", "list"], env, args.runs)
        runs = f"median of {args.runs} runs"
        listing = f"im incident list (default limit) on {args.incidents:,} incidents, {runs}"
        result = {
            "benchmark": "cli_latency",
            "rows": [
                spec_row(6, f"im --help, {runs}", shown["median_ms"], "ms", "<", 200),
                spec_row(6, listing, listed["median_ms"], "ms", "<", 400),
            ],
            "incidents": args.incidents,
            "seed_seconds": round(seeded, 2),
            "help": {**shown, "target_ms": 200},
            "incident_list": {**listed, "target_ms": 400},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
