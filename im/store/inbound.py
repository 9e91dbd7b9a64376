"""Inbound webhook deliveries as received (kept durably before the answer), the delivery ids
already applied (dedupe, kept at least 7 days), and our outstanding pushes (echo suppression).
Writers must be inside store.write()."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlite_utils import Database

from im.clock import format_time, parse_time
from im.store.db import insert_row

DEDUPE_DAYS = 7


def store(db: Database, values: dict[str, Any]) -> int:
    return insert_row(db, "inbound_events", values)


def get(db: Database, event_id: int) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM inbound_events WHERE id = ?", [event_id]))
    return rows[0] if rows else None


def due(db: Database, now: str, limit: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT * FROM inbound_events WHERE state = 'received' AND next_attempt_at <= ? "
            "ORDER BY id LIMIT ?",
            [now, limit],
        )
    )


def settle(db: Database, event_id: int, values: dict[str, Any]) -> None:
    assignments = ", ".join(f"{column} = ?" for column in values)
    db.execute(
        f"UPDATE inbound_events SET {assignments} WHERE id = ?", [*values.values(), event_id]
    )


def log_attempt(db: Database, event_id: int, at: str, error: str) -> list[dict[str, Any]]:
    row = db.execute("SELECT attempt_log FROM inbound_events WHERE id = ?", [event_id]).fetchone()
    log: list[dict[str, Any]] = json.loads(row[0]) if row else []
    log.append({"at": at, "error": error, "charged": True})
    return log


def recent(db: Database, integration_id: int, limit: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT id, received_at, state, delivery_id, event_type, external_id, incident_id, "
            "outcome, warnings, attempts, applied_at FROM inbound_events "
            "WHERE integration_id = ? ORDER BY id DESC LIMIT ?",
            [integration_id, limit],
        )
    )


def seen(db: Database, integration_id: int, delivery_id: str, event_id: int, at: str) -> bool:
    """Remember a delivery id; False when it was already seen (a duplicate)."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO deliveries (integration_id, delivery_id, event_id, seen_at) "
        "VALUES (?, ?, ?, ?)",
        [integration_id, delivery_id, event_id, at],
    )
    return cursor.rowcount == 1


def forget_before(db: Database, before: str) -> int:
    """Drop delivery ids, pushes whose echo never came, and the raw events, older than the
    dedupe window."""
    db.execute("DELETE FROM deliveries WHERE seen_at < ?", [before])
    db.execute("DELETE FROM pushes WHERE sent_at < ?", [before])
    cursor = db.execute(
        "DELETE FROM inbound_events WHERE received_at < ? AND state != 'received'", [before]
    )
    return cursor.rowcount


def push(
    db: Database, integration_id: int, incident_id: int, field: str, value: str, at: str
) -> None:
    """Record a value we wrote, until its echo comes back (or a newer push replaces it)."""
    db.execute(
        "INSERT INTO pushes (integration_id, incident_id, field, value, sent_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [integration_id, incident_id, field, value, at],
    )


def withdraw(db: Database, integration_id: int, incident_id: int, field: str, value: str) -> None:
    """Take back the newest outstanding push of exactly this value: it was recorded before
    the send (crash safety) and the send then kept the field back, so nothing will echo."""
    db.execute(
        "DELETE FROM pushes WHERE id = (SELECT id FROM pushes WHERE integration_id = ? "
        "AND incident_id = ? AND field = ? AND value = ? AND acked_at IS NULL "
        "ORDER BY id DESC LIMIT 1)",
        [integration_id, incident_id, field, value],
    )


def outstanding(db: Database, integration_id: int, incident_id: int, field: str) -> bool:
    """Whether a push of the field to the pair's record still waits for its echo."""
    row = db.execute(
        "SELECT 1 FROM pushes WHERE integration_id = ? AND incident_id = ? AND field = ? "
        "AND acked_at IS NULL LIMIT 1",
        [integration_id, incident_id, field],
    ).fetchone()
    return row is not None


def pushed_since(
    db: Database, integration_id: int, incident_id: int, since: str
) -> dict[str, set[str]]:
    """The values we wrote, or may have written, to the pair's record since ``since``: per
    field, echoed or not."""
    found: dict[str, set[str]] = {}
    for name, value in db.execute(
        "SELECT field, value FROM pushes WHERE integration_id = ? AND incident_id = ? "
        "AND sent_at >= ?",
        [integration_id, incident_id, since],
    ).fetchall():
        found.setdefault(name, set()).add(value)
    return found


def sending_at(
    db: Database,
    integration_id: int,
    incident_id: int,
    field: str,
    value: str,
    moment: str,
    within: float,
) -> bool:
    """Whether a push of exactly this value that still stands (acknowledged or outstanding)
    began at most ``within`` seconds before ``moment`` (compared to the second)."""
    latest = moment[:19]
    earliest = format_time(parse_time(moment) - timedelta(seconds=within))[:19]
    row = db.execute(
        "SELECT 1 FROM pushes WHERE integration_id = ? AND incident_id = ? AND field = ? "
        "AND value = ? AND substr(sent_at, 1, 19) BETWEEN ? AND ? LIMIT 1",
        [integration_id, incident_id, field, value, earliest, latest],
    ).fetchone()
    return row is not None


def acknowledge(
    db: Database, integration_id: int, incident_id: int, field: str, value: str, at: str
) -> bool:
    """Consume the oldest outstanding push of exactly this value. True when there was one."""
    row = db.execute(
        "SELECT id FROM pushes WHERE integration_id = ? AND incident_id = ? AND field = ? "
        "AND value = ? AND acked_at IS NULL ORDER BY id LIMIT 1",
        [integration_id, incident_id, field, value],
    ).fetchone()
    if row is None:
        return False
    db.execute("UPDATE pushes SET acked_at = ? WHERE id = ?", [at, row[0]])
    return True
