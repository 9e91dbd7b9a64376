"""Conflict records (SPEC §6). Writers must be inside store.write()."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.store.db import insert_row


def insert(db: Database, values: dict[str, Any]) -> int:
    return insert_row(db, "conflicts", values)


def get(db: Database, conflict_id: int) -> dict[str, Any] | None:
    rows = list(
        db.query(
            "SELECT c.*, i.name AS integration FROM conflicts c "
            "JOIN integrations i ON i.id = c.integration_id WHERE c.id = ?",
            [conflict_id],
        )
    )
    return rows[0] if rows else None


def pending_for(
    db: Database, incident_id: int, integration_id: int, field: str
) -> dict[str, Any] | None:
    rows = list(
        db.query(
            "SELECT * FROM conflicts WHERE incident_id = ? AND integration_id = ? AND field = ? "
            "AND status = 'pending'",
            [incident_id, integration_id, field],
        )
    )
    return rows[0] if rows else None


def held_fields(db: Database, incident_id: int, integration_id: int) -> set[str]:
    """Fields held back from the integration by pending conflicts (manual review)."""
    return {
        row["field"]
        for row in db.query(
            "SELECT field FROM conflicts WHERE incident_id = ? AND integration_id = ? "
            "AND status = 'pending'",
            [incident_id, integration_id],
        )
    }


def update(db: Database, conflict_id: int, values: dict[str, Any]) -> None:
    assignments = ", ".join(f"{column} = ?" for column in values)
    db.execute(f"UPDATE conflicts SET {assignments} WHERE id = ?", [*values.values(), conflict_id])


def listing(db: Database, status: str | None, integration_id: int | None) -> list[dict[str, Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if status:
        clauses.append("c.status = ?")
        params.append(status)
    if integration_id is not None:
        clauses.append("c.integration_id = ?")
        params.append(integration_id)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return list(
        db.query(
            f"SELECT c.*, i.name AS integration FROM conflicts c "
            f"JOIN integrations i ON i.id = c.integration_id {where} ORDER BY c.id",
            params,
        )
    )


def latest_for(
    db: Database, incident_id: int, integration_id: int, field: str
) -> dict[str, Any] | None:
    """The newest conflict of one field of a pair, whatever its status."""
    rows = list(
        db.query(
            "SELECT * FROM conflicts WHERE incident_id = ? AND integration_id = ? AND field = ? "
            "ORDER BY id DESC LIMIT 1",
            [incident_id, integration_id, field],
        )
    )
    return rows[0] if rows else None
