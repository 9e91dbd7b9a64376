"""The daemon's row: who runs it, where it listens, and its heartbeat, so that every process
can tell whether a daemon is running (SPEC §1)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlite_utils import Database

from im.clock import parse_time

HEARTBEAT_SECONDS = 1.0
# a heartbeat older than this means the daemon is gone (killed, or its machine stopped)
STALE_AFTER = timedelta(seconds=10)


@dataclass(frozen=True)
class DaemonStatus:
    running: bool
    pid: int | None = None
    hostname: str = ""
    listen: str = ""
    public_url: str | None = None
    started_at: str | None = None
    heartbeat_at: str | None = None


def register(db: Database, values: dict[str, Any]) -> None:
    """Record the starting daemon (one row: there is one daemon per database)."""
    db.execute("DELETE FROM daemon")
    db.execute(
        "INSERT INTO daemon (id, pid, hostname, listen, public_url, started_at, heartbeat_at) "
        "VALUES (1, :pid, :hostname, :listen, :public_url, :started_at, :heartbeat_at)",
        values,
    )


def beat(db: Database, at: str) -> None:
    db.execute("UPDATE daemon SET heartbeat_at = ? WHERE id = 1", [at])


def stopped(db: Database, at: str) -> None:
    db.execute("UPDATE daemon SET stopped_at = ? WHERE id = 1", [at])


def status(db: Database, now: datetime) -> DaemonStatus:
    rows = list(db.query("SELECT * FROM daemon WHERE id = 1"))
    if not rows:
        return DaemonStatus(False)
    row = rows[0]
    fresh = now - parse_time(row["heartbeat_at"]) <= STALE_AFTER
    return DaemonStatus(
        running=fresh and row["stopped_at"] is None,
        pid=row["pid"],
        hostname=row["hostname"],
        listen=row["listen"],
        public_url=row["public_url"],
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
    )
