"""Outbox rows: one per (incident, integration) change waiting to be sent (SPEC §4).

States: ``pending`` (waiting; the only state a newer change coalesces into), ``in_flight``
(leased by a dispatcher), ``in_doubt`` (a create whose outcome is unknown), ``done``,
``dead`` (in the DLQ), ``cancelled``. Writers must be inside store.write().
"""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from im.store import dead_letters, wake
from im.store.db import after_commit, insert_row
from im.store.integrations import CREDENTIAL_SECRETS

LIVE_STATES = ("pending", "in_flight", "in_doubt")
# what reap() writes in the attempt log of a row whose send a dead dispatcher left unfinished
STOPPED_WHILE_SENDING = "the dispatcher stopped while sending"


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
    row_id = insert_row(db, "outbox", values)
    after_commit(db, "wake the dispatcher", lambda path: wake.poke(path, wake.DISPATCH))
    return row_id


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


def backlog(db: Database, integration_id: int) -> tuple[int, str | None]:
    """How many rows of the integration wait or are being sent, and the oldest one's time."""
    marks = ", ".join("?" for _ in LIVE_STATES)
    count, oldest = db.execute(
        f"SELECT count(*), min(created_at) FROM outbox "
        f"WHERE integration_id = ? AND state IN ({marks})",
        [integration_id, *LIVE_STATES],
    ).fetchone()
    return int(count), oldest


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


def get(db: Database, row_id: int) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM outbox WHERE id = ?", [row_id]))
    return _decode(rows[0]) if rows else None


def reap(db: Database, now: str, every: bool = False) -> int:
    """Take back rows whose lease expired (their dispatcher died), or with ``every`` all leased
    rows (a daemon starting: the one that leased them is gone). No attempt is charged.

    A row whose send had begun may have reached the vendor: a create becomes in-doubt (looked
    up before it is sent again) and the attempt log says so, so the next send first looks for
    journal entries that already arrived. A row that was only queued simply waits again.
    """
    cursor = db.execute(
        "UPDATE outbox SET "
        "state = CASE WHEN operation = 'create' AND sending_since IS NOT NULL "
        "THEN 'in_doubt' ELSE 'pending' END, "
        "attempt_log = CASE WHEN sending_since IS NULL THEN attempt_log ELSE "
        "json_insert(attempt_log, '$[#]', json_object('at', :now, 'error', "
        ":stopped, 'charged', json('false'))) END, "
        "lease_until = NULL, lease_owner = NULL, sending_since = NULL, updated_at = :now "
        "WHERE state = 'in_flight' AND (:every OR lease_until < :now)",
        {"now": now, "every": every, "stopped": STOPPED_WHILE_SENDING},
    )
    return cursor.rowcount


def may_have_work(db: Database, now: str) -> bool:
    """Whether a claim at ``now`` could find anything: a live row whose time has come, or a
    lease that ran out. Read without the write lock, so an idle dispatcher's tick takes none
    (the claim itself decides)."""
    row = db.execute(
        "SELECT 1 FROM outbox WHERE (state IN ('pending', 'in_doubt') AND next_attempt_at <= ?) "
        "OR (state = 'in_flight' AND lease_until < ?) LIMIT 1",
        [now, now],
    ).fetchone()
    return row is not None


def due(db: Database, now: str, limit: int) -> list[dict[str, Any]]:
    """Rows to send now, at most one per (incident, integration): the oldest live row of each
    pair, when its time has come and its integration is enabled and not paused. An auth pause
    ends when new credentials are set after it began (sync_state.pause_in_force)."""
    return [
        _decode(r)
        for r in db.query(
            f"""
            SELECT o.* FROM outbox o
            JOIN integrations i ON i.id = o.integration_id
            LEFT JOIN integration_state s ON s.integration_id = o.integration_id
            WHERE o.state IN ('pending', 'in_doubt') AND o.direction = 'outbound'
              AND o.next_attempt_at <= :now AND i.enabled = 1
              AND (s.paused_until IS NULL OR s.paused_until <= :now)
              AND NOT (COALESCE(s.pause_reason, '') = 'auth-failing'
                       AND COALESCE((SELECT max(c.updated_at) FROM integration_secrets c
                                     WHERE c.integration_id = i.id
                                       AND c.{CREDENTIAL_SECRETS}), '') <= s.paused_at)
              AND (s.next_send_at IS NULL OR s.next_send_at <= :now)
              AND NOT EXISTS (
                  SELECT 1 FROM outbox p
                  WHERE p.incident_id = o.incident_id AND p.integration_id = o.integration_id
                    AND p.id < o.id AND p.state IN ('pending', 'in_flight', 'in_doubt'))
            ORDER BY o.next_attempt_at, o.id
            LIMIT :limit
            """,
            {"now": now, "limit": limit},
        )
    ]


