"""Every SPEC §13 benchmark, one after the other, each in its own process (as each runs alone),
and one JSON document with every row of the table: what was measured, the target, pass or
fail, plus the machine's load before and after and each benchmark's own report. Not part of
the test run (ingestion.py needs `wrk`: `apt-get install wrk`):

    python benchmarks/run_all.py [--quick] [--only propagation,ingestion] [--output FILE]

``--quick`` is a smoke check of the harness (shorter loads, fewer incidents): its figures are
not the targets' conditions. A benchmark that fails still gives its rows, with ``measured``
and ``pass`` null and the reason under ``benchmarks.<name>.error``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# name -> (the SPEC §13 rows it measures, its options for --quick)
BENCHMARKS: dict[str, tuple[tuple[int, ...], list[str]]] = {
    "cli_latency": ((6, 6), ["--runs", "3"]),
    "reconcile": ((5, 5), ["--incidents", "2000", "--small", "400", "--vendors", "servicenow"]),
    "propagation": ((1,), ["--duration", "10"]),
    "inbound": ((2, 3), ["--duration", "10", "--incidents", "10"]),
    "ingestion": ((4,), ["--duration", "3", "--records", "200"]),
}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _run(name: str, quick: bool) -> dict[str, Any]:
    rows, quick_options = BENCHMARKS[name]
    command = [sys.executable, str(HERE / f"{name}.py"), *(quick_options if quick else [])]
    print(f"run_all: {' '.join(command[1:])} (load {_load()})", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    outcome: dict[str, Any] = {
        "command": " ".join(["python", *command[1:]]),
        "seconds": round(time.monotonic() - started, 1),
    }
    try:
        if done.returncode != 0:
            raise ValueError(f"exit status {done.returncode}")
        outcome["report"] = json.loads(done.stdout)
    except ValueError as exc:
        outcome["error"] = f"{exc}: {done.stderr.strip()[-1500:]}"
        outcome["report"] = {
            "rows": [
                {"row": n, "what": f"({name} failed)", "measured": None, "pass": None} for n in rows
            ]
        }
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke check of the harness")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--output", type=Path, help="also write the JSON document here")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: use {', '.join(BENCHMARKS)}")
    wrk = shutil.which("wrk")
    wrk_version = ""
    if wrk:
        shown = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        wrk_version = (shown.stdout + shown.stderr).split("\n")[0].split(" Copyright")[0]
    machine: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version or "not installed",
        "load_average_before": _load(),
    }
    began = datetime.now(UTC)
    results = {name: _run(name, args.quick) for name in chosen}
    machine["load_average_after"] = _load()
    rows = sorted(
        ({**row, "benchmark": name} for name in chosen for row in results[name]["report"]["rows"]),
        key=lambda r: r["row"],
    )
    document = {
        "what": "SPEC §13 performance targets (2 cores, loopback simulators)",
        "quick": args.quick,
        "started_at": began.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - began).total_seconds(), 1),
        "machine": machine,
        "all_pass": all(r["pass"] for r in rows),
        "rows": rows,
        "benchmarks": results,
    }
    text = json.dumps(document, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
