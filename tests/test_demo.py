"""`im demo` (SPEC §12): the guide's whole story as a real process, every step holding and
nothing left behind; a step that does not hold named, with everything cleaned up; `--keep`
leaving a world the printed exports point the CLI at; an interrupted demo cleaning up too."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from im.sim import demo
from tests.conftest import Im

USERS_KEY = "dXNlcnMtb3duLWtleS1uZXZlci10by1iZS1zaG93bjA="  # stands for the user's own key


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user with a database, a key and a config directory of their own;
    temporary files go to a directory the test can see is empty afterwards."""
    (tmp_path / "tmp").mkdir()
    return {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "IM_DB": str(tmp_path / "mine.db"),
        "IM_MASTER_KEY": USERS_KEY,
        "IM_USER": "alice",
        "COLUMNS": "100",
    }


def daemon_pid(out: str) -> int:
    found = re.search(r"im daemon +http://127\.0\.0\.1:\d+ \(pid (\d+)\)", out)
    assert found, out
    return int(found.group(1))


def assert_nothing_left(out: str, env: dict[str, str]) -> None:
    """The daemon is gone, the throw-away directory removed, nothing of the user's touched."""
    with pytest.raises(ProcessLookupError):
        os.kill(daemon_pid(out), 0)
    workdir = re.search(r"throw-away directory +(\S+)", out)
    assert workdir and not Path(workdir.group(1)).exists()
    assert list(Path(env["TMPDIR"]).iterdir()) == []
    assert not Path(env["IM_DB"]).exists()
    assert not (Path(env["XDG_CONFIG_HOME"]) / "im").exists()  # no key file of the user's
    assert USERS_KEY not in out


def test_every_step_holds_with_its_times_and_nothing_is_left_behind(
    user_env: dict[str, str],
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "im", "demo"],
        env=user_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, (out, done.stderr)
    assert "Traceback" not in done.stderr
    for n, (title, short, _) in enumerate(demo.STEPS, start=1):
        assert f"Step {n}  {title}\n" in out
        assert f"  held (step {n}, " in out
        assert re.search(rf"^{n} +{re.escape(short)} +held +\d+\.\d s ", out, re.MULTILINE), out
    ms = r" +\d+ ms"
    for measured in (
        # 1: platform -> each system
        rf"platform -> ServiceNow INC\d+{ms}", rf"platform -> Jira OPS-1{ms}",
        rf"platform -> PagerDuty #1{ms}",
        # 2: external -> platform, and external -> external
        rf"ServiceNow -> platform{ms}", rf"ServiceNow -> PagerDuty{ms}",
        # 3: the conflict, and its resolution made true everywhere
        rf"both edits -> conflict-1 pending{ms}", rf"resolved -> every system equal{ms}",
        # 4: found by a dry run, healed, and on to PagerDuty
        rf"run-1 dry run: 1 found{ms}", rf"run-2 auto-heal: healed 1{ms}",
        rf"auto-heal -> PagerDuty{ms}",
        # 5: into the DLQ, and out with dlq-retry
        rf"update -> DLQ{ms}", rf"dlq-retry -> PagerDuty{ms}",
    ):  # fmt: skip
        assert re.search(measured, out), measured
    for command in (
        '$ im incident create --title "Checkout API returns 502" --severity sev2',
        "$ im integration field-ownership set prod-pd assigned_to --owner platform --priority 10",
        "$ im integration configure prod-jira --conflict-strategy manual-review",
        "$ im conflict resolve conflict-1 --use-platform",
        "$ im integration reconcile prod-snow --dry-run",
        "$ im integration reconcile prod-snow --auto-heal",
        "$ im integration dlq prod-pd",
        "$ im integration dlq-retry prod-pd entry-1",
    ):
        assert command in out
    assert (
        "INC-1 assigned_to: platform bob@example.com, ServiceNow alice@example.com -> pull" in out
    )
    assert "422 simulated permanent error" in out
    assert out.rstrip().splitlines()[-1] == "Every step held."
    assert "\x1b[" not in out  # plain text in a pipe
    assert "IM_MASTER_KEY=" not in out  # the demo's key is shown only with --keep
    assert_nothing_left(out, user_env)


