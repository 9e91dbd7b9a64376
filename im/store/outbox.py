"""Outbox rows: one per (incident, integration) change waiting to be sent (SPEC §4).

States: ``pending`` (waiting; the only state a newer change coalesces into), ``in_flight``
(leased by a dispatcher), ``in_doubt`` (a create whose outcome is unknown), ``done``,
``dead`` (in the DLQ), ``cancelled``. Writers must be inside store.write().
"""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from im.store.db import insert_row

LIVE_STATES = ("pending", "in_flight", "in_doubt")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["fields"] = json.loads(row["fields"])
    row["journal"] = json.loads(row["journal"])
    return row


def waiting_row(db: Database, incident_id: int, integration_id: int) -> dict[str, Any] | None:
    """The newest row of the pair that is still waiting and not leased: newer changes merge
    into it."""
    rows = list(
        db.query(
            "SELECT * FROM outbox WHERE incident_id = ? AND integration_id = ? "
            "AND state = 'pending' AND lease_until IS NULL ORDER BY id DESC LIMIT 1",
            [incident_id, integration_id],
        )
    )
    return _decode(rows[0]) if rows else None


def live_create_exists(db: Database, incident_id: int, integration_id: int) -> bool:
    marks = ", ".join("?" for _ in LIVE_STATES)
    row = db.execute(
        f"SELECT 1 FROM outbox WHERE incident_id = ? AND integration_id = ? "
        f"AND operation = 'create' AND state IN ({marks}) LIMIT 1",
        [incident_id, integration_id, *LIVE_STATES],
    ).fetchone()
    return row is not None


def insert(db: Database, row: dict[str, Any]) -> int:
    values = dict(
        row,
        fields=json.dumps(row["fields"], sort_keys=True),
        journal=json.dumps(row["journal"]),
    )
    return insert_row(db, "outbox", values)


def merge(
    db: Database,
    row_id: int,
    fields: dict[str, str],
    journal: list[int],
    at: str,
    replace: bool = False,
) -> None:
    """Coalesce a newer change into a waiting row: latest value per field (or, with
    ``replace``, exactly ``fields``), journal entries appended in order; its attempt count
    and schedule stay as they were."""
    current = _decode(next(iter(db.query("SELECT * FROM outbox WHERE id = ?", [row_id]))))
    merged_fields = dict(fields) if replace else {**current["fields"], **fields}
    merged_journal = current["journal"] + [j for j in journal if j not in current["journal"]]
    db.execute(
        "UPDATE outbox SET fields = ?, journal = ?, updated_at = ? WHERE id = ?",
        [json.dumps(merged_fields, sort_keys=True), json.dumps(merged_journal), at, row_id],
    )


def cancel_waiting(db: Database, integration_id: int, reason: str, at: str) -> int:
    """Cancel every not-yet-sent row of an integration. Returns how many."""
    cursor = db.execute(
        "UPDATE outbox SET state = 'cancelled', last_error = ?, updated_at = ? "
        "WHERE integration_id = ? AND state = 'pending'",
        [reason, at, integration_id],
    )
    return cursor.rowcount


def count_live(db: Database, integration_id: int) -> int:
    marks = ", ".join("?" for _ in LIVE_STATES)
    row = db.execute(
        f"SELECT count(*) FROM outbox WHERE integration_id = ? AND state IN ({marks})",
        [integration_id, *LIVE_STATES],
    ).fetchone()
    return int(row[0])


def for_incident(db: Database, incident_id: int) -> list[dict[str, Any]]:
    """The incident's live rows, oldest first, with the integration's name."""
    marks = ", ".join("?" for _ in LIVE_STATES)
    return [
        _decode(r)
        for r in db.query(
            f"SELECT o.*, i.name AS integration FROM outbox o "
            f"JOIN integrations i ON i.id = o.integration_id "
            f"WHERE o.incident_id = ? AND o.state IN ({marks}) ORDER BY o.id",
            [incident_id, *LIVE_STATES],
        )
    ]
