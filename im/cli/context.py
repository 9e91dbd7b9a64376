"""What every command shares: the database path (opened on first use), the clock and the
acting principal. Tests pass their own (with a frozen clock) as click's ``obj``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from im.clock import Clock, SystemClock
from im.security.principals import current_principal

if TYPE_CHECKING:
    from sqlite_utils import Database

    from im.access import Access
    from im.config.connection import TransportFor


@dataclass
class AppContext:
    db_path: Path | None = None
    clock: Clock = field(default_factory=SystemClock)
    # how commands that talk to external systems reach them and wait: None is the network
    # and real time; tests pass in-process simulators and their clock's advance
    transport_for: TransportFor | None = None
    sleep: Callable[[float], None] | None = None
    _db: Database | None = None
    _access: Access | None = None

    @property
    def path(self) -> Path:
        from im.store import database_path

        return self.db_path or database_path()

    @property
    def db(self) -> Database:
        # Imported here, not at the top: `im --help` must not pay for SQLite and crypto.
        from im.store import open_database

        if self._db is None:
            self._db = open_database(self.path)
        return self._db

    def adopt(self, db: Database) -> None:
        """Use a database that is already open (``im init`` just created it)."""
        self._db = db

    @property
    def principal(self) -> str:
        return current_principal()

    @property
    def access(self) -> Access:
        """The caller's access, decided by the policy in force (im.access)."""
        from im.access import Access

        if self._access is None:
            self._access = Access(self.db, self.clock, self.principal, "cli")
        return self._access

    def authorize(self, action: str, **target: Any) -> None:
        """Ask the policy before acting (see im.access.Access.require)."""
        self.access.require(action, **target)

    def finish(self, error: str | None) -> None:
        """Record how the command's mutations ended in the audit log."""
        if self._access is not None and self._db is not None:
            self._access.finish(error)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def app() -> AppContext:
    obj = click.get_current_context().find_object(AppContext)
    assert obj is not None, "the root command sets the AppContext"
    return obj
