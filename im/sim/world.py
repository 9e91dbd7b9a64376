"""A world on loopback, as ``im demo`` and the crash soak (benchmarks/crash_soak.py) build
it: the three simulators with their default accounts, one bidirectional integration per
simulator, a throw-away environment for the world's processes, and the real ``im daemon`` as
a subprocess of this Python, started, waited for and stopped.

The daemon is started in this process's process group, with stdin closed; ``start_daemon``
returns its ``Popen`` at once, so that the caller holds it (to stop it, or SIGKILL it) before
``wait_ready`` waits for it to answer.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
from sqlite_utils import Database

from im.clock import Clock
from im.config import integrations as config
from im.sim.core import Simulator
from im.sim.jira import JiraSimulator
from im.sim.pagerduty import PagerDutySimulator
from im.sim.servicenow import ServiceNowSimulator

SIMULATORS: dict[str, Callable[..., Simulator]] = {
    "servicenow": ServiceNowSimulator,
    "jira": JiraSimulator,
    "pagerduty": PagerDutySimulator,
}
# the simulators' default accounts (SPEC §12): integration settings and secrets per type
CONNECTIONS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "servicenow": ({"username": "im-integration"}, {"password": "im-integration"}),
    "jira": (
        {"email": "im-integration@example.com", "project": "OPS", "client_key": "im-sim-jira"},
        {"api_token": "im-integration-token"},
    ),
    "pagerduty": (
        {
            "from_email": "im-integration@example.com",
            "service": "PSVC001",
            "escalation_policy": "PEP0001",
        },
        {"api_token": "im-integration-token"},
    ),
}
# the user's secrets, which the world's processes must not inherit
DROPPED_ENV = ("IM_PASSWORD", "IM_API_TOKEN", "IM_WEBHOOK_SECRET", "IM_NEW_MASTER_KEY")
READY_TIMEOUT = 30.0  # seconds a daemon may take to answer /readyz
STOP_TIMEOUT = 10.0  # seconds a daemon may take to stop after SIGTERM, then SIGKILL


class DaemonNotReadyError(Exception):
    """The daemon exited, or did not answer /readyz in time."""


# -- the environment of the world's processes -----------------------------------------------


def new_master_key() -> str:
    """A fresh master key, as ``IM_MASTER_KEY`` takes it."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def isolated_environment(workdir: Path, key: str, user: str) -> dict[str, str | None]:
    """The variables (None: removed) that point the world's processes at ``workdir`` (its
    database ``im.db``, configuration and data directories), the master key ``key`` and
    ``user``, away from the user's keyring, collector and secrets. For ``environment``."""
    return {
        "IM_DB": str(workdir / "im.db"),
        "IM_MASTER_KEY": key,
        "IM_USER": user,
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "XDG_DATA_HOME": str(workdir / "data"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",  # never the user's
        "OTEL_SDK_DISABLED": "true",  # the world's spans stay out of the user's collector
        **dict.fromkeys(DROPPED_ENV),
    }


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (None: remove) environment variables of this process, which its subprocesses
    inherit; put back what was there on the way out."""
    saved = {name: os.environ.get(name) for name in values}

    def put(items: Mapping[str, str | None]) -> None:
        for name, value in items.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    try:
        put(values)
        yield
    finally:
        put(saved)


# -- the integrations -------------------------------------------------------------------------


def create_integration(
    db: Database,
    clock: Clock,
    principal: str,
    name: str,
    kind: str,
    url: str,
    webhook_secret: str,
    settings: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A bidirectional integration ``name`` with the simulator of ``kind`` at ``url``, with
    its default account (``CONNECTIONS``) and ``settings`` on top; its row."""
    options, credentials = CONNECTIONS[kind]
    return config.create(
        db,
        clock,
        principal,
        name,
        kind,
        config.IntegrationInput(
            url=url,
            settings={**options, **(settings or {})},
            secrets={**credentials, "webhook_secret": webhook_secret},
            direction="bidirectional",
        ),
    ).integration


# -- the daemon -------------------------------------------------------------------------------


def start_daemon(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int = subprocess.DEVNULL,
    stderr: IO[bytes] | int = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """``im daemon ARGS`` in a subprocess running this Python, with ``env`` (None: this
    process's environment) and stdin closed. Returns at once: see ``wait_ready``."""
    return subprocess.Popen(
        [sys.executable, "-m", "im", "daemon", *args],
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )


def wait_ready(
    process: subprocess.Popen[bytes],
    url: str,
    *,
    timeout: float = READY_TIMEOUT,
    interval: float = 0.05,
) -> float:
    """Poll the daemon at ``url`` every ``interval`` seconds until its /readyz answers 200;
    the seconds that took. Raises DaemonNotReadyError when ``process`` exits or ``timeout``
    seconds pass first, and leaves the process as it is: stopping it is the caller's."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return time.monotonic() - started
        if process.poll() is not None:
            raise DaemonNotReadyError(f"the daemon exited with status {process.returncode}")
        if time.monotonic() - started > timeout:
            raise DaemonNotReadyError(f"the daemon was not ready within {timeout:g} s")
        time.sleep(interval)


def stop_daemon(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM, as a person stops it, and up to ``timeout`` seconds for it to stop; then
    SIGKILL. Its exit status; None when it had to be killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return None
