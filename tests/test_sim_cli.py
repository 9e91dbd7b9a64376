"""`im sim …` as a person runs it: a real process that prints where it listens, serves, and
stops cleanly on Ctrl-C; bad options are one-line errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "im", "sim", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("kind", ["servicenow", "jira", "pagerduty"])
def test_sim_prints_its_url_accounts_and_webhook_target_and_stops_on_ctrl_c(kind: str) -> None:
    process = _start(kind, "--port", "0", "--webhook-url", "http://127.0.0.1:9/webhooks/x")
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(f"{kind} simulator on http://127.0.0.1:")
        url = first.split(" on ")[1].strip()
        lines = []
        while not (line := process.stdout.readline()).startswith("  Ctrl-C"):
            lines.append(line)
        text = "".join(lines)
        assert "webhooks: http://127.0.0.1:9/webhooks/x" in text
        assert "webhook secret (new): " in text
        assert "agent" in text  # the human account is listed
        # a new seed each start (printed, to repeat the run): a restarted simulator does
        # not hand out the ids a kept database already links to
        assert re.search(r"  seed: [0-9]+ \(--seed [0-9]+ repeats", text)
        for _ in range(200):  # the server starts right after printing
            try:
                answer = httpx.get(f"{url}/_sim/faults", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.02)
        assert answer.status_code == 200 and answer.json()["error_rate"] == 0
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert f"{kind} simulator stopped" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()


def test_sim_refuses_a_bad_fault_and_a_busy_port() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "im", "sim", "jira", "--fault", "explode=1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: unknown fault 'explode'")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run(
            [sys.executable, "-m", "im", "sim", "pagerduty", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert taken.returncode == 2
    assert taken.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_a_fault_value_that_is_not_a_number_is_named() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "im", "sim", "jira", "--fault", "error-rate=abc"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: error-rate takes a number, not 'abc'"