def lease(db: Database, row_id: int, owner: str, until: str, now: str) -> None:
    db.execute(
        "UPDATE outbox SET state = 'in_flight', lease_owner = ?, lease_until = ?, updated_at = ? "
        "WHERE id = ?",
        [owner, until, now, row_id],
    )


def sending(db: Database, row_id: int, now: str) -> None:
    """The send of a leased row begins: from here its outcome may be unknown."""
    db.execute("UPDATE outbox SET sending_since = ? WHERE id = ?", [now, row_id])


def release(db: Database, row_id: int, state: str, now: str) -> None:
    """Give a leased row back unsent (shutdown): no attempt is charged."""
    db.execute(
        "UPDATE outbox SET state = ?, lease_owner = NULL, lease_until = NULL, "
        "sending_since = NULL, updated_at = ? WHERE id = ? AND state = 'in_flight'",
        [state, now, row_id],
    )


def finish(db: Database, row_id: int, now: str) -> None:
    db.execute(
        "UPDATE outbox SET state = 'done', lease_owner = NULL, lease_until = NULL, "
        "sending_since = NULL, last_error = NULL, done_at = ?, updated_at = ? WHERE id = ?",
        [now, now, row_id],
    )


def reschedule(
    db: Database,
    row_id: int,
    *,
    state: str,
    next_attempt_at: str,
    now: str,
    error: str,
    charged: bool,
    paused: bool = False,
    changes: dict[str, Any] | None = None,
) -> None:
    """Put a row back to wait for ``next_attempt_at``: an attempt charged (``charged``) or a
    pause counted (``paused``); the error is kept in its attempt log."""
    row = get(db, row_id)
    assert row is not None
    log = json.loads(row["attempt_log"])
    log.append({"at": now, "error": error, "charged": charged})
    extra = changes or {}
    values: dict[str, Any] = {
        "state": state,
        "next_attempt_at": next_attempt_at,
        "lease_owner": None,
        "lease_until": None,
        "sending_since": None,
        "last_error": error,
        "attempts": row["attempts"] + (1 if charged else 0),
        "pauses": row["pauses"] + (1 if paused else 0),
        "attempt_log": json.dumps(log),
        "updated_at": now,
    }
    if "fields" in extra:
        values["fields"] = json.dumps(extra["fields"], sort_keys=True)
    if "journal" in extra:
        values["journal"] = json.dumps(extra["journal"])
    if "operation" in extra:
        values["operation"] = extra["operation"]
    assignments = ", ".join(f"{column} = ?" for column in values)
    db.execute(f"UPDATE outbox SET {assignments} WHERE id = ?", [*values.values(), row_id])
    if state == "dead":
        dead_letters.add(db, row["integration_id"], "outbound", now, outbox_id=row_id)


def had_create(db: Database, row: dict[str, Any]) -> bool:
    """Whether another create of the row's pair was ever given up, retried or in doubt: its
    record may exist, so a new create looks the correlation key up first."""
    found = db.execute(
        "SELECT 1 FROM outbox WHERE incident_id = ? AND integration_id = ? AND id != ? "
        "AND operation = 'create' AND state IN ('dead', 'retried', 'discarded', 'in_doubt') "
        "LIMIT 1",
        [row["incident_id"], row["integration_id"], row["id"]],
    ).fetchone()
    return found is not None


def close_dead(db: Database, row_id: int, state: str, now: str) -> None:
    """Take an entry out of the DLQ: ``retried`` or ``discarded`` (kept for the record)."""
    db.execute(
        "UPDATE outbox SET state = ?, updated_at = ? WHERE id = ? AND state = 'dead'",
        [state, now, row_id],
    )
