"""Database-wide facts: install id, when it was created, which master key seals its secrets."""

from __future__ import annotations

from sqlite_utils import Database

from im.errors import DatabaseError


def get(db: Database, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return None if row is None else str(row[0])


def require(db: Database, key: str) -> str:
    value = get(db, key)
    if value is None:
        raise DatabaseError(f"the database has no {key}", "was it created by `im init`?")
    return value


def put(db: Database, key: str, value: str) -> None:
    """Write one fact. Call inside store.write()."""
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
