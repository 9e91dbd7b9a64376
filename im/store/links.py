"""Links between a platform incident and its record in one external system."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database


def find(db: Database, incident_id: int, integration_id: int) -> dict[str, Any] | None:
    rows = list(
        db.query(
            "SELECT * FROM links WHERE incident_id = ? AND integration_id = ?",
            [incident_id, integration_id],
        )
    )
    return rows[0] if rows else None


def for_incident(db: Database, incident_id: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT l.external_id, l.external_key, l.state, l.created_at, i.name AS integration "
            "FROM links l JOIN integrations i ON i.id = l.integration_id "
            "WHERE l.incident_id = ? ORDER BY i.name",
            [incident_id],
        )
    )


def create(
    db: Database,
    incident_id: int,
    integration_id: int,
    external_id: str,
    external_key: str,
    at: str,
) -> None:
    """Link the incident to its external record (a second link of the same pair is ignored:
    the first one stands)."""
    db.execute(
        "INSERT OR IGNORE INTO links (incident_id, integration_id, external_id, external_key, "
        "state, created_at) VALUES (?, ?, ?, ?, 'linked', ?)",
        [incident_id, integration_id, external_id, external_key, at],
    )


def mark_broken(db: Database, incident_id: int, integration_id: int) -> None:
    """The external record is gone (404 on update): reconcile reports it."""
    db.execute(
        "UPDATE links SET state = 'broken' WHERE incident_id = ? AND integration_id = ?",
        [incident_id, integration_id],
    )


def by_external(db: Database, integration_id: int, external_id: str) -> dict[str, Any] | None:
    rows = list(
        db.query(
            "SELECT * FROM links WHERE integration_id = ? AND external_id = ?",
            [integration_id, external_id],
        )
    )
    return rows[0] if rows else None
