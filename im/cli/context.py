"""What every command shares: the database path (opened on first use), the clock and the
acting principal. Tests pass their own (with a frozen clock) as click's ``obj``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click
from sqlite_utils import Database

from im.clock import Clock, SystemClock
from im.security.principals import current_principal
from im.store import database_path, open_database


@dataclass
class AppContext:
    db_path: Path | None = None
    clock: Clock = field(default_factory=SystemClock)
    _db: Database | None = None

    @property
    def path(self) -> Path:
        return self.db_path or database_path()

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = open_database(self.path)
        return self._db

    def adopt(self, db: Database) -> None:
        """Use a database that is already open (``im init`` just created it)."""
        self._db = db

    @property
    def principal(self) -> str:
        return current_principal()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def app() -> AppContext:
    obj = click.get_current_context().find_object(AppContext)
    assert obj is not None, "the root command sets the AppContext"
    return obj
