"""Shared fixtures: a real SQLite file per test, a frozen clock, isolated key locations, and
a runner that drives the real CLI (through its error funnel)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click.testing
import pytest
from sqlite_utils import Database

from im.cli import cli
from im.cli.context import AppContext
from im.clock import FrozenClock
from im.config.connection import TransportFor

START = datetime(2026, 11, 27, 9, 0, 0, tzinfo=UTC)


def pytest_addoption(parser: pytest.Parser) -> None:
    """The deterministic simulation's seeds (tests/test_simulation.py): ``--seed N`` runs
    exactly that one; ``--seeds COUNT`` runs seeds 0 to COUNT - 1 (the soak)."""
    parser.addoption("--seed", type=int, default=None, help="run one simulation seed")
    parser.addoption("--seeds", type=int, default=200, help="how many simulation seeds to run")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's keyring, config, data directory or environment secrets."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("IM_USER", "alice")
    for name in ("IM_DB", "IM_MASTER_KEY", "IM_PASSWORD", "IM_API_TOKEN", "IM_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IM_BUSY_TIMEOUT", "5")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "im.db"


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


class Im:
    """Runs `im ...` in-process with a frozen clock; stdout and stderr kept apart."""

    def __init__(self, db_path: Path, clock: FrozenClock) -> None:
        self.db_path = db_path
        self.clock = clock
        # commands that reach external systems use these (the two-way world sets them)
        self.transport_for: TransportFor | None = None

    def __call__(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        runner = click.testing.CliRunner()
        obj = AppContext(
            db_path=self.db_path,
            clock=self.clock,
            transport_for=self.transport_for,
            sleep=getattr(self.clock, "advance", None),
        )
        outcome = runner.invoke(
            cli, list(args), obj=obj, input=input, env=env, catch_exceptions=False
        )
        return Result(outcome.exit_code, outcome.stdout, outcome.stderr)

    def ok(self, *args: str, **kwargs: object) -> str:
        result = self(*args, **kwargs)  # type: ignore[arg-type]
        assert result.exit_code == 0, f"im {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    def db(self) -> Database:
        return Database(self.db_path)


@pytest.fixture
def im(db_path: Path, clock: FrozenClock) -> Im:
    return Im(db_path, clock)


@pytest.fixture
def initialised(im: Im) -> Im:
    im.ok("init")
    return im


SNOW = (
    "--type",
    "servicenow",
    "--url",
    "https://acme.service-now.com",
    "--username",
    "im-integration",
)
JIRA = (
    "--type",
    "jira",
    "--url",
    "https://acme.atlassian.net",
    "--email",
    "im@acme.com",
    "--project",
    "OPS",
)
PD = ("--type", "pagerduty", "--from-email", "im@acme.com", "--service", "PSVC001")

SECRETS = {
    "IM_PASSWORD": "snow-pass-9f3e1a",
    "IM_API_TOKEN": "api-token-77c2d4",
    "IM_WEBHOOK_SECRET": "whsec_c2VjcmV0LXdlYmhvb2s=",
}


@pytest.fixture
def three(initialised: Im) -> Iterator[Im]:
    """An initialised database with one integration of each type, secrets from env vars."""
    initialised.ok("integration", "create", "prod-snow", *SNOW, env=SECRETS)
    initialised.ok("integration", "create", "prod-jira", *JIRA, env=SECRETS)
    initialised.ok("integration", "create", "prod-pd", *PD, env=SECRETS)
    yield initialised


# the two-way world (simulators, daemon app, stepped sync) for the inbound and conflict tests
from tests.two_way import two  # noqa: E402, F401