def test_a_step_that_does_not_hold_is_named_and_everything_is_cleaned_up(
    im: Im, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jira decides simultaneous edits by itself: no conflict waits for a person in step 3
    monkeypatch.setattr(demo, "CONFLICT_STRATEGY", "last-write-wins")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = dict(os.environ)
    result = im("demo")
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: demo failed at step 3 (a simultaneous edit becomes a conflict and is resolved): "
        "conflict-1 was resolved at once by last-write-wins (platform won), not held for a person"
    ), result.stderr
    out = result.stdout
    assert "  held (step 1, " in out and "  held (step 2, " in out
    assert "  did not hold: conflict-1 was resolved at once by last-write-wins" in out
    assert "Step 4" not in out
    assert re.search(r"^3 +two edits -> conflict +did not hold ", out, re.MULTILINE), out
    assert re.search(r"^4 +lost webhook -> healed +not run", out, re.MULTILINE), out
    assert re.search(r"^5 +DLQ -> dlq-retry +not run", out, re.MULTILINE), out
    assert dict(os.environ) == before  # the demo's key and paths were for its own processes
    assert_nothing_left(out, {**before, "TMPDIR": str(tmp_path / "tmp"), "IM_DB": "/nonexistent"})


def _patched_demo(patch: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`im demo ARGS` in its own process, with ``patch`` applied to im.sim.demo first. SIGINT
    raises KeyboardInterrupt there even where the test runner ignores it."""
    code = (
        "import signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"from im.sim import demo; {patch}; from im.cli import main; main()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, "demo", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Output:
    """A process's standard output, read as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.text = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: Iterable[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def until(self, marker: str, timeout: float = 60) -> str:
        """Everything up to the line that has ``marker`` (raises queue.Empty after timeout)."""
        while marker not in self.text:
            line = self._lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"the output ended without {marker!r}: {self.text}")
            self.text += line
        return self.text

    def all(self, timeout: float = 60) -> str:
        while (line := self._lines.get(timeout=timeout)) is not None:
            self.text += line
        return self.text


def test_keep_leaves_a_world_the_printed_exports_point_the_cli_at(
    user_env: dict[str, str],
) -> None:
    process = _patched_demo("demo.STEPS[1:] = []", "--keep", env=user_env)
    output = Output(process)
    try:
        out = output.until("Ctrl-C stops everything")
        exports = dict(re.findall(r"^  export (\w+)=(\S+)", out, re.MULTILINE))
        assert sorted(exports) == ["IM_DB", "IM_MASTER_KEY", "IM_USER", "XDG_CONFIG_HOME"]
        listed = subprocess.run(
            [sys.executable, "-m", "im", "incident", "list", "--format", "json"],
            env={**user_env, **exports},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0, listed.stderr
        assert [i["title"] for i in json.loads(listed.stdout)] == ["Checkout API returns 502"]
        daemon = re.search(r"^Daemon: (\S+)", out, re.MULTILINE)
        assert daemon and httpx.get(f"{daemon.group(1)}/healthz").status_code == 200
        faults = re.findall(r"faults: (\S+)", out)
        assert len(faults) == 3 and all(httpx.get(url).status_code == 200 for url in faults)
    finally:
        process.send_signal(signal.SIGTERM)  # as Ctrl-C: the same way out
        code = process.wait(timeout=30)
    out = output.all()
    assert code == 0, process.stderr.read()  # type: ignore[union-attr]
    assert out.rstrip().splitlines()[-1] == "Stopped; everything removed."
    assert_nothing_left(out, user_env)


def test_ctrl_c_in_the_middle_stops_everything_and_exits_130(user_env: dict[str, str]) -> None:
    waits = 'demo.STEPS[:] = [("waits for Ctrl-C", "waits", lambda story: time.sleep(120))]'
    process = _patched_demo(waits, env=user_env)
    output = Output(process)
    output.until("Step 1  waits for Ctrl-C")
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=30)
    out = output.all()
    assert code == 130
    # the funnel says so for every command: Ctrl-C is an abort, exit status 130
    assert process.stderr.read().strip().splitlines()[-1] == "error: aborted"  # type: ignore[union-attr]
    assert "Summary" not in out
    assert_nothing_left(out, user_env)
