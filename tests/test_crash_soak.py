"""SPEC §14 crash safety, the short version of `python benchmarks/crash_soak.py`: the same
code path (the three simulators on loopback sockets, a steady load of platform changes and
agent edits, the real `im daemon` SIGKILLed at seeded moments and restarted, then a drain, one
`--auto-heal` reconcile per integration, and the check against the load's ledger), with three
kills in eight seconds of load."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "crash_soak.py"


def crash_soak() -> ModuleType:
    """benchmarks/crash_soak.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("crash_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_daemon_killed_three_times_under_load_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    soak = crash_soak()
    # seed 6: one kill of each mode (early, random, in-flight), see crash_soak.Killer
    report = soak.run(
        soak.Settings(kills=3, seed=6, rate=8.0, duration=8.0, workdir=tmp_path / "soak")
    )
    assert report["kills"] == 3 and report["restart_failures"] == 0
    assert report["kills_by_mode"] == {"early": 1, "in-flight": 1, "random": 1}
    assert report["changes"] > 30 and report["load_errors"] == 0, report
    assert report["drained"], report.get("not_drained")
    assert all(r["exit"] == 0 for r in report["reconcile"].values()), report["reconcile"]
    problems = report.get("problems")
    assert (report["lost"], report["duplicated"], report["unexpected"]) == (0, 0, 0), problems
    assert report["checks"] == report["delivered"] + report["in_dlq"] > 0
    assert report["integrity_check"] == "ok"
    assert report["quick_check_failures_after_kills"] == 0
    assert report["ok"]
