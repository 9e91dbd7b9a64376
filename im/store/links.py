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


def by_externals(db: Database, integration_id: int, external_ids: list[str]) -> dict[str, Any]:
    """The links of several external records at once: external id -> link."""
    if not external_ids:
        return {}
    marks = ", ".join("?" for _ in external_ids)
    return {
        row["external_id"]: row
        for row in db.query(
            f"SELECT * FROM links WHERE integration_id = ? AND external_id IN ({marks})",
            [integration_id, *external_ids],
        )
    }


def count(db: Database, integration_id: int) -> int:
    row = db.execute("SELECT count(*) FROM links WHERE integration_id = ?", [integration_id])
    return int(row.fetchone()[0])


def restore(db: Database, link_id: int) -> None:
    """The record of a broken link answers again."""
    db.execute("UPDATE links SET state = 'linked' WHERE id = ?", [link_id])


def forget(db: Database, incident_id: int, integration_id: int) -> None:
    """Drop a link whose record is gone, with what was synced through it, so the incident
    can be sent again as new (reconcile --recreate-missing)."""
    db.execute(
        "DELETE FROM sync_snapshots WHERE incident_id = ? AND integration_id = ?",
        [incident_id, integration_id],
    )
    db.execute(
        "DELETE FROM journal_links WHERE integration_id = ? AND journal_entry_id IN "
        "(SELECT id FROM journal_entries WHERE incident_id = ?)",
        [integration_id, incident_id],
    )
    db.execute(
        "DELETE FROM links WHERE incident_id = ? AND integration_id = ?",
        [incident_id, integration_id],
    )
