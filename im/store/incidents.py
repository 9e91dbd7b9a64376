"""Rows of incidents, their field changes and journal entries, and the read of everything
that happened to one incident's changes on their way to and from the integrations (its sync
trail). Writers must be inside store.write()."""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from im.model import Incident
from im.store.db import insert_row, update_row

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
    update_row(db, "incidents", incident_id, values)


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
            "SELECT id, field, old_value, new_value, source, actor, changed_at FROM field_changes "
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


# -- the sync trail: read-only, for the incident's timeline (im.incidents.history) -----------


def outbox_trail(db: Database, incident_id: int) -> list[dict[str, Any]]:
    """Every outbox row of the incident, whatever its state, oldest first, with the
    integration's name, its fields and journal decoded, and, for a row that went to the DLQ,
    its entry number (``dead_letter``) and when it went there (``dead_at``)."""
    found = []
    for row in db.query(
        "SELECT o.id, o.integration_id, i.name AS integration, o.operation, o.fields, o.journal, "
        "o.state, o.attempts, o.last_error, o.created_at, o.updated_at, o.done_at, "
        "d.id AS dead_letter, d.created_at AS dead_at FROM outbox o "
        "JOIN integrations i ON i.id = o.integration_id "
        "LEFT JOIN dead_letters d ON d.outbox_id = o.id AND d.direction = 'outbound' "
        "WHERE o.incident_id = ? AND o.direction = 'outbound' ORDER BY o.id",
        [incident_id],
    ):
        row["fields"] = json.loads(row["fields"])
        row["journal"] = json.loads(row["journal"])
        found.append(row)
    return found


def push_trail(db: Database, incident_id: int) -> list[dict[str, Any]]:
    """The values written to each integration for the incident and when their echo came back
    (kept for the dedupe window, 7 days), oldest first."""
    return list(
        db.query(
            "SELECT integration_id, field, value, sent_at, acked_at FROM pushes "
            "WHERE incident_id = ? ORDER BY id",
            [incident_id],
        )
    )


def journal_link_trail(db: Database, incident_id: int) -> list[dict[str, Any]]:
    """Which vendor entry each of the incident's journal entries is in each integration."""
    return list(
        db.query(
            "SELECT l.journal_entry_id, l.integration_id, l.vendor_id, l.linked_at "
            "FROM journal_links l JOIN journal_entries j ON j.id = l.journal_entry_id "
            "WHERE j.incident_id = ?",
            [incident_id],
        )
    )


def conflict_trail(db: Database, incident_id: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT c.*, i.name AS integration FROM conflicts c "
            "JOIN integrations i ON i.id = c.integration_id WHERE c.incident_id = ? ORDER BY c.id",
            [incident_id],
        )
    )


def inbound_trail(db: Database, incident_id: int) -> list[dict[str, Any]]:
    """The webhook deliveries that concerned the incident (bodies left out), oldest first."""
    return list(
        db.query(
            "SELECT e.id, i.name AS integration, e.received_at, e.applied_at, e.state, "
            "e.event_type, e.delivery_id, e.outcome, e.attempts FROM inbound_events e "
            "JOIN integrations i ON i.id = e.integration_id WHERE e.incident_id = ? ORDER BY e.id",
            [incident_id],
        )
    )
