"""What the review app does to the database, with no Textual in it: list the pending conflicts
the caller may see, check and resolve one through the access policy, and filter a listing.

Every call opens its own connection and closes it: the app runs these in worker threads, and
a SQLite connection must not cross threads.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from im.access import Access
from im.clock import Clock
from im.errors import ImError
from im.store import open_database
from im.sync import conflicts

CHOICES = (conflicts.PLATFORM, conflicts.EXTERNAL, conflicts.IGNORE)
VIA = "tui"

_INCIDENT_TERM = re.compile(r"inc-[0-9]+", re.IGNORECASE)


@dataclass(frozen=True)
class Review:
    """``principal`` reviewing the conflicts of the database at ``db_path``."""

    db_path: Path
    clock: Clock
    principal: str

    @contextmanager
    def _access(self) -> Iterator[tuple[Database, Access]]:
        db = open_database(self.db_path)
        try:
            yield db, Access(db, self.clock, self.principal, VIA)
        finally:
            db.close()

    def pending(self) -> list[dict[str, Any]]:
        """The pending conflicts of the integrations the caller may list (as
        ``conflicts.view`` shows them), oldest first. Reads only."""
        with self._access() as (db, access):
            visible = access.visible("conflict.list")
            return [
                row for row in conflicts.listing(db, "pending") if row["integration"] in visible
            ]

    def check(self, ref: str) -> None:
        """Whether the caller may resolve ``ref``, before asking them to confirm. A denial
        is logged and raised (ForbiddenError, with the policy's reason); an allowed check
        writes nothing."""
        with self._access() as (_, access):
            if not access.allows("conflict.resolve", conflict=ref):
                access.require("conflict.resolve", conflict=ref)  # logs the denial, raises

    def resolve(self, ref: str, choice: str) -> dict[str, Any]:
        """Resolve ``ref`` as ``im conflict resolve`` does: the policy first (the attempt is
        in the audit log either way), then the same library call, then its outcome in the
        log. Writes; raises ForbiddenError, StateError, NotFoundError."""
        with self._access() as (db, access):
            access.require("conflict.resolve", conflict=ref)
            try:
                done = conflicts.resolve(db, self.clock, self.principal, ref, choice)
            except BaseException as error:
                with suppress(ImError, sqlite3.Error):
                    access.finish(describe(error))
                raise
            # the resolve is committed: a log entry that cannot be completed now (a busy
            # database) must not report it as failed; the entry stays open, as in the CLI
            with suppress(ImError, sqlite3.Error):
                access.finish(None)
            return done


def describe(error: BaseException) -> str:
    """One line for a person, as the CLI's error funnel words it."""
    if isinstance(error, ImError):
        text = str(error)
    elif isinstance(error, sqlite3.Error):
        text = f"database error: {error}"
    else:
        # the message of an unexpected error could carry anything: only its type is shown
        text = f"internal error ({type(error).__name__})"
    return " ".join(text.split())


def matches(row: Mapping[str, Any], terms: Sequence[str]) -> bool:
    """Whether a conflict passes the filter ``terms``: an ``INC-n`` term names its incident
    exactly, any other term is part of its integration's name; terms of one kind are
    alternatives, the two kinds must both hold (``prod-jira INC-3``)."""
    incidents = {t.upper() for t in terms if _INCIDENT_TERM.fullmatch(t)}
    names = [t.lower() for t in terms if not _INCIDENT_TERM.fullmatch(t)]
    if incidents and str(row["incident"]).upper() not in incidents:
        return False
    return not names or any(name in str(row["integration"]).lower() for name in names)


def narrow(rows: Sequence[Mapping[str, Any]], text: str) -> list[Mapping[str, Any]]:
    """The rows that pass the filter typed as ``text`` (whitespace-separated terms)."""
    terms = text.split()
    return [row for row in rows if matches(row, terms)]
