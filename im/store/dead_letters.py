"""The Dead Letter Queue's index: one entry per given-up change, outbound (an outbox row) or
inbound (a stored webhook delivery). Writers must be inside store.write()."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.store.db import insert_row


def open_count(db: Database, integration_id: int) -> int:
    """Entries of the integration still in the queue (neither retried nor discarded)."""
    row = db.execute(
        "SELECT count(*) FROM dead_letters WHERE integration_id = ? AND state = 'dead'",
        [integration_id],
    ).fetchone()
    return int(row[0])


def add(
    db: Database,
    integration_id: int,
    direction: str,
    at: str,
    *,
    outbox_id: int | None = None,
    event_id: int | None = None,
) -> int:
    return insert_row(
        db,
        "dead_letters",
        {
            "integration_id": integration_id,
            "direction": direction,
            "outbox_id": outbox_id,
            "event_id": event_id,
            "created_at": at,
        },
    )


def open_entries(db: Database, integration_id: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT * FROM dead_letters WHERE integration_id = ? AND state = 'dead' ORDER BY id",
            [integration_id],
        )
    )


def close(db: Database, entry_id: int, state: str, at: str) -> None:
    db.execute(
        "UPDATE dead_letters SET state = ?, closed_at = ? WHERE id = ?", [state, at, entry_id]
    )
