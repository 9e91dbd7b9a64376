"""Rows of incidents, their field changes and journal entries. Writers must be inside
store.write()."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.model import Incident
from im.store.db import insert_row

_COLUMNS = (
    "id, title, description, severity, priority, status, assigned_to, escalation_policy, "
    "commander, created_at, updated_at, created_by"
)


def get(db: Database, incident_id: int) -> Incident | None:
    rows = list(db.query(f"SELECT {_COLUMNS} FROM incidents WHERE id = ?", [incident_id]))
    return Incident(**rows[0]) if rows else None


def newest_id(db: Database) -> int | None:
    row = db.execute("SELECT max(id) FROM incidents").fetchone()
    return None if row[0] is None else int(row[0])


def insert(db: Database, values: dict[str, Any]) -> int:
    return insert_row(db, "incidents", values)


def update(db: Database, incident_id: int, values: dict[str, Any]) -> None:
    db.table("incidents").update(incident_id, values)


def select(db: Database, limit: int | None, status: str | None) -> list[Incident]:
    """Newest first; ``limit`` None means all."""
    where = "WHERE status = ?" if status else ""
    params: list[object] = [status] if status else []
    tail = " LIMIT ?" if limit is not None else ""
    if limit is not None:
        params.append(limit)
    return [
        Incident(**r)
        for r in db.query(
            f"SELECT {_COLUMNS} FROM incidents {where} ORDER BY id DESC{tail}", params
        )
    ]


def add_change(
    db: Database,
    incident_id: int,
    field: str,
    old: str | None,
    new: str | None,
    source: str,
    actor: str,
    at: str,
) -> None:
    db.execute(
        "INSERT INTO field_changes (incident_id, field, old_value, new_value, source, actor, "
        "changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [incident_id, field, old, new, source, actor, at],
    )


def changes(db: Database, incident_id: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT field, old_value, new_value, source, actor, changed_at FROM field_changes "
            "WHERE incident_id = ? ORDER BY id",
            [incident_id],
        )
    )


def add_journal(
    db: Database, incident_id: int, kind: str, body: str, source: str, actor: str, at: str
) -> int:
    cursor = db.execute(
        "INSERT INTO journal_entries (incident_id, kind, body, source, actor, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [incident_id, kind, body, source, actor, at],
    )
    return int(cursor.lastrowid or 0)


def journal(db: Database, incident_id: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT id, kind, body, source, actor, created_at FROM journal_entries "
            "WHERE incident_id = ? ORDER BY id",
            [incident_id],
        )
    )
